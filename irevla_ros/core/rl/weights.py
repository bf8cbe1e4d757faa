"""The head-weights message (learner -> policy): a codec "head_weights" payload with a content digest.

Tensors: the ActionHead's state dict, float32, keys exactly as `ActionHead.state_dict()`.
Meta: {"version": int >= 1 (monotonic per run), "sha256": `state_dict_sha256(tensors)`,
       "head_config": asdict(HeadConfig), "updates": int, "algorithm": "sac"|"ppo", "run_id": str,
       "base_version": str (only when known: the model version whose features trained this head)}.
A receiver checks the digest and the head config before loading (`decode_head_weights` does both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import torch

from irevla_ros.core.data.codec import PayloadError, decode, encode
from irevla_ros.core.model.head import HeadConfig
from irevla_ros.core.model.weights import HEAD_WEIGHTS_KIND, tensors_sha256

KIND = HEAD_WEIGHTS_KIND
# One digest for the wire format, shared with the policy's decoder (core/model/weights.py).
state_dict_sha256 = tensors_sha256


def head_state_to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in module.state_dict().items()}


def encode_head_weights(tensors: Mapping[str, np.ndarray], *, version: int, head_config: HeadConfig,
                        updates: int = 0, algorithm: str = "", run_id: str = "",
                        base_version: str | None = None) -> bytes:
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    meta = {"version": int(version), "sha256": state_dict_sha256(tensors), "head_config": asdict(head_config),
            "updates": int(updates), "algorithm": algorithm, "run_id": run_id}
    if base_version is not None:
        meta["base_version"] = str(base_version)
    return encode(KIND, tensors, meta)


def decode_head_weights(payload: bytes, expected: HeadConfig | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Parse and verify: digest matches, values finite, head config equal to `expected` (when given)."""
    tensors, meta = decode(payload, KIND)
    if state_dict_sha256(tensors) != meta.get("sha256"):
        raise PayloadError("head weights sha256 does not match their content (corrupt or tampered)")
    if not isinstance(meta.get("version"), int) or meta["version"] < 0:
        raise PayloadError(f"head weights version must be an int >= 0, got {meta.get('version')!r}")
    for name, value in tensors.items():
        if not np.isfinite(value).all():
            raise PayloadError(f"head weights tensor {name} contains NaN/inf")
    if expected is not None and not expected.matches(meta.get("head_config")):
        raise PayloadError(f"head weights were made for head {meta.get('head_config')}, expected {asdict(expected)}")
    return tensors, meta


def load_head_file(path: str, head: torch.nn.Module) -> dict:
    """Load initial head weights from a head_weights payload file or a plain safetensors state dict."""
    from safetensors.numpy import load as st_load

    with open(path, "rb") as f:
        data = f.read()
    try:
        decode(data, KIND)
        is_payload = True
    except PayloadError:
        is_payload = False
    if is_payload:  # a head_weights payload must verify; never fall back to reading it unverified
        tensors, meta = decode_head_weights(data)
    else:
        try:
            tensors, meta = st_load(data), {}
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise ValueError(f"init_head {path}: neither a head_weights payload nor a safetensors file: {exc}") from exc
        if not all(np.isfinite(np.asarray(v, dtype=np.float32)).all() for v in tensors.values()):
            raise ValueError(f"init_head {path} contains NaN/inf")
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"init_head {path} does not fit the configured head: {exc}") from exc
    return meta
