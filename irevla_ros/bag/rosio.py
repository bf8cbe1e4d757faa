"""ROS-side helpers shared by the bag nodes: message classes from type names, QoS from what publishers offer."""

from __future__ import annotations

import importlib

from irevla_ros.bag.storage import BagError


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class; BagError if the package is not installed."""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] not in ("msg", "srv", "action"):
        raise BagError(f"{msgtype!r} is not a ROS 2 message type name (pkg/msg/Type)")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype} is not installed here ({exc})") from exc
