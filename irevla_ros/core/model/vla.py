"""The VLA: a Hugging Face VLM backbone (BLIP-2, Llava, PaliGemma) + the light `ActionHead`.

Public API (stable; the SFT worker, the RL learner and the policy node use it):

- `VLAModel.from_preset(name)`, `VLAModel.from_hf(dir)`, `VLAModel.from_pretrained(dir, device=...)`,
  `save_pretrained(dir)`: a model folder (see `MANIFEST`), every file's sha256 checked on load.
- `encode(images, instructions) -> features [B, T, D]`: the backbone's last hidden states over
  [camera tokens...][instruction tokens]; the tokens the head reads and the transitions carry.
- `forward(images, instructions, proprio=None) -> (mean, log_std)`: differentiable through backbone + head (SFT).
- `act(images, instructions, proprio, stochastic)`: features + action + log-prob in one call (the actor).
- `frozen()`: context manager for stage-1 RL: backbone in eval mode, no grads, no autograd graph.
- `add_lora(r, alpha, target_modules=None)`, `merge_lora()`, adapters saved under `adapter/`.
- `head`, `head_state_dict()`, `load_head_state_dict()`, `feature_shape` (T, D), `config` (`VLAConfig`).
- `read_config(dir)`: a folder's `VLAConfig` (feature shape, head config) WITHOUT loading the backbone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from irevla_ros.core.model import backbones
from irevla_ros.core.model.head import FINE_TUNE_MAX_LOG_STD, ActionHead, HeadConfig
from irevla_ros.core.model.processor import InputError, build_byte_tokenizer, load_tokenizer, preprocess_images

MANIFEST = "irevla_vla.json"
"""The folder's manifest: {"format", "config": VLAConfig, "files": {relative path: sha256}, "version"}."""
FORMAT = 1
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
ADAPTER_DIR = "adapter"

PROPRIO_LABELS = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper_width")
"""Default robot-state vector the policy feeds the head when `proprio_dim == 8` (EE pose in the base frame +
gripper width in metres)."""


def _quiet_hf() -> None:
    """Per-shard progress bars of HF save/load are noise in node logs (our folders are one shard)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class ModelFolderError(ValueError):
    """A model folder that cannot be trusted or does not match: missing/tampered files, wrong shapes."""


@dataclass
class VLAConfig:
    family: str = "blip2"
    num_cameras: int = 1
    """Images per observation, in a fixed order (the policy node's `cameras` parameter)."""
    image_size: int = 64
    tokens_per_image: int = 8
    max_text_tokens: int = 48
    """Instructions are padded/truncated to this many tokens so the feature shape is fixed."""
    feature_dim: int = 64
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    head: HeadConfig = field(default_factory=HeadConfig)
    preset: str = ""
    """Where the backbone came from (preset name, or empty for an imported local HF model)."""

    def __post_init__(self) -> None:
        if isinstance(self.head, dict):
            self.head = HeadConfig(**self.head)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if self.family not in backbones.FAMILIES:
            raise ValueError(f"VLAConfig.family must be one of {sorted(backbones.FAMILIES)}, got {self.family!r}")
        for name in ("num_cameras", "image_size", "tokens_per_image", "max_text_tokens", "feature_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"VLAConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"VLAConfig image_mean/std must be 3 values (std > 0), got {self.image_mean}, "
                             f"{self.image_std}")
        if self.head.feature_dim != self.feature_dim:
            raise ValueError(f"head.feature_dim {self.head.feature_dim} != backbone feature_dim {self.feature_dim}")

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(T, D) of `encode`'s output for one observation."""
        return (self.num_cameras * self.tokens_per_image + self.max_text_tokens, self.feature_dim)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VLAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFolderError(f"model config has unknown fields {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ModelFolderError(f"invalid model config: {exc}") from exc


@dataclass
class ActOutput:
    """One batch of actor outputs (numpy, CPU)."""

    features: np.ndarray  # float16 [B, T, D]
    action: np.ndarray  # float32 [B, 7] in [-1, 1]
    log_prob: np.ndarray  # float32 [B]
    mean_action: np.ndarray  # float32 [B, 7] (the deterministic action)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_sha256(path: str | Path) -> str:
    """The digest announced with a model folder (FULL_WEIGHTS_READY): sha256 of its manifest, which itself holds
    the sha256 of every other file in the folder."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ModelFolderError(f"{path} is not a VLA model folder (no {MANIFEST})")
    return file_sha256(manifest)


def read_manifest(path: str | Path) -> dict:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ModelFolderError(f"{path} is not a VLA model folder (no {MANIFEST}); create one with "
                               f"`irevla model init --preset tiny --out DIR`")
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{manifest} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise ModelFolderError(f"{manifest}: unsupported manifest (format {data.get('format')!r}, expected {FORMAT})"
                               if isinstance(data, dict) else f"{manifest}: manifest is not an object")
    return data


def read_config(path: str | Path) -> VLAConfig:
    """The folder's config (feature shape, head config) without loading or hashing any weights."""
    return VLAConfig.from_dict(read_manifest(path)["config"])


def verify_folder(path: str | Path) -> dict:
    """Check every file listed in the manifest exists and matches its sha256; return the manifest."""
    root = Path(path)
    data = read_manifest(root)
    for rel, digest in sorted(data["files"].items()):
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise ModelFolderError(f"{root}: manifest lists a path outside the folder: {rel!r}")
        if not target.is_file():
            raise ModelFolderError(f"{root}: missing file {rel} (listed in {MANIFEST})")
        actual = file_sha256(target)
        if actual != digest:
            raise ModelFolderError(f"{root}: {rel} is corrupt or was modified (sha256 {actual[:12]}..., manifest "
                                   f"says {str(digest)[:12]}...)")
    return data


def _check_head_state(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], where: str) -> None:
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise ModelFolderError(f"{where}: head weights do not match the head config (missing {missing}, "
                               f"unexpected {extra})")
    for name, ref in reference.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise ModelFolderError(f"{where}: head tensor {name} has shape {tuple(t.shape)}, expected "
                                   f"{tuple(ref.shape)}")
        if not torch.isfinite(t.float()).all():
            raise ModelFolderError(f"{where}: head tensor {name} contains NaN/inf")


class VLAModel(nn.Module):
    def __init__(self, config: VLAConfig, backbone: nn.Module, tokenizer, head: ActionHead | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = head if head is not None else ActionHead(config.head)
        self._frozen_depth = 0
        self._lora = False
        self._cuda_graphs: dict | None = None  # None = off; else {(pixel shape, ids shape): (graph, inputs, output)}

    # ---- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, *, num_cameras: int = 1, head: HeadConfig | dict | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    seed: int | None = 0) -> VLAModel:
        """A random-init model of a named preset (see presets.py); nothing is downloaded."""
        from irevla_ros.core.model.presets import get_preset

        preset = get_preset(name)
        fam = backbones.FAMILIES[preset.family]
        hf_config = preset.hf_config()
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device):  # built in place, in the target dtype (a 3.8 B preset never exists in fp32)
            backbone = fam.model_class()._from_config(hf_config, **({"dtype": dtype} if dtype is not None else {}))
        tokenizer = build_byte_tokenizer(preset.max_text_tokens)
        config = cls._make_config(preset.family, hf_config, num_cameras, preset.max_text_tokens, head,
                                  preset.image_mean, preset.image_std, preset=name)
        model = cls(config, backbone.eval(), tokenizer)
        return model.to(device)

    @classmethod
    def from_hf(cls, path: str | Path, *, num_cameras: int = 1, max_text_tokens: int = 48,
                head: HeadConfig | dict | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> VLAModel:
        """Wrap a VLM already on local disk (a HF folder with config.json, weights, tokenizer) + a fresh head."""
        from transformers import AutoConfig

        path = Path(path)
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        fam = backbones.family_for_model_type(hf_config.model_type)
        backbone = fam.model_class().from_pretrained(str(path), local_files_only=True, dtype=dtype)
        tokenizer = load_tokenizer(path)
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # noqa: BLE001 - no preprocessor_config.json: keep CLIP/BLIP defaults
            pass
        config = cls._make_config(fam.name, hf_config, num_cameras, max_text_tokens, head, mean, std)
        return cls(config, backbone.eval(), tokenizer).to(device)

    @staticmethod
    def _make_config(family, hf_config, num_cameras, max_text_tokens, head, mean, std, preset="") -> VLAConfig:
        dim = backbones.hidden_size(hf_config)
        head_kwargs = asdict(head) if isinstance(head, HeadConfig) else dict(head or {})
        head_kwargs["feature_dim"] = dim
        head_kwargs.setdefault("max_log_std", FINE_TUNE_MAX_LOG_STD)  # a HeadConfig given whole keeps its own
        return VLAConfig(family=family, num_cameras=num_cameras, image_size=backbones.image_size(family, hf_config),
                         tokens_per_image=backbones.tokens_per_image(family, hf_config),
                         max_text_tokens=max_text_tokens, feature_dim=dim, image_mean=tuple(mean),
                         image_std=tuple(std), head=HeadConfig(**head_kwargs), preset=preset)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, verify: bool = True) -> VLAModel:
        """Load a folder written by `save_pretrained`. Every file is checked against the manifest's sha256
        (verify=True); a missing, tampered or mismatched file raises ModelFolderError naming it."""
        _quiet_hf()
        root = Path(path)
        manifest = verify_folder(root) if verify else read_manifest(root)
        config = VLAConfig.from_dict(manifest["config"])
        fam = backbones.FAMILIES[config.family]
        try:
            backbone = fam.model_class().from_pretrained(str(root / BACKBONE_DIR), local_files_only=True,
                                                         dtype=dtype)
            tokenizer = load_tokenizer(root / TOKENIZER_DIR)
        except ModelFolderError:
            raise
        except Exception as exc:  # noqa: BLE001 - HF raises many types; all mean "this folder is unusable"
            raise ModelFolderError(f"{root}: cannot load the backbone/tokenizer: {exc}") from exc
        actual = cls._make_config(config.family, backbone.config, config.num_cameras, config.max_text_tokens,
                                  config.head, config.image_mean, config.image_std, config.preset)
        if actual.feature_shape != config.feature_shape or actual.image_size != config.image_size:
            raise ModelFolderError(f"{root}: backbone gives features {actual.feature_shape} at "
                                   f"{actual.image_size}px but the manifest says {config.feature_shape} at "
                                   f"{config.image_size}px")
        model = cls(config, backbone.eval(), tokenizer)
        model.load_head_file(root / HEAD_FILE)
        if (root / ADAPTER_DIR).is_dir():
            model._load_adapter(root / ADAPTER_DIR)
        model.version = str(manifest.get("version", ""))
        return model.to(device)

    def save_pretrained(self, path: str | Path, *, version: str = "") -> str:
        """Write the folder (backbone, tokenizer, head, adapter if LoRA is active, manifest with sha256 of every
        file). Written into a temporary sibling and renamed, so a crash never leaves a half folder behind.
        Returns the folder digest (`folder_sha256`)."""
        from safetensors.torch import save_file

        _quiet_hf()
        root = Path(path)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        base = self._base_backbone()
        state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
        base.save_pretrained(str(tmp / BACKBONE_DIR), state_dict=state)
        if self._lora:
            self.backbone.save_pretrained(str(tmp / ADAPTER_DIR))
        self.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        head_state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.head.state_dict().items()}
        save_file(head_state, str(tmp / HEAD_FILE))
        files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "config": self.config.to_dict(), "files": files,
                    "version": version or getattr(self, "version", "")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if root.exists():
            old = root.with_name(f".{root.name}.old.{os.getpid()}")
            root.rename(old)
            tmp.rename(root)
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(root)
        return folder_sha256(root)

    # ---- properties ----------------------------------------------------------------------------------------
    @property
    def feature_shape(self) -> tuple[int, int]:
        return self.config.feature_shape

    @property
    def device(self) -> torch.device:
        return self.head.mean.weight.device

    @property
    def backbone_dtype(self) -> torch.dtype:
        return next(self._base_backbone().parameters()).dtype

    def _base_backbone(self) -> nn.Module:
        return self.backbone.get_base_model() if self._lora else self.backbone

    # ---- inference -----------------------------------------------------------------------------------------
    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(instructions, str) or not all(isinstance(s, str) for s in instructions):
            raise InputError("instructions must be a list of strings (one per batch item)")
        enc = self.tokenizer(list(instructions), padding="max_length", truncation=True,
                             max_length=self.config.max_text_tokens, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def encode(self, images: Sequence, instructions: Sequence[str]) -> torch.Tensor:
        """features [B, T, D] (backbone dtype). Images: one uint8 [B, H, W, 3] batch per camera."""
        cfg = self.config
        pixel = preprocess_images(images, cfg.num_cameras, cfg.image_size, cfg.image_mean, cfg.image_std,
                                  self.device, self.backbone_dtype)
        batch = pixel[0].shape[0]
        if len(instructions) != batch:
            raise InputError(f"{len(instructions)} instruction(s) for a batch of {batch} observation(s)")
        ids, text_mask = self.tokenize(instructions)
        grad = torch.is_grad_enabled() and self._frozen_depth == 0
        pixels = torch.cat(pixel, 0)  # all cameras through the vision tower in one batch
        if self._cuda_graphs is not None and pixels.is_cuda and torch.is_inference_mode_enabled():
            features = self._graphed_features(pixels, ids, text_mask, batch)
        else:
            with torch.set_grad_enabled(grad):
                features = self._features(pixels, ids, text_mask, batch)
        if features.shape[1:] != torch.Size(self.feature_shape):
            raise RuntimeError(f"backbone produced features {tuple(features.shape[1:])}, expected "
                               f"{self.feature_shape}")
        return features

    def _features(self, pixels: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
                  batch: int) -> torch.Tensor:
        cfg = self.config
        core = self._base_backbone()
        tokens = backbones.image_tokens(cfg.family, core, pixels)
        tokens = tokens.reshape(cfg.num_cameras, batch, *tokens.shape[1:]).transpose(0, 1)
        tokens = tokens.reshape(batch, cfg.num_cameras * tokens.shape[2], tokens.shape[-1])
        text = core.get_input_embeddings()(ids).to(tokens.dtype)
        embeds = torch.cat([tokens, text], dim=1)
        mask = torch.cat([torch.ones(tokens.shape[:2], dtype=text_mask.dtype, device=self.device), text_mask], 1)
        return backbones.decoder(cfg.family, core)(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    def use_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay the backbone's inference forward as a CUDA graph (one per batch size).

        Why: at batch 1 a 3.7 B BLIP-2 forward is bound by the CPU launching ~1,600 kernels, not by the GPU
        (bench/README.md, GPU rows). Only inside `torch.inference_mode()` on a CUDA model (`act` does that);
        everything else takes the eager path. Weights copied into this module in place stay valid (the graph
        reads the same tensors); after replacing modules (a LoRA merge), call again to drop the captured graphs."""
        self._cuda_graphs = {} if enabled else None

    @property
    def cuda_graphs_enabled(self) -> bool:
        return self._cuda_graphs is not None

    def _graphed_features(self, pixels: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
                          batch: int) -> torch.Tensor:
        key = (tuple(pixels.shape), tuple(ids.shape))
        entry = self._cuda_graphs.get(key)
        if entry is None:
            inputs = (pixels.clone(), ids.clone(), text_mask.clone())
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the capture: allocator, cuBLAS/cuDNN plans
                for _ in range(2):
                    self._features(*inputs, batch)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self._features(*inputs, batch)
            entry = self._cuda_graphs[key] = (graph, inputs, output)
        graph, inputs, output = entry
        for static, value in zip(inputs, (pixels, ids, text_mask), strict=True):
            static.copy_(value)
        graph.replay()
        return output.clone()  # the graph overwrites its output on the next replay

    def forward(self, images: Sequence, instructions: Sequence[str], proprio: torch.Tensor | None = None):
        """(mean, log_std) of the pre-tanh Gaussian, differentiable through backbone and head (SFT)."""
        return self.head(self.encode(images, instructions), proprio)

    @torch.inference_mode()
    def act(self, images: Sequence, instructions: Sequence[str], proprio: np.ndarray | torch.Tensor | None = None,
            *, stochastic: bool = True, head: ActionHead | None = None,
            generator: torch.Generator | None = None) -> ActOutput:
        """Features + action (+ log-prob) for a batch of observations; `head` overrides self.head (hot swap)."""
        head = head if head is not None else self.head
        if self.backbone.training:
            self.backbone.eval()
        features = self.encode(images, instructions)  # inference mode: no graph, no parameter can change
        p = None
        if proprio is not None and head.config.proprio_dim:
            p = torch.as_tensor(np.asarray(proprio, dtype=np.float32), device=self.device).reshape(
                features.shape[0], head.config.proprio_dim)
        mean, log_std = head(features, p)
        if stochastic:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            pre = mean + log_std.exp() * noise
        else:
            pre = mean
        log_prob = ActionHead._log_prob(pre, mean, log_std)
        fp16_max = torch.finfo(torch.float16).max  # transitions carry fp16: saturate rather than overflow to inf
        return ActOutput(features=features.float().clamp(-fp16_max, fp16_max).to(torch.float16).cpu().numpy(),
                         action=torch.tanh(pre).float().cpu().numpy(),
                         log_prob=log_prob.float().cpu().numpy(),
                         mean_action=torch.tanh(mean).float().cpu().numpy())

    @contextlib.contextmanager
    def frozen(self) -> Iterator[VLAModel]:
        """Stage-1 RL mode: backbone in eval mode with requires_grad off and no autograd graph through it.
        Restores the previous training/requires_grad state on exit."""
        base = self.backbone
        saved = [(p, p.requires_grad) for p in base.parameters()] if self._frozen_depth == 0 else []
        was_training = base.training
        self._frozen_depth += 1
        try:
            base.eval()
            for p, _ in saved:
                p.requires_grad_(False)
            yield self
        finally:
            self._frozen_depth -= 1
            if self._frozen_depth == 0:
                for p, flag in saved:
                    p.requires_grad_(flag)
                base.train(was_training)

    def backbone_fingerprint(self) -> str:
        """sha256 over every backbone parameter and buffer (bit-exact check that RL left the VLM untouched)."""
        h = hashlib.sha256()
        for name, t in sorted(self.backbone.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ---- head ------------------------------------------------------------------------------------------------
    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    def check_head_state_dict(self, state: dict[str, torch.Tensor], where: str = "head weights") -> None:
        """Raise ModelFolderError unless `state` fits this head exactly (names, shapes, finite values)."""
        _check_head_state(state, self.head.state_dict(), where)

    def load_head_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.check_head_state_dict(state)
        self.head.load_state_dict(state)

    def make_head(self, state: dict[str, torch.Tensor] | None = None) -> ActionHead:
        """A new head with this model's head config (on its device), optionally loaded with `state` (checked).
        Used for double-buffered hot reloads: load into a spare, swap references between ticks."""
        if state is not None:
            self.check_head_state_dict(state)
        head = ActionHead(self.config.head).to(self.device)
        if state is not None:
            head.load_state_dict(state)
        return head.eval()

    def load_head_file(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure: corrupt file
            raise ModelFolderError(f"{path}: cannot read head weights: {exc}") from exc
        _check_head_state(state, self.head.state_dict(), str(path))
        self.head.load_state_dict(state)

    # ---- LoRA ------------------------------------------------------------------------------------------------
    def add_lora(self, r: int = 16, alpha: int = 32, target_modules: str | list[str] | None = None,
                 dropout: float = 0.0) -> None:
        """Wrap the backbone with peft LoRA adapters (default: q/v projections of the language model)."""
        from peft import LoraConfig, get_peft_model

        if self._lora:
            raise RuntimeError("LoRA adapters are already attached; merge_lora() first")
        if r <= 0 or alpha <= 0 or not (0.0 <= dropout < 1.0):
            raise ValueError(f"LoRA needs r > 0, alpha > 0, 0 <= dropout < 1; got r={r}, alpha={alpha}, "
                             f"dropout={dropout}")
        targets = target_modules or backbones.FAMILIES[self.config.family].lora_targets
        self.backbone = get_peft_model(self.backbone, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                                 target_modules=targets, bias="none"))
        self._lora = True

    def _load_adapter(self, path: Path) -> None:
        from peft import PeftModel

        try:
            self.backbone = PeftModel.from_pretrained(self.backbone, str(path), is_trainable=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelFolderError(f"{path}: cannot load the LoRA adapter: {exc}") from exc
        self._lora = True

    @property
    def has_lora(self) -> bool:
        return self._lora

    def merge_lora(self) -> None:
        """Fold the adapters into the backbone weights (faster inference, plain HF backbone again)."""
        if not self._lora:
            raise RuntimeError("no LoRA adapters to merge")
        self.backbone = self.backbone.merge_and_unload()
        self._lora = False
