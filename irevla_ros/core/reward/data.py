"""Labelled frames: what the success classifier trains on, and the file that carries them.

One sample = the frames of all cameras at one instant + a binary label + the episode it came from (validation
holds out whole episodes: neighbouring frames of one episode are near-duplicates, a frame-level split would
measure memorisation). Labels come from sim ground truth, teleop key presses or recorded episode outcomes; the
file records where (``label_source``).

File: safetensors with ``images`` uint8 [N, cameras, H, W, 3], ``labels`` uint8 [N], ``episodes`` int64 [N]
and JSON metadata (cameras, label_source, sha256 of the content).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

META_KEY = "irevla_labelled_frames"


class FramesError(ValueError):
    """Labelled frames that cannot be used (wrong shapes, bad labels, corrupt file)."""


@dataclass
class LabelledFrames:
    images: np.ndarray  # uint8 [N, cameras, H, W, 3]
    labels: np.ndarray  # uint8 [N] in {0, 1}
    episodes: np.ndarray  # int64 [N]
    cameras: tuple[str, ...]
    label_source: str = "unknown"

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        self.labels = np.asarray(self.labels).astype(np.uint8, copy=False)
        self.episodes = np.asarray(self.episodes).astype(np.int64, copy=False)
        self.validate()

    def validate(self) -> None:
        im = self.images
        if im.dtype != np.uint8 or im.ndim != 5 or im.shape[-1] != 3:
            raise FramesError(f"images must be uint8 [N, cameras, H, W, 3], got {im.dtype} {im.shape}")
        if im.shape[1] != len(self.cameras):
            raise FramesError(f"images hold {im.shape[1]} cameras but cameras names {list(self.cameras)}")
        n = im.shape[0]
        if self.labels.shape != (n,) or self.episodes.shape != (n,):
            raise FramesError(f"labels {self.labels.shape} and episodes {self.episodes.shape} must be ({n},)")
        if n and not np.isin(self.labels, (0, 1)).all():
            raise FramesError(f"labels must be 0/1, got values {sorted(set(self.labels.tolist()))[:6]}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, mask_or_index: np.ndarray) -> LabelledFrames:
        return LabelledFrames(self.images[mask_or_index], self.labels[mask_or_index], self.episodes[mask_or_index],
                              self.cameras, self.label_source)

    def select_cameras(self, cameras: tuple[str, ...]) -> LabelledFrames:
        missing = [c for c in cameras if c not in self.cameras]
        if missing:
            raise FramesError(f"cameras {missing} are not in the data (it has {list(self.cameras)})")
        idx = [self.cameras.index(c) for c in cameras]
        return LabelledFrames(self.images[:, idx], self.labels, self.episodes, tuple(cameras), self.label_source)

    @staticmethod
    def concatenate(parts: list[LabelledFrames]) -> LabelledFrames:
        if not parts:
            raise FramesError("nothing to concatenate")
        cams = parts[0].cameras
        for p in parts[1:]:
            if p.cameras != cams or p.frame_size != parts[0].frame_size:
                raise FramesError(f"cannot mix cameras/frame sizes {p.cameras}/{p.frame_size} with "
                                  f"{cams}/{parts[0].frame_size}")
        # Episode ids are renumbered per part so ids from different files never collide.
        episodes, offset = [], 0
        for p in parts:
            _, inv = np.unique(p.episodes, return_inverse=True)
            episodes.append(inv + offset)
            offset += int(inv.max()) + 1 if len(p) else 0
        sources = sorted({p.label_source for p in parts})
        return LabelledFrames(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                              np.concatenate(episodes), cams, "+".join(sources))

    def summary(self) -> str:
        pos = int(self.labels.sum())
        return (f"{len(self)} frames ({pos} success, {len(self) - pos} failure) from "
                f"{len(np.unique(self.episodes))} episodes, cameras {list(self.cameras)}, "
                f"frames {self.frame_size[1]}x{self.frame_size[0]}, labels from {self.label_source}")


def _content_sha256(tensors: dict[str, np.ndarray], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{a.dtype}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_frames(frames: LabelledFrames, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": np.ascontiguousarray(frames.images), "labels": frames.labels, "episodes": frames.episodes}
    meta = {"cameras": list(frames.cameras), "label_source": frames.label_source}
    header = {"meta": meta, "sha256": _content_sha256(tensors, meta)}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(st_save(tensors, metadata={META_KEY: json.dumps(header)}))
    tmp.replace(path)


def load_frames(path: str | Path) -> LabelledFrames:
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(json.loads(data[8:8 + n])["__metadata__"][META_KEY])
        meta, recorded = header["meta"], header["sha256"]
    except OSError as exc:
        raise FramesError(f"{path}: cannot read: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a labelled-frames file"
        raise FramesError(f"{path}: not a labelled-frames file or corrupt: {exc!r}") from exc
    if set(tensors) != {"images", "labels", "episodes"}:
        raise FramesError(f"{path}: expected tensors images/labels/episodes, got {sorted(tensors)}")
    if _content_sha256(tensors, meta) != recorded:
        raise FramesError(f"{path}: sha256 mismatch: the file was modified or corrupted")
    try:
        return LabelledFrames(tensors["images"], tensors["labels"], tensors["episodes"], tuple(meta["cameras"]),
                              str(meta.get("label_source", "unknown")))
    except FramesError as exc:
        raise FramesError(f"{path}: {exc}") from exc
