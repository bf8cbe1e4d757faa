"""Stage-1 learner core (ROS-free): replay storage, pairing, validation, weights, checkpoints, demos."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import DIM, TOKENS, Bandit, Reach  # noqa: E402

from irevla_ros.core.data.codec import PayloadError, Transition, encode  # noqa: E402
from irevla_ros.core.model.head import ActionHead  # noqa: E402
from irevla_ros.core.rl import (  # noqa: E402
    OnlineLearner,
    ReplayBuffer,
    RLConfig,
    bytes_per_transition,
    decode_head_weights,
)
from irevla_ros.core.rl.checkpoint import CheckpointStore  # noqa: E402
from irevla_ros.core.rl.learner import parse_version  # noqa: E402
from irevla_ros.core.rl.replay import ReplayError  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one thread avoids oversubscription (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(tmp_path, **overrides) -> RLConfig:
    base = dict(run_dir=str(tmp_path / "run"), feature_tokens=TOKENS, feature_dim=DIM, num_learned_tokens=2,
                hidden_dim=32, batch_size=32, warmup_transitions=8, utd_ratio=1.0, tensorboard=False,
                online_capacity_bytes=200 * bytes_per_transition((TOKENS, DIM), 0),
                demo_capacity_bytes=100 * bytes_per_transition((TOKENS, DIM), 0),
                ppo_rollout_steps=32, ppo_minibatch_size=16, checkpoint_every_s=1e6)
    base.update(overrides)
    return RLConfig(**base)


def step(ep: str, i: int, *, done=False, terminal=False, intervention=False, reward=0.0, value=None,
         version="0", tokens=TOKENS, dim=DIM) -> Transition:
    v = float(i) if value is None else value
    return Transition(episode_id=ep, step=i, features=np.full((tokens, dim), v, np.float16),
                      action=np.full(7, 0.1, np.float32), reward=reward, done=done, terminal=terminal,
                      success=terminal, intervention=intervention, policy_version=version)


# --- replay storage ------------------------------------------------------------------------------------
def test_capacity_is_set_in_bytes_and_features_are_fp16_on_disk(tmp_path):
    per = bytes_per_transition((TOKENS, DIM), 0)
    assert per == TOKENS * DIM * 2 + 8 + 7 * 4 + 4 + 4 + 1 + 8 + 8 + 8
    learner = OnlineLearner(small_config(tmp_path, online_capacity_bytes=50 * per + per - 1))
    assert learner.online.capacity == 50
    features = Path(learner.online.directory) / "features.f16"
    assert features.stat().st_size == 50 * TOKENS * DIM * 2
    # BLIP-2-shaped features: ~50 tokens (32 queries + instruction) x 2560 (OPT-2.7B width), one camera.
    assert bytes_per_transition((50, 2560), 0) == 50 * 2560 * 2 + 69


def test_steps_pair_into_transitions_with_next_features(tmp_path):
    buf = ReplayBuffer(tmp_path / "b", 10, (TOKENS, DIM))
    slots = [buf.add(np.full((TOKENS, DIM), i, np.float16), np.zeros(7, np.float32), reward=i)[0] for i in range(3)]
    assert len(buf) == 0  # nothing is sampleable before it has a next observation
    buf.link(slots[0], slots[1])
    buf.link(slots[1], slots[2])
    batch = buf.gather(np.array([slots[0], slots[1]]))
    assert batch.features[:, 0, 0].tolist() == [0, 1]
    assert batch.next_features[:, 0, 0].tolist() == [1, 2]
    assert len(buf.sample(64, np.random.default_rng(0))) == 64
    assert set(np.unique(buf.sample(64, np.random.default_rng(0)).reward)) == {0.0, 1.0}


def test_ring_overwrite_drops_the_overwritten_transition_and_stale_pending_links(tmp_path):
    learner = OnlineLearner(small_config(tmp_path, online_capacity_bytes=4 * bytes_per_transition((TOKENS, DIM), 0)))
    for i in range(3):
        learner.add_transition(step("a", i))
    assert len(learner.online) == 2
    learner.add_transition(step("b", 0))  # fills the ring
    learner.add_transition(step("b", 1))  # overwrites a/0
    assert len(learner.online) == 2  # a/1 -> a/2 and b/0 -> b/1
    for i in range(2, 5):
        learner.add_transition(step("b", i))
    # a/2 (pending) was overwritten: a/3 must not link to the slot now holding b's step.
    learner.add_transition(step("a", 3))
    assert learner.counters["gaps"] == 1
    batch = learner.online.gather(np.flatnonzero(learner.online.next_idx >= 0))
    assert np.all(batch.next_features[:, 0, 0] - batch.features[:, 0, 0] == 1)


# --- validation ----------------------------------------------------------------------------------------
def test_malformed_transitions_are_rejected_with_a_counted_reason(tmp_path):
    learner = OnlineLearner(small_config(tmp_path))
    good = step("e", 0)
    assert learner.ingest(good.to_bytes())
    nan = step("e", 1)
    nan.features[0, 0] = np.nan
    raw_nan = encode("transition", {"features": nan.features, "action": nan.action, "proprio": np.zeros(0, np.float32),
                                    "images": np.zeros((0, 0, 0, 3), np.uint8)},
                     {k: getattr(nan, k) for k in ("episode_id", "step", "log_prob", "reward", "done", "terminal",
                                                   "success", "intervention", "policy_version", "task", "cameras")})
    cases = {
        "corrupt": b"\x00\x01garbage",
        "wrong_kind": encode("head_weights", {"x": np.zeros(1, np.float32)}, {}),
        "non_finite": raw_nan,
        "feature_shape": step("e", 1, tokens=TOKENS + 1).to_bytes(),
        "duplicate_step": step("e", 0).to_bytes(),
        "action_range": Transition("e", 1, np.zeros((TOKENS, DIM), np.float16), np.full(7, 1.5, np.float32)).to_bytes(),
        "episode_id": step("", 0).to_bytes(),
    }
    for reason, payload in cases.items():
        assert not learner.ingest(payload), reason
        assert learner.rejected[reason] == 1, (reason, dict(learner.rejected))
    assert learner.counters["transitions"] == 1  # nothing of a bad transition was stored
    assert learner.online.occupied == 1
    learner.add_transition(step("e", 1, done=True, terminal=True))
    assert not learner.add_transition(step("e", 2))
    assert learner.rejected["after_done"] == 1


def test_ppo_drops_transitions_from_stale_policy_versions(tmp_path):
    learner = OnlineLearner(small_config(tmp_path, algorithm="ppo", ppo_max_policy_lag=1))
    learner.version = 5
    assert not learner.add_transition(step("e", 0, version="rl-3"))
    assert learner.rejected["stale_policy"] == 1
    assert learner.add_transition(step("e", 0, version="rl-4"))
    assert parse_version("12") == 12 and parse_version("sft") == 0


@pytest.mark.parametrize("field, value", [("algorithm", "dqn"), ("gamma", 1.5), ("demo_ratio", -0.1),
                                          ("critic_subsample", 5), ("batch_size", 0), ("utd_ratio", math.nan),
                                          ("utd_ratio", -1.0),
                                          ("feature_dim", 16)])
def test_bad_parameters_raise_naming_the_value(field, value):
    with pytest.raises(ValueError, match=field if field != "feature_dim" else "feature_tokens"):
        RLConfig(**{field: value})


# --- interventions -------------------------------------------------------------------------------------
def test_interventions_go_to_both_buffers(tmp_path):
    learner = OnlineLearner(small_config(tmp_path))
    learner.add_transition(step("e", 0))
    learner.add_transition(step("e", 1, intervention=True))
    learner.add_transition(step("e", 2, intervention=True))
    learner.add_transition(step("e", 3))  # policy again: stored in demo only as e/2's next observation
    learner.add_transition(step("e", 4, done=True))
    assert len(learner.online) == 5
    assert len(learner.demo) == 2  # e/1 -> e/2 and e/2 -> e/3
    batch = learner.demo.gather(np.flatnonzero(learner.demo.next_idx >= 0))
    assert sorted(batch.features[:, 0, 0].tolist()) == [1, 2]
    assert sorted(batch.next_features[:, 0, 0].tolist()) == [2, 3]
    assert batch.intervention.tolist() == [1.0, 1.0]
    assert learner.counters["interventions"] == 2


def test_batches_are_half_demo_half_online(tmp_path):
    learner = OnlineLearner(small_config(tmp_path, batch_size=40))
    for i in range(6):
        learner.add_transition(step("d", i, intervention=True, value=-1.0, done=i == 5))
    for i in range(10):
        learner.add_transition(step("o", i, value=1.0, done=i == 9))
    batch = learner.sample_batch(40)
    assert len(batch) == 40
    assert (batch.features[:, 0, 0] == -1).sum() >= 20  # demo half (+ interventions seen online)


# --- weights -------------------------------------------------------------------------------------------
def test_published_weights_verify_and_load_into_the_policy_head(tmp_path):
    learner = OnlineLearner(small_config(tmp_path))
    payload = learner.weights_payload()
    tensors, meta = decode_head_weights(payload, expected=learner.head_config)
    assert meta["version"] == 1 and meta["algorithm"] == "sac"
    head = ActionHead(learner.head_config)
    head.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    f = torch.randn(3, TOKENS, DIM)
    assert torch.allclose(head.deterministic(f), learner.algo.actor.deterministic(f))
    assert decode_head_weights(learner.weights_payload())[1]["version"] == 2
    tampered = bytearray(payload)
    tampered[-5] ^= 0xFF
    with pytest.raises(PayloadError):
        decode_head_weights(bytes(tampered))


def test_init_head_starts_from_the_given_weights(tmp_path):
    first = OnlineLearner(small_config(tmp_path / "a"))
    path = tmp_path / "head.weights"
    path.write_bytes(first.weights_payload())
    second = OnlineLearner(small_config(tmp_path / "b", init_head=str(path), seed=7))
    for k, v in first.algo.actor.state_dict().items():
        assert torch.equal(v, second.algo.actor.state_dict()[k])
    bad = tmp_path / "bad.weights"
    bad.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises((ValueError, PayloadError)):
        OnlineLearner(small_config(tmp_path / "c", init_head=str(bad)))


def test_init_head_from_the_policy_model_folder(tmp_path):
    """init_head = the policy's model folder: head config, feature shape and head weights come from it."""
    from irevla_ros.core.model.vla import HEAD_FILE, VLAModel

    model = VLAModel.from_preset("tiny", head={"hidden_dim": 48, "num_learned_tokens": 3})
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    learner = OnlineLearner(small_config(tmp_path, init_head=str(folder), feature_tokens=0, feature_dim=0))
    assert learner.feature_shape == model.feature_shape
    assert learner.head_config == model.config.head
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, learner.algo.actor.state_dict()[k])
    (folder / HEAD_FILE).write_bytes((folder / HEAD_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="does not match"):
        OnlineLearner(small_config(tmp_path / "again", init_head=str(folder)))


def test_a_new_model_from_sft_starts_a_new_stage(tmp_path):
    """FULL_WEIGHTS_READY: stale features (old backbone) are set aside, the head restarts from the new folder and
    its weights carry base_version so the policy can refuse heads trained on another backbone."""
    from irevla_ros.core.model.vla import VLAModel, folder_sha256

    old, new = tmp_path / "model-1", tmp_path / "model-2"
    VLAModel.from_preset("tiny", seed=0).save_pretrained(old)
    sft = VLAModel.from_preset("tiny", seed=1)
    sft.save_pretrained(new)
    cfg = small_config(tmp_path, init_head=str(old), feature_tokens=0, feature_dim=0, warmup_transitions=2)
    learner = OnlineLearner(cfg)
    shape = learner.feature_shape
    for i in range(4):
        learner.add_transition(step("e", i, done=i == 3, tokens=shape[0], dim=shape[1]))
    learner.train()
    learner.weights_payload()
    with pytest.raises(ValueError, match="does not match"):
        learner.next_stage(str(new), "2", "0" * 64)
    assert len(learner.online) == 4  # refused: nothing changed
    stage = learner.next_stage(str(new), "2", folder_sha256(new))
    assert stage.base_version == "2" and stage.version == 0 and len(stage.online) == 0
    for k, v in sft.head.state_dict().items():
        assert torch.equal(v, stage.algo.actor.state_dict()[k])
    assert decode_head_weights(stage.weights_payload())[1]["base_version"] == "2"
    assert list((Path(cfg.run_dir) / "rl").glob("buffers.stage-*/online/features.f16"))
    stage.close()
    restarted = OnlineLearner(cfg)  # the node restarts with its original parameters: resumes the new stage
    assert restarted.base_version == "2" and restarted.version == 1 and len(restarted.online) == 0


def test_only_the_newest_previous_stages_stay_on_disk(tmp_path):
    from irevla_ros.core.model.vla import VLAModel, folder_sha256

    folder = tmp_path / "model"
    VLAModel.from_preset("tiny", seed=0).save_pretrained(folder)
    cfg = small_config(tmp_path, init_head=str(folder), feature_tokens=0, feature_dim=0, keep_previous_stages=1)
    learner = OnlineLearner(cfg)
    root = Path(cfg.run_dir) / "rl"
    stamps = []
    for n in range(3):
        learner = learner.next_stage(str(folder), str(n + 2), folder_sha256(folder))
        stamps.append(sorted(p.name for p in root.glob("buffers.stage-*"))[-1])
    assert sorted(p.name for p in root.glob("buffers.stage-*")) == [stamps[-1]]  # the newest previous stage only
    assert sorted(p.name for p in root.glob("checkpoints.stage-*")) == [stamps[-1].replace("buffers", "checkpoints")]
    assert (root / "buffers").is_dir() and (root / "checkpoints").is_dir()  # the running stage is untouched
    learner.close()
    with pytest.raises(ValueError, match="keep_previous_stages"):
        small_config(tmp_path, keep_previous_stages=-2)


# --- checkpoints ---------------------------------------------------------------------------------------
def fill(learner: OnlineLearner, episodes: int, seed: int = 0) -> None:
    env = Reach(seed)
    for _ in range(episodes):
        f = env.reset()
        while f is not None:
            t, f = env.step(f, env.expert(), intervention=bool(env.t % 3 == 0))
            learner.add_transition(t)
            learner.train()


@pytest.mark.parametrize("algorithm", ["sac", "ppo"])
def test_utd_ratio_zero_collects_without_ever_updating(tmp_path, algorithm):
    """The --no-rl-updates control arm: transitions are kept (stage 2 and the counters see them), the head never
    changes, so what the policy gains comes from stage 2 alone."""
    learner = OnlineLearner(small_config(tmp_path, algorithm=algorithm, utd_ratio=0.0))
    before = {k: v.clone() for k, v in learner.algo.actor.state_dict().items()}
    fill(learner, 12)
    assert len(learner.online) > learner.config.warmup_transitions
    assert learner.algo.updates == 0 and learner.updates_due() == 0
    assert all(torch.equal(v, learner.algo.actor.state_dict()[k]) for k, v in before.items())


def test_large_gathers_split_over_threads_copy_exactly_the_rows_asked(tmp_path, monkeypatch):
    from irevla_ros.core.rl import replay
    from irevla_ros.core.rl.replay import Batch

    rng = np.random.default_rng(0)
    source = rng.standard_normal((300, 4, 8)).astype(np.float16)
    idx = np.sort(rng.integers(0, 300, 97))
    one_thread = np.empty((97, 4, 8), np.float16)
    replay.gather_rows(source, idx, one_thread)
    monkeypatch.setattr(replay, "PARALLEL_GATHER_BYTES", 1)
    monkeypatch.setattr(replay, "GATHER_THREADS", 4)
    threaded = np.full((97, 4, 8), np.nan, np.float16)
    replay.gather_rows(source, idx, threaded)
    assert np.array_equal(one_thread, source[idx]) and np.array_equal(threaded, source[idx])

    # A learner's batch (demo rows, then online rows) is each buffer's own gather, in that order.
    learner = OnlineLearner(small_config(tmp_path))
    fill(learner, 6)
    demo_idx, online_idx = learner.demo.sample_indices(5, rng), learner.online.sample_indices(7, rng)
    both = replay.gather_batch([(learner.demo, demo_idx), (learner.online, online_idx)])
    want = Batch.concat([learner.demo.gather(demo_idx), learner.online.gather(online_idx)])
    for k in Batch.__dataclass_fields__:
        assert np.array_equal(getattr(both, k), getattr(want, k)), k
    assert both.intervention[:5].all()  # demo rows are flagged as interventions
    learner.close(checkpoint=False)


def test_prefetched_batches_train_exactly_as_sequential_ones(tmp_path):
    """The CUDA path samples the next batch in a worker thread while the current update runs (Prefetcher): the
    batches and their order must be the ones the sequential loop draws. Run here on the CPU by giving a learner
    the prefetcher the CUDA path builds (unpinned); test_rl_cuda.py runs the real thing on a GPU."""
    from irevla_ros.core.rl.sac import Prefetcher, stage_batch

    sequential = OnlineLearner(small_config(tmp_path / "seq"))  # each learner seeds torch as it starts
    fill(sequential, 12)
    prefetched = OnlineLearner(small_config(tmp_path / "pre"))
    prefetched._prefetcher = Prefetcher(lambda: stage_batch(prefetched.sample_batch(32)))
    fill(prefetched, 12)
    assert prefetched.algo.updates == sequential.algo.updates > 0
    assert prefetched._prefetcher._pending is None  # drained: nothing reads the buffers between train() calls
    for k, v in sequential.algo.actor.state_dict().items():
        torch.testing.assert_close(prefetched.algo.actor.state_dict()[k], v, rtol=0, atol=0, msg=k)
    prefetched.close(checkpoint=False)
    assert prefetched._prefetcher is None


def test_checkpoint_resume_restores_everything(tmp_path):
    cfg = small_config(tmp_path)
    learner = OnlineLearner(cfg)
    fill(learner, 12)
    assert learner.algo.updates > 0
    learner.checkpoint()
    before = learner.fingerprint()
    learner.close(checkpoint=False)
    resumed = OnlineLearner(cfg)
    assert resumed.resumed_from == learner.checkpoint_name
    assert resumed.fingerprint() == before
    # Training continues identically from the restored optimizer and RNG states.
    resumed.train(max_updates=3)


def test_corrupt_latest_checkpoint_falls_back_and_an_existing_directory_never_crashes(tmp_path):
    cfg = small_config(tmp_path, keep_checkpoints=3, online_capacity_bytes=16 * bytes_per_transition((TOKENS, DIM), 0))
    learner = OnlineLearner(cfg)
    fill(learner, 3)
    first = learner.checkpoint()
    first_updates, first_occupied = learner.algo.updates, learner.online.occupied
    fill(learner, 6, seed=1)  # wraps the ring: `first`'s undo log is gone once `second` is written
    second = learner.checkpoint()
    learner.close(checkpoint=False)
    ckpts = Path(cfg.run_dir) / "rl" / "checkpoints"
    (ckpts / second / "learner.pt").write_bytes(b"tampered")
    (ckpts / "ckpt-garbage").mkdir()
    (ckpts / ".tmp-ckpt-000000001-1").mkdir()
    resumed = OnlineLearner(cfg)
    assert resumed.resumed_from == first
    assert resumed.algo.updates == first_updates
    assert resumed.rejected["checkpoint_unusable"] == 1
    assert resumed.online.lost_on_resume > 0  # steps written after `first` are not trusted
    assert resumed.online.occupied == first_occupied - resumed.online.lost_on_resume > 0
    name = resumed.checkpoint()  # writing next to every kind of leftover works
    assert (ckpts / "LATEST").read_text() == name
    fresh = OnlineLearner(small_config(tmp_path, resume=False))
    assert fresh.algo.updates == 0 and len(fresh.online) == 0
    fresh.checkpoint()
    assert list(fresh.checkpoints.candidates()) == [fresh.checkpoint_name]  # the old run is kept aside, not mixed
    aside = {p.name for p in (Path(cfg.run_dir) / "rl").glob("checkpoints.replaced-*/ckpt-*")}
    assert {first, name} <= aside


def test_switching_algorithm_keeps_the_actor_and_the_buffers(tmp_path):
    learner = OnlineLearner(small_config(tmp_path))
    fill(learner, 6)
    learner.checkpoint()
    actor = {k: v.clone() for k, v in learner.algo.actor.state_dict().items()}
    online = len(learner.online)
    learner.close(checkpoint=False)
    ppo = OnlineLearner(small_config(tmp_path, algorithm="ppo"))
    assert len(ppo.online) == online
    for k, v in actor.items():
        assert torch.equal(v, ppo.algo.actor.state_dict()[k])


# --- demos ---------------------------------------------------------------------------------------------
def test_demo_dir_of_transition_files(tmp_path):
    demo_dir = tmp_path / "demos"
    demo_dir.mkdir()
    env = Bandit(0)
    for _ in range(5):
        c, f = env.reset()
        t = env.transition(c, f, env.expert(c), intervention=True)
        (demo_dir / f"{t.episode_id}.transition").write_bytes(t.to_bytes())
    (demo_dir / "broken.transition").write_bytes(b"not a payload")
    learner = OnlineLearner(small_config(tmp_path, demo_dir=str(demo_dir), feature_tokens=0, feature_dim=0))
    assert learner.feature_shape == (TOKENS, DIM)  # taken from the demos
    assert len(learner.demo) == 5
    assert learner.rejected["demo: corrupt file"] == 1
    assert float(learner.demo.sample(16, np.random.default_rng(0)).reward.min()) == 1.0


def test_demo_dir_episode_store(tmp_path):
    from irevla_ros.core.data.episodes import EpisodeWriter

    writer = EpisodeWriter(tmp_path / "store")
    env = Reach(0)
    lengths = {}
    for source in ("expert", "online"):
        f = env.reset()
        rec = writer.begin(task="reach", source=source)
        while f is not None:
            t, nxt = env.step(f, env.expert())
            rec.add_step(action=t.action, state=np.zeros(2), features=f.astype(np.float32), reward=t.reward,
                         success=t.success, done=t.done)
            f = nxt
        rec.finish(success=t.success)
        lengths[source] = env.t
    learner = OnlineLearner(small_config(tmp_path, demo_dir=str(tmp_path / "store")))
    assert len(learner.demo) == lengths["expert"]  # only the expert episode, every step linked
    batch = learner.demo.gather(np.flatnonzero(learner.demo.next_idx >= 0))
    assert batch.terminal.sum() == 1


def test_checkpoint_store_is_atomic_and_prunes(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    names = [store.save(i, {"a.bin": bytes([i]) * 10}) for i in range(4)]
    assert list(store.candidates()) == [names[3], names[2]]
    assert store.load(names[3])["a.bin"] == bytes([3]) * 10
    manifest = json.loads((tmp_path / names[3] / "manifest.json").read_text())
    assert manifest["files"]["a.bin"]["size"] == 10
    shutil.rmtree(tmp_path / names[2])
    assert list(store.candidates()) == [names[3]]


def test_replay_refuses_mismatched_checkpoint(tmp_path):
    buf = ReplayBuffer(tmp_path / "b", 10, (TOKENS, DIM))
    sd = buf.state_dict()
    other = ReplayBuffer(tmp_path / "c", 12, (TOKENS, DIM))
    with pytest.raises(ReplayError, match="does not match"):
        other.load_state_dict(sd, tag=None)
