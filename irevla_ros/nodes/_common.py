"""Shared plumbing for the thin nodes: parameters from dataclasses, QoS profiles, main(), conversions."""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

# --- QoS: chosen per stream, documented in docs/architecture.md. --------------------------------------
COMMAND_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
"""Commands: only the newest matters (the watchdog judges freshness), but a dropped command is not fine."""
STATE_QOS = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
SENSOR_QOS = qos_profile_sensor_data
"""Camera streams: best effort, newest frames; drops are fine (the policy uses the newest frame)."""
IMAGE_QOS = QoSProfile(depth=2, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
"""Images the learning loop depends on (policy/reward inputs in sim): reliable, shallow."""
DATA_QOS = QoSProfile(depth=500, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
"""Transitions and episode events: every one matters to the learner and the packager."""
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Weights, versions, instructions: late joiners get the last value."""


# --- Parameters declared from a dataclass config. ------------------------------------------------------
def _ros_default(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value


_ARRAY_TYPES = {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
                int: Parameter.Type.INTEGER_ARRAY, bool: Parameter.Type.BOOL_ARRAY}


def _empty_array_type(hint: object) -> Parameter.Type:
    """The ROS type of an empty sequence default, from its hint (`tuple[str, ...]`, `list[float]`): an empty list
    given as a value would be declared as a BYTE_ARRAY and refuse every later string/number list."""
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if len(args) != 1 or args[0] not in _ARRAY_TYPES:
        raise TypeError(f"cannot declare an empty-sequence parameter of type {hint!r}: use tuple[str|float|int|bool, "
                        "...]")
    return _ARRAY_TYPES[args[0]]


def declare_config(node: Node, config_cls: type, prefix: str = ""):
    """Declare every field of `config_cls` as a parameter (defaults from the dataclass), read them back and
    build the config (its __post_init__ validates and raises ValueError naming the bad value)."""
    values = {}
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs a default to be a ROS parameter")
        name = prefix + f.name
        if isinstance(default, (tuple, list)) and len(default) == 0:
            node.declare_parameter(name, _empty_array_type(hints.get(f.name)))
            value = node.get_parameter_or(name, None).value
            value = default if value is None else value
        elif hints.get(f.name) is float:
            # `-p gain:=3` arrives as an INTEGER: accept any number for a float field, refuse anything else.
            node.declare_parameter(name, float(default), ParameterDescriptor(dynamic_typing=True))
            value = node.get_parameter(name).value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"parameter {name} must be a number, got {value!r}")
        else:
            node.declare_parameter(name, _ros_default(default))
            value = node.get_parameter(name).value
        if isinstance(default, tuple) and value is not None:
            value = tuple(value)
        if hints.get(f.name) is float and isinstance(value, int):
            value = float(value)
        values[f.name] = value
    return config_cls(**values)


def config_parameter_names(config_cls: type) -> set[str]:
    """What `declare_config` declares (used by the tests that check parameter files)."""
    return {f.name for f in dataclasses.fields(config_cls)}


# --- Message conversions. ---------------------------------------------------------------------------------
def to_float64_array(values: Sequence[float] | np.ndarray, label: str = "") -> Float64MultiArray:
    msg = Float64MultiArray()
    data = [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(data), stride=len(data))]
    msg.data = data
    return msg


# --- main() for every node. ----------------------------------------------------------------------------
def spin_node(make_node: Callable[[], Node | Sequence[Node]], args: Sequence[str] | None = None,
              *, multithreaded: bool = False) -> int:
    """Init rclpy, build the node(s), spin until Ctrl-C / SIGTERM / shutdown, clean up. Returns an exit code."""
    rclpy.init(args=args)
    nodes: list[Node] = []
    try:
        made = make_node()
        nodes = list(made) if isinstance(made, (list, tuple)) else [made]
        executor = MultiThreadedExecutor() if multithreaded else SingleThreadedExecutor()
        for n in nodes:
            executor.add_node(n)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a side effect of shutting down
        if rclpy.ok():
            raise
        # Ctrl-C shuts the context down from the signal handler; a callback already running then fails to
        # publish ("publisher's context is invalid", seen on CI in franka_node's state timer). That is the
        # shutdown, not a crash: the nodes still close below and the exit code stays 0.
        print(f"[shutdown] a callback ended with {type(exc).__name__} after the context closed: {exc}",
              file=sys.stderr)
    finally:
        for n in nodes:
            close = getattr(n, "close", None)
            if callable(close):
                close()
            n.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0
