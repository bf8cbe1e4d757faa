"""Batched image augmentations on model inputs (float [B, 3, S, S] in [0, 1]): random crop + colour jitter.

Crop = a random sub-window covering ``min_crop``..1 of each side, resampled back to S (one affine grid per
image, so the whole batch is one grid_sample call). Jitter = brightness, contrast and saturation factors drawn
per image. Both make the classifier robust to small camera shifts and lighting changes between sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class AugmentConfig:
    min_crop: float = 0.85
    """Smallest crop side as a fraction of the image side (1 = no crop)."""
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        if not 0.3 <= self.min_crop <= 1.0:
            raise ValueError(f"min_crop must be in [0.3, 1], got {self.min_crop!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")


def random_crop(x: torch.Tensor, min_crop: float, generator: torch.Generator | None = None) -> torch.Tensor:
    if min_crop >= 1.0:
        return x
    b = x.shape[0]
    scale = min_crop + (1.0 - min_crop) * torch.rand(b, generator=generator)
    # Centre offset in normalised coords so the window stays inside the image.
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (1 - scale)[:, None]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    b = x.shape[0]

    def factor(strength: float) -> torch.Tensor:
        return (1.0 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength).to(x.dtype)

    x = x * factor(cfg.brightness)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(cfg.contrast) + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factor(cfg.saturation) + gray
    return x.clamp_(0.0, 1.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    return colour_jitter(random_crop(x, cfg.min_crop, generator), cfg, generator)
