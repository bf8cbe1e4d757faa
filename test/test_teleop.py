"""Teleoperation: device layer (keyboard on a real pty, scripted device), mapping, and the node through cmd_mux.

The physical SpaceMouse cannot exist on this machine; `ScriptedDevice` (device:=scripted) is its stand-in:
it produces the same DeviceSample stream (6 axes + button presses) the SpaceMouse driver does.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import wait_for

from irevla_ros.teleop import DemoEpisodes, DeviceSample, KeyboardDevice, ScriptedDevice, TeleopConfig, TeleopMapper
from irevla_ros.teleop.devices import DeviceError, parse_script

AXIS_ATOL = 1e-9


def test_deadband_scale_and_signs():
    mapper = TeleopMapper(TeleopConfig(deadband=0.2, translation_scale=0.5, rotation_scale=0.25,
                                       axis_signs=(1, -1, 1, 1, 1, -1)))
    out = mapper.update(DeviceSample([0.1, 1.0, 0.6, 0.0, -1.0, 1.0]))
    # 0.1 is inside the band; 1.0 -> 1.0 (scaled 0.5, sign -1); 0.6 -> (0.6-0.2)/0.8 = 0.5 -> 0.25.
    assert out.action is not None
    np.testing.assert_allclose(out.action[:6], [0.0, -0.5, 0.25, 0.0, -0.25, -0.25], atol=AXIS_ATOL)
    assert out.action[6] == -1.0  # gripper open at start
    assert np.all(np.abs(out.action) <= 1.0)


def test_no_command_while_the_device_rests():
    mapper = TeleopMapper(TeleopConfig(deadband=0.1))
    assert mapper.update(DeviceSample([0.05, -0.09, 0, 0, 0, 0.0999])).action is None
    assert mapper.update(DeviceSample([np.nan] * 6)).action is None  # a glitching driver never moves the arm


def test_gripper_toggles_on_each_press_and_labels_pass_through():
    mapper = TeleopMapper(TeleopConfig())
    first = mapper.update(DeviceSample(events=("gripper",)))
    assert first.action is not None and first.action[6] == 1.0 and not first.action[:6].any()
    assert mapper.update(DeviceSample([0.5, 0, 0, 0, 0, 0])).action[6] == 1.0  # stays closed
    assert mapper.update(DeviceSample(events=("gripper", "success"))).action[6] == -1.0
    out = mapper.update(DeviceSample(events=("failure", "reset")))
    assert out.action is None and out.labels == ("failure", "reset")


@pytest.mark.parametrize("kwargs,match", [
    ({"deadband": 1.0}, "deadband"),
    ({"translation_scale": 1.5}, "translation_scale"),
    ({"rotation_scale": float("nan")}, "rotation_scale"),
    ({"axis_signs": (1, 1, 1)}, "axis_signs"),
    ({"device": "joystick"}, "device"),
    ({"device": "scripted"}, "script"),
    ({"spacemouse_buttons": ("gripper", "launch")}, "spacemouse_buttons"),
    ({"reset_services": "/franka/reset,sim/reset"}, "reset_services"),
    ({"rate_hz": 0.0}, "rate_hz"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeleopConfig(**kwargs)


def test_keyboard_on_a_real_pseudo_terminal():
    master, slave = os.openpty()
    dev = KeyboardDevice.from_fd(slave, hold_s=0.3)
    try:
        dev.open()
        os.write(master, b"W")
        wait_for(lambda: dev.poll(0.0).axes[0] != 0.0 or False, 5, what="key through the pty")
        sample = dev.poll(0.1)
        assert sample.axes[0] == 1.0  # upper case: full speed
        assert dev.poll(0.5).axes[0] == 0.0  # hold expired: terminals report no releases
        os.write(master, b"d\x1b[A g")  # half speed -y, an arrow key (ignored), gripper, success
        events: list[str] = []
        axes = np.zeros(6)

        def got_all() -> bool:
            nonlocal axes
            s = dev.poll(1.0)
            events.extend(s.events)
            axes = np.where(s.axes != 0, s.axes, axes)
            return len(events) >= 2

        wait_for(got_all, 5, what="gripper and success keys")
        assert events == ["gripper", "success"]
        assert axes[1] == -0.5 and axes[0] == 0.0
    finally:
        dev.close()
        os.close(master)
        os.close(slave)


def test_keyboard_refuses_a_regular_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("w")
    with pytest.raises(DeviceError, match="neither a terminal nor a FIFO"):
        KeyboardDevice(str(path)).open()


def test_scripted_device_plays_axes_and_fires_events_once():
    dev = ScriptedDevice(parse_script(json.dumps([
        {"duration_s": 1.0},
        {"duration_s": 0.5, "axes": [0, 0, 1, 0, 0, 0], "events": ["gripper"]},
        {"duration_s": 0.0, "events": ["success"]},
    ])))
    assert dev.poll(10.0).axes.sum() == 0.0  # the clock starts at the first poll
    assert dev.poll(10.5).events == ()
    first = dev.poll(11.1)
    assert first.axes[2] == 1.0 and first.events == ("gripper",)
    assert dev.poll(11.2).events == ()
    last = dev.poll(11.6)
    assert last.events == ("success",) and not last.axes.any() and dev.finished


@pytest.mark.parametrize("script,match", [
    ("[]", "non-empty"),
    ('[{"duration_s": 1, "axes": [0, 0, 2, 0, 0, 0]}]', "axes"),
    ('[{"duration_s": -1}]', "duration_s"),
    ('[{"events": ["explode"]}]', "unknown events"),
    ('[{"speed": 3}]', "must be an object"),
    ("[{", "not valid JSON"),
    ("/no/such/script.json", "neither inline JSON nor an existing file"),
])
def test_bad_scripts_are_refused(script, match):
    with pytest.raises(ValueError, match=match):
        parse_script(script)


def test_demo_episodes_start_on_motion_and_end_on_label():
    eps = DemoEpisodes()
    assert eps.on_label("success", "x") == []  # nothing recorded yet: nothing to end
    start = eps.on_command("pick the cube")
    assert [e.event for e in start] == ["start"]
    assert eps.on_command("pick the cube") == []
    end = eps.on_label("success", "pick the cube")
    assert end[0].event == "end" and end[0].success and end[0].steps == 2 and end[0].episode_id == start[0].episode_id
    second = eps.on_command("pick the cube")[0]
    assert second.episode_id != start[0].episode_id
    discarded = eps.on_label("discard", "pick the cube")[0]
    assert not discarded.success and discarded.label == "discard"


def test_scripted_device_drives_teleop_node_through_the_mux(procs, ros, tmp_path):
    """The scripted stand-in for the SpaceMouse drives the real teleop_node; cmd_mux lets the human override
    the policy and flags the intervention, then hands control back to the policy after its timeout."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, Float64MultiArray, String

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import COMMAND_QOS

    lead_s = 3.0  # idle start: discovery between teleop_node, the mux and this test takes up to ~3 s
    script = tmp_path / "spacemouse_standin.json"
    script.write_text(json.dumps([
        {"duration_s": lead_s},
        {"duration_s": 1.0, "axes": [1.0, 0, 0, 0, 0, 0]},
        {"duration_s": 0.5, "axes": [0, 0, -0.05, 0, 0, 0], "events": ["gripper"]},  # inside the deadband
        {"duration_s": 0.1, "events": ["success"]},
    ]))
    deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)  # keep every command for the checks
    # Labels and episode events are kept for late subscribers (transient local): under load this test may discover
    # the new teleop_node after the script already sent them, as a bag recorder would.
    late_ok = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    out = ros.collect(Float64MultiArray, itf.ACTION.name, deep)
    flags = ros.collect(Bool, itf.INTERVENTION.name, deep)
    labels = ros.collect(String, itf.HUMAN_LABEL.name, late_ok)
    episodes = ros.collect(String, itf.EPISODE_EVENT.name, late_ok)
    policy = ros.node.create_publisher(Float64MultiArray, itf.POLICY_ACTION.name, COMMAND_QOS)
    policy_action = [0.1, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ros.node.create_timer(0.05, lambda: policy.publish(Float64MultiArray(data=policy_action)))
    procs.start(["cmd_mux"], name="cmd_mux")
    wait_for(lambda: len(out) > 0, 30, what="the policy driving through the mux")  # before the human starts
    procs.start(["teleop_node", "--ros-args", "-p", "device:=scripted", "-p", f"script:={script}",
                 "-p", "translation_scale:=0.5", "-p", "publish_episode_events:=true"], name="teleop_node")

    def pairs():
        return [(tuple(m.data), f.data) for m, f in zip(list(out), list(flags), strict=False)]

    wait_for(lambda: any(f for _, f in pairs()), 30, what="an intervention from the scripted device")
    wait_for(lambda: len(labels) >= 1 and len(episodes) >= 2, 15, what="success label and episode end")
    wait_for(lambda: pairs() and not pairs()[-1][1], 10, what="the policy driving again after the timeout")
    seen = pairs()
    human = [a for a, f in seen if f]
    assert human, "no command was flagged as an intervention"
    assert all(a[0] == pytest.approx(0.5) or a[0] == 0.0 for a in human)  # scaled teleop x, never the policy's
    assert any(a[0] == pytest.approx(0.5) and a[6] == -1.0 for a in human)  # moving with the gripper open
    assert any(a[6] == 1.0 and not any(a[:6]) for a in human)  # the toggle closed the gripper, no motion
    first_human = next(i for i, (_, f) in enumerate(seen) if f)
    assert any(a == tuple(policy_action) and not f for a, f in seen[:first_human])  # policy drove before
    assert seen[-1] == (tuple(policy_action), False)  # and drives again after the timeout
    assert [m.data for m in labels] == ["success"]
    start, end = (json.loads(m.data) for m in episodes[:2])
    assert start["event"] == "start" and end["event"] == "end" and end["success"] is True
    assert end["episode_id"] == start["episode_id"] and end["steps"] >= len(human)  # all teleop commands counted


def test_keyboard_mode_node_reads_keys_from_a_fifo(procs, ros, tmp_path):
    """The real keyboard code path in the real node, fed through a FIFO instead of a person at a terminal.
    use_sim_time with nobody publishing /clock: human input must still be paced by the wall clock."""
    from std_msgs.msg import Float64MultiArray, String

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import COMMAND_QOS, DATA_QOS

    fifo = tmp_path / "keys"
    os.mkfifo(fifo)
    actions = ros.collect(Float64MultiArray, itf.TELEOP_ACTION.name, COMMAND_QOS)
    labels = ros.collect(String, itf.HUMAN_LABEL.name, DATA_QOS)
    node = procs.start(["teleop_node", "--ros-args", "-p", "device:=keyboard", "-p", f"keyboard_input:={fifo}",
                        "-p", "use_sim_time:=true"], name="teleop_keyboard")
    opened: list[int] = []

    def open_writer() -> bool:  # ENXIO until the node has opened its (reading) end
        assert node.poll() is None, procs.log_of(node)
        try:
            opened.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    wait_for(open_writer, 30, interval=0.1, what="the node to open the FIFO")
    writer = opened[0]
    try:
        ros.wait_for_publishers(itf.TELEOP_ACTION.name, timeout=30)
        ros.wait_for_publishers(itf.HUMAN_LABEL.name, timeout=30)

        def pressed_w() -> bool:
            os.write(writer, b"W")
            return any(m.data[0] == pytest.approx(0.5) for m in actions)  # full key speed x translation scale

        wait_for(pressed_w, 30, interval=0.1, what="a W key press driving +x")
        os.write(writer, b" ")
        wait_for(lambda: any(m.data[6] == 1.0 for m in actions), 10, what="the gripper toggle")
        os.write(writer, b"b")
        wait_for(lambda: [m.data for m in labels] == ["failure"], 10, what="the failure label")
    finally:
        os.close(writer)
        assert node.poll() is None, procs.log_of(node)


def test_spacemouse_without_its_driver_says_what_to_install():
    from irevla_ros.teleop import SpaceMouseDevice

    with pytest.raises(DeviceError, match="pyspacemouse|no SpaceMouse found"):  # not installed here, or no device
        SpaceMouseDevice().open()


def test_spacemouse_buttons_become_press_events(monkeypatch):
    """Stand-in for the pyspacemouse driver (the USB SpaceMouse cannot exist here): a module object with the
    driver's open()/read() API returning the driver's state records."""
    import sys
    import types
    from collections import namedtuple

    from irevla_ros.teleop import SpaceMouseDevice

    State = namedtuple("State", "t x y z roll pitch yaw buttons")
    states = iter([State(0, 0.5, 0, 0, 0, 0, -0.2, [0, 0]), State(0, 0.5, 0, 0, 0, 0, 0, [1, 0]),
                   State(0, 0, 0, 0, 0, 0, 0, [1, 0]), State(0, float("nan"), 0, 0, 0, 0, 0, [0, 1])])
    standin = types.SimpleNamespace(open=lambda: True, read=lambda: next(states), close=lambda: None)
    monkeypatch.setitem(sys.modules, "pyspacemouse", standin)
    dev = SpaceMouseDevice(("gripper", "success"))
    dev.open()
    first = dev.poll(0.0)
    assert first.axes.tolist() == [0.5, 0, 0, 0, 0, -0.2] and first.events == ()
    assert dev.poll(0.1).events == ("gripper",)  # press
    assert dev.poll(0.2).events == ()  # still held: no second toggle
    last = dev.poll(0.3)
    assert last.events == ("success",) and last.axes[0] == 0.0  # NaN from the driver never becomes motion
    dev.close()
