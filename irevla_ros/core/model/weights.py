"""Head-weight payloads (RL learner -> policy) on interfaces.HEAD_WEIGHTS.

Payload = codec.encode("head_weights", tensors, meta) with meta {"version": str, "sha256": tensors_sha256(tensors),
"head": HeadConfig as dict}. The checksum covers tensor names, dtypes, shapes and bytes, so a payload whose
tensors were altered after signing-off by the learner (bit flips, truncation, a wrong model) is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import torch

from irevla_ros.core.data.codec import PayloadError, decode, encode
from irevla_ros.core.model.head import HeadConfig

HEAD_WEIGHTS_KIND = "head_weights"


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def encode_head_weights(state_dict: Mapping[str, torch.Tensor], version: str | int,
                        head_config: HeadConfig | None = None) -> bytes:
    """Payload bytes for a head state dict (tensors stored as float32)."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in state_dict.items()}
    meta: dict[str, object] = {"version": str(version), "sha256": tensors_sha256(tensors)}
    if head_config is not None:
        meta["head"] = asdict(head_config)
    return encode(HEAD_WEIGHTS_KIND, tensors, meta)


def decode_head_weights(payload: bytes | bytearray | memoryview,
                        expected: HeadConfig | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, version) or PayloadError naming what is wrong (corrupt, checksum, config, NaN/inf).
    Shapes are checked against the receiving head by VLAModel.check_head_state_dict."""
    tensors, meta = decode(payload, HEAD_WEIGHTS_KIND)
    version = meta.get("version")
    if not isinstance(version, str) or not version:
        raise PayloadError(f"head weights without a version string: {version!r}")
    digest = meta.get("sha256")
    actual = tensors_sha256(tensors)
    if digest != actual:
        raise PayloadError(f"head weights v{version}: checksum mismatch (payload says {str(digest)[:12]}..., "
                           f"tensors hash to {actual[:12]}...)")
    if expected is not None and "head" in meta and meta["head"] != asdict(expected):
        raise PayloadError(f"head weights v{version} are for head config {meta['head']}, this policy has "
                           f"{asdict(expected)}")
    state = {}
    for name, arr in tensors.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise PayloadError(f"head weights v{version}: tensor {name} has dtype {arr.dtype}, expected float")
        if not np.isfinite(arr).all():
            raise PayloadError(f"head weights v{version}: tensor {name} contains NaN/inf")
        state[name] = torch.from_numpy(arr.astype(np.float32, copy=True))
    return state, version
