"""Backbone adapters: one small class per Hugging Face VLM family, all giving the same two operations.

- `image_tokens(pixel_values [B, 3, S, S]) -> [B, n, D]`: one camera's image as tokens in the language model's
  embedding space (BLIP-2: ViT -> Q-Former queries -> projection; Llava: CLIP ViT -> projector; PaliGemma:
  SigLIP -> projector).
- `decoder`: the language model without its LM head; `decoder(inputs_embeds, attention_mask).last_hidden_state`
  is what the action head reads (the paper replaces BLIP-2's final layer by the action head).

We build the sequence [camera 1 tokens][camera 2 tokens]...[instruction tokens] ourselves instead of going through
the families' placeholder-token logic, so any number of cameras works the same way in every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    """`model_type` in the HF config.json."""
    lora_targets: str
    """Default LoRA target modules: a regex (peft full-match) over module names, language model attention only."""

    def model_class(self):
        import transformers

        return getattr(transformers, {"blip2": "Blip2ForConditionalGeneration",
                                      "llava": "LlavaForConditionalGeneration",
                                      "paligemma": "PaliGemmaForConditionalGeneration"}[self.name])

    def config_class(self):
        import transformers

        return getattr(transformers, {"blip2": "Blip2Config", "llava": "LlavaConfig",
                                      "paligemma": "PaliGemmaConfig"}[self.name])


FAMILIES: dict[str, Family] = {
    f.name: f for f in (
        Family("blip2", "blip-2", r".*language_model\..*\.(q_proj|v_proj)"),
        Family("llava", "llava", r".*language_model\..*\.(q_proj|v_proj)"),
        Family("paligemma", "paligemma", r".*language_model\..*\.(q_proj|v_proj)"),
    )
}


def family_for_model_type(model_type: str) -> Family:
    for fam in FAMILIES.values():
        if fam.model_type == model_type:
            return fam
    raise ValueError(f"unsupported backbone model_type {model_type!r}; supported: "
                     f"{sorted(f.model_type for f in FAMILIES.values())}")


def image_size(family: str, hf_config) -> int:
    return int(hf_config.vision_config.image_size)


def tokens_per_image(family: str, hf_config) -> int:
    """How many tokens one camera image becomes (fixed per backbone config)."""
    if family == "blip2":
        return int(hf_config.num_query_tokens)
    patches = (int(hf_config.vision_config.image_size) // int(hf_config.vision_config.patch_size)) ** 2
    if family == "llava":
        return patches + (1 if getattr(hf_config, "vision_feature_select_strategy", "default") == "full" else 0)
    return patches


def hidden_size(hf_config) -> int:
    return int(hf_config.text_config.hidden_size)


def image_tokens(family: str, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    if family == "blip2":
        return model.get_image_features(pixel_values).pooler_output
    out = model.model.get_image_features(pixel_values) if family == "paligemma" else model.model.get_image_features(
        pixel_values, vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(feats, (list, tuple)):
        feats = torch.stack(list(feats))
    return feats


def decoder(family: str, model: nn.Module) -> nn.Module:
    """The language model body (no LM head)."""
    if family == "blip2":
        return model.language_model.base_model
    return model.model.language_model
