"""Binary payloads carried in std_msgs/UInt8MultiArray: safetensors bytes whose metadata holds JSON.

Used for transitions (policy -> learner, packager) and head weights (learner -> policy). safetensors is
self-describing (dtype + shape per tensor), safe to parse (no pickle) and readable from any language.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from irevla_ros.interfaces import ACTION_DIM

SCHEMA_KEY = "irevla"


class PayloadError(ValueError):
    """A payload that cannot be trusted: corrupt, wrong kind, wrong shapes, non-finite values."""


def encode(kind: str, tensors: Mapping[str, np.ndarray], meta: Mapping[str, object]) -> bytes:
    header = json.dumps({"kind": kind, **meta}, sort_keys=True)
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={SCHEMA_KEY: header})


def decode(payload: bytes | bytearray | memoryview, kind: str) -> tuple[dict[str, np.ndarray], dict]:
    data = bytes(payload)
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header["__metadata__"][SCHEMA_KEY])
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same "corrupt payload"
        raise PayloadError(f"corrupt {kind} payload ({len(data)} bytes): {exc}") from exc
    if meta.get("kind") != kind:
        raise PayloadError(f"expected a {kind!r} payload, got {meta.get('kind')!r}")
    return tensors, meta


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_TENSOR_FIELDS = ("features", "action", "proprio", "images")


@dataclass
class Transition:
    """One control step as the learner and the packager see it.

    `features` are the frozen backbone's output tokens for this step's observation (fp16 [T, D]); the learner
    never runs the VLM. `next_features` is omitted: the learner pairs consecutive steps of an episode.
    """

    episode_id: str
    step: int
    features: np.ndarray  # float16 [T, D]
    action: np.ndarray  # float32 [7], in [-1, 1]
    log_prob: float = 0.0
    reward: float = 0.0
    done: bool = False  # episode ended after this step (success or time limit)
    terminal: bool = False  # ended because of success/failure (no bootstrapping), not the time limit
    success: bool = False
    intervention: bool = False
    policy_version: str = "0"
    task: str = ""
    proprio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), dtype=np.uint8))
    """uint8 [cameras, H, W, 3]: the exact frames the policy saw (the packager stores them for SFT).
    Empty when the policy node's `transition_images` parameter is off."""
    cameras: str = ""
    """Comma-separated camera names, in the order of `images`."""

    def validate(self) -> None:
        if self.features.ndim != 2 or self.features.size == 0:
            raise PayloadError(f"features must be a non-empty [tokens, dim] array, got {self.features.shape}")
        if self.action.shape != (ACTION_DIM,):
            raise PayloadError(f"action must have shape ({ACTION_DIM},), got {self.action.shape}")
        for name in ("features", "action", "proprio"):
            if not np.isfinite(getattr(self, name).astype(np.float32)).all():
                raise PayloadError(f"transition {name} contains NaN/inf")
        if not np.isfinite([self.log_prob, self.reward]).all():
            raise PayloadError("transition log_prob/reward is NaN/inf")
        if self.images.size and (self.images.ndim != 4 or self.images.shape[-1] != 3):
            raise PayloadError(f"images must be uint8 [cameras, H, W, 3], got {self.images.shape}")
        if self.step < 0:
            raise PayloadError(f"step must be >= 0, got {self.step}")

    def to_bytes(self) -> bytes:
        self.validate()
        meta = {k: v for k, v in asdict(self).items() if k not in _TENSOR_FIELDS}
        return encode("transition", {
            "features": self.features.astype(np.float16),
            "action": self.action.astype(np.float32),
            "proprio": self.proprio.astype(np.float32),
            "images": self.images.astype(np.uint8),
        }, meta)

    @classmethod
    def from_bytes(cls, payload: bytes) -> Transition:
        tensors, meta = decode(payload, "transition")
        meta.pop("kind")
        missing = set(_TENSOR_FIELDS) - set(tensors)
        if missing:
            raise PayloadError(f"transition lacks tensors {sorted(missing)}")
        try:
            t = cls(**{k: tensors[k] for k in _TENSOR_FIELDS}, **meta)
        except TypeError as exc:
            raise PayloadError(f"transition metadata does not match the schema: {exc}") from exc
        t.validate()
        return t
