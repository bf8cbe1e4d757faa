"""`irevla eval`: many held-out layouts in worker processes, compared layout by layout.

Real MuJoCo physics and rendering (EGL), real tiny random-init VLA models saved to folders; no mocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from irevla_ros.core.model.vla import HEAD_FILE, VLAModel
from irevla_ros.sim.env import SimEnv
from irevla_ros.sim.eval_cli import (
    Candidate,
    EvaluationInterrupted,
    evaluate_candidates,
    outcome_record,
    paired_counts,
    resolve_candidates,
    sign_test_p,
    summarize,
    wilson_interval,
)
from irevla_ros.sim.evaluate import evaluate_layouts


def test_interval_and_sign_test_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson_interval(18, 20)
    assert lo == pytest.approx(0.699, abs=1e-3) and hi == pytest.approx(0.972, abs=1e-3)
    assert sign_test_p(6, 0) == pytest.approx(2 / 64)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(10, 2) == pytest.approx(sign_test_p(2, 10)) == pytest.approx(0.03857, abs=1e-4)


def test_outcome_records_compare_layout_by_layout():
    record = outcome_record([True, False, True, True], seed_first=10_000)
    assert record["outcomes"] == "1011" and record["successes"] == 3 and record["rate"] == 0.75
    assert record["ci95"] == list(wilson_interval(3, 4)) and record["seed_first"] == 10_000
    # better on layouts 1 and 4, worse on layout 2, the same on layout 3
    assert paired_counts("1101", "1010") == (2, 1, sign_test_p(2, 1))
    with pytest.raises(ValueError, match="same layouts"):
        paired_counts("11", "110")


def test_an_episode_depends_only_on_its_layout_seed():
    """What lets layouts be split across processes: reset(seed) gives the same episode whatever ran before."""
    actions = np.tile([0.6, -0.4, -0.5, 0.0, 0.0, 0.3, 1.0], (6, 1))

    def rollout(env: SimEnv, seed: int):
        obs = env.reset(seed=seed)
        trace = [obs["ee_position"].copy()]
        for a in actions:
            obs, _, _ = env.step(a)
            trace.append(obs["ee_position"].copy())
        return np.array(trace), obs["images"]["front"].copy()

    with SimEnv("button", seed=0, image_size=64) as fresh, SimEnv("button", seed=0, image_size=64) as used:
        rollout(used, 10_003)
        used.step([-1.0, 1.0, 1.0, 0.0, 0.0, -1.0, -1.0])
        trace_a, image_a = rollout(fresh, 10_001)
        trace_b, image_b = rollout(used, 10_001)
    assert np.abs(trace_a[-1] - trace_a[0]).max() > 0.01, "the arm did not move: the check would be empty"
    np.testing.assert_allclose(trace_a, trace_b, atol=1e-9)
    assert np.array_equal(image_a, image_b)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        model = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}, seed=seed)
        path = root / f"m{seed}"
        model.save_pretrained(path, version=str(seed))
        paths.append(path)
    return paths


def test_parallel_outcomes_match_one_process_layout_by_layout(two_models):
    seeds = list(range(10_000, 10_003))
    candidates = [Candidate("a", two_models[0]), Candidate("b", two_models[1])]
    parallel = evaluate_candidates(candidates, ["button"], seeds, workers=2, image_size=64, chunk=1)
    for cand in candidates:
        model = VLAModel.from_pretrained(cand.path)
        assert parallel[(str(cand.path), "button")] == evaluate_layouts(model, "button", seeds, image_size=64)
    summary = summarize(candidates, ["button"], seeds, parallel)
    rows = {r["model"]: r for r in summary["rows"]}
    assert set(rows) == {"a", "b"} and all(len(r["outcomes"]) == 3 and r["episodes"] == 3 for r in rows.values())
    a, b = rows["a"]["outcomes"], rows["b"]["outcomes"]
    (pair,) = summary["paired"]
    assert pair["better_on"] == sum(x == "1" and y == "0" for x, y in zip(b, a, strict=True))
    assert pair["worse_on"] == sum(x == "0" and y == "1" for x, y in zip(b, a, strict=True))


def test_a_stop_request_ends_the_evaluation_early(two_models):
    """`irevla sim`'s Ctrl-C during an evaluation: the remaining layouts are not played."""
    played = []

    def stop_after_first_chunk() -> bool:
        played.append(1)
        return True

    with pytest.raises(EvaluationInterrupted, match="after 1 of 3"):
        evaluate_candidates([Candidate("a", two_models[0])], ["button"], [10_000, 10_001, 10_002], workers=1,
                            image_size=64, chunk=1, should_stop=stop_after_first_chunk)
    assert played == [1]


def _irevla(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-m", "irevla_ros.cli", "eval", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_writes_json_and_refuses_tampered_folders(two_models, tmp_path):
    out = tmp_path / "eval.json"
    done = _irevla(str(two_models[0]), str(two_models[1]), "--tasks", "button", "--episodes", "2", "--workers",
                   "2", "--image-size", "64", "--json", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert [r["model"] for r in summary["rows"]] == ["m0", "m1"] and summary["episodes"] == 2
    assert "held-out layouts" in done.stdout

    bad = tmp_path / "bad"
    VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}).save_pretrained(bad)
    head = bad / HEAD_FILE
    head.write_bytes(head.read_bytes()[:-8] + b"\0" * 8)
    done = _irevla(str(bad), "--tasks", "button", "--episodes", "1", "--workers", "1")
    assert done.returncode != 0 and "corrupt or was modified" in done.stderr
    assert "Traceback" not in done.stderr

    done = _irevla(str(tmp_path), "--episodes", "1")
    assert done.returncode != 0 and "neither a model folder" in done.stderr


def test_a_run_folder_expands_to_its_sft0_and_the_policy_the_loop_judged(two_models, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_models[0], run / "models" / "sft0")
    shutil.copytree(two_models[1], run / "models" / "final_running")
    stage2 = run / "sft" / "results" / "s2-1" / "model"
    # the loop judged the running policy (learner head on SFT-0), saved as models/final_running
    status = {"evaluated": {"model": str(run / "models" / "sft0"), "head": "learner v3",
                            "policy_folder": str(run / "models" / "final_running")}}
    (run / "loop_status.json").write_text(json.dumps(status))
    assert [(c.label, c.path) for c in resolve_candidates([str(run)])] == [
        ("run:sft0", run / "models" / "sft0"), ("run:final", run / "models" / "final_running")]
    # the loop judged SFT-0 itself (no stage 2 ran, no learner head): evaluated once
    status["evaluated"] = {"model": str(run / "models" / "sft0"), "head": "own",
                           "policy_folder": str(run / "models" / "sft0")}
    (run / "loop_status.json").write_text(json.dumps(status))
    assert [c.path for c in resolve_candidates([str(run)])] == [run / "models" / "sft0"]
    # a run written before policy_folder existed: the stage-2 model with its own head
    shutil.copytree(two_models[1], stage2)
    (run / "loop_status.json").write_text(json.dumps({"evaluated": {"model": str(stage2), "head": "own"}}))
    assert [c.path for c in resolve_candidates([str(run)])] == [run / "models" / "sft0", stage2]
