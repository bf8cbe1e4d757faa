"""Demo features per stage: the learner never runs the VLM, so the expert demos' features are re-encoded with each
new backbone (`encode_demo_features`), by the stage-2 worker next to its result, and `next_stage` loads them.

Real parts: the tiny BLIP-2 VLA (random init), the episode store, the signed file:// spool, the worker's
`process_job` (in this process: one short LoRA job), the learner's stage switch.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from irevla_ros.core.data.codec import Transition
from irevla_ros.core.data.episodes import EpisodeStore, EpisodeWriter, decode_image
from irevla_ros.core.model.vla import VLAModel, folder_sha256, verify_folder
from irevla_ros.core.rl import OnlineLearner, RLConfig
from irevla_ros.core.rl.demos import (
    COMPLETE,
    demo_features_dir,
    encode_demo_features,
    load_demo_episodes,
    read_features_marker,
)
from irevla_ros.core.sft.synthetic import record_synthetic

HEAD = {"num_learned_tokens": 2, "hidden_dim": 32, "proprio_dim": 8}  # proprio = EE pose + gripper (8)
STEPS = 5


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _demos(root: Path, episodes: int = 3, seed: int = 1) -> Path:
    writer = EpisodeWriter(root)
    record_synthetic(writer, episodes=episodes, steps=STEPS, source="expert", seed=seed)
    record_synthetic(writer, episodes=1, steps=STEPS, source="online", success=True, seed=seed + 1)  # not a demo
    return root


def _model(seed: int) -> VLAModel:
    return VLAModel.from_preset("tiny", num_cameras=1, head=HEAD, seed=seed)


def _expected(model: VLAModel, store: EpisodeStore) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """features (fp16, as the policy sends them) and state per 'demo-<id>' episode, computed independently."""
    out = {}
    with torch.inference_mode():
        for info in store.episodes(source="expert"):
            ep = store.load(info)
            images = [np.stack([decode_image(b) for b in ep.images["front"]])]
            feats = model.encode(images, [info.task] * len(ep)).float().numpy().astype(np.float16)
            out[f"demo-{info.episode_id}"] = (feats, ep.state)
    return out


def test_encode_demo_features_layout_proprio_atomic_and_idempotent(tmp_path):
    store = EpisodeStore(_demos(tmp_path / "demos"))
    model = _model(0)
    out = tmp_path / "feats"
    log: list[str] = []
    assert encode_demo_features(model, [store.root], out, ["front"], model_sha256="a" * 64, log=log.append) == 3
    marker = read_features_marker(out)
    assert marker["episodes"] == 3 and marker["transitions"] == 3 * STEPS and marker["model_sha256"] == "a" * 64
    assert marker["feature_shape"] == list(model.feature_shape) and marker["proprio_dim"] == 8
    rejected = Counter()
    episodes = load_demo_episodes(str(out), rejected)
    assert not rejected and len(episodes) == 3
    expected = _expected(model, store)
    for steps in episodes:
        feats, state = expected[steps[0].episode_id]
        assert [t.step for t in steps] == list(range(STEPS))
        np.testing.assert_allclose(np.stack([t.features for t in steps]).astype(np.float32),
                                   feats.astype(np.float32), atol=2e-3)
        np.testing.assert_array_equal(np.stack([t.proprio for t in steps]), state)  # proprio = the state column
        assert all(t.intervention for t in steps) and steps[-1].done and steps[-1].terminal
        assert not any(t.done for t in steps[:-1])

    # Leftovers of a killed run (a dead writer's temp folder, a moved-aside old one) go; a live writer's stays.
    for name in (".feats.tmp-999999999-1", ".feats.old-5-6", f".feats.tmp-{os.getpid()}-7"):
        (tmp_path / name).mkdir()
    # Idempotent: the same model and demos again -> nothing rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert encode_demo_features(model, [store.root], out, ["front"], model_sha256="a" * 64) == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    other = _model(1)
    assert encode_demo_features(other, [store.root], out, ["front"], model_sha256="c" * 64) == 3
    live = f".feats.tmp-{os.getpid()}-7"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, "demos", "feats"])
    (tmp_path / live).rmdir()

    # A crash half-way through a new model's encoding leaves the complete old folder and no temporary one.
    calls = {"n": 0}
    real_encode = other.encode

    def failing_encode(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real_encode(*args, **kwargs)

    other.encode = failing_encode
    with pytest.raises(RuntimeError, match="killed"):
        encode_demo_features(other, [store.root], out, ["front"], model_sha256="b" * 64)
    assert read_features_marker(out)["model_sha256"] == "c" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos", "feats"]
    other.encode = real_encode
    assert encode_demo_features(other, [store.root], out, ["front"], model_sha256="b" * 64) == 3  # replaced
    assert read_features_marker(out)["model_sha256"] == "b" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos", "feats"]

    # Data that does not fit the model is a clear error, not a silently wrong demo buffer.
    with pytest.raises(ValueError, match="camera"):
        encode_demo_features(model, [store.root], tmp_path / "x", ["front", "wrist"])
    wrong = VLAModel.from_preset("tiny", num_cameras=1, head={**HEAD, "proprio_dim": 3}, seed=0)
    with pytest.raises(ValueError, match="proprio of size 3"):
        encode_demo_features(wrong, [store.root], tmp_path / "x", ["front"])
    with pytest.raises(ValueError, match="not an episode store"):
        encode_demo_features(model, [tmp_path / "nothing"], tmp_path / "x", ["front"])
    assert not (tmp_path / "x").exists()


def _learner_config(tmp_path: Path, model_dir: Path, demo_dir: Path) -> RLConfig:
    return RLConfig(run_dir=str(tmp_path / "run"), init_head=str(model_dir), demo_dir=str(demo_dir),
                    num_learned_tokens=2, hidden_dim=32, proprio_dim=8, batch_size=8, warmup_transitions=4,
                    online_capacity_bytes=1 << 20, demo_capacity_bytes=1 << 20, tensorboard=False)


def _demo_buffer(learner: OnlineLearner) -> tuple[np.ndarray, np.ndarray]:
    n = len(learner.demo)
    batch = learner.demo.gather(np.arange(n))
    return batch.features.astype(np.float32), batch.proprio


def test_next_stage_loads_the_new_backbones_demo_features_else_keeps_the_old(tmp_path):
    store = EpisodeStore(_demos(tmp_path / "demos", episodes=2))
    old, new = _model(0), _model(1)
    old_dir, new_dir = tmp_path / "models" / "sft0", tmp_path / "models" / "sft1"
    old_sha, new_sha = old.save_pretrained(old_dir, version="sft0"), new.save_pretrained(new_dir, version="sft1")
    encode_demo_features(old, [store.root], demo_features_dir(old_dir), ["front"], model_sha256=old_sha)
    log: list[str] = []
    learner = OnlineLearner(_learner_config(tmp_path, old_dir, demo_features_dir(old_dir)), log=log.append)
    old_feats, old_proprio = _demo_buffer(learner)
    assert len(old_feats) == 2 * STEPS and old_proprio.shape == (2 * STEPS, 8)

    # No features for the new model yet: the new stage keeps the old ones, and says so.
    stage = learner.next_stage(str(new_dir), "sft1", new_sha)
    assert any("no usable demo features" in m for m in log)
    np.testing.assert_array_equal(np.sort(_demo_buffer(stage)[0].ravel()), np.sort(old_feats.ravel()))

    # Features encoded by another model under the new folder's name are not trusted either.
    encode_demo_features(old, [store.root], demo_features_dir(new_dir), ["front"], model_sha256=old_sha)
    log.clear()
    stage = stage.next_stage(str(new_dir), "sft1b", new_sha)
    assert any("encoded by another model" in m for m in log)

    # With the new backbone's features next to the new model, the demo buffer holds those (with proprio).
    encode_demo_features(new, [store.root], demo_features_dir(new_dir), ["front"], model_sha256=new_sha)
    stage = stage.next_stage(str(new_dir), "sft1c", new_sha)
    feats, proprio = _demo_buffer(stage)
    expected = _expected(new, store)
    want = np.concatenate([f for f, _ in expected.values()]).astype(np.float32)
    assert feats.shape == want.shape and not np.allclose(np.sort(feats.ravel()), np.sort(old_feats.ravel()))
    np.testing.assert_allclose(np.sort(feats.ravel()), np.sort(want.ravel()), atol=2e-3)
    np.testing.assert_array_equal(np.sort(proprio, axis=0),
                                  np.sort(np.concatenate([s for _, s in expected.values()]), axis=0))
    assert stage.base_version == "sft1c" and stage.config.demo_dir == str(demo_features_dir(new_dir))
    stage.close(checkpoint=False)


def test_stage2_worker_writes_demo_features_for_the_model_it_trained(tmp_path):
    """The worker encodes the job's expert episodes with the model it just trained, next to the result's model
    folder; the result bundle still verifies (signature and the model manifest) and the learner can use them."""
    from irevla_ros.core.data.spool import Spool
    from irevla_ros.core.sft.jobs import JobConfig, build_job_dir, select_episodes
    from irevla_ros.core.sft.worker import process_job

    key = bytes(range(32))
    store = EpisodeStore(_demos(tmp_path / "demos", episodes=4))
    cfg = JobConfig(val_fraction=0.25)
    sel = select_episodes([store], cfg, stage=2)
    body = build_job_dir(sel, tmp_path / "jobs" / "job-2", cfg, job_id="job-2", stage=2, iteration=1, version="2",
                         base_model={"preset": "tiny", "num_cameras": 1, "seed": 0, "head": HEAD},
                         sft={"mode": "lora", "steps": 3, "batch_size": 4, "val_every": 3})
    assert body["mix"]["online_task_balance"] == "sqrt"  # the default travels in the signed body to the worker
    spool = Spool(f"file://{tmp_path / 'spool'}", key)
    spool.submit_job(tmp_path / "jobs" / "job-2", body)
    lease = spool.claim("test-worker")
    result = process_job(spool, lease, tmp_path / "work", key, {}, heartbeat_s=5.0, progress=False)
    assert result["demo_features"] == {"path": "model.demo_features", "episodes": 4}  # the 4 expert, not online

    fetched = spool.fetch_result("job-2", tmp_path / "back")  # signature over every file, features included
    model_dir = tmp_path / "back" / "model"
    verify_folder(model_dir)
    assert folder_sha256(model_dir) == fetched["model_sha256"]
    features = demo_features_dir(model_dir)
    marker = json.loads((features / COMPLETE).read_text())
    assert marker["model_sha256"] == fetched["model_sha256"] and marker["transitions"] == 4 * STEPS
    episodes = load_demo_episodes(str(features))
    trained = VLAModel.from_pretrained(model_dir)
    expected = _expected(trained, store)
    assert sorted(expected) == sorted(steps[0].episode_id for steps in episodes)
    for steps in episodes:
        feats, state = expected[steps[0].episode_id]
        np.testing.assert_allclose(np.stack([t.features for t in steps]).astype(np.float32),
                                   feats.astype(np.float32), atol=2e-3)
        np.testing.assert_array_equal(np.stack([t.proprio for t in steps]), state)
    assert isinstance(episodes[0][0], Transition)
