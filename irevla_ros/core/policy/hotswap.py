"""Hot reload of policy weights: verify off the control thread, swap between ticks, keep the previous for rollback.

Two sources:
- head weights from the RL learner (a codec payload, see core/model/weights.py): decoded, checksummed,
  shape-checked and loaded into a NEW ActionHead (never the one the tick is using);
- a full model folder from SFT (FULL_WEIGHTS_READY: path, version, sha256 of the manifest): the announced digest
  is checked, then every file's sha256, then the model is loaded and must produce the same feature shape and head
  config as the running one (the learner's networks are sized from them).

`stage_*` run in a worker thread and only set `pending`. A head update never supersedes a pending full update,
and a head whose payload names a `base_version` other than the running (or pending) full model's is refused.
`apply_pending()` (first thing in a tick) is a reference
swap under a lock, so a reload never blocks or delays a tick. `rollback()` restores the previous slot, e.g. when
the new weights produce non-finite actions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from irevla_ros.core.data.codec import PayloadError
from irevla_ros.core.model.head import ActionHead
from irevla_ros.core.model.vla import ModelFolderError, VLAModel, folder_sha256
from irevla_ros.core.model.weights import decode_head_weights


class WeightsRejected(ValueError):
    """An update that failed verification; the running weights are untouched."""


@dataclass(frozen=True)
class Slot:
    model: VLAModel
    head: ActionHead
    version: str
    source: str  # "initial" | "head" | "full"
    base_version: str = ""
    """Version of the full model (backbone) this slot runs on."""


class WeightSlots:
    def __init__(self, model: VLAModel, version: str):
        self._lock = threading.Lock()
        self._current = Slot(model, model.head.eval(), str(version), "initial", str(version))
        self._base_version = str(version)  # version of the full model (backbone) running or pending
        self._previous: Slot | None = None
        self._pending: Slot | None = None
        self.swap_durations_s: list[float] = []

    @property
    def current(self) -> Slot:
        with self._lock:
            return self._current

    @property
    def version(self) -> str:
        return self.current.version

    @property
    def has_pending(self) -> bool:
        with self._lock:
            return self._pending is not None

    # --- worker thread ---
    def stage_head_payload(self, payload: bytes) -> str:
        """Verify a head-weights payload and stage it; returns its version or raises WeightsRejected."""
        base = self.current
        try:
            state, version, meta = decode_head_weights(payload, base.model.config.head, with_meta=True)
            head = base.model.make_head(state)
        except (PayloadError, ModelFolderError) as exc:
            raise WeightsRejected(f"head weights rejected: {exc}") from exc
        if base.source == "head" and version == base.version and \
                str(meta.get("base_version", base.base_version)) == base.base_version:
            # Only a repeat of the running head: full weights "1" and the first RL head on them, also "1", differ.
            raise WeightsRejected(f"head weights v{version} are already running")
        with self._lock:
            pending_full = self._pending is not None and self._pending.source == "full"
            base_version = self._base_version
        if pending_full:
            raise WeightsRejected(f"head weights v{version} dropped: full weights v{self._pending.version} are "
                                  "about to be applied (a head trained on the old backbone must not replace them)")
        if "base_version" in meta and str(meta["base_version"]) != base_version:
            raise WeightsRejected(f"head weights v{version} were trained on model v{meta['base_version']}, the "
                                  f"policy runs model v{base_version}")
        self._stage(Slot(base.model, head, version, "head", base.base_version))
        return version

    def stage_full(self, path: str | Path, version: str, sha256: str, *, device: str = "cpu", dtype=None) -> str:
        """Verify and load a full model folder announced by SFT; stage it. Raises WeightsRejected."""
        base = self.current
        try:
            digest = folder_sha256(path)
            if digest != sha256:
                raise WeightsRejected(f"model folder {path}: sha256 {digest[:12]}... does not match the announced "
                                      f"{str(sha256)[:12]}...")
            model = VLAModel.from_pretrained(path, device=device, dtype=dtype, verify=True)
        except ModelFolderError as exc:
            raise WeightsRejected(f"model folder rejected: {exc}") from exc
        if model.feature_shape != base.model.feature_shape or model.config.head != base.model.config.head:
            raise WeightsRejected(f"model folder {path}: features {model.feature_shape} / head {model.config.head} "
                                  f"differ from the running {base.model.feature_shape} / {base.model.config.head}")
        if model.config.num_cameras != base.model.config.num_cameras:
            raise WeightsRejected(f"model folder {path}: {model.config.num_cameras} camera(s), running model has "
                                  f"{base.model.config.num_cameras}")
        model.eval()
        model.use_cuda_graphs(base.model.cuda_graphs_enabled)
        self._stage(Slot(model, model.head, str(version), "full", str(version)))
        with self._lock:
            self._base_version = str(version)
        return str(version)

    def _stage(self, slot: Slot) -> None:
        with self._lock:
            self._pending = slot  # a newer update supersedes an older one not yet applied

    # --- control thread ---
    def apply_pending(self) -> Slot | None:
        """Swap in the staged update (if any). Cheap: reference assignment under a lock."""
        t0 = time.perf_counter()
        with self._lock:
            if self._pending is None:
                return None
            self._previous, self._current, self._pending = self._current, self._pending, None
            slot = self._current
        self.swap_durations_s.append(time.perf_counter() - t0)
        return slot

    def rollback(self) -> Slot | None:
        """Back to the previous slot (returns it), or None if there is none."""
        with self._lock:
            if self._previous is None:
                return None
            self._current, self._previous = self._previous, None
            self._base_version = self._current.base_version
            return self._current
