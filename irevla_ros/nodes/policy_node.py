"""policy_node: the actor. A fixed-rate loop that turns the newest observation into a 7-D command.

Subscribes: camera images (interfaces.camera_image(cam) per `cameras`), EE_POSE, GRIPPER, INSTRUCTION (latched),
SIM_TASK (latched, simulation only), REWARD, INTERVENTION + TELEOP_ACTION (to flag and record human takeovers),
HEAD_WEIGHTS (latched, RL learner), FULL_WEIGHTS_READY (latched, SFT). Publishes: ACTION (remapped to /policy/action
by the graph), TRANSITION, EPISODE_EVENT, POLICY_VERSION (latched). Calls RESET and, when present, SIM_RESET
between episodes.

Threads (MultiThreadedExecutor): the control timer has its own callback group, so sensor callbacks, weight
verification (decode + checksum + load into a spare head / a whole model folder) and reset calls never delay a
tick; the tick swaps staged weights in by reference. All logic is in irevla_ros.core.policy (ROS-free).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32, Float64MultiArray, String, UInt8MultiArray
from std_srvs.srv import Trigger

from irevla_ros import interfaces as itf
from irevla_ros.core.data.codec import PayloadError
from irevla_ros.core.model.processor import InputError
from irevla_ros.core.policy.actor import PolicyActor, PolicyConfig, TickOutput, load_model
from irevla_ros.core.policy.hotswap import WeightsRejected
from irevla_ros.core.policy.observation import image_from_buffer
from irevla_ros.nodes._common import (
    COMMAND_QOS,
    DATA_QOS,
    IMAGE_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    STATE_QOS,
    declare_config,
    spin_node,
    to_float64_array,
)

PARAMETERS = PolicyConfig

# Best effort matches both reliable (sim) and best-effort (RealSense) camera publishers.
CAMERA_SUB_QOS = QoSProfile(depth=2, history=SENSOR_QOS.history, reliability=ReliabilityPolicy.BEST_EFFORT)


def _stamp_s(stamp) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy_node")
        self.config = declare_config(self, PolicyConfig)
        t0 = time.perf_counter()
        model, version = load_model(self.config)
        self.actor = PolicyActor(self.config, model, version)
        t, d = model.feature_shape
        self.get_logger().info(
            f"model {self.config.model_dir or 'preset ' + self.config.model_preset} ({model.config.family}, "
            f"features [{t}, {d}], v{version}) loaded in {time.perf_counter() - t0:.1f} s on {model.device}; "
            f"mode {self.config.mode}, {self.config.control_hz} Hz, cameras {list(self.config.cameras)}")

        self.control_group = MutuallyExclusiveCallbackGroup()
        self.sensor_group = MutuallyExclusiveCallbackGroup()
        self.weights_group = MutuallyExclusiveCallbackGroup()
        self.service_group = ReentrantCallbackGroup()

        self.action_pub = self.create_publisher(Float64MultiArray, itf.ACTION.name, COMMAND_QOS)
        self.transition_pub = self.create_publisher(UInt8MultiArray, itf.TRANSITION.name, DATA_QOS)
        self.episode_pub = self.create_publisher(String, itf.EPISODE_EVENT.name, DATA_QOS)
        self.version_pub = self.create_publisher(String, itf.POLICY_VERSION.name, LATCHED_QOS)

        image_qos = IMAGE_QOS if self.config.reliable_images else CAMERA_SUB_QOS
        for cam in self.config.cameras:
            self.create_subscription(Image, itf.camera_image(cam).name,
                                     lambda msg, cam=cam: self.image_callback(cam, msg), image_qos,
                                     callback_group=self.sensor_group)
        self.create_subscription(PoseStamped, itf.EE_POSE.name, self.pose_callback, STATE_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(JointState, itf.GRIPPER.name, self.gripper_callback, STATE_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(String, itf.INSTRUCTION.name, self.instruction_callback, LATCHED_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(String, itf.SIM_TASK.name, self.sim_task_callback, LATCHED_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(Float32, itf.REWARD.name, self.reward_callback, STATE_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(Bool, itf.INTERVENTION.name, self.intervention_callback, COMMAND_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(Float64MultiArray, itf.TELEOP_ACTION.name, self.teleop_callback, COMMAND_QOS,
                                 callback_group=self.sensor_group)
        self.create_subscription(UInt8MultiArray, itf.HEAD_WEIGHTS.name, self.head_weights_callback, LATCHED_QOS,
                                 callback_group=self.weights_group)
        self.create_subscription(String, itf.FULL_WEIGHTS_READY.name, self.full_weights_callback, LATCHED_QOS,
                                 callback_group=self.weights_group)

        self.reset_client = self.create_client(Trigger, itf.RESET.name, callback_group=self.service_group)
        self.sim_reset_client = self.create_client(Trigger, itf.SIM_RESET.name, callback_group=self.service_group)
        self._closing = threading.Event()
        self._reset_thread: threading.Thread | None = None

        self._last_tick: float | None = None
        self.missed_ticks = 0
        self.tick_errors = 0
        self.tick_durations: list[float] = []
        self.tick_starts: list[float] = []  # wall clock (perf_counter) at each tick start: jitter, bench
        self.model_durations: list[float] = []  # backbone + head part of each tick that ran the model
        self._last_stale_log = ""
        self._publish_version()
        self._created = time.monotonic()
        self._consumers_ready = self.config.mode != "rl" or self.config.wait_for_consumers_s <= 0
        self.timer = self.create_timer(self.config.period_s, self.tick_callback, callback_group=self.control_group)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- inputs ---
    def image_callback(self, camera: str, msg: Image) -> None:
        try:
            img = image_from_buffer(msg.encoding, msg.height, msg.width, msg.step, msg.data)
            stamp = _stamp_s(msg.header.stamp) or self._now()  # unstamped frames: time of arrival
            self.actor.obs.update_image(camera, img, stamp)
        except InputError as exc:
            self.get_logger().warning(f"rejected image from {camera}: {exc}", throttle_duration_sec=2.0)

    def pose_callback(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        try:
            self.actor.obs.update_pose((p.x, p.y, p.z), (q.x, q.y, q.z, q.w),
                                       _stamp_s(msg.header.stamp) or self._now())
        except InputError as exc:
            self.get_logger().warning(f"rejected EE pose: {exc}", throttle_duration_sec=2.0)

    def gripper_callback(self, msg: JointState) -> None:
        try:
            if len(msg.position) < 1:
                raise InputError("gripper state has no position")
            self.actor.obs.update_gripper(float(msg.position[0]), _stamp_s(msg.header.stamp) or self._now())
        except InputError as exc:
            self.get_logger().warning(f"rejected gripper state: {exc}", throttle_duration_sec=2.0)

    def instruction_callback(self, msg: String) -> None:
        try:
            self.actor.obs.set_instruction(msg.data)
            self.get_logger().info(f"instruction: {msg.data!r}")
        except InputError as exc:
            self.get_logger().warning(f"rejected instruction: {exc}")

    def sim_task_callback(self, msg: String) -> None:
        """Names the first episode too (the others also get the id from /sim/reset's reply)."""
        self.actor.task_name = msg.data[:200]

    def reward_callback(self, msg: Float32) -> None:
        try:
            self.actor.on_reward(float(msg.data), self._now())
        except InputError as exc:
            self.get_logger().warning(f"rejected reward: {exc}", throttle_duration_sec=2.0)

    def intervention_callback(self, msg: Bool) -> None:
        self.actor.on_intervention(bool(msg.data), self._now())

    def teleop_callback(self, msg: Float64MultiArray) -> None:
        try:
            self.actor.on_teleop_action(msg.data, self._now())
        except InputError as exc:
            self.get_logger().warning(f"rejected teleop action: {exc}", throttle_duration_sec=2.0)

    # --- weights (worker thread of the weights group) ---
    def head_weights_callback(self, msg: UInt8MultiArray) -> None:
        t0 = time.perf_counter()
        try:
            version = self.actor.slots.stage_head_payload(bytes(msg.data))
        except WeightsRejected as exc:
            self.get_logger().error(f"{exc}; keeping v{self.actor.slots.version}")
            return
        self.get_logger().info(f"head weights v{version} verified in {1e3 * (time.perf_counter() - t0):.1f} ms, "
                               "applied at the next tick")

    def full_weights_callback(self, msg: String) -> None:
        t0 = time.perf_counter()
        try:
            info = json.loads(msg.data)
            if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("path", "sha256")):
                raise WeightsRejected(f"FULL_WEIGHTS_READY needs JSON with string path and sha256, got {msg.data!r}")
            import torch

            version = self.actor.slots.stage_full(info["path"], str(info.get("version", "")) or info["sha256"][:12],
                                                  info["sha256"], device=self.config.torch_device(),
                                                  dtype=getattr(torch, self.config.dtype))
        except (WeightsRejected, json.JSONDecodeError) as exc:
            self.get_logger().error(f"full weights rejected: {exc}; keeping v{self.actor.slots.version}")
            return
        self.get_logger().info(f"full weights v{version} from {info['path']} verified in "
                               f"{time.perf_counter() - t0:.1f} s, applied at the next tick")

    # --- the control tick ---
    def _wait_for_consumers(self) -> bool:
        """True once the transitions and episode events have a subscriber each, or the wait is over."""
        have = (self.transition_pub.get_subscription_count() > 0 and self.episode_pub.get_subscription_count() > 0)
        waited = time.monotonic() - self._created
        if have:
            self.get_logger().info(f"transitions and episode events have subscribers ({waited:.1f} s): acting")
        elif waited >= self.config.wait_for_consumers_s:
            self.get_logger().warning(f"no subscriber to {itf.TRANSITION.name} and {itf.EPISODE_EVENT.name} after "
                                      f"{waited:.0f} s (wait_for_consumers_s): acting anyway, episodes are not "
                                      "recorded until one subscribes")
        else:
            return False
        self._consumers_ready = True
        return True

    def tick_callback(self) -> None:
        if not self._consumers_ready and not self._wait_for_consumers():
            return  # no command yet: the franka node's watchdog holds the arm
        now = self._now()
        w0 = time.perf_counter()
        if self._last_tick is not None and now - self._last_tick > 1.5 * self.config.period_s:
            self.missed_ticks += int(round((now - self._last_tick) / self.config.period_s)) - 1
        self._last_tick = now
        try:
            out = self.actor.tick(now)
        except Exception as exc:  # noqa: BLE001 - keep the node alive: no command, the franka watchdog holds
            self.tick_errors += 1
            self.get_logger().error(f"tick failed, no command this tick: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=2.0)
            return
        self._publish(out)
        self.tick_starts.append(w0)
        self.tick_durations.append(time.perf_counter() - w0)
        if "model" in out.timings:
            self.model_durations.append(out.timings["model"])
        for series in (self.tick_starts, self.tick_durations, self.model_durations):
            del series[:-10_000]

    def _publish(self, out: TickOutput) -> None:
        if out.swapped is not None:
            self.get_logger().info(f"policy now v{out.swapped.version} ({out.swapped.source} weights)")
            self._publish_version()
        if out.rolled_back:
            self.get_logger().error(out.rolled_back)
            self._publish_version()
        if out.command is not None:
            self.action_pub.publish(to_float64_array(out.command, label=",".join(itf.ACTION_LABELS)))
        for tr in out.transitions:
            msg = UInt8MultiArray()
            try:
                msg.data = tr.to_bytes()
            except PayloadError as exc:  # e.g. features beyond fp16 range: say so, keep acting
                self.get_logger().error(f"transition {tr.episode_id}/{tr.step} not published: {exc}")
                continue
            self.transition_pub.publish(msg)
        for event in out.events:
            if event["event"] == "end":
                event["missed_ticks"] = self.missed_ticks
            self.episode_pub.publish(String(data=json.dumps(event)))
            self.get_logger().info(f"episode {event['episode_id']} {event['event']}"
                                   + (f": success={event['success']} after {event['steps']} steps"
                                      if event["event"] == "end" else f": {event['instruction']!r}"))
        if out.stale and out.stale != self._last_stale_log:
            self.get_logger().warning(f"no command: {out.stale}", throttle_duration_sec=2.0)
        self._last_stale_log = out.stale
        if out.request_reset:
            self._reset_thread = threading.Thread(target=self._reset_worker, name="policy-reset", daemon=True)
            self._reset_thread.start()

    def _publish_version(self) -> None:
        self.version_pub.publish(String(data=self.actor.slots.version))

    # --- resets (own thread: blocking waits, never on the timer) ---
    def _call(self, client, timeout: float) -> tuple[bool, str]:
        done = threading.Event()
        future = client.call_async(Trigger.Request())
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            future.cancel()
            return False, f"no reply from {client.srv_name} within {timeout} s"
        result = future.result()
        return bool(result.success), result.message

    def _reset_worker(self) -> None:
        cfg = self.config
        while not self._closing.is_set():
            if not self.reset_client.wait_for_service(timeout_sec=min(5.0, cfg.reset_timeout_s)):
                self.get_logger().error(f"reset service {itf.RESET.name} not available; retrying",
                                        throttle_duration_sec=10.0)
                continue
            ok, message = self._call(self.reset_client, cfg.reset_timeout_s)
            if ok and cfg.sim_reset_wait_s > 0 and self.sim_reset_client.wait_for_service(
                    timeout_sec=cfg.sim_reset_wait_s):
                ok, message = self._call(self.sim_reset_client, cfg.reset_timeout_s)
                if ok:
                    self._instruction_from_reply(message)
            if ok:
                self.actor.reset_done(self._now())
                if self.actor.state == "finished":
                    self.get_logger().info(f"{cfg.num_episodes} episode(s) done: holding (no more commands)")
                return
            self.get_logger().error(f"reset failed: {message}; retrying in 1 s")
            self._closing.wait(1.0)

    def _instruction_from_reply(self, message: str) -> None:
        """sim_world's reset reply is JSON naming the next task's instruction: use it at once, so the next
        episode cannot start on the previous instruction if the latched topic update arrives late."""
        try:
            info = json.loads(message)
        except (json.JSONDecodeError, TypeError):
            return
        if isinstance(info, dict) and isinstance(info.get("task"), str):
            self.actor.task_name = info["task"][:200]
        if isinstance(info, dict) and isinstance(info.get("instruction"), str):
            try:
                self.actor.obs.set_instruction(info["instruction"])
            except InputError as exc:
                self.get_logger().warning(f"sim reset named an unusable instruction: {exc}")

    def close(self) -> None:
        self._closing.set()
        if self.tick_durations:
            d = np.asarray(self.tick_durations) * 1e3
            self.get_logger().info(f"ticks: {len(d)}, p50 {np.percentile(d, 50):.1f} ms, p99 "
                                   f"{np.percentile(d, 99):.1f} ms, missed {self.missed_ticks}, stats "
                                   f"{self.actor.stats}")


def main(args=None) -> int:
    return spin_node(PolicyNode, args, multithreaded=True)


if __name__ == "__main__":
    raise SystemExit(main())
