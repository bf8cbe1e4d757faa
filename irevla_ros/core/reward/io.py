"""The versioned classifier file: safetensors tensors + JSON metadata (spec, sha256), and a hot-reload watcher.

The sha256 covers the metadata spec AND every tensor (name, dtype, shape, bytes, in sorted order), so a flipped
weight, a hand-edited threshold or a truncated copy is refused. Files are written atomically (temp file + rename)
so a reader never sees half a classifier; a reader that does (a copy in progress over sftp) refuses it and keeps
the classifier it had.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from irevla_ros.core.data.episodes import atomic_write
from irevla_ros.core.reward.model import ClassifierSpec, RewardClassifier, efficientnet_weights_sha256

META_KEY = "irevla_reward_classifier"
MAX_FILE_BYTES = 512 * 1024 * 1024


class ClassifierFileError(ValueError):
    """A classifier file that cannot be trusted or used; the message says why."""


def content_sha256(spec_dict: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(spec_dict, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def classifier_to_bytes(classifier: RewardClassifier) -> bytes:
    spec = classifier.spec
    if spec.arch == "efficientnet_lite0":
        spec.encoder_sha256 = efficientnet_weights_sha256()
    tensors = classifier.trainable_state_dict()
    spec_dict = spec.to_dict()
    meta = {"spec": spec_dict, "sha256": content_sha256(spec_dict, tensors)}
    return st_save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})


def save_classifier(classifier: RewardClassifier, path: str | Path) -> str:
    """Write atomically; returns the content sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = classifier_to_bytes(classifier)
    atomic_write(path, data)
    return json.loads(_read_header(data)[META_KEY])["sha256"]


def _read_header(data: bytes) -> dict:
    if len(data) < 8:
        raise ClassifierFileError(f"file too short ({len(data)} bytes) to be a safetensors classifier")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ClassifierFileError(f"safetensors header length {n} does not fit the {len(data)}-byte file "
                                  f"(truncated or not a classifier file)")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as exc:
        raise ClassifierFileError(f"safetensors header is not valid JSON: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise ClassifierFileError(f"not a reward classifier file (no {META_KEY!r} metadata)")
    return meta


def classifier_from_bytes(data: bytes, source: str = "<bytes>") -> RewardClassifier:
    """Parse, verify (sha256, spec, shapes, finiteness, encoder weights) and build the classifier."""
    try:
        meta = json.loads(_read_header(data)[META_KEY])
        spec_dict, recorded = meta["spec"], meta["sha256"]
    except ClassifierFileError as exc:
        raise ClassifierFileError(f"{source}: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ClassifierFileError(f"{source}: classifier metadata is malformed: {exc!r}") from exc
    try:
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is "corrupt"
        raise ClassifierFileError(f"{source}: corrupt safetensors data: {exc}") from exc
    actual = content_sha256(spec_dict, tensors)
    if actual != recorded:
        raise ClassifierFileError(f"{source}: sha256 mismatch (recorded {recorded[:12]}…, content {actual[:12]}…): "
                                  f"the file was modified or corrupted")
    try:
        spec = ClassifierSpec(**{**spec_dict, "cameras": tuple(spec_dict["cameras"]),
                                 "frame_size": tuple(spec_dict["frame_size"])})
    except (TypeError, ValueError, KeyError) as exc:
        raise ClassifierFileError(f"{source}: invalid classifier spec: {exc}") from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ClassifierFileError(f"{source}: tensor {name} contains NaN/inf")
    if spec.arch == "efficientnet_lite0" and spec.encoder_sha256 != efficientnet_weights_sha256():
        raise ClassifierFileError(f"{source}: the head was trained on different EfficientNet-lite0 weights "
                                  f"(sha256 {spec.encoder_sha256[:12]}… vs installed "
                                  f"{efficientnet_weights_sha256()[:12]}…)")
    classifier = RewardClassifier(spec)
    try:
        classifier.load_trainable_state_dict(tensors)
    except ValueError as exc:
        raise ClassifierFileError(f"{source}: {exc}") from exc
    classifier.eval()
    return classifier


def load_classifier(path: str | Path) -> RewardClassifier:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ClassifierFileError(f"{path}: {size} bytes is larger than any classifier ({MAX_FILE_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise ClassifierFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return classifier_from_bytes(data, str(path))


def file_sha256(classifier_bytes: bytes) -> str:
    return json.loads(_read_header(classifier_bytes)[META_KEY])["sha256"]


@dataclass
class ReloadEvent:
    loaded: bool
    message: str


class ClassifierWatcher:
    """Holds the active classifier and swaps in a new file only after it verified; a bad file keeps the old one.

    ``poll()`` is cheap (one stat) and reloads when the file's (mtime, size, inode) changes; ``reload()`` forces it.
    A rejected file is not retried until it changes again.
    """

    def __init__(self, path: str | Path, check: Callable[[RewardClassifier], None] | None = None):
        self.path = Path(path)
        self.check = check
        """Extra acceptance test (e.g. "its cameras are subscribed"); raises ClassifierFileError to refuse."""
        self.classifier: RewardClassifier | None = None
        self.sha256 = ""
        self._signature: tuple | None = None

    def _stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> ReloadEvent | None:
        sig = self._stat()
        if sig is None or sig == self._signature:
            return None
        return self.reload()

    def reload(self) -> ReloadEvent:
        sig = self._stat()
        self._signature = sig
        keeping = (f"keeping classifier {self.classifier.spec.version} ({self.sha256[:12]}…)"
                   if self.classifier is not None else "no classifier active")
        if sig is None:
            return ReloadEvent(False, f"{self.path} does not exist; {keeping}")
        try:
            data = self.path.read_bytes()
            classifier = classifier_from_bytes(data, str(self.path))
            if self.check is not None:
                self.check(classifier)
        except OSError as exc:
            return ReloadEvent(False, f"{self.path}: cannot read ({exc}); {keeping}")
        except ClassifierFileError as exc:
            return ReloadEvent(False, f"refused: {exc}; {keeping}")
        self.classifier, self.sha256 = classifier, file_sha256(data)
        spec = classifier.spec
        return ReloadEvent(True, f"loaded classifier {spec.version} ({spec.arch}, cameras {list(spec.cameras)}, "
                                 f"threshold {spec.threshold:.3f}, sha256 {self.sha256[:12]}…) from {self.path}")
