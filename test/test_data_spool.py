"""Signed bundles and the fsspec spool: key file, signatures, tampering, exclusive claims, lease expiry."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
from conftest import wait_for

from irevla_ros.core.data.signing import (
    MANIFEST,
    SignatureError,
    load_or_create_key,
    open_manifest,
    signed_manifest,
    verify_local_bundle,
    write_local_bundle,
)
from irevla_ros.core.data.spool import Spool, SpoolError


def _job_dir(tmp_path, name="job_src"):
    d = tmp_path / name
    (d / "data").mkdir(parents=True)
    (d / "data" / "a.bin").write_bytes(os.urandom(2000))
    (d / "b.json").write_text('{"x": 1}')
    return d


def test_key_created_0600_and_loose_permissions_refused(tmp_path):
    path = tmp_path / "keys" / "sft.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_key(path)
    with pytest.raises(FileNotFoundError):
        load_or_create_key(tmp_path / "missing.key", create=False)


def test_signature_checks_body_and_key():
    body = {"kind": "sft_job", "id": "j1", "files": {"x": {"sha256": "0" * 64, "size": 1}}}
    key = b"k" * 32
    data = signed_manifest(body, key)
    assert open_manifest(data, key, kind="sft_job") == body
    with pytest.raises(SignatureError, match="another key"):
        open_manifest(data, b"x" * 32)
    forged = json.loads(data)
    forged["body"]["id"] = "j2"
    with pytest.raises(SignatureError, match="signature"):
        open_manifest(json.dumps(forged).encode(), key)
    with pytest.raises(SignatureError, match="expected a 'sft_result'"):
        open_manifest(data, key, kind="sft_result")
    bad_path = {"kind": "k", "files": {"../etc/passwd": {"sha256": "0" * 64, "size": 1}}}
    with pytest.raises(SignatureError, match="unsafe"):
        open_manifest(signed_manifest(bad_path, key), key)


def test_local_bundle_detects_flipped_byte_missing_and_extra_files(tmp_path):
    key = b"k" * 32
    d = _job_dir(tmp_path)
    write_local_bundle(d, {"kind": "sft_result", "id": "r"}, key)
    assert set(verify_local_bundle(d, key, kind="sft_result")["files"]) == {"data/a.bin", "b.json"}
    blob = bytearray((d / "data" / "a.bin").read_bytes())
    blob[100] ^= 0x01
    (d / "data" / "a.bin").write_bytes(bytes(blob))
    with pytest.raises(SignatureError, match="a.bin sha256"):
        verify_local_bundle(d, key)
    blob[100] ^= 0x01
    (d / "data" / "a.bin").write_bytes(bytes(blob))
    (d / "sneaky.py").write_text("print(1)")
    with pytest.raises(SignatureError, match="not covered"):
        verify_local_bundle(d, key)
    (d / "sneaky.py").unlink()
    (d / "b.json").unlink()
    with pytest.raises(SignatureError, match="missing"):
        verify_local_bundle(d, key)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_job_round_trip_claim_and_result(tmp_path, scheme):
    key = b"s" * 32
    url = f"file://{tmp_path / 'spool'}" if scheme == "file" else f"memory://spool-{os.getpid()}-{id(tmp_path)}"
    producer = Spool(url, key)
    producer.submit_job(_job_dir(tmp_path), {"id": "job-1", "stage": 0})
    with pytest.raises(SpoolError, match="already exists"):
        producer.submit_job(_job_dir(tmp_path, "again"), {"id": "job-1"})
    worker = Spool(url, key)
    lease = worker.claim("w1")
    assert lease is not None and lease.job_id == "job-1" and lease.gen == 0
    assert worker.claim("w2") is None  # held and fresh
    body = worker.fetch_job(lease, tmp_path / "got")
    assert body["stage"] == 0 and (tmp_path / "got" / "data" / "a.bin").read_bytes() == (
        tmp_path / "job_src" / "data" / "a.bin").read_bytes()
    assert worker.heartbeat(lease)
    res = tmp_path / "res"
    res.mkdir()
    (res / "head.safetensors").write_bytes(b"123")
    assert worker.publish_result(lease, res, {"metrics": {"val_mse": 0.1}})
    assert producer.status("job-1")["status"] == "done" and worker.claim("w2") is None
    got = producer.fetch_result("job-1", tmp_path / "back")
    assert got["metrics"] == {"val_mse": 0.1} and (tmp_path / "back" / "head.safetensors").read_bytes() == b"123"


def test_tampered_job_and_wrong_key_are_rejected_and_nothing_is_kept(tmp_path):
    url = f"file://{tmp_path / 'spool'}"
    Spool(url, b"a" * 32).submit_job(_job_dir(tmp_path), {"id": "job-1"})
    wrong = Spool(url, b"b" * 32)
    lease = wrong.claim("w")
    with pytest.raises(SignatureError, match="another key"):
        wrong.fetch_job(lease, tmp_path / "got")
    assert not (tmp_path / "got").exists() and not list(tmp_path.glob(".got*"))
    assert wrong.fail(lease, "signature")
    Spool(url, b"a" * 32).submit_job(_job_dir(tmp_path, "src2"), {"id": "job-2"})
    target = tmp_path / "spool" / "jobs" / "job-2" / "data" / "a.bin"
    blob = bytearray(target.read_bytes())
    blob[7] ^= 0x80
    target.write_bytes(bytes(blob))
    right = Spool(url, b"a" * 32)
    lease = right.claim("w")
    assert lease.job_id == "job-2"
    with pytest.raises(SignatureError, match="tampered"):
        right.fetch_job(lease, tmp_path / "got2")
    assert not (tmp_path / "got2").exists()


def test_expired_lease_is_reclaimed_and_old_holder_loses_it(tmp_path):
    url = f"file://{tmp_path / 'spool'}"
    Spool(url, b"k" * 32).submit_job(_job_dir(tmp_path), {"id": "job-1"})
    a = Spool(url, b"k" * 32, lease_s=0.3)
    b = Spool(url, b"k" * 32, lease_s=0.3)
    la = a.claim("a")
    assert b.claim("b") is None
    claims = []
    wait_for(lambda: bool(claims.append(b.claim("b")) or claims[-1]), 5.0, what="lease expiry")
    lb = claims[-1]
    assert lb.gen == 1 and len(claims) > 1  # refused while fresh, granted once expired
    assert not a.heartbeat(la) and not a.publish_result(la, _job_dir(tmp_path, "r"), {})
    assert b.heartbeat(lb)
    assert b.publish_result(lb, _job_dir(tmp_path, "r2"), {})
    assert a.status("job-1")["gen"] == 1


def test_racing_workers_never_share_a_job(tmp_path):
    url = f"file://{tmp_path / 'spool'}"
    producer = Spool(url, b"k" * 32)
    for i in range(6):
        producer.submit_job(_job_dir(tmp_path, f"s{i}"), {"id": f"job-{i}"})
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(name):
        s = Spool(url, b"k" * 32)
        while (lease := s.claim(name)) is not None:
            with lock:
                got.append((lease.job_id, name))

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(j for j, _ in got) == [f"job-{i}" for i in range(6)]
    assert MANIFEST == "manifest.json"
