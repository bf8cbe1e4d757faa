"""A learner killed with SIGKILL resumes from its last checkpoint with identical counters, buffers, networks,
optimizer and RNG state — even when the ring buffer overwrote steps the checkpoint knows after it was taken."""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import wait_for

sys.path.insert(0, str(Path(__file__).parent))
from rl_kill_worker import config  # noqa: E402

from irevla_ros.core.rl import OnlineLearner  # noqa: E402

WORKER = Path(__file__).parent / "rl_kill_worker.py"


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def start(procs, tmp_path, mode: str):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    proc = procs.start([sys.executable, str(WORKER), str(run_dir), str(out), mode], name=f"rl-worker-{mode}")
    return proc, run_dir, out


def resumed_fingerprint(run_dir: Path) -> tuple[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learner = OnlineLearner(config(str(run_dir)))
        fp = json.loads(json.dumps(learner.fingerprint()))  # same JSON normalisation as the worker's file
        name = learner.resumed_from
        learner.close(checkpoint=False)
    finally:
        torch.set_num_threads(threads)
    return name, fp


def test_sigkill_after_the_ring_wrapped_resumes_exactly(procs, tmp_path):
    proc, run_dir, out = start(procs, tmp_path, "once")
    # 60 steps after the checkpoint: the 40-step ring has wrapped over everything the checkpoint holds.
    wait_for(lambda: (read_json(out / "progress.json") or {}).get("written_after", 0) >= 60 or proc.poll() is not None,
             timeout=120, what="the worker to write past the checkpoint")
    assert proc.poll() is None, procs.log_of(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    (expected_name, expected), = read_json(out / "checkpoints.json").items()
    name, fp = resumed_fingerprint(run_dir)
    assert name == expected_name
    assert fp == expected
    assert fp["counters"]["transitions"] >= 30 and fp["updates"] > 0


@pytest.mark.parametrize("kill_after_s", [random.Random().uniform(0.0, 1.5)])
def test_sigkill_at_any_moment_never_breaks_resume(procs, tmp_path, kill_after_s):
    """Killed at a random moment (maybe mid-checkpoint): resume works and matches a recorded checkpoint."""
    proc, run_dir, out = start(procs, tmp_path, "many")
    wait_for(lambda: len(read_json(out / "checkpoints.json") or {}) >= 2 or proc.poll() is not None, timeout=120,
             what="two checkpoints")
    assert proc.poll() is None, procs.log_of(proc)
    time.sleep(kill_after_s)  # a random point in the worker's write/checkpoint cycle (not a synchronisation)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    recorded = read_json(out / "checkpoints.json")
    name, fp = resumed_fingerprint(run_dir)
    assert name is not None
    if name in recorded:
        assert fp == recorded[name]
    else:  # killed after the checkpoint became durable but before the worker noted it: it must be the newest
        assert name > max(recorded)
    # A second resume from the same files gives the same state (resuming does not disturb the checkpoint).
    assert resumed_fingerprint(run_dir) == (name, fp)
