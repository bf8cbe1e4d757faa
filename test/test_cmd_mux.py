"""Teleop/policy command mux: priority with timeout, validation, intervention flag (core + real node)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import wait_for

from irevla_ros.core.control.mux import CommandMux, MuxConfig
from irevla_ros.core.safety import InvalidAction, validate_action


@pytest.mark.parametrize("bad,reason", [
    ([0.0] * 6, "7 components"),
    ([0.0] * 8, "7 components"),
    ([0, 0, math.nan, 0, 0, 0, 0], "non-finite components ['dz']"),
    ([0, 0, 0, math.inf, 0, 0, 0], "non-finite components ['droll']"),
    ([0, 0, 0, 0, 0, 0, 1.5], "outside [-1.0, 1.0]: ['gripper=1.5']"),
    (["a"] * 7, "not numeric"),
])
def test_invalid_actions_are_refused_with_reason(bad, reason):
    with pytest.raises(InvalidAction) as err:
        validate_action(bad)
    assert reason in str(err.value)


def test_teleop_has_priority_until_timeout():
    mux = CommandMux(MuxConfig(teleop_timeout_s=0.5))
    policy = [0.1] * 7
    assert mux.on_policy(policy, now=0.0).source == "policy"
    decision = mux.on_teleop([0.5] * 7, now=1.0)
    assert decision.intervention and np.allclose(decision.action, 0.5)
    blocked = mux.on_policy(policy, now=1.2)
    assert blocked.action is None and blocked.intervention
    resumed = mux.on_policy(policy, now=1.6)
    assert resumed.source == "policy" and not resumed.intervention


def test_rejections_are_counted_by_reason():
    mux = CommandMux()
    for _ in range(3):
        with pytest.raises(InvalidAction):
            mux.on_policy([math.nan] * 7, now=0.0)
    assert sum(mux.rejected.values()) == 3
    assert any("non-finite" in k for k in mux.rejected)


def test_config_rejects_bad_timeout():
    with pytest.raises(ValueError, match="teleop_timeout_s"):
        MuxConfig(teleop_timeout_s=-1.0)


def test_mux_node_flags_interventions(procs, ros):
    from std_msgs.msg import Bool, Float64MultiArray

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import COMMAND_QOS

    procs.start(["cmd_mux", "--ros-args", "-p", "teleop_timeout_s:=1.0"], name="cmd_mux")
    out = ros.collect(Float64MultiArray, itf.ACTION.name, COMMAND_QOS)
    flags = ros.collect(Bool, itf.INTERVENTION.name, COMMAND_QOS)
    policy = ros.node.create_publisher(Float64MultiArray, itf.POLICY_ACTION.name, COMMAND_QOS)
    teleop = ros.node.create_publisher(Float64MultiArray, itf.TELEOP_ACTION.name, COMMAND_QOS)
    ros.wait_for_subscribers(policy, timeout=30)
    ros.wait_for_subscribers(teleop, timeout=30)
    ros.wait_for_publishers(itf.ACTION.name, timeout=30)

    def policy_passes():
        policy.publish(Float64MultiArray(data=[0.1] * 7))
        return bool(out) and out[-1].data[0] == pytest.approx(0.1)

    wait_for(policy_passes, 30, interval=0.1, what="policy command through the mux")
    assert flags[-1].data is False
    teleop.publish(Float64MultiArray(data=[-0.4] * 7))
    wait_for(lambda: out[-1].data[0] == pytest.approx(-0.4), 10, what="teleop command")
    n = len(out)
    policy.publish(Float64MultiArray(data=[0.1] * 7))  # within the teleop timeout: must not pass
    teleop.publish(Float64MultiArray(data=[-0.3] * 7))
    wait_for(lambda: out[-1].data[0] == pytest.approx(-0.3), 10, what="second teleop command")
    assert all(m.data[0] != pytest.approx(0.1) for m in out[n:])
    assert flags[-1].data is True
