"""The spool: signed SFT jobs out, signed results back, through any fsspec filesystem (file://, sftp://, s3://...).

Layout under the spool URL:

    models/<sha256>/...                 base model folders (signed bundles), uploaded once, shared by jobs
    jobs/<job_id>/manifest.json         a job bundle; the manifest is uploaded LAST, so a job exists once it is whole
    jobs/<job_id>/...                   the job's episodes (a small dataset root, same format as the episode store)
    claims/<job_id>/lease-<gen>.json    who works on the job; created with exclusive create ("xb"), so of two
                                        workers racing for the same generation exactly one wins
    claims/<job_id>/heartbeat-<gen>.json  rewritten by the lease holder every `heartbeat_s`
    results/<job_id>/<gen>/...          the result bundle of lease generation <gen> (manifest last)
    done/<job_id>.json                  final marker (exclusive create): {"status": "done"|"failed", "gen", ...}

A lease whose heartbeat is older than `lease_s` has expired: another worker claims generation gen+1 and the old
holder, on its next heartbeat, sees it lost the job and stops. Clocks of workers must be roughly in sync (NTP).
Exclusive create is atomic on local and network POSIX filesystems and in fsspec's memory filesystem; object
stores need conditional writes (If-None-Match) for the same guarantee (see docs/stage2.md).
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from irevla_ros.core.data.signing import (
    MANIFEST,
    SignatureError,
    check_file,
    check_relpath,
    file_entry,
    open_manifest,
    signed_manifest,
)

JOB_KIND = "sft_job"
RESULT_KIND = "sft_result"
MODEL_KIND = "model"


class SpoolError(RuntimeError):
    """The spool is unreachable or in an unexpected state."""


@dataclass
class Lease:
    job_id: str
    gen: int
    worker: str


def _now() -> float:
    return time.time()


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Spool:
    def __init__(self, url: str, key: bytes, *, lease_s: float = 120.0, storage_options: Mapping | None = None):
        import fsspec

        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self.url = url
        self.key = key
        self.lease_s = float(lease_s)
        self.fs, self.root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        self.root = self.root.rstrip("/") or "/"
        self.fs.makedirs(self.root, exist_ok=True)

    # ---- paths and small I/O helpers -----------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _ls(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def _exists(self, path: str) -> bool:
        self.fs.invalidate_cache(posixpath.dirname(path))
        return self.fs.exists(path)

    def _read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def _read_json(self, path: str) -> dict | None:
        try:
            return json.loads(self._read(path))
        except (FileNotFoundError, ValueError):
            return None

    def _write_atomic(self, path: str, data: bytes) -> None:
        """Write via a temporary name + move (atomic rename on POSIX filesystems)."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    def _create_exclusive(self, path: str, data: bytes) -> bool:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    # ---- bundles -------------------------------------------------------------------------------------------
    def _upload_bundle(self, local: Path, remote: str, body: Mapping) -> dict:
        """Upload every file of `local`, then the signed manifest (last). Returns the signed body."""
        files = {}
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file() and p.name != MANIFEST):
            rel = check_relpath(path.relative_to(local).as_posix())
            data = path.read_bytes()
            files[rel] = file_entry(data)
            target = posixpath.join(remote, rel)
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.fs.pipe_file(target, data)
        full = {**body, "files": files}
        self._write_atomic(posixpath.join(remote, MANIFEST), signed_manifest(full, self.key))
        return full

    def _download_bundle(self, remote: str, local: Path, kind: str) -> dict:
        """Fetch a bundle, authenticating the manifest and checking every file before anything is kept."""
        where = f"{self.url}:{remote}"
        try:
            manifest = self._read(posixpath.join(remote, MANIFEST))
        except FileNotFoundError as exc:
            raise SignatureError(f"{where}: no {MANIFEST}") from exc
        body = open_manifest(manifest, self.key, kind=kind, where=where)
        local = Path(local)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:6]}.part")
        tmp.mkdir(parents=True)
        try:
            for rel, entry in body["files"].items():
                try:
                    data = self._read(posixpath.join(remote, rel))
                except FileNotFoundError as exc:
                    raise SignatureError(f"{where}: {rel} is listed in the signed manifest but missing") from exc
                check_file(rel, data, entry, where)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
            (tmp / MANIFEST).write_bytes(manifest)
            if local.exists():
                import shutil

                shutil.rmtree(local)
            os.replace(tmp, local)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return body

    # ---- base models ---------------------------------------------------------------------------------------
    def upload_model(self, local_dir: str | os.PathLike, model_id: str) -> str:
        """Upload a model folder once (keyed by `model_id`, e.g. its folder sha256). Returns its spool path."""
        rel = posixpath.join("models", model_id)
        if not self._exists(self._p(rel, MANIFEST)):
            self._upload_bundle(Path(local_dir), self._p(rel), {"kind": MODEL_KIND, "id": model_id,
                                                                "created": _now()})
        return rel

    def fetch_model(self, rel: str, local_dir: str | os.PathLike) -> dict:
        check_relpath(rel)
        return self._download_bundle(self._p(rel), Path(local_dir), MODEL_KIND)

    # ---- producer side (packager) --------------------------------------------------------------------------
    def submit_job(self, local_dir: str | os.PathLike, body: Mapping) -> dict:
        job_id = body["id"]
        check_relpath(job_id)
        if self._exists(self._p("jobs", job_id, MANIFEST)):
            raise SpoolError(f"job {job_id} already exists in {self.url}")
        return self._upload_bundle(Path(local_dir), self._p("jobs", job_id), {**body, "kind": JOB_KIND})

    def job_ids(self) -> list[str]:
        return [j for j in self._ls(self._p("jobs")) if self._exists(self._p("jobs", j, MANIFEST))]

    def status(self, job_id: str) -> dict | None:
        """The done marker of a job ({"status": "done"|"failed", ...}) or None while it is open."""
        return self._read_json(self._p("done", f"{job_id}.json"))

    def fetch_result(self, job_id: str, local_dir: str | os.PathLike) -> dict:
        """Download and verify a finished job's result bundle. Raises SignatureError / SpoolError."""
        done = self.status(job_id)
        if not done or done.get("status") != "done":
            raise SpoolError(f"job {job_id} has no result (status: {done})")
        body = self._download_bundle(self._p("results", job_id, str(int(done["gen"]))), Path(local_dir),
                                     RESULT_KIND)
        if body.get("job_id") != job_id:
            raise SignatureError(f"result for {job_id} is signed for job {body.get('job_id')!r}")
        return body

    def remove_job(self, job_id: str) -> None:
        """Delete a finished job: its package first (so no worker can claim it), then claims and results, the done
        marker last. Raises SpoolError for a job that is still open."""
        check_relpath(job_id)
        if self.status(job_id) is None:
            raise SpoolError(f"job {job_id} is still open: only finished jobs are removed")
        for path in (self._p("jobs", job_id), self._p("claims", job_id), self._p("results", job_id)):
            if self._exists(path):
                self.fs.rm(path, recursive=True)
        self.fs.rm(self._p("done", f"{job_id}.json"))

    # ---- worker side ---------------------------------------------------------------------------------------
    def lease_state(self, job_id: str) -> tuple[int, float | None]:
        """(latest lease generation or -1, seconds since that lease's last sign of life or None)."""
        names = self._ls(self._p("claims", job_id))
        gens = sorted(int(n[6:-5]) for n in names if n.startswith("lease-") and n.endswith(".json"))
        if not gens:
            return -1, None
        gen = gens[-1]
        beat = self._read_json(self._p("claims", job_id, f"heartbeat-{gen:06d}.json"))
        lease = self._read_json(self._p("claims", job_id, f"lease-{gen:06d}.json"))
        stamps = [d["t"] for d in (beat, lease) if d and isinstance(d.get("t"), (int, float))]
        return gen, (_now() - max(stamps)) if stamps else 0.0  # unreadable = just being written

    def claim(self, worker: str, job_id: str | None = None) -> Lease | None:
        """Claim the oldest open job (or `job_id`): a fresh one, or one whose lease expired. None if none."""
        for jid in [job_id] if job_id else self.job_ids():
            if self.status(jid) is not None:
                continue
            gen, age = self.lease_state(jid)
            if gen >= 0 and age is not None and age < self.lease_s:
                continue
            new = gen + 1
            data = json.dumps({"worker": worker, "gen": new, "t": _now()}).encode()
            if self._create_exclusive(self._p("claims", jid, f"lease-{new:06d}.json"), data):
                return Lease(jid, new, worker)
        return None

    def holds(self, lease: Lease) -> bool:
        gen, _ = self.lease_state(lease.job_id)
        return gen == lease.gen and self.status(lease.job_id) is None

    def heartbeat(self, lease: Lease) -> bool:
        """Renew the lease; False if it was lost (another worker took over, or the job was closed)."""
        if not self.holds(lease):
            return False
        self._write_atomic(self._p("claims", lease.job_id, f"heartbeat-{lease.gen:06d}.json"),
                           json.dumps({"worker": lease.worker, "t": _now()}).encode())
        return True

    def fetch_job(self, lease: Lease, local_dir: str | os.PathLike) -> dict:
        body = self._download_bundle(self._p("jobs", lease.job_id), Path(local_dir), JOB_KIND)
        if body.get("id") != lease.job_id:
            raise SignatureError(f"job folder {lease.job_id} holds a manifest signed for job {body.get('id')!r}")
        return body

    def publish_result(self, lease: Lease, local_dir: str | os.PathLike, body: Mapping) -> bool:
        """Upload the result bundle, then close the job. False (nothing closed) if the lease was lost."""
        if not self.holds(lease):
            return False
        remote = self._p("results", lease.job_id, str(lease.gen))
        self._upload_bundle(Path(local_dir), remote, {**body, "kind": RESULT_KIND, "job_id": lease.job_id,
                                                      "gen": lease.gen, "worker": lease.worker})
        return self._close(lease, {"status": "done"})

    def fail(self, lease: Lease, reason: str) -> bool:
        """Close the job as failed (e.g. it does not verify): no worker will retry it."""
        return self._close(lease, {"status": "failed", "reason": reason})

    def _close(self, lease: Lease, fields: Mapping) -> bool:
        if self.lease_state(lease.job_id)[0] != lease.gen:
            return False
        return self._create_exclusive(self._p("done", f"{lease.job_id}.json"), json.dumps(
            {**fields, "gen": lease.gen, "worker": lease.worker, "t": _now()}).encode())
