"""policy_node as a real process over DDS.

The test plays the rest of the graph with real topics and services: it publishes camera frames, EE pose, gripper
state and rewards, serves /franka/reset and /sim/reset, publishes head weights and full-weights announcements,
and checks the command, transition and episode streams the node produces.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import torch
from conftest import wait_for

from irevla_ros import interfaces as itf
from irevla_ros.core.data.codec import Transition
from irevla_ros.core.model.weights import encode_head_weights
from irevla_ros.core.policy.actor import PolicyConfig, load_model

TIMEOUT = 60.0  # s: node start (torch + transformers import, model build, DDS discovery) on a loaded 2-core box
HZ = 10.0
CAMERAS = ("wrist", "front")


class FakeWorld:
    """Publishes fresh frames + robot state at 20 Hz from a thread (the sensors the policy expects)."""

    def __init__(self, ros):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image, JointState

        from irevla_ros.nodes._common import IMAGE_QOS, STATE_QOS

        self.ros = ros
        self.node = ros.node
        self.image_pubs = {c: self.node.create_publisher(Image, itf.camera_image(c).name, IMAGE_QOS) for c in CAMERAS}
        self.pose_pub = self.node.create_publisher(PoseStamped, itf.EE_POSE.name, STATE_QOS)
        self.gripper_pub = self.node.create_publisher(JointState, itf.GRIPPER.name, STATE_QOS)
        self.Image, self.PoseStamped, self.JointState = Image, PoseStamped, JointState
        self.running = threading.Event()
        self.stop_event = threading.Event()
        self.rng = np.random.default_rng(0)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            if self.running.is_set():
                self.publish_once()
            time.sleep(0.05)

    def publish_once(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for cam, pub in self.image_pubs.items():
            frame = self.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            msg = self.Image()
            msg.header.stamp = stamp
            msg.header.frame_id = itf.camera_optical_frame(cam)
            msg.height, msg.width, msg.encoding, msg.step = 48, 64, "rgb8", 64 * 3
            msg.data = frame.tobytes()
            pub.publish(msg)
        pose = self.PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp, itf.BASE_FRAME
        pose.pose.position.x, pose.pose.position.z = 0.45, 0.3
        pose.pose.orientation.x, pose.pose.orientation.w = 1.0, 0.0
        self.pose_pub.publish(pose)
        gripper = self.JointState()
        gripper.header.stamp = stamp
        gripper.name, gripper.position, gripper.effort = ["gripper_width"], [0.08], [0.0]
        self.gripper_pub.publish(gripper)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(2)


def head_action(head, tr: Transition) -> np.ndarray:
    with torch.inference_mode():
        feats = torch.from_numpy(tr.features[None].astype(np.float32))
        return head.deterministic(feats, torch.from_numpy(tr.proprio[None])).numpy()[0]


def test_policy_node_episodes_hot_reload_and_staleness(procs, ros, tmp_path):
    from std_msgs.msg import Float32, Float64MultiArray, String, UInt8MultiArray
    from std_srvs.srv import Trigger

    from irevla_ros.nodes._common import COMMAND_QOS, DATA_QOS, LATCHED_QOS, STATE_QOS

    proc = procs.start(["policy_node", "--ros-args", "-p", "mode:=eval", "-p", f"control_hz:={HZ}",
                        "-p", f"cameras:=[{','.join(CAMERAS)}]", "-p", "max_steps:=500",
                        "-p", "max_image_age_s:=0.4", "-p", "sim_reset_wait_s:=0.5",
                        "-p", "instruction:=push the button", "-p", "preset_proprio_dim:=8"], name="policy_node")
    # The node's initial model: the same preset and seed, built here (random init is deterministic).
    model, _ = load_model(PolicyConfig(cameras=CAMERAS, mode="eval", preset_proprio_dim=8))
    old_head = model.head

    commands: list[tuple[float, np.ndarray]] = []
    ros.node.create_subscription(Float64MultiArray, itf.ACTION.name,
                                 lambda m: commands.append((time.monotonic(), np.array(m.data))), COMMAND_QOS)
    raw_transitions = ros.collect(UInt8MultiArray, itf.TRANSITION.name, DATA_QOS)
    events = ros.collect(String, itf.EPISODE_EVENT.name, DATA_QOS)
    versions = ros.collect(String, itf.POLICY_VERSION.name, LATCHED_QOS)
    resets = {"franka": 0, "sim": 0}

    def serve(name, key):
        def handler(_req, resp):
            resets[key] += 1
            resp.success, resp.message = True, "ok"
            return resp
        return ros.node.create_service(Trigger, name, handler)

    serve(itf.RESET.name, "franka")
    serve(itf.SIM_RESET.name, "sim")
    reward_pub = ros.node.create_publisher(Float32, itf.REWARD.name, STATE_QOS)
    weights_pub = ros.node.create_publisher(UInt8MultiArray, itf.HEAD_WEIGHTS.name, LATCHED_QOS)
    full_pub = ros.node.create_publisher(String, itf.FULL_WEIGHTS_READY.name, LATCHED_QOS)
    world = FakeWorld(ros)
    try:
        for pub in (*world.image_pubs.values(), world.pose_pub, world.gripper_pub, reward_pub, weights_pub):
            ros.wait_for_subscribers(pub, timeout=TIMEOUT)
        assert proc.poll() is None, procs.log_of(proc)

        # 1. Sensors silent: the node never commands.
        time.sleep(0.5)  # let a few ticks pass with no observation at all (nothing to wait for: absence)
        assert not commands
        wait_for(lambda: versions and versions[-1].data == "0", 10, what="latched policy version 0")

        # 2. Fresh observations: an episode starts and commands flow at the control rate.
        world.running.set()
        wait_for(lambda: len(commands) >= 5, 20, what="5 commands")
        start = json.loads(events[0].data)
        assert start["event"] == "start" and start["instruction"] == "push the button"
        assert all(c.shape == (7,) and np.isfinite(c).all() and np.abs(c).max() <= 1.0 for _, c in commands)

        # 3. Head weights published mid-episode: applied between ticks, versioned, no tick lost.
        new_state = {k: v * 2.0 + 0.3 for k, v in model.head_state_dict().items()}
        new_head = model.make_head(new_state)
        weights_pub.publish(UInt8MultiArray(data=encode_head_weights(new_state, 1, model.config.head)))
        wait_for(lambda: versions[-1].data == "1", 20, what="policy version 1")
        # a corrupted update is refused and v1 keeps running
        bad = bytearray(encode_head_weights({k: v * 3.0 for k, v in model.head_state_dict().items()}, 2,
                                            model.config.head))
        bad[-7] ^= 0xFF
        weights_pub.publish(UInt8MultiArray(data=bytes(bad)))
        wait_for(lambda: "head weights rejected" in procs.log_of(proc), 20, what="rejection logged")
        n = len(raw_transitions)
        wait_for(lambda: len(raw_transitions) >= n + 3, 20, what="3 more transitions")
        assert versions[-1].data == "1"

        # 4. Success reward: the episode ends, resets are called, a new episode starts.
        wait_for(lambda: (reward_pub.publish(Float32(data=1.0)),
                          any(json.loads(e.data)["event"] == "end" for e in events))[1], 20, interval=0.2,
                 what="episode end on success")
        wait_for(lambda: resets["franka"] >= 1 and resets["sim"] >= 1, 20, what="reset services called")
        wait_for(lambda: sum(json.loads(e.data)["event"] == "start" for e in events) >= 2, 20,
                 what="second episode")
        end = next(json.loads(e.data) for e in events if json.loads(e.data)["event"] == "end")
        assert end["success"] is True and end["episode_id"] == start["episode_id"]

        # 5. Camera frames stop: commands stop (the franka watchdog then holds); they resume with fresh frames.
        world.running.clear()
        time.sleep(0.6)  # longer than max_image_age_s: from here on every observation is stale
        stalled = len(commands)
        time.sleep(0.5)
        assert len(commands) == stalled
        world.running.set()
        wait_for(lambda: len(commands) >= stalled + 3, 20, what="commands after frames resume")

        # 6. Full weights from SFT: a wrong digest is refused, a verified folder is applied.
        sft = model.__class__.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}, seed=7)
        digest = sft.save_pretrained(tmp_path / "sft", version="sft-1")
        full_pub.publish(String(data=json.dumps({"path": str(tmp_path / "sft"), "version": "sft-1",
                                                 "sha256": "f" * 64})))
        wait_for(lambda: "full weights rejected" in procs.log_of(proc), 20, what="bad digest refused")
        full_pub.publish(String(data=json.dumps({"path": str(tmp_path / "sft"), "version": "sft-1",
                                                 "sha256": digest})))
        wait_for(lambda: versions[-1].data == "sft-1", 30, what="policy version sft-1")
    finally:
        world.close()

    # The transition stream of episode 1: consecutive steps, one version change, the right head per step.
    trs = [Transition.from_bytes(bytes(m.data)) for m in raw_transitions]
    ep1 = [t for t in trs if t.episode_id == start["episode_id"]]
    assert [t.step for t in ep1] == list(range(len(ep1)))
    assert ep1[-1].done and ep1[-1].terminal and ep1[-1].success and ep1[-1].reward == 1.0
    assert not any(t.done for t in ep1[:-1])
    vs = [t.policy_version for t in ep1]
    first_new = vs.index("1")
    assert set(vs[:first_new]) == {"0"} and set(vs[first_new:]) == {"1"}
    for t in ep1:
        head = old_head if t.policy_version == "0" else new_head
        other = new_head if t.policy_version == "0" else old_head
        np.testing.assert_allclose(t.action, head_action(head, t), atol=2e-3)
        assert np.abs(t.action - head_action(other, t)).max() > 1e-2
    assert ep1[0].images.shape == (2, 48, 64, 3) and ep1[0].cameras == "wrist,front"
    assert ep1[0].features.shape == model.feature_shape
    # No step was lost to the swap: the step indices above run on without a gap across the version change. How
    # long the swap takes (and whether it costs a tick) is a timing question for bench/policy_tick.py (100 reloads,
    # 0 missed ticks): a wall-clock bound here failed on CI at 0.285 s on the shared 2-core machine.


def test_an_rl_policy_waits_for_its_consumers_so_a_late_one_gets_the_first_episode(procs, ros):
    """Transitions and episode events are volatile: a packager or learner that subscribes after the first episode
    began would miss its start. In mode rl the node does not act before both topics have a subscriber."""
    from std_msgs.msg import Float64MultiArray, String, UInt8MultiArray
    from std_srvs.srv import Trigger

    from irevla_ros.nodes._common import COMMAND_QOS, DATA_QOS

    proc = procs.start(["policy_node", "--ros-args", "-p", "mode:=rl", "-p", f"control_hz:={HZ}",
                        "-p", f"cameras:=[{','.join(CAMERAS)}]", "-p", "max_steps:=500",
                        "-p", "max_image_age_s:=0.4", "-p", "sim_reset_wait_s:=0.1", "-p", "preset_proprio_dim:=8",
                        "-p", "wait_for_consumers_s:=300.0"], name="policy_node")
    commands = []
    ros.node.create_subscription(Float64MultiArray, itf.ACTION.name, commands.append, COMMAND_QOS)

    def reset(_req, resp):
        resp.success, resp.message = True, "ok"
        return resp

    ros.node.create_service(Trigger, itf.RESET.name, reset)
    world = FakeWorld(ros)
    try:
        for pub in (*world.image_pubs.values(), world.pose_pub, world.gripper_pub):
            ros.wait_for_subscribers(pub, timeout=TIMEOUT)
        world.running.set()
        time.sleep(2.0)  # fresh observations for 20 ticks, but nothing would record an episode yet
        assert not commands and proc.poll() is None, procs.log_of(proc)[-2000:]
        raw = ros.collect(UInt8MultiArray, itf.TRANSITION.name, DATA_QOS)
        events = ros.collect(String, itf.EPISODE_EVENT.name, DATA_QOS)
        wait_for(lambda: len(raw) >= 2 and events, TIMEOUT, what="the first episode, seen by the late consumer")
        first = json.loads(events[0].data)
        assert first["event"] == "start" and commands
        steps = [Transition.from_bytes(bytes(m.data)) for m in raw[:2]]
        assert [(t.episode_id, t.step) for t in steps] == [(first["episode_id"], 0), (first["episode_id"], 1)]
        assert "have subscribers" in procs.log_of(proc)
    finally:
        world.close()


def test_policy_node_drives_the_sim_arm_for_a_full_episode(procs, ros):
    """sim_world in fast mode (sim time, franka controller composed) + policy_node on /clock: the policy's
    commands go through /franka/action, the arm moves, the time limit ends the episode, the policy resets the
    arm (/franka/reset) and the task (/sim/reset), and the next episode runs on the next task's instruction."""
    from conftest import REPO
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import String, UInt8MultiArray

    from irevla_ros.nodes._common import DATA_QOS, LATCHED_QOS

    config = REPO / "config"
    steps = 10
    # listen before the nodes exist: transitions and episode events are volatile, and a subscription that matched
    # after the first episode started missed its start event on CI (3 events instead of 4)
    raw = ros.collect(UInt8MultiArray, itf.TRANSITION.name, DATA_QOS)
    events = ros.collect(String, itf.EPISODE_EVENT.name, DATA_QOS)
    instructions = ros.collect(String, itf.INSTRUCTION.name, LATCHED_QOS)
    poses = ros.collect(PoseStamped, itf.EE_POSE.name, 10)
    sim = procs.start(["sim_world", "--ros-args", "-r", "__node:=sim_world",
                       "--params-file", str(config / "sim_world.yaml"), "--params-file", str(config / "sim.yaml"),
                       "--params-file", str(config / "sim_fast.yaml"), "-p", "mode:=fast",
                       "-p", "image_width:=64", "-p", "image_height:=64", "-p", "max_wait_s:=0.5"], name="sim_world")
    policy = procs.start(["policy_node", "--ros-args", "--params-file", str(config / "policy_node.yaml"),
                          "--params-file", str(config / "sim_fast.yaml"), "-p", "use_sim_time:=true",
                          "-p", "reliable_images:=true", "-p", "cameras:=[wrist,front]", "-p", f"max_steps:={steps}",
                          "-p", "num_episodes:=2", "-p", "mode:=rl", "-p", "sim_reset_wait_s:=5.0"],
                         name="policy_node")
    try:
        wait_for(lambda: sum(json.loads(e.data)["event"] == "end" for e in events) >= 2, 120, interval=0.1,
                 what="two full episodes in the sim")
        wait_for(lambda: "episode(s) done" in procs.log_of(policy), 60, what="resets done after the episode")
    finally:
        assert sim.poll() is None, procs.log_of(sim)[-3000:]
        assert policy.poll() is None, procs.log_of(policy)[-3000:]
    start, end, start2, end2 = (json.loads(e.data) for e in events[:4])
    assert [start["event"], end["event"], start2["event"], end2["event"]] == ["start", "end", "start", "end"]
    assert end["steps"] == end2["steps"] == steps and start2["episode_id"] != start["episode_id"]
    assert start["instruction"] == instructions[0].data  # the task's instruction from sim_world (latched)
    # /franka/reset then /sim/reset were called ("episode(s) done" is logged only when both replied success);
    # episode 2 runs on the instruction of the layout the sim reset made
    assert len(instructions) >= 2 and start2["instruction"] == instructions[1].data
    trs = [Transition.from_bytes(bytes(m.data)) for m in raw if Transition.from_bytes(bytes(m.data)).episode_id ==
           start["episode_id"]]
    assert [t.step for t in trs] == list(range(steps))
    assert trs[-1].done and not trs[-1].terminal  # time limit: the learner may bootstrap
    assert trs[0].images.shape == (2, 64, 64, 3) and trs[0].images.std() > 5.0  # rendered frames, not blanks
    # the arm moved under the policy's commands: the EE position the policy observed changed
    moved = np.linalg.norm(trs[-1].proprio[:3] - trs[0].proprio[:3])
    assert moved > 0.002, f"EE moved only {moved * 1e3:.2f} mm over {steps} steps"
    assert poses, "EE pose stream from sim_world's composed franka node"
