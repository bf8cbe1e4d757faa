"""Pure-math safety: action validation, workspace box, step clipping (no ROS, heavily tested)."""

from irevla_ros.core.safety.action import InvalidAction, validate_action

__all__ = ["InvalidAction", "validate_action"]
