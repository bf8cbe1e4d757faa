"""cmd_mux: forwards the policy's actions to the franka node unless a human is teleoperating.

Subscribes /policy/action and /teleop/action (Float64MultiArray, 7-D), publishes /franka/action and
/teleop/intervention (Bool, on every forwarded command) so transitions can be flagged as interventions.
"""

from __future__ import annotations

from rclpy.node import Node
from std_msgs.msg import Bool, Float64MultiArray

from irevla_ros import interfaces as itf
from irevla_ros.core.control.mux import CommandMux, MuxConfig
from irevla_ros.core.safety import InvalidAction
from irevla_ros.nodes._common import COMMAND_QOS, declare_config, spin_node, to_float64_array

PARAMETERS = MuxConfig


class CommandMuxNode(Node):
    def __init__(self) -> None:
        super().__init__("cmd_mux")
        self.mux = CommandMux(declare_config(self, MuxConfig))
        self.action_pub = self.create_publisher(Float64MultiArray, itf.ACTION.name, COMMAND_QOS)
        self.intervention_pub = self.create_publisher(Bool, itf.INTERVENTION.name, COMMAND_QOS)
        self.create_subscription(Float64MultiArray, itf.POLICY_ACTION.name, self.policy_callback, COMMAND_QOS)
        self.create_subscription(Float64MultiArray, itf.TELEOP_ACTION.name, self.teleop_callback, COMMAND_QOS)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def policy_callback(self, msg: Float64MultiArray) -> None:
        try:
            decision = self.mux.on_policy(msg.data, self._now())
        except InvalidAction as exc:
            self.get_logger().warning(f"rejected policy command: {exc}", throttle_duration_sec=1.0)
            return
        self._forward(decision)

    def teleop_callback(self, msg: Float64MultiArray) -> None:
        try:
            decision = self.mux.on_teleop(msg.data, self._now())
        except InvalidAction as exc:
            self.get_logger().warning(f"rejected teleop command: {exc}", throttle_duration_sec=1.0)
            return
        self._forward(decision)

    def _forward(self, decision) -> None:
        if decision.action is None:
            return
        self.action_pub.publish(to_float64_array(decision.action, label=",".join(itf.ACTION_LABELS)))
        self.intervention_pub.publish(Bool(data=decision.intervention))


def main(args=None) -> int:
    return spin_node(CommandMuxNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
