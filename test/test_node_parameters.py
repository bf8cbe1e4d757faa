"""declare_config: dataclass fields become typed ROS parameters; overrides and bad values behave."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class ExampleConfig:
    names: tuple[str, ...] = ()
    gains: tuple[float, ...] = (1.0, 2.0)
    rate_hz: float = 10.0
    steps: int = 5
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")


def _declare(args: list[str]) -> ExampleConfig:
    import rclpy

    from irevla_ros.nodes._common import declare_config

    context = rclpy.Context()
    rclpy.init(args=["--ros-args", *args], context=context)
    node = rclpy.create_node("param_test", context=context)
    try:
        return declare_config(node, ExampleConfig)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_defaults_when_nothing_is_set():
    assert _declare([]) == ExampleConfig()


def test_overrides_including_empty_list_default_and_int_for_float():
    config = _declare(["-p", "names:=[wrist,front]", "-p", "rate_hz:=20", "-p", "steps:=7", "-p", "enabled:=false"])
    assert config.names == ("wrist", "front") and config.rate_hz == 20.0 and isinstance(config.rate_hz, float)
    assert config.steps == 7 and config.enabled is False


def test_bad_values_are_refused_with_the_parameter_named():
    with pytest.raises(ValueError, match="rate_hz must be > 0"):
        _declare(["-p", "rate_hz:=-1.0"])
    with pytest.raises(ValueError, match="rate_hz must be a number"):
        _declare(["-p", "rate_hz:=fast"])
