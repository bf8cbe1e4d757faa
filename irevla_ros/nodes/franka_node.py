"""franka_node: the only node that moves the arm. Safety lives below every client, in FrankaController.

Subscribes  /franka/action (Float64MultiArray, 7 values in [-1, 1]: dx dy dz droll dpitch dyaw gripper)
            /franka/target_pose (PoseStamped, absolute EE pose in panda_link0, clipped into the box)
Publishes   /joint_states, /franka/ee_pose, /franka/ee_target, /franka/wrench, /franka/gripper, /diagnostics,
            /franka/workspace (latched CUBE marker of the position box)
Services    /franka/reset, /franka/stop (e-stop, latched), /franka/recover (std_srvs/Trigger)

The node translates messages and timers into controller calls, nothing more. Pass `robot=` to run the same node
on another backend (the fast MuJoCo world composes it in-process); by default it builds the franky backend.
See docs/franka_node.md for units, QoS and decisions.
"""

from __future__ import annotations

import faulthandler
import signal
import threading
import time
from dataclasses import dataclass, fields

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from irevla_ros import interfaces as itf
from irevla_ros.core.control.franka_controller import (
    ERROR,
    FAULT,
    HOLDING,
    STOPPED,
    TRACKING,
    CommandRejected,
    FrankaControlConfig,
    FrankaController,
)
from irevla_ros.core.safety import InvalidAction, Pose
from irevla_ros.nodes._common import COMMAND_QOS, LATCHED_QOS, STATE_QOS, declare_config, spin_node
from irevla_ros.robot.base import FINGER_JOINT_NAMES, JOINT_NAMES, Robot, RobotError
from irevla_ros.robot.franky_backend import FrankyConfig, FrankyRobot

NODE_NAME = "franka_node"
DIAGNOSTIC_NAME = "franka_node: robot"


@dataclass
class FrankaNodeConfig(FrankaControlConfig, FrankyConfig):
    """All franka_node parameters: safety/command (FrankaControlConfig), robot (FrankyConfig), and rates."""

    state_rate_hz: float = 100.0
    """Hz: joint states, EE pose, wrench, gripper."""
    control_rate_hz: float = 50.0
    """Hz: watchdog and recovery tick (a stale stream is held within command_timeout_s + 1/control_rate_hz)."""
    diagnostics_rate_hz: float = 2.0
    """Hz: /diagnostics (also published at once on every mode change)."""
    reset_seed: int = -1
    """Seed for randomised reset poses; -1 = from the OS."""

    def __post_init__(self) -> None:
        FrankaControlConfig.__post_init__(self)
        FrankyConfig.__post_init__(self)
        for name, lo, hi in (("state_rate_hz", 1.0, 1000.0), ("control_rate_hz", 1.0, 1000.0),
                             ("diagnostics_rate_hz", 0.1, 100.0)):
            value = getattr(self, name)
            if not (np.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}] Hz, got {value!r}")
        if not isinstance(self.reset_seed, int) or self.reset_seed < -1:
            raise ValueError(f"reset_seed must be -1 or a non-negative int, got {self.reset_seed!r}")

    def _subset(self, cls):
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    def control(self) -> FrankaControlConfig:
        return self._subset(FrankaControlConfig)

    def franky(self) -> FrankyConfig:
        return self._subset(FrankyConfig)


PARAMETERS = FrankaNodeConfig


def _pose_msg(pose: Pose, stamp, frame: str = itf.BASE_FRAME) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame
    p, q = pose.position, pose.quaternion
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
    msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z, msg.pose.orientation.w = (
        float(v) for v in q)
    return msg


def pose_from_msg(msg: PoseStamped) -> Pose:
    """PoseStamped -> Pose (raises ValueError for non-finite values, zero quaternions or a foreign frame)."""
    if msg.header.frame_id not in ("", itf.BASE_FRAME):
        raise ValueError(f"target pose must be in frame {itf.BASE_FRAME!r}, got {msg.header.frame_id!r}")
    p, o = msg.pose.position, msg.pose.orientation
    return Pose(np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))


class FrankaNode(Node):
    """Thin rclpy shell around FrankaController."""

    def __init__(self, robot: Robot | None = None, *, node_name: str = NODE_NAME, **node_kwargs) -> None:
        super().__init__(node_name, **node_kwargs)
        self.config = declare_config(self, FrankaNodeConfig)
        self.robot = robot if robot is not None else FrankyRobot(self.config.franky())
        self.controller = FrankaController(self.robot, self.config.control(), clock=self._now)
        self._rng = np.random.default_rng(None if self.config.reset_seed < 0 else self.config.reset_seed)
        self.command_received_t = 0.0
        """perf_counter() when the last action arrived (bench/control_loop.py reads it)."""
        self.commands_received = 0

        state = self.controller.start()
        self.get_logger().info(
            f"robot connected: EE at {np.round(state.ee_position, 3).tolist()} m, mode {state.mode}; workspace "
            f"{self.config.workspace_min}..{self.config.workspace_max} m")

        self.joint_pub = self.create_publisher(JointState, itf.JOINT_STATES.name, STATE_QOS)
        self.ee_pub = self.create_publisher(PoseStamped, itf.EE_POSE.name, STATE_QOS)
        self.target_pub = self.create_publisher(PoseStamped, itf.EE_TARGET.name, STATE_QOS)
        self.wrench_pub = self.create_publisher(WrenchStamped, itf.WRENCH.name, STATE_QOS)
        self.gripper_pub = self.create_publisher(JointState, itf.GRIPPER.name, STATE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, itf.DIAGNOSTICS.name, STATE_QOS)
        self.marker_pub = self.create_publisher(Marker, itf.WORKSPACE_MARKER.name, LATCHED_QOS)

        # One single-threaded executor runs every callback (rclpy's MultiThreadedExecutor dropped command
        # callbacks under load in our tests); only the blocking reset motion runs in a worker thread.
        self.create_subscription(Float64MultiArray, itf.ACTION.name, self.action_callback, COMMAND_QOS)
        self.create_subscription(PoseStamped, itf.TARGET_POSE.name, self.target_pose_callback, COMMAND_QOS)
        self.create_timer(1.0 / self.config.control_rate_hz, self.control_callback)
        self.create_timer(1.0 / self.config.state_rate_hz, self.state_callback)
        self.create_timer(1.0 / self.config.diagnostics_rate_hz, self.publish_diagnostics)
        # The pending reset coroutine occupies its callback group until the motion ends: a group of its own,
        # so commands (refused while resetting), state, diagnostics and the e-stop keep running.
        self._reset_group = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, itf.RESET.name, self.reset_callback, callback_group=self._reset_group)
        self.create_service(Trigger, itf.ESTOP.name, self.estop_callback)
        self.create_service(Trigger, itf.RECOVER.name, self.recover_callback)

        self._last_mode = self.controller.mode
        self.publish_workspace_marker()
        self.publish_diagnostics()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # --- commands -----------------------------------------------------------------------------------------
    def action_callback(self, msg: Float64MultiArray) -> None:
        self.command_received_t = time.perf_counter()
        self.commands_received += 1
        try:
            target = self.controller.on_action(msg.data)
        except InvalidAction as exc:
            self.get_logger().warning(f"rejected action: {exc}", throttle_duration_sec=1.0)
            return
        except CommandRejected as exc:
            self.get_logger().warning(f"action not executed: {exc}", throttle_duration_sec=1.0)
            self._report_mode_change()
            return
        self.target_pub.publish(_pose_msg(target, self.get_clock().now().to_msg()))

    def target_pose_callback(self, msg: PoseStamped) -> None:
        try:
            target = self.controller.on_target_pose(pose_from_msg(msg))
        except (ValueError, CommandRejected) as exc:  # InvalidAction is a ValueError
            self.get_logger().warning(f"rejected target pose: {exc}", throttle_duration_sec=1.0)
            return
        self.target_pub.publish(_pose_msg(target, self.get_clock().now().to_msg()))

    def control_callback(self) -> None:
        self._report_mode_change()  # e.g. an error raised by a command since the last tick
        self.controller.tick()
        self._report_mode_change()

    def _report_mode_change(self) -> None:
        """Publish diagnostics at once whenever the controller's mode changes (error, hold, recovery ...)."""
        mode = self.controller.mode
        if mode == self._last_mode:
            return
        if mode == HOLDING and self._last_mode == TRACKING:
            self.get_logger().info(f"no fresh command for {self.config.command_timeout_s}s: holding")
        elif mode in (ERROR, FAULT):
            self.get_logger().error(f"robot {mode}: {self.controller.last_error}")
        self._last_mode = mode
        self.publish_diagnostics()

    # --- state out ----------------------------------------------------------------------------------------
    def state_callback(self) -> None:
        state = self.controller.update_state()
        if state is None:
            return
        stamp = self.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = stamp
        js.name = list(JOINT_NAMES) + list(FINGER_JOINT_NAMES)
        half = 0.5 * float(state.gripper_width)
        js.position = [float(v) for v in state.joint_positions] + [half, half]
        js.velocity = [float(v) for v in state.joint_velocities] + [0.0, 0.0]
        self.joint_pub.publish(js)
        self.ee_pub.publish(_pose_msg(Pose(state.ee_position, state.ee_quaternion), stamp))
        w = WrenchStamped()
        w.header.stamp = stamp
        w.header.frame_id = itf.BASE_FRAME
        f = [float(v) for v in state.ee_wrench]
        w.wrench.force.x, w.wrench.force.y, w.wrench.force.z = f[:3]
        w.wrench.torque.x, w.wrench.torque.y, w.wrench.torque.z = f[3:]
        self.wrench_pub.publish(w)
        g = JointState()
        g.header.stamp = stamp
        g.name = ["gripper_width"]
        g.position = [float(state.gripper_width)]
        g.effort = [1.0 if state.gripper_grasped else 0.0]
        self.gripper_pub.publish(g)

    def publish_diagnostics(self) -> None:
        status = self.controller.status()
        robot_mode = self.controller.state.mode if self.controller.state is not None else "unknown"
        d = DiagnosticStatus()
        d.name = DIAGNOSTIC_NAME
        d.hardware_id = self.config.robot_ip
        if status.mode in (ERROR, FAULT, STOPPED):
            d.level = DiagnosticStatus.ERROR
        elif status.rejected or status.last_error:
            d.level = DiagnosticStatus.WARN
        else:
            d.level = DiagnosticStatus.OK
        d.message = status.mode
        values = {
            "mode": status.mode,
            "robot_mode": robot_mode,
            "last_error": status.last_error,
            "commands_received": str(self.commands_received),
            "commands_applied": str(status.commands_applied),
            "motions_sent": str(status.motions_sent),
            "recoveries": str(status.recoveries),
            "recover_attempts": str(status.recover_attempts),
            "command_age_s": f"{status.command_age_s:.4f}",
            "gripper": str(status.gripper),
            "hold_latency_s": "" if status.hold_latency_s is None else f"{status.hold_latency_s:.4f}",
        }
        values.update({f"rejected[{k}]": str(v) for k, v in sorted(status.rejected.items())})
        d.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [d]
        self.diag_pub.publish(arr)

    def publish_workspace_marker(self) -> None:
        box = self.controller.box
        m = Marker()
        m.header.frame_id = itf.BASE_FRAME
        m.header.stamp = self.get_clock().now().to_msg()
        m.ns = "franka_workspace"
        m.id = 0
        m.type = Marker.CUBE
        m.action = Marker.ADD
        c, s = box.center, box.size
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in c)
        m.pose.orientation.w = 1.0
        m.scale.x, m.scale.y, m.scale.z = (float(v) for v in s)
        m.color.r, m.color.g, m.color.b, m.color.a = 0.1, 0.8, 0.2, 0.15
        self.marker_pub.publish(m)

    # --- services -----------------------------------------------------------------------------------------
    async def reset_callback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """The reset motion takes seconds: it runs in a worker thread while this coroutine yields, so state,
        diagnostics and the e-stop keep being served."""
        done: Future = Future()

        def work() -> None:
            try:
                done.set_result(self.controller.reset(rng=self._rng))
            except (RobotError, CommandRejected) as exc:
                done.set_result(exc)

        threading.Thread(target=work, name="franka_reset", daemon=True).start()
        outcome = await done
        if isinstance(outcome, Exception):
            response.success = False
            response.message = f"reset failed: {outcome}"
            self.get_logger().error(response.message)
        else:
            response.success = True
            response.message = (f"reset ({self.config.reset_mode}): EE at "
                                f"{np.round(outcome.position, 4).tolist()} m, gripper open")
        self.publish_diagnostics()
        return response

    def estop_callback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.controller.estop()
        response.success = True
        response.message = "stopped; commands are ignored until /franka/recover"
        self.get_logger().warning(response.message)
        self.publish_diagnostics()
        return response

    def recover_callback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = self.controller.recover()
        status = self.controller.status()
        response.message = f"mode {status.mode}" + (f": {status.last_error}" if status.last_error else "")
        self.publish_diagnostics()
        return response

    def close(self) -> None:
        """Stop the arm and disconnect (spin_node calls this on shutdown)."""
        self.controller.close()


def main(args=None) -> int:
    # `kill -USR1 <pid>` dumps every thread's stack to stderr: the first thing to look at if the arm node hangs.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.enable()  # and on a crash
    return spin_node(FrankaNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
