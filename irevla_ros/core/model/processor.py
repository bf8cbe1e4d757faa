"""Turning raw observations into backbone inputs, in torch, with no hub downloads.

Images: uint8 [B, H, W, 3] per camera (numpy or torch) -> float [B, 3, S, S], resized (bilinear, antialiased)
and normalised with the backbone's mean/std. Text: a tokenizer stored inside the model folder. For the tiny
random-init presets we build a byte-level tokenizer from scratch (every UTF-8 string is representable, no
vocabulary file to fetch); real backbones ship their own tokenizer files in their local folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

PAD, UNK, BOS = "<pad>", "<unk>", "<s>"


class InputError(ValueError):
    """An observation the model cannot take (wrong shape/dtype/camera count); the message says which."""


def build_byte_tokenizer(max_length: int):
    """A byte-level tokenizer (256 byte tokens + <pad>/<unk>/<s>), made offline, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {PAD: 0, UNK: 1, BOS: 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                   model_max_length=max_length, padding_side="right")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:  # e.g. Llama tokenizers: pad with eos/unk, the attention mask hides it anyway
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = "right"
    return tok


def to_uint8_batch(image, camera: str | int) -> torch.Tensor:
    """Validate one camera's batch (uint8 [B, H, W, 3] or a single [H, W, 3]) and return it as a torch tensor."""
    t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(t, torch.Tensor):
        raise InputError(f"camera {camera}: images must be numpy arrays or tensors, got {type(image).__name__}")
    if t.dtype != torch.uint8:
        raise InputError(f"camera {camera}: images must be uint8 RGB, got {t.dtype}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3 or t.shape[1] < 2 or t.shape[2] < 2:
        raise InputError(f"camera {camera}: images must be [B, H, W, 3], got {tuple(t.shape)}")
    return t


def preprocess_images(images: Sequence, num_cameras: int, size: int, mean: Sequence[float],
                      std: Sequence[float], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """List (one per camera) of uint8 [B, H, W, 3] -> list of normalised float [B, 3, size, size]."""
    if isinstance(images, (np.ndarray, torch.Tensor)) or len(images) != num_cameras:
        got = "an array" if isinstance(images, (np.ndarray, torch.Tensor)) else f"{len(images)} camera(s)"
        raise InputError(f"this model takes a list of {num_cameras} camera batch(es), got {got}")
    batches = [to_uint8_batch(img, i) for i, img in enumerate(images)]
    if len({b.shape[0] for b in batches}) != 1:
        raise InputError(f"cameras disagree on the batch size: {[b.shape[0] for b in batches]}")
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for b in batches:
        x = b.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(((x - m) / s).to(dtype))
    return out
