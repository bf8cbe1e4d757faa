"""teleop_node: a human drives the arm through the same 7-D command interface as the policy.

Polls a device (terminal keyboard, SpaceMouse, or the scripted stand-in used by tests) at `rate_hz`, publishes
/teleop/action (Float64MultiArray, in [-1, 1]) while the human moves or toggles the gripper (cmd_mux gives it
priority and flags the intervention), and /reward/human_label (String) for success / failure / discard / reset.
In demo recording (`publish_episode_events`) it also publishes episode start/end on /policy/episode (transient
local, last two events: a late subscriber still gets the latest episode's). The device is read and commands sent
only once `min_command_subscribers` have matched /teleop/action (cmd_mux); until then input is dropped, warned.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from irevla_ros import interfaces as itf
from irevla_ros.nodes._common import COMMAND_QOS, LATCHED_QOS, declare_config, spin_node, to_float64_array
from irevla_ros.teleop import DemoEpisodes, TeleopConfig, TeleopMapper, make_device
from irevla_ros.teleop.devices import ScriptedDevice

PARAMETERS = TeleopConfig
EPISODE_EVENT_QOS = QoSProfile(depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Demo episode events: rare, and each one matters. Transient local with the last two (the start and end of the
latest episode, or the previous end and the current start), so a subscriber that matches late still gets them: a
bag recorder subscribes only once it has discovered this new node's publisher (> 2.5 s under load), often after
the start event went out with the first push. Volatile subscribers (packager, foxglove, reward) are compatible."""
HUMAN_LABEL_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Human success/failure labels: as rare and as important as the episode events, so kept for late subscribers too."""


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop_node")
        self.config = declare_config(self, TeleopConfig)
        self.mapper = TeleopMapper(self.config)
        self.device = make_device(self.config)
        self.device.open()
        if self.device.help():
            self.get_logger().info(self.device.help())
        self.instruction = ""
        self.episodes = DemoEpisodes() if self.config.publish_episode_events else None
        self.action_pub = self.create_publisher(Float64MultiArray, itf.TELEOP_ACTION.name, COMMAND_QOS)
        self.label_pub = self.create_publisher(String, itf.HUMAN_LABEL.name, HUMAN_LABEL_QOS)
        self.episode_pub = self.create_publisher(String, itf.EPISODE_EVENT.name, EPISODE_EVENT_QOS)
        self.create_subscription(String, itf.INSTRUCTION.name, self.instruction_callback, LATCHED_QOS)
        self.reset_clients = [self.create_client(Trigger, name) for name in self.config.reset_service_names]
        # Human input is paced by the wall clock, also under use_sim_time (in lockstep fast sim a sim-time timer
        # would let one key press last only a few sim steps, consumed in milliseconds).
        self.timer = self.create_timer(1.0 / self.config.rate_hz, self.tick_callback,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME))

    def instruction_callback(self, msg: String) -> None:
        self.instruction = msg.data

    def tick_callback(self) -> None:
        now = time.monotonic()
        matched = self.action_pub.get_subscription_count()
        if matched < self.config.min_command_subscribers:
            # A command now would be lost (cmd_mux has not matched us yet), and in demo recording it would start an
            # episode whose first steps never reached the arm: drop the input; a script starts once we are ready.
            if not isinstance(self.device, ScriptedDevice):
                self.device.poll(now)
            self.get_logger().warning(
                f"{matched} of {self.config.min_command_subscribers} subscriber(s) on {self.action_pub.topic_name} "
                "so far (is cmd_mux running?): input ignored", throttle_duration_sec=2.0)
            return
        out = self.mapper.update(self.device.poll(now))
        if out.action is not None:
            if self.episodes is not None:
                self._publish_episodes(self.episodes.on_command(self.instruction))
            self.action_pub.publish(to_float64_array(out.action, label=",".join(itf.ACTION_LABELS)))
        for label in out.labels:
            self.get_logger().info(f"human label: {label}")
            self.label_pub.publish(String(data=label))
            if self.episodes is not None:
                self._publish_episodes(self.episodes.on_label(label, self.instruction))
            if label == "reset":
                self._call_resets()

    def _publish_episodes(self, events) -> None:
        for event in events:
            self.episode_pub.publish(String(data=json.dumps(asdict(event), sort_keys=True)))

    def _call_resets(self) -> None:
        for client in self.reset_clients:
            if not client.service_is_ready():
                self.get_logger().warning(f"reset service {client.srv_name} is not available")
                continue
            future = client.call_async(Trigger.Request())
            future.add_done_callback(lambda f, name=client.srv_name: self._reset_done(name, f))

    def _reset_done(self, name: str, future) -> None:
        result = future.result()
        if result is None or not result.success:
            self.get_logger().warning(f"reset via {name} failed: {getattr(result, 'message', 'no reply')}")

    def close(self) -> None:
        self.device.close()


def main(args=None) -> int:
    return spin_node(TeleopNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
