"""HMAC-SHA256 signed manifests: what travels between the robot and the SFT server is checked before use.

A *bundle* is a folder (local or on an fsspec filesystem) holding files plus `manifest.json`:

    {"body": {"kind": ..., "id": ..., "files": {"rel/path": {"sha256": ..., "size": ...}}, ...},
     "hmac_sha256": "<hex HMAC of the canonical JSON of body under the shared key>"}

Verification checks the signature first (a wrong key or any edited byte of the body fails), then each file's
size and sha256 (a flipped byte anywhere fails), and rejects paths that escape the folder. The key is a shared
secret file (hex, >= 32 bytes of entropy) created with 0600 permissions when missing; a key file readable by
group/others is refused, like ssh does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
KEY_BYTES = 32


class SignatureError(ValueError):
    """A manifest or file that does not verify: wrong key, tampered, truncated, missing, or unsafe paths."""


def load_or_create_key(path: str | os.PathLike, *, create: bool = True) -> bytes:
    """Read the shared HMAC key; create a random one (0600) when missing and `create` is true."""
    path = Path(path).expanduser()
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"HMAC key file {path} does not exist (copy it from the robot machine)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_key(path, create=False)  # another process created it just now
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"HMAC key file {path} is accessible by group/others (mode {oct(mode & 0o777)}); "
                              f"run: chmod 600 {path}")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise SignatureError(f"HMAC key file {path} must hold a hex string") from exc
    if len(key) < 16:
        raise SignatureError(f"HMAC key in {path} is too short ({len(key)} bytes, need >= 16)")
    return key


def canonical(body: Mapping) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign(body: Mapping, key: bytes) -> str:
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def signed_manifest(body: Mapping, key: bytes) -> bytes:
    return json.dumps({"body": body, "hmac_sha256": sign(body, key)}, sort_keys=True, indent=1).encode()


def open_manifest(data: bytes, key: bytes, *, kind: str | None = None, where: str = "manifest") -> dict:
    """Parse and authenticate a signed manifest; returns its body. Raises SignatureError."""
    try:
        doc = json.loads(data)
        body, signature = doc["body"], doc["hmac_sha256"]
        if not isinstance(body, dict) or not isinstance(signature, str):
            raise TypeError("body must be an object and hmac_sha256 a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{where}: not a signed manifest ({exc})") from exc
    if not hmac.compare_digest(sign(body, key), signature):
        raise SignatureError(f"{where}: HMAC-SHA256 signature does not match (tampered, or signed with another key)")
    if kind is not None and body.get("kind") != kind:
        raise SignatureError(f"{where}: expected a {kind!r} manifest, got {body.get('kind')!r}")
    files = body.get("files", {})
    if not isinstance(files, dict):
        raise SignatureError(f"{where}: 'files' must be an object")
    for rel, entry in files.items():
        check_relpath(rel, where)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(
                entry.get("size"), int):
            raise SignatureError(f"{where}: file entry for {rel!r} needs sha256 and size")
    return body


def check_relpath(rel: str, where: str = "manifest") -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts or rel in (MANIFEST,) or "\\" in rel:
        raise SignatureError(f"{where}: unsafe or reserved file path {rel!r}")
    return rel


def file_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def check_file(rel: str, data: bytes, entry: Mapping, where: str = "bundle") -> None:
    if len(data) != entry["size"]:
        raise SignatureError(f"{where}: {rel} has {len(data)} bytes, the signed manifest says {entry['size']}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise SignatureError(f"{where}: {rel} sha256 {digest[:12]}... does not match the signed manifest "
                             f"({entry['sha256'][:12]}...): tampered or corrupt")


def write_local_bundle(folder: str | os.PathLike, body: Mapping, key: bytes) -> dict:
    """Sign a local folder in place: hash every file under it (except the manifest) into body['files'] and write
    manifest.json last. Returns the body."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[check_relpath(rel)] = file_entry(path.read_bytes())
    full = {**body, "files": files}
    data = signed_manifest(full, key)
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    return full


def verify_local_bundle(folder: str | os.PathLike, key: bytes, *, kind: str | None = None,
                        allow_extra: bool = False) -> dict:
    """Verify a local folder against its signed manifest (signature, then every file). Returns the body."""
    folder = Path(folder)
    where = str(folder)
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise SignatureError(f"{where}: no {MANIFEST}")
    body = open_manifest(mpath.read_bytes(), key, kind=kind, where=where)
    for rel, entry in body["files"].items():
        path = folder / rel
        if not path.is_file():
            raise SignatureError(f"{where}: {rel} is listed in the signed manifest but missing")
        check_file(rel, path.read_bytes(), entry, where)
    if not allow_extra:
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        extra = sorted(present - set(body["files"]) - {MANIFEST})
        if extra:
            raise SignatureError(f"{where}: files not covered by the signature: {extra[:5]}")
    return body


def manifest_sha256(folder: str | os.PathLike) -> str:
    """The id of a verified bundle's exact content: sha256 of its signed manifest (which hashes every file)."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()
