"""How a normalised 7-D action moves the simulated arm: the franka node's own safety functions, in one place.

Both SimEnv (no ROS) and the sim_world node's fast mode call `ActionApplier`, which delegates to
`irevla_ros.core.safety` (apply_action: scaling, per-tick caps, workspace box; GripperLatch: hysteresis), so a
policy sees the same action semantics in every mode, on the real arm included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from irevla_ros.core.safety import GRIPPER_CLOSE, GRIPPER_OPEN, GripperLatch, Pose, StepLimits, WorkspaceBox
from irevla_ros.core.safety import apply_action as safety_apply_action
from irevla_ros.robot.base import Robot

# Simulation defaults: 3 cm / tick at 10 Hz (0.3 m/s) keeps every task within 40-60 steps. The real arm's
# franka_node.yaml may be more conservative; sim.yaml sets the franka node to the same numbers as here.
SIM_STEP_LIMITS = StepLimits(max_translation_per_tick=0.03, max_rotation_per_tick=0.1)


@dataclass
class ActionApplier:
    limits: StepLimits = SIM_STEP_LIMITS
    box: WorkspaceBox = field(default_factory=WorkspaceBox)
    gripper_threshold: float = 0.5
    gripper_min_interval_s: float = 0.3

    def __post_init__(self) -> None:
        self.latch = GripperLatch(self.gripper_threshold, self.gripper_min_interval_s)

    def reset(self, now: float) -> None:
        self.latch = GripperLatch(self.gripper_threshold, self.gripper_min_interval_s)
        self.latch.force(GRIPPER_OPEN, now)

    def apply(self, robot: Robot, action: np.ndarray, now: float) -> Pose:
        """Validate (raises InvalidAction), turn into a safe EE target, command robot + gripper. Returns target."""
        state = robot.read_state()
        target = safety_apply_action(Pose(state.ee_position, state.ee_quaternion), action, self.limits, self.box)
        robot.move_ee_async(target.position, target.quaternion)
        command = self.latch.update(float(action[6]), now)
        if command == GRIPPER_CLOSE:
            robot.gripper_grasp()
        elif command == GRIPPER_OPEN:
            robot.gripper_open()
        return target
