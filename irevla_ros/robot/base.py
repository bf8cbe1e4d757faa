"""The robot contract every backend implements (franky on the real arm / franky-sim, fast MuJoCo).

Poses are in the robot base frame (panda_link0): position in metres, orientation as a unit quaternion
(x, y, z, w). The franka node's safety (workspace box, step limits, watchdog) sits ABOVE this interface,
so every backend gets the same protection.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np

JOINT_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINT_NAMES = ("panda_finger_joint1", "panda_finger_joint2")
# Home configuration (rad), the "ready" pose used by Franka's own examples.
HOME_JOINTS = (0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4)


class RobotError(RuntimeError):
    """A backend failure the caller may recover from (control exception, reflex, lost connection)."""


@dataclass
class RobotState:
    joint_positions: np.ndarray = field(default_factory=lambda: np.zeros(7))
    joint_velocities: np.ndarray = field(default_factory=lambda: np.zeros(7))
    ee_position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    ee_quaternion: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 0.0, 1.0]))  # x, y, z, w
    ee_wrench: np.ndarray = field(default_factory=lambda: np.zeros(6))  # estimated external force/torque
    gripper_width: float = 0.0
    gripper_grasped: bool = False
    mode: str = "unknown"
    last_error: str = ""
    time: float = 0.0  # backend time (s): wall clock for franky, sim time for MuJoCo


class Robot(abc.ABC):
    """Small, typed surface; anything that moves the arm is preemptible and stops on close()."""

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read_state(self) -> RobotState: ...

    @abc.abstractmethod
    def move_ee_async(self, position: np.ndarray, quaternion: np.ndarray) -> None:
        """Start (or retarget) tracking of an EE pose; returns at once, preempting the previous target."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Keep the current pose (used by the watchdog when commands go stale)."""

    @abc.abstractmethod
    def move_joints(self, joints: np.ndarray, relative_speed: float = 0.2) -> None:
        """Blocking joint motion (resets)."""

    @abc.abstractmethod
    def gripper_open(self) -> None: ...

    @abc.abstractmethod
    def gripper_grasp(self) -> None: ...

    @abc.abstractmethod
    def recover(self) -> None:
        """Clear errors/reflexes so motion can resume."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop all motion now (e-stop service, shutdown)."""

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
