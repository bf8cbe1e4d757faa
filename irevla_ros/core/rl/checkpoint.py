"""Atomic, verified checkpoints: a folder per checkpoint, published by rename, pointed at by LATEST.

    checkpoints/
      ckpt-000001200-<ns>/   files + manifest.json (sha256 and size of each file)
      LATEST                 the name of the newest complete checkpoint (replaced atomically)

Writing: files go to a hidden temporary folder, each fsynced, then manifest.json, then the folder is renamed
into place, the parent fsynced, and LATEST replaced (tmp + fsync + rename). Names carry a nanosecond stamp, so
an existing folder (a resumed run reaching the same update count) is never in the way. A kill -9 at any point
leaves either the previous checkpoint or the new one, and maybe a temporary folder that the next save removes.
Reading: LATEST first, then every other complete folder newest first; a folder whose manifest does not match
its files is skipped (and reported), never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from irevla_ros.core.data.episodes import fsync_dir

MANIFEST = "manifest.json"
LATEST = "LATEST"
_NAME_RE = re.compile(r"^ckpt-\d{9,}-\d+$")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is incomplete or does not match its manifest."""


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class CheckpointStore:
    def __init__(self, root: str | os.PathLike, keep: int = 3):
        self.root = Path(root)
        self.keep = max(1, int(keep))
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, updates: int, files: Mapping[str, bytes]) -> str:
        """Write a checkpoint; returns its name once it is durable and LATEST points at it."""
        name = f"ckpt-{int(updates):09d}-{time.time_ns()}"
        tmp = self.root / f".tmp-{name}"
        tmp.mkdir()
        manifest = {"name": name, "created": time.time(), "files": {}}
        for fname, data in files.items():
            _write_file(tmp / fname, data)
            manifest["files"][fname] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_dir(tmp)
        os.rename(tmp, self.root / name)
        fsync_dir(self.root)
        latest_tmp = self.root / f".{LATEST}.{os.getpid()}.tmp"
        _write_file(latest_tmp, name.encode())
        os.replace(latest_tmp, self.root / LATEST)
        fsync_dir(self.root)
        self._prune(name)
        return name

    def _prune(self, newest: str) -> None:
        for path in self.root.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
        complete = [n for n in self._folders() if n != newest]
        for old in complete[self.keep - 1:]:
            shutil.rmtree(self.root / old, ignore_errors=True)

    def _folders(self) -> list[str]:
        """Checkpoint folder names, newest first."""
        names = [p.name for p in self.root.glob("ckpt-*") if p.is_dir() and _NAME_RE.match(p.name)]
        return sorted(names, key=lambda n: tuple(int(x) for x in n.split("-")[1:3]), reverse=True)

    def candidates(self) -> Iterator[str]:
        """LATEST's checkpoint first, then the others newest first."""
        seen = set()
        latest = self.root / LATEST
        if latest.is_file():
            name = latest.read_text().strip()
            if _NAME_RE.match(name) and (self.root / name).is_dir():
                seen.add(name)
                yield name
        for name in self._folders():
            if name not in seen:
                yield name

    def load(self, name: str) -> dict[str, bytes]:
        folder = self.root / name
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {name}: unreadable manifest ({exc})") from exc
        out = {}
        for fname, entry in manifest.get("files", {}).items():
            try:
                data = (folder / fname).read_bytes()
            except OSError as exc:
                raise CheckpointError(f"checkpoint {name}: missing {fname}") from exc
            if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                raise CheckpointError(f"checkpoint {name}: {fname} does not match its manifest (corrupt)")
            out[fname] = data
        return out
