"""Durable episode store: the dataset format every recorder writes and every trainer reads.

Layout (LeRobotDataset v2.1-style, so LeRobot, HF `datasets`, pandas, DuckDB and Polars read it directly):

    ROOT/
      meta/info.json            format version, fps, features (dtype/shape per column), path templates
      meta/episodes.jsonl       the manifest: one JSON line per episode (LeRobot keys + sha256, source, success...)
      meta/tasks.jsonl          {"task_index", "task"}: the language instructions
      data/chunk-000/episode_000000.parquet     one parquet file per finished episode, one row per step
      partial/<episode_id>/     the journal of an episode being recorded (meta.json + steps.bin + lock)

Images are stored compressed (PNG by default, JPEG optional) inside the parquet rows as the HF `Image` struct
{bytes, path}, so one file holds one episode: a single atomic rename publishes it. See docs/stage2.md.

Durability: each step is appended to the episode's journal (flushed to the OS at once, so a killed process
loses nothing it was given; fsync per step is optional for power loss). `finish()` writes the parquet file to a
temporary name, fsyncs it, renames it into place, fsyncs the folder and only then appends the manifest line
(with the file's sha256). Readers list only manifest entries, so a half-written episode is never read. An
episode whose writer died (journal left behind, its lock free) is turned by `recover()` into an *incomplete*
episode: the steps the journal holds, flagged `status: "incomplete"`, skipped by default.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import struct
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from irevla_ros.core.data.codec import PayloadError, decode, encode
from irevla_ros.interfaces import ACTION_DIM

FORMAT_VERSION = "v2.1"
"""LeRobotDataset codebase version whose layout we follow (info.json, episodes.jsonl, chunked parquet)."""
IREVLA_FORMAT = "irevla-episodes/1"
SOURCES = ("expert", "online", "teleop")
STATUS_COMPLETE = "complete"
STATUS_INCOMPLETE = "incomplete"
CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_FORMATS = ("png", "jpg")

# Column names (LeRobot conventions).
COL_STATE = "observation.state"
COL_FEATURES = "observation.features"
COL_ACTION = "action"
COL_REWARD = "next.reward"
COL_SUCCESS = "next.success"
COL_DONE = "next.done"
COL_INTERVENTION = "intervention"
COL_TIMESTAMP = "timestamp"
COL_FRAME = "frame_index"
COL_EPISODE = "episode_index"
COL_INDEX = "index"
COL_TASK = "task_index"
IMAGE_PREFIX = "observation.images."

_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_RECORD_HEADER = struct.Struct("<QI")  # payload length, crc32


class EpisodeError(ValueError):
    """A step, episode or file that cannot be trusted: bad values, tampered or truncated data."""


# --- Small file-system helpers (POSIX durability). ----------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) for manifest updates shared by several writer processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --- Images. ---------------------------------------------------------------------------------------------------
def encode_image(rgb: np.ndarray, fmt: str = "png", jpeg_quality: int = 95) -> bytes:
    """uint8 [H, W, 3] RGB -> PNG/JPEG bytes (standard files: any image library decodes them as RGB)."""
    import cv2

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise EpisodeError(f"an image must be uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}")
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise EpisodeError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    if not ok:
        raise EpisodeError(f"could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EpisodeError(f"cannot decode an image ({len(data)} bytes)")
    return np.ascontiguousarray(bgr[..., ::-1])


# --- Metadata. -------------------------------------------------------------------------------------------------
@dataclass
class EpisodeMeta:
    """What is known when an episode starts."""

    task: str
    """The language instruction."""
    source: str = "online"
    """expert (scripted/sim demos) | online (the policy acting, stage 1) | teleop (human demos)."""
    policy_version: str = ""
    cameras: tuple[str, ...] = ()
    fps: float = 10.0
    episode_id: str = ""
    """Unique id (e.g. the policy node's); a fresh uuid when empty."""
    extra: dict = field(default_factory=dict)
    """JSON-serialisable extras (seed, scene, operator ...), kept in the manifest."""

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.episode_id:
            self.episode_id = uuid.uuid4().hex
        if not isinstance(self.task, str):
            raise EpisodeError(f"task must be a string, got {type(self.task).__name__}")
        if self.source not in SOURCES:
            raise EpisodeError(f"source must be one of {SOURCES}, got {self.source!r}")
        if not _ID_RE.match(self.episode_id):
            raise EpisodeError(f"episode_id must match {_ID_RE.pattern}, got {self.episode_id!r}")
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise EpisodeError(f"fps must be > 0, got {self.fps!r}")
        for cam in self.cameras:
            if not _ID_RE.match(cam):
                raise EpisodeError(f"camera names must match {_ID_RE.pattern}, got {cam!r}")
        if len(set(self.cameras)) != len(self.cameras):
            raise EpisodeError(f"camera names repeat: {self.cameras}")
        json.dumps(self.extra)


@dataclass
class EpisodeInfo:
    """One manifest line: a finished (or cut) episode."""

    episode_index: int
    episode_id: str
    tasks: list[str]
    length: int
    source: str
    success: bool
    policy_version: str
    status: str
    file: str
    sha256: str
    size: int
    cameras: list[str]
    fps: float
    first_index: int
    created: float
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.tasks[0] if self.tasks else ""

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @classmethod
    def from_json(cls, d: Mapping) -> EpisodeInfo:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Episode:
    """A loaded episode: arrays per step (images decoded on demand)."""

    info: EpisodeInfo
    state: np.ndarray  # float32 [N, S]
    action: np.ndarray  # float32 [N, 7]
    reward: np.ndarray  # float32 [N]
    success: np.ndarray  # bool [N]
    done: np.ndarray  # bool [N]
    intervention: np.ndarray  # bool [N]
    timestamp: np.ndarray  # float32 [N]
    images: dict[str, list[bytes]]
    """Compressed frames per camera (decode with `frames(cam)` or `decode_image`)."""
    features: np.ndarray | None = None  # float32 [N, T, D] when recorded

    def __len__(self) -> int:
        return len(self.action)

    def frames(self, camera: str) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB frames of one camera."""
        if camera not in self.images:
            raise KeyError(f"episode {self.info.episode_id} has no camera {camera!r}; has {sorted(self.images)}")
        return np.stack([decode_image(b) for b in self.images[camera]])

    def frame(self, camera: str, step: int) -> np.ndarray:
        return decode_image(self.images[camera][step])


# --- Steps and the journal. ---------------------------------------------------------------------------------
def _as_finite(values, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    if shape is not None and arr.shape != shape:
        raise EpisodeError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise EpisodeError(f"{name} contains NaN/inf")
    return arr


def _encode_record(step: dict) -> bytes:
    tensors = {"state": step["state"], "action": step["action"]}
    if step["features"] is not None:
        tensors["features"] = step["features"]
    for cam, data in step["images"].items():
        tensors[f"img.{cam}"] = np.frombuffer(data, dtype=np.uint8)
    meta = {k: step[k] for k in ("reward", "success", "done", "intervention", "timestamp")}
    payload = encode("episode_step", tensors, meta)
    return _RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_records(data: bytes) -> list[dict]:
    """Steps of a journal; stops at the first truncated or corrupt record (the crash point)."""
    steps, pos = [], 0
    while pos + _RECORD_HEADER.size <= len(data):
        length, crc = _RECORD_HEADER.unpack_from(data, pos)
        payload = data[pos + _RECORD_HEADER.size: pos + _RECORD_HEADER.size + length]
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            tensors, meta = decode(payload, "episode_step")
        except PayloadError:
            break
        steps.append({
            "state": tensors["state"], "action": tensors["action"], "features": tensors.get("features"),
            "images": {k[4:]: v.tobytes() for k, v in tensors.items() if k.startswith("img.")},
            **{k: meta[k] for k in ("reward", "success", "done", "intervention", "timestamp")},
        })
        pos += _RECORD_HEADER.size + length
    return steps


class EpisodeRecording:
    """One episode being recorded. Obtain from `EpisodeWriter.begin`; call `add_step` then `finish`."""

    def __init__(self, writer: EpisodeWriter, meta: EpisodeMeta):
        self.writer = writer
        self.meta = meta
        self.steps: list[dict] = []
        self.closed = False
        self.dir = writer.root / "partial" / meta.episode_id
        if self.dir.exists() or writer.store.find(meta.episode_id) is not None:
            raise EpisodeError(f"episode {meta.episode_id!r} already exists in {writer.root}")
        self.dir.mkdir(parents=True)
        self._lock = open(self.dir / "lock", "w")  # noqa: SIM115 - held for the recording's lifetime
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        atomic_write(self.dir / "meta.json", json.dumps({**asdict(meta), "started": time.time()}).encode())
        self._journal = open(self.dir / "steps.bin", "ab")  # noqa: SIM115 - closed in finish/abort
        self._state_dim: int | None = None
        self._feature_shape: tuple[int, ...] | None = None
        self._t0 = time.monotonic()

    @property
    def episode_id(self) -> str:
        return self.meta.episode_id

    def __len__(self) -> int:
        return len(self.steps)

    def add_step(self, *, action, state=(), images: Mapping[str, np.ndarray] | None = None, reward: float = 0.0,
                 success: bool = False, done: bool = False, intervention: bool = False, features=None,
                 timestamp: float | None = None, encoded_images: Mapping[str, bytes] | None = None) -> int:
        """Validate and journal one step. `images` are uint8 RGB [H, W, 3] per camera (compressed here);
        `encoded_images` are already PNG/JPEG bytes. Returns the step's index. Raises EpisodeError, keeping
        nothing of a bad step."""
        if self.closed:
            raise EpisodeError(f"episode {self.episode_id} is already closed")
        action = _as_finite(action, "action", (ACTION_DIM,))
        state = _as_finite(state, "state").ravel()
        if self._state_dim is not None and state.shape[0] != self._state_dim:
            raise EpisodeError(f"state size changed within the episode: {state.shape[0]} != {self._state_dim}")
        feats = None
        if features is not None:
            feats = _as_finite(features, "features")
            if feats.ndim != 2 or feats.size == 0:
                raise EpisodeError(f"features must be [tokens, dim], got {feats.shape}")
            if self._feature_shape is not None and feats.shape != self._feature_shape:
                raise EpisodeError(f"features shape changed: {feats.shape} != {self._feature_shape}")
        reward = float(reward)
        if not np.isfinite(reward):
            raise EpisodeError("reward is NaN/inf")
        given = dict(encoded_images or {})
        for cam, img in (images or {}).items():
            given[cam] = encode_image(np.asarray(img), self.writer.image_format, self.writer.jpeg_quality)
        if set(given) != set(self.meta.cameras):
            raise EpisodeError(f"step images {sorted(given)} do not match the episode's cameras "
                               f"{sorted(self.meta.cameras)}")
        ts = float(timestamp) if timestamp is not None else len(self.steps) / self.meta.fps
        if not np.isfinite(ts):
            raise EpisodeError("timestamp is NaN/inf")
        step = {"state": state, "action": action, "features": feats, "images": given, "reward": reward,
                "success": bool(success), "done": bool(done), "intervention": bool(intervention), "timestamp": ts}
        self._journal.write(_encode_record(step))
        self._journal.flush()
        if self.writer.fsync_steps:
            os.fsync(self._journal.fileno())
        self._state_dim = state.shape[0]
        if feats is not None:
            self._feature_shape = feats.shape
        self.steps.append(step)
        return len(self.steps) - 1

    def finish(self, success: bool, extra: Mapping | None = None) -> EpisodeInfo:
        """Publish the episode atomically (parquet + manifest line with sha256) and remove its journal."""
        if self.closed:
            raise EpisodeError(f"episode {self.episode_id} is already closed")
        if not self.steps:
            raise EpisodeError(f"episode {self.episode_id} has no steps; call abort() to drop it")
        if extra:
            self.meta.extra.update(extra)
        info = self.writer._publish(self.meta, self.steps, bool(success), STATUS_COMPLETE)
        self._close(remove=True)
        return info

    def abort(self, keep: bool = True, reason: str = "") -> EpisodeInfo | None:
        """End without success: keep the steps as an *incomplete* episode (default) or drop them."""
        if self.closed:
            return None
        info = None
        if keep and self.steps:
            if reason:
                self.meta.extra["abort_reason"] = reason
            info = self.writer._publish(self.meta, self.steps, False, STATUS_INCOMPLETE)
        self._close(remove=True)
        return info

    def _close(self, remove: bool) -> None:
        self.closed = True
        self._journal.close()
        fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- Parquet. --------------------------------------------------------------------------------------------------
def _steps_to_table(meta: EpisodeMeta, steps: Sequence[dict], episode_index: int, first_index: int,
                    task_index: int):
    import pyarrow as pa

    n = len(steps)
    state_dim = len(steps[0]["state"])
    cols: dict[str, pa.Array] = {}
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    ext = "png" if meta.extra.get("image_format", "png") == "png" else "jpg"
    for cam in meta.cameras:
        cols[IMAGE_PREFIX + cam] = pa.array(
            [{"bytes": s["images"][cam], "path": f"{meta.episode_id}_{cam}_{i:06d}.{ext}"}
             for i, s in enumerate(steps)], type=img_type)
    if state_dim:  # fixed-size lists need a positive size; no state -> no column
        cols[COL_STATE] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate([s["state"] for s in steps]), pa.float32()), state_dim)
    cols[COL_ACTION] = pa.FixedSizeListArray.from_arrays(
        pa.array(np.concatenate([s["action"] for s in steps]), pa.float32()), ACTION_DIM)
    if all(s["features"] is not None for s in steps):
        t, d = steps[0]["features"].shape
        flat = pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate([s["features"].ravel() for s in steps]), pa.float32()), d)
        cols[COL_FEATURES] = pa.FixedSizeListArray.from_arrays(flat, t)
    cols[COL_REWARD] = pa.array([s["reward"] for s in steps], pa.float32())
    cols[COL_SUCCESS] = pa.array([s["success"] for s in steps], pa.bool_())
    cols[COL_DONE] = pa.array([s["done"] for s in steps], pa.bool_())
    cols[COL_INTERVENTION] = pa.array([s["intervention"] for s in steps], pa.bool_())
    cols[COL_TIMESTAMP] = pa.array([s["timestamp"] for s in steps], pa.float32())
    cols[COL_FRAME] = pa.array(np.arange(n), pa.int64())
    cols[COL_EPISODE] = pa.array(np.full(n, episode_index), pa.int64())
    cols[COL_INDEX] = pa.array(np.arange(first_index, first_index + n), pa.int64())
    cols[COL_TASK] = pa.array(np.full(n, task_index), pa.int64())
    hf_features = {IMAGE_PREFIX + cam: {"_type": "Image"} for cam in meta.cameras}
    metadata = {
        "huggingface": json.dumps({"info": {"features": hf_features}}),
        "irevla": json.dumps({"format": IREVLA_FORMAT, "episode_id": meta.episode_id, "task": meta.task,
                              "source": meta.source, "policy_version": meta.policy_version}),
    }
    return pa.table(cols).replace_schema_metadata(metadata)


def _features_spec(meta: EpisodeMeta, steps: Sequence[dict]) -> dict:
    spec = {IMAGE_PREFIX + cam: {"dtype": "image", "shape": list(decode_image(steps[0]["images"][cam]).shape),
                                  "names": ["height", "width", "channel"]} for cam in meta.cameras}
    if len(steps[0]["state"]):
        spec[COL_STATE] = {"dtype": "float32", "shape": [len(steps[0]["state"])], "names": None}
    spec.update({
        COL_ACTION: {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
        COL_REWARD: {"dtype": "float32", "shape": [1], "names": None},
        COL_SUCCESS: {"dtype": "bool", "shape": [1], "names": None},
        COL_DONE: {"dtype": "bool", "shape": [1], "names": None},
        COL_INTERVENTION: {"dtype": "bool", "shape": [1], "names": None},
        COL_TIMESTAMP: {"dtype": "float32", "shape": [1], "names": None},
        COL_FRAME: {"dtype": "int64", "shape": [1], "names": None},
        COL_EPISODE: {"dtype": "int64", "shape": [1], "names": None},
        COL_INDEX: {"dtype": "int64", "shape": [1], "names": None},
        COL_TASK: {"dtype": "int64", "shape": [1], "names": None},
    })
    if steps[0]["features"] is not None:
        spec[COL_FEATURES] = {"dtype": "float32", "shape": list(steps[0]["features"].shape), "names": None}
    return spec


# --- Store (reader) and writer. ------------------------------------------------------------------------------
class EpisodeStore:
    """Reads a dataset root: the manifest, filters, verified episode loads. Never modifies files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "meta" / "episodes.jsonl"

    def infos(self) -> list[EpisodeInfo]:
        """Every manifest entry (complete and incomplete), in episode_index order; a torn last line (crash
        while appending) is ignored."""
        if not self.manifest_path.exists():
            return []
        by_id: dict[str, EpisodeInfo] = {}
        lines = self.manifest_path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                info = EpisodeInfo.from_json(json.loads(line))
            except (ValueError, TypeError) as exc:
                if i == len(lines) - 1:
                    continue  # torn final append
                raise EpisodeError(f"{self.manifest_path}: line {i + 1} is corrupt: {exc}") from exc
            by_id[info.episode_id] = info
        return sorted(by_id.values(), key=lambda e: e.episode_index)

    def find(self, episode_id: str) -> EpisodeInfo | None:
        for info in self.infos():
            if info.episode_id == episode_id:
                return info
        return None

    def episodes(self, *, source: str | Sequence[str] | None = None, success: bool | None = None,
                 task: str | None = None, since: float | None = None, last: int | None = None,
                 include_incomplete: bool = False) -> list[EpisodeInfo]:
        """Filter the manifest. `since`: created at/after this UNIX time; `last`: only the newest N matches."""
        sources = (source,) if isinstance(source, str) else source
        out = []
        for info in self.infos():
            if not include_incomplete and not info.complete:
                continue
            if sources is not None and info.source not in sources:
                continue
            if success is not None and info.success != success:
                continue
            if task is not None and task not in info.tasks:
                continue
            if since is not None and info.created < since:
                continue
            out.append(info)
        if last is not None:
            out = out[-last:] if last > 0 else []
        return out

    def in_progress(self) -> list[str]:
        """Episode ids with a journal (being recorded now, or cut by a crash and not yet recovered)."""
        partial = self.root / "partial"
        return sorted(p.name for p in partial.iterdir() if p.is_dir()) if partial.is_dir() else []

    def path_of(self, info: EpisodeInfo) -> Path:
        return self.root / info.file

    def verify(self, info: EpisodeInfo) -> None:
        path = self.path_of(info)
        if not path.exists():
            raise EpisodeError(f"episode {info.episode_id}: {path} is missing")
        digest = file_sha256(path)
        if digest != info.sha256:
            raise EpisodeError(f"episode {info.episode_id}: {path} sha256 {digest[:12]}... does not match the "
                               f"manifest's {info.sha256[:12]}... (tampered or corrupt)")

    def load(self, info: EpisodeInfo | str, *, verify: bool = True, columns: Sequence[str] | None = None) -> Episode:
        """Read one episode (checking its sha256 first unless verify=False)."""
        import pyarrow.parquet as pq

        if isinstance(info, str):
            found = self.find(info)
            if found is None:
                raise EpisodeError(f"no episode {info!r} in {self.root}")
            info = found
        path = self.path_of(info)
        if verify:
            data = path.read_bytes() if path.exists() else None
            if data is None:
                raise EpisodeError(f"episode {info.episode_id}: {path} is missing")
            if hashlib.sha256(data).hexdigest() != info.sha256:
                raise EpisodeError(f"episode {info.episode_id}: {path} does not match its manifest sha256 "
                                   "(tampered or corrupt)")
            source = io.BytesIO(data)
        else:
            source = path
        try:
            table = pq.read_table(source, columns=list(columns) if columns else None)
        except Exception as exc:  # noqa: BLE001 - any parquet failure is "corrupt episode"
            raise EpisodeError(f"episode {info.episode_id}: cannot read {path}: {exc}") from exc
        return _table_to_episode(info, table)

    def __iter__(self) -> Iterator[EpisodeInfo]:
        return iter(self.episodes())

    def __len__(self) -> int:
        return len(self.episodes())

    def tasks(self) -> list[str]:
        path = self.root / "meta" / "tasks.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["task"] for line in path.read_text().splitlines() if line.strip()]


def _column(table, name: str, n: int, width: int | None = None, dtype=np.float32) -> np.ndarray:
    if name not in table.column_names:
        return np.zeros((n, width or 0) if width is not None else n, dtype=dtype)
    col = table.column(name).combine_chunks()
    if width is None:
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)
    values = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=dtype).reshape(n, width)


def _table_to_episode(info: EpisodeInfo, table) -> Episode:
    n = table.num_rows
    state_dim = table.schema.field(COL_STATE).type.list_size if COL_STATE in table.column_names else 0
    feats = None
    if COL_FEATURES in table.column_names:
        ftype = table.schema.field(COL_FEATURES).type
        t, d = ftype.list_size, ftype.value_type.list_size
        flat = table.column(COL_FEATURES).combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
        feats = np.asarray(flat, np.float32).reshape(n, t, d)
    images = {}
    for name in table.column_names:
        if name.startswith(IMAGE_PREFIX):
            images[name[len(IMAGE_PREFIX):]] = [row["bytes"] for row in table.column(name).to_pylist()]
    action = _column(table, COL_ACTION, n, ACTION_DIM)
    if not np.isfinite(action).all():
        raise EpisodeError(f"episode {info.episode_id}: actions contain NaN/inf")
    return Episode(
        info=info, state=_column(table, COL_STATE, n, state_dim), action=action,
        reward=_column(table, COL_REWARD, n), success=_column(table, COL_SUCCESS, n, dtype=bool),
        done=_column(table, COL_DONE, n, dtype=bool), intervention=_column(table, COL_INTERVENTION, n, dtype=bool),
        timestamp=_column(table, COL_TIMESTAMP, n), images=images, features=feats)


class EpisodeWriter:
    """Records episodes into a dataset root; several writers (processes) may share one root.

    Opening a writer recovers episodes whose recorder died (their journals become incomplete episodes).
    """

    def __init__(self, root: str | os.PathLike, *, image_format: str = "png", jpeg_quality: int = 95,
                 fsync_steps: bool = False, recover: bool = True):
        if image_format not in IMAGE_FORMATS:
            raise EpisodeError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise EpisodeError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
        self.root = Path(root)
        self.image_format = image_format
        self.jpeg_quality = int(jpeg_quality)
        self.fsync_steps = fsync_steps
        self.store = EpisodeStore(self.root)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)
        self.recovered: list[EpisodeInfo] = self.recover() if recover else []

    def begin(self, meta: EpisodeMeta | None = None, **kwargs) -> EpisodeRecording:
        """Start an episode: `begin(EpisodeMeta(...))` or `begin(task=..., source=..., cameras=...)`."""
        meta = meta if meta is not None else EpisodeMeta(**kwargs)
        meta.extra.setdefault("image_format", self.image_format)
        return EpisodeRecording(self, meta)

    def recover(self) -> list[EpisodeInfo]:
        """Turn journals whose writer is gone (lock free) into incomplete episodes. Returns what it recovered."""
        out = []
        partial = self.root / "partial"
        if not partial.is_dir():
            return out
        for d in sorted(p for p in partial.iterdir() if p.is_dir()):
            if not (d / "meta.json").exists() and time.time() - d.stat().st_mtime < 60.0:
                continue  # a recording that is just being created
            lock_path = d / "lock"
            try:
                lock = open(lock_path, "a")  # noqa: SIM115 - closed below
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer owns it
                info = self._recover_one(d)
                if info is not None:
                    out.append(info)
                shutil.rmtree(d, ignore_errors=True)
            finally:
                lock.close()
        return out

    def _recover_one(self, d: Path) -> EpisodeInfo | None:
        try:
            raw = json.loads((d / "meta.json").read_text())
            raw.pop("started", None)
            meta = EpisodeMeta(**raw)
        except (OSError, ValueError, TypeError):
            return None  # cut before its metadata existed: nothing was recorded
        existing = self.store.find(meta.episode_id)
        if existing is not None:
            return None  # published; crashed before the journal was removed
        steps = _decode_records((d / "steps.bin").read_bytes()) if (d / "steps.bin").exists() else []
        if not steps:
            return None
        meta.extra["recovered"] = True
        return self._publish(meta, steps, False, STATUS_INCOMPLETE)

    def _publish(self, meta: EpisodeMeta, steps: Sequence[dict], success: bool, status: str) -> EpisodeInfo:
        import pyarrow.parquet as pq

        with _locked(self.root / "meta" / ".lock"):
            infos = self.store.infos()
            if any(i.episode_id == meta.episode_id for i in infos):
                raise EpisodeError(f"episode {meta.episode_id!r} is already in the manifest")
            index = (infos[-1].episode_index + 1) if infos else 0
            first = (infos[-1].first_index + infos[-1].length) if infos else 0
            task_index = self._task_index(meta.task)
            rel = DATA_PATH.format(episode_chunk=index // CHUNK_SIZE, episode_index=index)
            table = _steps_to_table(meta, steps, index, first, task_index)
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            data = buf.getvalue()
            path = self.root / rel
            atomic_write(path, data)
            info = EpisodeInfo(
                episode_index=index, episode_id=meta.episode_id, tasks=[meta.task], length=len(steps),
                source=meta.source, success=success, policy_version=meta.policy_version, status=status, file=rel,
                sha256=hashlib.sha256(data).hexdigest(), size=len(data), cameras=list(meta.cameras), fps=meta.fps,
                first_index=first, created=time.time(), extra=dict(meta.extra))
            with open(self.store.manifest_path, "ab") as f:
                f.write(json.dumps(asdict(info), sort_keys=True).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self._write_info(meta, steps, infos + [info])
        return info

    def _task_index(self, task: str) -> int:
        path = self.root / "meta" / "tasks.jsonl"
        tasks = self.store.tasks()
        if task in tasks:
            return tasks.index(task)
        with open(path, "ab") as f:
            f.write(json.dumps({"task_index": len(tasks), "task": task}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return len(tasks)

    def _write_info(self, meta: EpisodeMeta, steps: Sequence[dict], infos: Sequence[EpisodeInfo]) -> None:
        path = self.root / "meta" / "info.json"
        features = _features_spec(meta, steps)
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                features = {**json.loads(path.read_text()).get("features", {}), **features}
        info = {
            "codebase_version": FORMAT_VERSION, "irevla_format": IREVLA_FORMAT, "robot_type": "franka_panda",
            "fps": meta.fps, "total_episodes": len(infos), "total_frames": sum(i.length for i in infos),
            "total_tasks": len(self.store.tasks()), "chunks_size": CHUNK_SIZE,
            "total_chunks": infos[-1].episode_index // CHUNK_SIZE + 1 if infos else 0,
            "data_path": DATA_PATH, "video_path": None, "features": features,
        }
        atomic_write(path, json.dumps(info, indent=2).encode())
