"""One robot interface (base.Robot), backends: franky (real robot or franky-sim) and fast MuJoCo."""

from irevla_ros.robot.base import Robot, RobotError, RobotState

__all__ = ["Robot", "RobotError", "RobotState"]
