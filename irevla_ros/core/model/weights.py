"""Head-weight payloads (RL learner -> policy) on interfaces.HEAD_WEIGHTS.

Payload = codec.encode("head_weights", tensors, meta) with meta {"version": int >= 0, "sha256":
tensors_sha256(tensors), "head_config": HeadConfig as dict, ...}: the same wire format as the RL learner's
core/rl/weights.py (the producer); extra meta keys (updates, algorithm, run_id) are ignored here. The checksum
covers tensor names, dtypes, shapes and bytes, so altered tensors (bit flips, truncation, a wrong model) are refused.
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
        h.update(name.encode() + b"\0" + arr.dtype.str.encode() + b"\0" + str(arr.shape).encode() + b"\0")
        h.update(arr.tobytes())
    return h.hexdigest()


def encode_head_weights(state_dict: Mapping[str, torch.Tensor], version: int,
                        head_config: HeadConfig | None = None, *, base_version: str | None = None) -> bytes:
    """Payload bytes for a head state dict (tensors stored as float32)."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in state_dict.items()}
    meta: dict[str, object] = {"version": int(version), "sha256": tensors_sha256(tensors)}
    if head_config is not None:
        meta["head_config"] = asdict(head_config)
    if base_version is not None:
        meta["base_version"] = str(base_version)
    return encode(HEAD_WEIGHTS_KIND, tensors, meta)


def decode_head_weights(payload: bytes | bytearray | memoryview, expected: HeadConfig | None = None, *,
                        with_meta: bool = False):
    """(state dict, version) — or (state dict, version, meta) with `with_meta` — or PayloadError naming what is
    wrong (corrupt, checksum, config, NaN/inf). Shapes are checked against the receiving head by
    VLAModel.check_head_state_dict. Optional meta "base_version": the policy version of the full model whose
    features the head was trained on (the policy refuses heads made for another base)."""
    tensors, meta = decode(payload, HEAD_WEIGHTS_KIND)
    raw = meta.get("version")
    if isinstance(raw, bool) or not isinstance(raw, (int, str)) or raw == "" or (isinstance(raw, int) and raw < 0):
        raise PayloadError(f"head weights need a version (int >= 0), got {raw!r}")
    version = str(raw)
    digest = meta.get("sha256")
    actual = tensors_sha256(tensors)
    if digest != actual:
        raise PayloadError(f"head weights v{version}: checksum mismatch (payload says {str(digest)[:12]}..., "
                           f"tensors hash to {actual[:12]}...)")
    if expected is not None and "head_config" in meta and not expected.matches(meta["head_config"]):
        raise PayloadError(f"head weights v{version} are for head config {meta['head_config']}, this policy has "
                           f"{asdict(expected)}")
    state = {}
    for name, arr in tensors.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise PayloadError(f"head weights v{version}: tensor {name} has dtype {arr.dtype}, expected float")
        if not np.isfinite(arr).all():
            raise PayloadError(f"head weights v{version}: tensor {name} contains NaN/inf")
        state[name] = torch.from_numpy(arr.astype(np.float32, copy=True))
    return (state, version, meta) if with_meta else (state, version)
