"""Pure-math safety: action validation, workspace box, step clipping, guards (no ROS, heavily tested)."""

from irevla_ros.core.safety.action import InvalidAction, validate_action
from irevla_ros.core.safety.guards import GRIPPER_CLOSE, GRIPPER_OPEN, GripperLatch, RecoveryBackoff, Watchdog
from irevla_ros.core.safety.pose import Pose
from irevla_ros.core.safety.workspace import StepLimits, WorkspaceBox, apply_action, limit_step, safe_target

__all__ = [
    "GRIPPER_CLOSE",
    "GRIPPER_OPEN",
    "GripperLatch",
    "InvalidAction",
    "Pose",
    "RecoveryBackoff",
    "StepLimits",
    "Watchdog",
    "WorkspaceBox",
    "apply_action",
    "limit_step",
    "safe_target",
    "validate_action",
]
