"""Named backbone configurations that build offline, with random weights.

- `tiny` (BLIP-2), `tiny-llava`, `tiny-paligemma`: a few hundred thousand parameters, build in well under a
  second; tests, CI and the default simulation model. They learn nothing visual by themselves, but they run the
  exact code path of the real models (same classes, same token plumbing, same LoRA targets).
- `blip2-2.7b-shape`: the dimensions of BLIP-2 OPT-2.7B (the paper's backbone), random weights, for GPU latency
  benchmarks only. Dimensions from the published configs of Salesforce/blip2-opt-2.7b (ViT-g/14 vision, 32 Q-Former
  queries) and facebook/opt-2.7b (hidden 2560, 32 layers, 32 heads, FFN 10240, vocab 50272).

Nothing is downloaded: the HF config classes are built from the numbers below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    description: str
    hf_config: Callable[[], object]
    max_text_tokens: int = 48
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # CLIP/BLIP normalisation
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _tiny_blip2():
    from transformers import Blip2Config

    return Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            encoder_hidden_size=32, vocab_size=64),
        text_config=dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=320, max_position_embeddings=512, word_embed_proj_dim=64),
        num_query_tokens=8, image_token_index=319)


def _tiny_blip2_sim():
    """`tiny` with 8-pixel patches (64 per image instead of 16): the from-scratch vision tower of `irevla sim` has to
    localise a 6-cm button in a 64x64 frame, and with 16-pixel patches it mostly learned the mean trajectory
    (SFT-only success 0-10 % vs 30 % with 8-pixel patches on `button`, 60 demos; bench/README.md)."""
    config = _tiny_blip2()
    config.vision_config.patch_size = 8
    return config


def _tiny_llava():
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=16, projection_dim=32),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512),
        image_token_index=319, vision_feature_layer=-1)


def _tiny_llava_sim():
    """`tiny-llava` with 8-pixel patches (64 tokens per image): every patch token reaches the language model. The
    `irevla sim` default since round 3: BLIP-2's Q-Former, learned from scratch, did not pass the button's position
    through its 8 queries (probe error stayed at chance after 1,500 updates, 8 or 16 queries), while this
    model's features located it within ~3 cm after 500 (docs/architecture.md, "Sim backbone")."""
    config = _tiny_llava()
    config.vision_config.patch_size = 8
    return config


def _tiny_paligemma():
    from transformers import PaliGemmaConfig

    return PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=64, patch_size=16, projection_dim=64),
        text_config=dict(model_type="gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=320,
                         max_position_embeddings=512),
        image_token_index=319, projection_dim=64)


def _blip2_opt_2_7b():
    from transformers import Blip2Config

    return Blip2Config(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                           image_size=224, patch_size=14, qkv_bias=True),
        qformer_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            encoder_hidden_size=1408, cross_attention_frequency=2, vocab_size=30523),
        text_config=dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                         num_attention_heads=32, vocab_size=50272, max_position_embeddings=2048,
                         word_embed_proj_dim=2560),
        num_query_tokens=32, image_token_index=50265)


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset("tiny", "blip2", "BLIP-2 family, ~0.3 M params, 64x64 images, 8 query tokens (tests, sim default)",
               _tiny_blip2),
        Preset("tiny-sim", "blip2", "tiny with 8-pixel patches (64 per image): the `irevla sim` default of round 2 "
               "(its Q-Former did not learn to pass object positions on a CPU budget)", _tiny_blip2_sim),
        Preset("tiny-llava", "llava", "Llava family (CLIP ViT + Llama), tiny, 16 patch tokens per image",
               _tiny_llava),
        Preset("tiny-llava-sim", "llava", "tiny-llava with 8-pixel patches (64 tokens per image, all reaching the "
               "LM): the `irevla sim` default; localises objects from scratch on a CPU", _tiny_llava_sim),
        Preset("tiny-paligemma", "paligemma", "PaliGemma family (SigLIP + Gemma), tiny, 16 patch tokens per image",
               _tiny_paligemma, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
        Preset("blip2-2.7b-shape", "blip2", "BLIP-2 OPT-2.7B dimensions (3.8 B params), RANDOM weights: GPU "
               "benchmarks only", _blip2_opt_2_7b, max_text_tokens=32),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
