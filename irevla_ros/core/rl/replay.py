"""Replay storage sized in bytes: fp16 features memory-mapped on disk, small per-step fields in RAM.

Why our own ring and not TorchRL's LazyMemmapStorage (which installs from PyPI here, with tensordict and 7 more
packages): (1) a step's features are stored ONCE and the next observation is a slot index (`next_idx`), which
halves the bytes of BLIP-2-sized features (~256 KB per camera-step) against storing obs and next_obs; (2) the
crash contract below (checkpoint + undo log, exact resume after kill -9) needs control over write order that a
generic storage does not give; (3) capacity is set in bytes, the unit the operator cares about.

Layout of a buffer directory:
    features.f16   np.memmap float16 [capacity, T, D]   the big part, written in place (page cache)
    seq.i64        np.memmap int64 [capacity]           which write (sequence number) each features slot holds
    undo-<tag>.f16 / undo-<tag>.idx                      features overwritten since checkpoint <tag>
Everything else (actions, rewards, flags, links, counters) is small and lives in RAM; `state_dict()` returns it
for the checkpoint.

Crash contract: a checkpoint stores the small arrays and calls `flush()` + `begin_epoch(tag)`. Before a slot
that the checkpoint knows is overwritten, its old features are appended to the undo log (raw os.write, so they
are in the OS before the overwrite). `load_state_dict()` of checkpoint <tag> replays that undo log backwards,
so after kill -9 the buffer is exactly the checkpoint's. Each slot's `seq` is set to -1 before and to its write
number after a features write; any slot whose on-disk seq disagrees with the checkpoint (e.g. an older
checkpoint whose undo log is gone) is dropped and counted in `lost_on_resume` rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irevla_ros.interfaces import ACTION_DIM

FLAG_TERMINAL = 1
FLAG_DONE = 2
FLAG_SUCCESS = 4
FLAG_INTERVENTION = 8

_UNDO_RECORD = struct.Struct("<qq")  # slot, seq of the features saved
_SMALL_FIELDS = ("proprio", "action", "reward", "log_prob", "flags", "next_idx", "seq", "version")


PARALLEL_GATHER_BYTES = 16 << 20
"""Feature copies at least this large are split over `GATHER_THREADS` threads (numpy copies without the GIL): one
thread moved ~3 GB/s of BLIP-2-sized rows out of the page cache on the H200 host, 52 ms of a 77 ms batch-256
update (bench/learner.py). Tiny features (CPU runs, tests) stay on one thread."""
GATHER_THREADS = max(1, min(8, os.cpu_count() or 1))
_gather_pool: ThreadPoolExecutor | None = None


def gather_rows(array: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """`out[:] = array[idx]`, by several threads when the copy is large."""
    global _gather_pool
    threads = min(GATHER_THREADS, len(idx))
    if threads <= 1 or out.nbytes < PARALLEL_GATHER_BYTES:
        np.take(array, idx, axis=0, out=out)
        return
    if _gather_pool is None:
        _gather_pool = ThreadPoolExecutor(max_workers=GATHER_THREADS, thread_name_prefix="replay-gather")
    bounds = np.linspace(0, len(idx), threads + 1).astype(int)
    jobs = [_gather_pool.submit(np.take, array, idx[a:b], 0, out[a:b]) for a, b in
            zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    for job in jobs:
        job.result()


Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]


class ReplayError(ValueError):
    """A buffer that cannot be opened or restored as asked (wrong shapes, too small)."""


def bytes_per_transition(feature_shape: tuple[int, int], proprio_dim: int, action_dim: int = ACTION_DIM) -> int:
    """Bytes one stored step costs: fp16 features + its seq on disk, plus the small fields in RAM."""
    t, d = feature_shape
    features = t * d * 2 + 8
    small = proprio_dim * 4 + action_dim * 4 + 4 + 4 + 1 + 8 + 8 + 8
    return features + small


@dataclass
class Batch:
    """Numpy arrays of a sampled batch (float32 unless noted)."""

    features: np.ndarray  # float16 [B, T, D]
    proprio: np.ndarray  # [B, P]
    action: np.ndarray  # [B, 7]
    reward: np.ndarray  # [B]
    next_features: np.ndarray  # float16 [B, T, D]
    next_proprio: np.ndarray  # [B, P]
    terminal: np.ndarray  # [B] 1.0 where the episode ended by success/failure (no bootstrapping)
    log_prob: np.ndarray  # [B]
    intervention: np.ndarray  # [B]

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        parts = [p for p in parts if len(p.action)]
        return Batch(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Batch.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.action)


class ReplayBuffer:
    """A ring of steps; a step becomes a sampleable transition once `link()` gives it its next step."""

    def __init__(self, directory: str | os.PathLike, capacity: int, feature_shape: tuple[int, int],
                 proprio_dim: int = 0, action_dim: int = ACTION_DIM, *, fresh: bool = True):
        """fresh=True discards whatever files the directory holds; False reopens them (then `load_state_dict`)."""
        if capacity < 2:
            raise ReplayError(f"a replay buffer needs room for >= 2 steps, got capacity {capacity}")
        t, d = (int(v) for v in feature_shape)
        if t <= 0 or d <= 0:
            raise ReplayError(f"feature shape must be positive [T, D], got {feature_shape}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            for path in [*self.directory.glob("undo-*"), self.directory / "features.f16", self.directory / "seq.i64"]:
                path.unlink(missing_ok=True)
        self.capacity = int(capacity)
        self.feature_shape = (t, d)
        self.proprio_dim = int(proprio_dim)
        self.action_dim = int(action_dim)
        self.features = self._open_memmap("features.f16", np.float16, (self.capacity, t, d))
        self.disk_seq = self._open_memmap("seq.i64", np.int64, (self.capacity,), fill=-1)
        self.proprio = np.zeros((self.capacity, self.proprio_dim), np.float32)
        self.action = np.zeros((self.capacity, self.action_dim), np.float32)
        self.reward = np.zeros(self.capacity, np.float32)
        self.log_prob = np.zeros(self.capacity, np.float32)
        self.flags = np.zeros(self.capacity, np.uint8)
        self.next_idx = np.full(self.capacity, -1, np.int64)
        self.seq = np.full(self.capacity, -1, np.int64)
        self.version = np.zeros(self.capacity, np.int64)
        self.cursor = 0
        self.next_seq = 0
        self.lost_on_resume = 0
        self._valid: np.ndarray | None = None
        self._epoch_tag: str | None = None
        self._epoch_seq = 0
        self._undo_data: int | None = None
        self._undo_idx: int | None = None
        self._undone: set[int] = set()

    # --- files ----------------------------------------------------------------------------------------------
    def _open_memmap(self, name: str, dtype, shape: tuple[int, ...], fill: int | None = None) -> np.memmap:
        path = self.directory / name
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        fresh = not path.exists() or path.stat().st_size != nbytes
        if fresh:
            with open(path, "wb") as f:  # sparse file of the right size (zeros)
                f.truncate(nbytes)
        mm = np.memmap(path, dtype=dtype, mode="r+", shape=shape)
        if fresh and fill is not None:
            mm[:] = fill
        return mm

    def _undo_paths(self, tag: str) -> tuple[Path, Path]:
        return self.directory / f"undo-{tag}.f16", self.directory / f"undo-{tag}.idx"

    def _close_undo(self) -> None:
        for fd in (self._undo_data, self._undo_idx):
            if fd is not None:
                os.close(fd)
        self._undo_data = self._undo_idx = None

    def begin_epoch(self, tag: str) -> None:
        """Called right after checkpoint `tag` is durable: from now on, log what overwrites would destroy."""
        self._close_undo()
        data, idx = self._undo_paths(tag)
        self._undo_data = os.open(data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._undo_idx = os.open(idx, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._epoch_tag, self._epoch_seq, self._undone = tag, self.next_seq, set()
        for path in self.directory.glob("undo-*"):
            if path not in (data, idx):
                path.unlink(missing_ok=True)

    def flush(self) -> None:
        self.features.flush()
        self.disk_seq.flush()

    def close(self) -> None:
        self._close_undo()
        self.flush()

    # --- writing --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Sampleable (linked) transitions."""
        return int(len(self._valid_indices()))

    @property
    def occupied(self) -> int:
        return int((self.seq >= 0).sum())

    def add(self, features: np.ndarray, action: np.ndarray, *, proprio: np.ndarray | None = None,
            reward: float = 0.0, log_prob: float = 0.0, terminal: bool = False, done: bool = False,
            success: bool = False, intervention: bool = False, version: int = 0) -> tuple[int, int]:
        """Store one step; returns (slot, seq). It is not sampled until `link(slot, ...)`."""
        if tuple(features.shape) != self.feature_shape:
            raise ReplayError(f"features shape {tuple(features.shape)} != buffer's {self.feature_shape}")
        s = self.cursor
        if self.seq[s] >= 0:
            self._before_overwrite(s)
        seq = self.next_seq
        self.disk_seq[s] = -1
        self.features[s] = features
        self.disk_seq[s] = seq
        self.proprio[s] = proprio if proprio is not None else 0.0
        self.action[s] = action
        self.reward[s] = reward
        self.log_prob[s] = log_prob
        self.flags[s] = (FLAG_TERMINAL * bool(terminal) | FLAG_DONE * bool(done) | FLAG_SUCCESS * bool(success)
                         | FLAG_INTERVENTION * bool(intervention))
        self.version[s] = version
        self.next_idx[s] = -1
        self.seq[s] = seq
        self.next_seq += 1
        self.cursor = (s + 1) % self.capacity
        self._valid = None
        return s, seq

    def _before_overwrite(self, s: int) -> None:
        # A step is always written before its successor, so the ring reaches a step before its next: nothing
        # still valid can point at s. Only s itself loses its link.
        self.next_idx[s] = -1
        old = int(self.seq[s])
        if self._undo_data is not None and old < self._epoch_seq and s not in self._undone:
            os.write(self._undo_data, np.ascontiguousarray(self.features[s]).tobytes())
            os.write(self._undo_idx, _UNDO_RECORD.pack(s, old))
            self._undone.add(s)

    def alive(self, slot: int, seq: int) -> bool:
        """Does `slot` still hold write number `seq` (not overwritten since)?"""
        return 0 <= slot < self.capacity and int(self.seq[slot]) == seq

    def link(self, slot: int, next_slot: int) -> None:
        """Make `slot` a transition whose next observation is `next_slot` (itself for an episode's last step)."""
        self.next_idx[slot] = next_slot
        self._valid = None

    # --- reading --------------------------------------------------------------------------------------------
    def _valid_indices(self) -> np.ndarray:
        if self._valid is None:
            self._valid = np.flatnonzero(self.next_idx >= 0)
        return self._valid

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        valid = self._valid_indices()
        if n <= 0 or not len(valid):
            return np.zeros(0, np.int64)
        return np.sort(valid[rng.integers(0, len(valid), size=n)])  # sorted: page-cache friendly

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        return self.gather(self.sample_indices(n, rng))

    def gather(self, idx: np.ndarray) -> Batch:
        return gather_batch([(self, idx)])

    def _gather_into(self, idx: np.ndarray, out: Batch, at: int) -> None:
        rows = slice(at, at + len(idx))
        nxt = self.next_idx[idx]
        gather_rows(self.features, idx, out.features[rows])
        gather_rows(self.features, nxt, out.next_features[rows])
        out.proprio[rows], out.next_proprio[rows] = self.proprio[idx], self.proprio[nxt]
        out.action[rows], out.reward[rows], out.log_prob[rows] = self.action[idx], self.reward[idx], self.log_prob[idx]
        out.terminal[rows] = (self.flags[idx] & FLAG_TERMINAL) > 0
        out.intervention[rows] = (self.flags[idx] & FLAG_INTERVENTION) > 0


    # --- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        sd = {name: getattr(self, name).copy() for name in _SMALL_FIELDS}
        sd["counters"] = np.array([self.cursor, self.next_seq, self.capacity, *self.feature_shape,
                                   self.proprio_dim, self.action_dim], np.int64)
        return sd

    def load_state_dict(self, sd: dict[str, np.ndarray], tag: str | None) -> None:
        """Restore the checkpoint's view: small fields from `sd`, features from disk (+ undo log of `tag`)."""
        c = [int(v) for v in sd["counters"]]
        expect = [self.capacity, *self.feature_shape, self.proprio_dim, self.action_dim]
        if c[2:] != expect:
            raise ReplayError(f"checkpoint buffer (capacity, T, D, P, A) = {tuple(c[2:])} does not match this "
                              f"buffer's {tuple(expect)}: keep the same capacity and features, or start a new run_dir")
        for name in _SMALL_FIELDS:
            value = np.asarray(sd[name])
            if value.shape != getattr(self, name).shape:
                raise ReplayError(f"checkpoint field {name} has shape {value.shape}, expected "
                                  f"{getattr(self, name).shape}")
            getattr(self, name)[...] = value
        self.cursor, self.next_seq = c[0], c[1]
        if tag is not None:
            self._apply_undo(tag)
        occupied = self.seq >= 0
        lost = occupied & (np.asarray(self.disk_seq) != self.seq)
        if lost.any():
            lost_slots = np.flatnonzero(lost)
            self.seq[lost_slots] = -1
            self.next_idx[lost_slots] = -1
            self.next_idx[np.isin(self.next_idx, lost_slots)] = -1
            self.lost_on_resume = int(len(lost_slots))
        self._valid = None

    def _apply_undo(self, tag: str) -> None:
        data, idx = self._undo_paths(tag)
        if not (data.exists() and idx.exists()):
            return
        slot_bytes = int(np.prod(self.feature_shape)) * 2
        raw_idx = idx.read_bytes()
        n = min(len(raw_idx) // _UNDO_RECORD.size, data.stat().st_size // slot_bytes)
        if not n:
            return
        saved = np.fromfile(data, dtype=np.float16, count=n * slot_bytes // 2).reshape(n, *self.feature_shape)
        for i in reversed(range(n)):
            slot, seq = _UNDO_RECORD.unpack_from(raw_idx, i * _UNDO_RECORD.size)
            if 0 <= slot < self.capacity:
                self.disk_seq[slot] = -1
                self.features[slot] = saved[i]
                self.disk_seq[slot] = seq
        self.flush()

    def fingerprint(self) -> str:
        """sha256 of everything sampleable: small fields and the features of occupied slots (tests, logs)."""
        h = hashlib.sha256()
        for name in _SMALL_FIELDS:
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        h.update(np.array([self.cursor, self.next_seq], np.int64).tobytes())
        occupied = np.flatnonzero(self.seq >= 0)
        h.update(np.ascontiguousarray(self.features[occupied]).tobytes())
        return h.hexdigest()


def gather_batch(parts: list[tuple[ReplayBuffer, np.ndarray]], alloc: Allocator | None = None) -> Batch:
    """One batch of rows `idx` from each buffer, in order, each row copied once straight into arrays made by `alloc`
    (default np.empty; the CUDA learner passes pinned memory, so the batch can go to the GPU without another
    copy). The buffers must share feature shape and proprio size."""
    alloc = alloc or (lambda shape, dtype: np.empty(shape, dtype))
    parts = [(buf, np.asarray(idx, np.int64)) for buf, idx in parts]
    first = parts[0][0]
    n = sum(len(idx) for _, idx in parts)
    t, d = first.feature_shape
    out = Batch(features=alloc((n, t, d), np.float16), proprio=alloc((n, first.proprio_dim), np.float32),
                action=alloc((n, first.action_dim), np.float32), reward=alloc((n,), np.float32),
                next_features=alloc((n, t, d), np.float16), next_proprio=alloc((n, first.proprio_dim), np.float32),
                terminal=alloc((n,), np.float32), log_prob=alloc((n,), np.float32),
                intervention=alloc((n,), np.float32))
    at = 0
    for buf, idx in parts:
        if (buf.feature_shape, buf.proprio_dim, buf.action_dim) != (first.feature_shape, first.proprio_dim,
                                                                  first.action_dim):
            raise ReplayError("buffers of one batch must share feature shape, proprio and action sizes")
        buf._gather_into(idx, out, at)
        at += len(idx)
    return out
