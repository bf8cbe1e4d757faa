"""Teleoperation device layer (ROS-free): devices -> 7-D commands, human labels, demo episode boundaries."""

from irevla_ros.teleop.devices import (
    DeviceError,
    InputDevice,
    KeyboardDevice,
    ScriptedDevice,
    SpaceMouseDevice,
    make_device,
    parse_script,
)
from irevla_ros.teleop.mapping import DemoEpisodes, DeviceSample, TeleopConfig, TeleopMapper, TeleopOutput

__all__ = [
    "DemoEpisodes",
    "DeviceError",
    "DeviceSample",
    "InputDevice",
    "KeyboardDevice",
    "ScriptedDevice",
    "SpaceMouseDevice",
    "TeleopConfig",
    "TeleopMapper",
    "TeleopOutput",
    "make_device",
    "parse_script",
]
