"""The actor's logic without ROS: staleness, the episode runner, transitions, verified hot reload and rollback.

Time is a plain number here (the node passes its ROS clock), so every case is exact and fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irevla_ros.core.data.codec import Transition
from irevla_ros.core.model.vla import VLAModel, folder_sha256
from irevla_ros.core.model.weights import encode_head_weights
from irevla_ros.core.policy.actor import PolicyActor, PolicyConfig, load_model
from irevla_ros.core.policy.hotswap import WeightsRejected
from irevla_ros.core.policy.observation import image_from_buffer

DT = 0.1  # s, one tick at 10 Hz


def make_actor(**overrides) -> PolicyActor:
    cfg = PolicyConfig(**{"cameras": ("wrist", "front"), "max_steps": 5, "seed": 0, "preset_proprio_dim": 8,
                          **overrides})
    model, version = load_model(cfg)
    return PolicyActor(cfg, model, version, run_id="test")


def feed(actor: PolicyActor, t: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for cam in actor.config.cameras:
        actor.obs.update_image(cam, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), t)
    actor.obs.update_pose([0.4, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0], t)
    actor.obs.update_gripper(0.08, t)


def expected_mean_action(actor: PolicyActor, tr: Transition, head=None) -> np.ndarray:
    head = head or actor.slots.current.head
    with torch.inference_mode():
        feats = torch.from_numpy(tr.features[None].astype(np.float32))
        return head.deterministic(feats, torch.from_numpy(tr.proprio[None])).numpy()[0]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="control_hz"):
        PolicyConfig(control_hz=0.0)
    with pytest.raises(ValueError, match="mode"):
        PolicyConfig(mode="train")
    with pytest.raises(ValueError, match="cameras"):
        PolicyConfig(cameras=("front", "front"))
    with pytest.raises(ValueError, match="max_image_age_s"):
        PolicyConfig(max_image_age_s=float("nan"))


def test_stale_observations_give_no_command():
    actor = make_actor()
    out = actor.tick(0.0)
    assert out.command is None and "no image from camera 'wrist'" in out.stale
    feed(actor, 0.0)
    assert actor.tick(0.1).command is not None
    # a frame older than max_image_age_s
    out = actor.tick(0.0 + actor.config.max_image_age_s + 0.05)
    assert out.command is None and "frame is" in out.stale and "old" in out.stale
    # a frame stamped in the future
    feed(actor, 5.0)
    out = actor.tick(4.0)
    assert out.command is None and "future" in out.stale
    # the EE pose alone going stale also stops commands
    feed(actor, 6.0)
    actor.obs.update_pose([0.4, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0], 5.0)
    out = actor.tick(6.0)
    assert out.command is None and "EE pose" in out.stale


def test_image_and_state_validation():
    raw = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(image_from_buffer("rgb8", 2, 3, 9, raw.tobytes()), raw)
    assert np.array_equal(image_from_buffer("bgr8", 2, 3, 9, raw.tobytes()), raw[..., ::-1])
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = raw.reshape(2, 9)
    assert np.array_equal(image_from_buffer("rgb8", 2, 3, 12, padded.tobytes()), raw)
    from irevla_ros.core.model.processor import InputError

    with pytest.raises(InputError, match="encoding"):
        image_from_buffer("mono8", 2, 3, 3, bytes(6))
    with pytest.raises(InputError, match="expected step"):
        image_from_buffer("rgb8", 2, 3, 9, bytes(17))
    actor = make_actor()
    with pytest.raises(InputError, match="finite"):
        actor.obs.update_pose([np.nan, 0, 0], [0, 0, 0, 1], 0.0)
    with pytest.raises(InputError, match="unit"):
        actor.obs.update_pose([0, 0, 0], [0, 0, 0, 3], 0.0)
    with pytest.raises(InputError, match="gripper"):
        actor.obs.update_gripper(float("inf"), 0.0)
    with pytest.raises(InputError, match="reward"):
        actor.on_reward(float("nan"), 0.0)


def run_ticks(actor: PolicyActor, t0: float, n: int, rewards: dict[int, float] | None = None):
    """n ticks with fresh observations; `rewards[i]` arrives just after tick i's command."""
    outs, t = [], t0
    for i in range(n):
        feed(actor, t, seed=i)
        outs.append(actor.tick(t))
        if rewards and i in rewards:
            actor.on_reward(rewards[i], t + 0.01)
        t += DT
    return outs, t


def test_episode_success_transitions_and_reset():
    actor = make_actor(max_steps=50)
    outs, t = run_ticks(actor, 0.0, 4, rewards={2: 1.0})
    start = outs[0].events[0]
    assert start["event"] == "start" and start["episode_id"] == "test-00001"
    assert [o.command is not None for o in outs] == [True, True, True, False]
    trs = [tr for o in outs for tr in o.transitions]
    assert [tr.step for tr in trs] == [0, 1, 2]
    last = trs[-1]
    assert last.done and last.terminal and last.success and last.reward == 1.0
    assert not trs[0].done and trs[0].reward == 0.0
    # transitions carry what the learner and the packager need, and survive the wire format
    back = Transition.from_bytes(trs[1].to_bytes())
    assert back.features.shape == actor.slots.current.model.feature_shape and back.features.dtype == np.float16
    assert back.images.shape == (2, 48, 64, 3) and back.cameras == "wrist,front"
    assert back.proprio.shape == (8,) and back.episode_id == "test-00001" and back.policy_version == "0"
    end = outs[3].events[-1]
    assert end == {**end, "event": "end", "success": True, "steps": 3}
    assert outs[3].request_reset and actor.state == "resetting"
    # while resetting: no commands, even with fresh observations
    more, t = run_ticks(actor, t, 2)
    assert all(o.command is None for o in more)
    actor.reset_done(t)
    # frames captured before the reset finished cannot start the next episode
    out = actor.tick(t + 0.05)
    assert out.command is None and "predates the last reset" in out.stale
    outs, t = run_ticks(actor, t + DT, 1)
    assert outs[0].events[0]["episode_id"] == "test-00002" and outs[0].command is not None


def test_episode_events_name_the_sim_task_even_when_it_arrives_late():
    """The graph's first episode can start before the simulator's latched task id arrives: its end event still
    names the task; a later episode keeps the id it started with."""
    actor = make_actor(max_steps=50)
    outs, t = run_ticks(actor, 0.0, 1)
    assert outs[0].events[0]["task"] == ""
    actor.task_name = "button"  # the latched /sim/task, mid-episode
    outs, t = run_ticks(actor, t, 3, rewards={1: 1.0})
    assert outs[-1].events[-1]["event"] == "end" and outs[-1].events[-1]["task"] == "button"
    actor.reset_done(t)
    outs, t = run_ticks(actor, t + DT, 1)
    assert outs[0].events[0]["task"] == "button"


def test_time_limit_truncates_and_num_episodes_stops():
    actor = make_actor(max_steps=3, num_episodes=1)
    outs, t = run_ticks(actor, 0.0, 4)
    trs = [tr for o in outs for tr in o.transitions]
    assert [tr.step for tr in trs] == [0, 1, 2]
    assert trs[-1].done and not trs[-1].terminal and not trs[-1].success
    assert sum(o.command is not None for o in outs) == 3
    actor.reset_done(t)
    assert actor.state == "finished"
    outs, _ = run_ticks(actor, t + DT, 3)
    assert all(o.command is None for o in outs)


def test_eval_mode_is_deterministic_and_rl_samples():
    ev = make_actor(mode="eval")
    outs, _ = run_ticks(ev, 0.0, 3)
    tr = outs[1].transitions[0]
    np.testing.assert_allclose(tr.action, expected_mean_action(ev, tr), atol=1e-3)  # fp16 features
    rl = make_actor(mode="rl")
    outs, _ = run_ticks(rl, 0.0, 3)
    tr = outs[1].transitions[0]
    assert np.abs(tr.action - expected_mean_action(rl, tr)).max() > 1e-2


def test_intervention_records_the_human_action():
    actor = make_actor()
    feed(actor, 0.0)
    actor.tick(0.0)
    human = np.array([0.5, 0, 0, 0, 0, 0, -1.0])
    actor.on_teleop_action(human, 0.05)
    actor.on_intervention(True, 0.05)
    feed(actor, 0.1)
    tr = actor.tick(0.1).transitions[0]
    assert tr.intervention and np.allclose(tr.action, human) and np.isfinite(tr.log_prob)
    feed(actor, 0.2)
    tr = actor.tick(0.2).transitions[0]
    assert not tr.intervention and not np.allclose(tr.action, human)


def test_head_update_is_applied_between_ticks_and_bad_updates_are_rejected():
    actor = make_actor(mode="eval", max_steps=50)
    run_ticks(actor, 0.0, 2)
    old_head = actor.slots.current.head
    new_state = {k: v * 1.5 + 0.05 for k, v in actor.slots.current.model.head_state_dict().items()}
    head_config = actor.slots.current.model.config.head
    version = actor.slots.stage_head_payload(encode_head_weights(new_state, 1, head_config))
    assert version == "1" and actor.slots.version == "0"  # staged, not applied mid-tick
    outs, t = run_ticks(actor, 0.2, 3)
    assert outs[0].swapped is not None and outs[0].swapped.version == "1"
    assert all(o.command is not None for o in outs)  # no tick lost to the swap
    trs = [tr for o in outs for tr in o.transitions]
    assert [tr.policy_version for tr in trs] == ["0", "1", "1"]  # step 1 ran before the swap
    np.testing.assert_allclose(trs[1].action, expected_mean_action(actor, trs[1]), atol=1e-3)
    assert not np.allclose(trs[1].action, expected_mean_action(actor, trs[1], head=old_head), atol=1e-3)
    # corrupted / mismatched payloads: refused, v1 keeps running
    good = encode_head_weights(new_state, 2)
    corrupt = bytearray(good)
    corrupt[len(corrupt) - 10] ^= 0xFF
    with pytest.raises(WeightsRejected, match="checksum"):
        actor.slots.stage_head_payload(bytes(corrupt))
    small = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8, "hidden_dim": 16})
    with pytest.raises(WeightsRejected, match="shape"):
        actor.slots.stage_head_payload(encode_head_weights(small.head_state_dict(), 3))
    assert not actor.slots.has_pending
    outs, _ = run_ticks(actor, t, 2)
    assert all(o.command is not None and o.swapped is None for o in outs)
    assert actor.slots.version == "1"


def test_weights_that_produce_nan_are_rolled_back():
    actor = make_actor(mode="eval")
    run_ticks(actor, 0.0, 1)
    state = actor.slots.current.model.head_state_dict()
    state["token_learner.attention.2.weight"] = torch.full_like(state["token_learner.attention.2.weight"], 3e38)
    actor.slots.stage_head_payload(encode_head_weights(state, 9))  # finite weights, overflow at run time
    outs, _ = run_ticks(actor, 0.1, 2)
    assert outs[0].rolled_back and "rolled back to v0" in outs[0].rolled_back
    assert outs[0].command is not None and np.isfinite(outs[0].command).all()
    assert actor.slots.version == "0" and actor.stats["rollbacks"] == 1


def test_full_weights_from_a_folder(tmp_path):
    actor = make_actor(mode="eval", max_steps=50)
    run_ticks(actor, 0.0, 1)
    sft = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}, seed=42)
    digest = sft.save_pretrained(tmp_path / "sft1", version="sft-1")
    with pytest.raises(WeightsRejected, match="does not match the announced"):
        actor.slots.stage_full(tmp_path / "sft1", "sft-1", "0" * 64)
    with pytest.raises(WeightsRejected, match="not a VLA model folder"):
        actor.slots.stage_full(tmp_path / "missing", "x", digest)
    other = VLAModel.from_preset("tiny", num_cameras=1, head={"proprio_dim": 8})
    other_digest = other.save_pretrained(tmp_path / "one_cam")
    with pytest.raises(WeightsRejected, match="differ from the running"):
        actor.slots.stage_full(tmp_path / "one_cam", "x", other_digest)
    assert actor.slots.stage_full(tmp_path / "sft1", "sft-1", folder_sha256(tmp_path / "sft1")) == "sft-1"
    outs, _ = run_ticks(actor, 0.1, 2)
    assert outs[0].swapped.source == "full" and actor.slots.version == "sft-1"
    tr = outs[1].transitions[0]  # step 1: acted on at the swap tick (feed seed 0), closed one tick later
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8) for _ in range(2)]
    expected = sft.act(imgs, ["pick up the cube"], np.array([[0.4, 0, 0.3, 1, 0, 0, 0, 0.08]]), stochastic=False)
    np.testing.assert_allclose(tr.action, expected.action[0], atol=1e-5)


def test_rl_mode_episode_leaves_the_backbone_bit_identical():
    actor = make_actor(mode="rl", max_steps=6)
    model = actor.slots.current.model
    before = model.backbone_fingerprint()
    outs, t = run_ticks(actor, 0.0, 3)
    state = {k: v + 0.1 for k, v in model.head_state_dict().items()}
    actor.slots.stage_head_payload(encode_head_weights(state, 1, model.config.head))
    outs += run_ticks(actor, t, 5)[0]
    assert any(e["event"] == "end" for o in outs for e in o.events)
    assert sum(o.command is not None for o in outs) == 6
    assert actor.slots.current.model.backbone_fingerprint() == before
    assert all(not p.requires_grad or p.grad is None for p in model.backbone.parameters())


def test_head_updates_never_replace_a_new_backbone_with_an_old_head(tmp_path):
    actor = make_actor(mode="eval", max_steps=50)
    model = actor.slots.current.model
    run_ticks(actor, 0.0, 1)
    head_state = {k: v + 0.1 for k, v in model.head_state_dict().items()}
    # a head trained on another base model is refused; one naming the running base is taken
    with pytest.raises(WeightsRejected, match="trained on model vsft-9"):
        actor.slots.stage_head_payload(encode_head_weights(head_state, 1, base_version="sft-9"))
    assert actor.slots.stage_head_payload(encode_head_weights(head_state, 1, base_version="0")) == "1"
    # full weights pending: a head update arriving before the next tick must not supersede them
    sft = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}, seed=9)
    digest = sft.save_pretrained(tmp_path / "sft", version="sft-1")
    actor.slots.stage_full(tmp_path / "sft", "sft-1", digest)
    with pytest.raises(WeightsRejected, match="full weights vsft-1 are about to be applied"):
        actor.slots.stage_head_payload(encode_head_weights(head_state, 2))
    outs, t = run_ticks(actor, 0.1, 1)
    assert outs[0].swapped.version == "sft-1" and outs[0].swapped.source == "full"
    # from now on heads must be made for sft-1
    with pytest.raises(WeightsRejected, match="policy runs model vsft-1"):
        actor.slots.stage_head_payload(encode_head_weights(head_state, 3, base_version="0"))
    assert actor.slots.stage_head_payload(encode_head_weights(head_state, 3, base_version="sft-1")) == "3"
    run_ticks(actor, t, 1)
    assert actor.slots.version == "3" and actor.slots.current.base_version == "sft-1"
    with pytest.raises(WeightsRejected, match="already running"):  # the same head again
        actor.slots.stage_head_payload(encode_head_weights(head_state, 3, base_version="sft-1"))


def test_the_first_rl_head_on_new_full_weights_is_taken_even_if_the_numbers_match(tmp_path):
    """Stage-2 results are numbered 1, 2, ... and so are each stage's RL heads: full weights "1" running and the
    first head trained on them ("1", base "1") are different weights (the graph dropped that head, round 8)."""
    actor = make_actor(mode="eval", max_steps=50)
    run_ticks(actor, 0.0, 1)
    sft = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}, seed=9)
    actor.slots.stage_full(tmp_path / "sft", "1", sft.save_pretrained(tmp_path / "sft", version="1"))
    outs, t = run_ticks(actor, 0.1, 1)
    assert outs[0].swapped.source == "full" and actor.slots.version == "1"
    head_state = {k: v + 0.1 for k, v in sft.head_state_dict().items()}
    assert actor.slots.stage_head_payload(encode_head_weights(head_state, 1, base_version="1")) == "1"
    outs, _ = run_ticks(actor, t, 1)
    assert outs[0].swapped.source == "head" and actor.slots.current.base_version == "1"
