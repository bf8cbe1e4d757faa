"""FrankaController + franky backend against the REAL franky client and franky-sim (MuJoCo, libfranka protocol).

franky-sim runs in this process (`FrankySimHost`), so a test can watch the simulated arm every few
milliseconds and inject server-side errors (a preempted motion), exactly as a real control unit would report
them to libfranka. No ROS here: test_franka_node.py covers the node over DDS.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from irevla_ros.core.control.franka_controller import (
    ERROR,
    HOLDING,
    IDLE,
    STOPPED,
    TRACKING,
    CommandRejected,
    FrankaControlConfig,
    FrankaController,
)
from irevla_ros.core.safety import InvalidAction, Pose, WorkspaceBox
from irevla_ros.core.safety.pose import angle_between, quat_from_matrix, rotation_between
from irevla_ros.robot.base import HOME_JOINTS
from irevla_ros.robot.franky_backend import FrankyConfig, FrankyRobot

POS_TOL = 0.002  # m: tracking error allowed after a commanded step has settled
ROT_TOL = 0.01  # rad
HOME_TOL = 0.02  # rad per joint (= reset_joint_tolerance_rad; franky-sim's joint PD sags ~0.013 rad under gravity)
SETTLE_S = 8.0  # s, at most: franky-sim lags its plan and overshoots ~13 mm at 0.1 m/s, then settles (~2.5 s idle)


class FrankySimHost:
    """franky-sim in this process: a libfranka-protocol server on a free 127.x.y.z address, stepping MuJoCo at
    1 kHz in a daemon thread. Watches the EE pose every `watch_every` steps (1 ms each) and can inject errors."""

    def __init__(self, watch_every: int = 5):
        from franky_sim import SimulationServer
        from franky_sim.mujoco_simulator import MujocoSimulator

        self.sim = MujocoSimulator()
        self.sim.init()
        self.sim_robot = self.sim.add_robot()
        self.server = SimulationServer(self.sim)
        self.server.init()
        self._watch_every = watch_every
        self._steps = 0
        self._inject = threading.Event()
        self.watch_box: WorkspaceBox | None = None
        self.max_violation = (0.0, 0.0)
        self.watched = 0
        self.max_step_gap = 0.0
        self._pose: Pose | None = None
        self.errors: list[str] = []
        """Longest wall-clock gap between two 1 ms simulator steps (s): stalls show up here."""
        self._last_step_t = time.perf_counter()
        self.sim.register_pre_step_callback(self._pre_step)
        self.sim.register_post_step_callback(self._post_step)
        self.server.run_async(realtime=True)

    @property
    def hostname(self) -> str:
        return self.sim_robot.hostname

    def ee_pose(self) -> Pose:
        """The simulator's own EE pose (O_T_EE), independent of what the client reports; sampled every
        `watch_every` ms by the simulator thread (reading the state from another thread races with stepping)."""
        wait_for_pose = time.monotonic() + 5.0
        while self._pose is None and time.monotonic() < wait_for_pose:
            time.sleep(0.005)
        return self._pose

    def _read_pose(self) -> Pose:
        m = np.array(self.sim_robot.state.O_T_EE).reshape(4, 4, order="F")
        return Pose(m[:3, 3], quat_from_matrix(m[:3, :3]))

    def inject_preemption(self) -> None:
        """Make the server abort the running (or next) motion: libfranka raises 'Move command preempted!'."""
        self._inject.set()

    def injection_pending(self) -> bool:
        return self._inject.is_set()

    def watch(self, box: WorkspaceBox | None) -> None:
        """Start checking the EE against `box` (fresh counters), or stop checking (None: results kept)."""
        if box is not None:
            self.max_violation = (0.0, 0.0)
            self.watched = 0
        self.watch_box = box

    def _pre_step(self, _sim) -> None:
        server = self.server.robot_servers[0]
        if self._inject.is_set() and server.current_motion_id:  # fires on the next running motion
            self._inject.clear()
            server.stop_motion(send_preemption_signal=True)

    def _post_step(self, _sim) -> None:
        try:
            self._watch_step()
        except Exception as exc:  # noqa: BLE001 - an exception here would silently kill the simulator thread
            self.errors.append(repr(exc))

    def alive(self) -> bool:
        thread = self.server.async_thread
        return thread is not None and thread.is_alive()

    def _watch_step(self) -> None:
        self._steps += 1
        now = time.perf_counter()
        self.max_step_gap = max(self.max_step_gap, now - self._last_step_t)
        self._last_step_t = now
        if self._steps % self._watch_every:
            return
        pose = self._pose = self._read_pose()
        box = self.watch_box
        if box is None:
            return
        dp, dr = box.violation(pose)
        self.watched += 1
        self.max_violation = (max(self.max_violation[0], dp), max(self.max_violation[1], dr))

    def close(self) -> None:
        self.server.cleanup()
        self.sim.cleanup()


@pytest.fixture(scope="module")
def franky_sim():
    host = FrankySimHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def controller(franky_sim):
    # Twice the default dynamics: same code path, shorter resets (test time).
    robot = FrankyRobot(FrankyConfig(robot_ip=franky_sim.hostname, wait_for_robot_s=10.0, relative_dynamics_factor=0.3))
    # Anti-windup and watchdog wider than the defaults: franky-sim shares this process (and a loaded 2-core
    # machine), lags its plan by up to several cm, and a stalled loop must not turn a scaling test into a hold.
    ctl = FrankaController(robot, FrankaControlConfig(command_timeout_s=0.5, max_tracking_error_m=0.1,
                                                      max_tracking_error_rad=0.5))
    ctl.start()
    yield ctl
    ctl.close()


def _settle(ctl: FrankaController, seconds: float = SETTLE_S) -> None:
    """Keep the stream fresh with zero actions (as a policy does) so the arm reaches the target instead of
    the watchdog holding it wherever it is; return once the EE has been still (< 0.2 mm, 1 mrad per 0.3 s) or after
    `seconds` (at least 1.5 s)."""
    start = time.monotonic()
    history: list[Pose] = []
    while time.monotonic() - start < seconds:
        ctl.on_action([0.0] * 7)
        ctl.update_state()
        ctl.tick()
        history.append(ctl.measured_pose())
        if time.monotonic() - start > 1.5 and len(history) > 3:
            dp, dr = history[-4].distance_to(history[-1])
            if dp < 2e-4 and dr < 1e-3:
                break
        time.sleep(0.1)
    time.sleep(0.1)  # a command period before the caller's next command (else the speed cap shortens it)


def _stream(ctl: FrankaController, action, n: int, rate_hz: float = 10.0) -> None:
    for _ in range(n):
        ctl.on_action(action)
        ctl.update_state()
        ctl.tick()
        time.sleep(1.0 / rate_hz)


def _fresh(ctl: FrankaController) -> None:
    """Clear a latched/error state left by an earlier test and go home."""
    if ctl.mode not in (IDLE, TRACKING, HOLDING):
        assert ctl.recover(), ctl.last_error
    ctl.reset()


def test_reset_reaches_home_and_opens_gripper(controller):
    pose = controller.reset()
    state = controller.robot.read_state()
    err = np.abs(state.joint_positions - np.asarray(HOME_JOINTS))
    assert err.max() < HOME_TOL, f"joint error after reset {err.round(4).tolist()} rad"
    assert controller.mode == IDLE
    assert controller.robot.wait_gripper(5.0)
    controller.update_state()
    assert controller.state.gripper_width > 0.07  # m: open Franka Hand
    assert controller.box.contains(pose)


def test_plus_x_delta_moves_by_scaled_amount(controller):
    _fresh(controller)
    start = controller.measured_pose()
    n, scale = 8, controller.config.max_translation_per_tick
    _stream(controller, [1.0, 0, 0, 0, 0, 0, 0], n)
    _settle(controller)
    end = controller.measured_pose()
    moved = end.position - start.position
    np.testing.assert_allclose(moved, [n * scale, 0.0, 0.0], atol=POS_TOL)
    assert angle_between(start.quaternion, end.quaternion) < ROT_TOL
    # half-scale actions move half as far, along -y
    start = end
    _stream(controller, [0, -0.5, 0, 0, 0, 0, 0], n)
    _settle(controller)
    np.testing.assert_allclose(controller.measured_pose().position - start.position, [0, -0.5 * n * scale, 0],
                               atol=POS_TOL)


def test_rotation_deltas_rotate_about_base_axes(controller):
    _fresh(controller)
    start = controller.measured_pose()
    n, scale = 6, controller.config.max_rotation_per_tick
    _stream(controller, [0, 0, 0, 0, 0, 1.0, 0], n)  # +yaw
    _settle(controller)
    mid = controller.measured_pose()
    np.testing.assert_allclose(rotation_between(start.quaternion, mid.quaternion), [0, 0, n * scale], atol=ROT_TOL)
    np.testing.assert_allclose(mid.position, start.position, atol=POS_TOL)  # rotation about the EE point
    _stream(controller, [0, 0, 0, -1.0, 0, 0, 0], n)  # -roll (tilt about base x)
    _settle(controller)
    np.testing.assert_allclose(rotation_between(mid.quaternion, controller.measured_pose().quaternion),
                               [-n * scale, 0, 0], atol=ROT_TOL)


def test_watchdog_holds_a_stale_stream(controller, franky_sim):
    _fresh(controller)
    _stream(controller, [1.0, 0, 0, 0, 0, 0, 0], 5, rate_hz=20.0)  # fast enough to be moving when it stops
    last_cmd = time.monotonic()
    tick = 0.02
    longest_tick = tick  # the bound is "timeout + one tick" of the ticks this loop actually managed (shared CPU)
    previous = time.monotonic()
    while controller.mode == TRACKING:
        controller.update_state()
        controller.tick()
        time.sleep(tick)
        now = time.monotonic()
        longest_tick, previous = max(longest_tick, now - previous), now
        assert now - last_cmd < 2.0, "watchdog never fired"
    assert controller.mode == HOLDING
    assert controller.hold_latency_s <= controller.config.command_timeout_s + longest_tick + 0.01
    held = franky_sim.ee_pose()
    time.sleep(0.8)
    drift = np.linalg.norm(franky_sim.ee_pose().position - held.position)
    assert drift < 0.01, f"arm kept moving {drift:.4f} m after the hold"
    # A fresh command resumes from the measured pose.
    controller.update_state()
    target = controller.on_action([0, 0, 0, 0, 0, 0, 0])
    assert np.linalg.norm(target.position - controller.measured_pose().position) < 1e-6
    assert controller.mode == TRACKING


def test_injected_preemption_is_recovered_and_reported(controller, franky_sim):
    _fresh(controller)
    controller.on_action([1.0, 0, 0, 0, 0, 0, 0])
    recoveries = controller.status().recoveries
    franky_sim.inject_preemption()
    deadline = time.monotonic() + 5.0
    saw_error = ""
    while time.monotonic() < deadline:
        try:
            controller.on_action([0.2, 0, 0, 0, 0, 0, 0])
        except CommandRejected:
            pass
        if controller.mode == ERROR:
            saw_error = controller.last_error
        controller.update_state()
        controller.tick()
        if saw_error and controller.mode in (HOLDING, TRACKING):
            break
        time.sleep(0.05)
    assert "preempted" in saw_error.lower(), f"error not reported: {saw_error!r}"
    assert controller.status().recoveries == recoveries + 1
    target = controller.on_action([0, 0, -1.0, 0, 0, 0, 0])  # and it moves again
    assert controller.mode == TRACKING and controller.box.contains(target)


def test_reset_goes_home_after_the_running_motion_failed_unnoticed(controller, franky_sim):
    """A reset comes to rest before its joint motion; if the motion it stops has already failed (here a
    preemption the controller has not polled yet; on CI once a stop motion franky could not plan), the reset
    clears the error and still goes home instead of failing."""
    _fresh(controller)
    _stream(controller, [1.0, 0, 0, 0, 0, 0, 0], 3)  # moving: a Cartesian motion is running
    franky_sim.inject_preemption()
    deadline = time.monotonic() + 2.0
    while franky_sim.injection_pending() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not franky_sim.injection_pending(), "the simulator never preempted the running motion"
    assert controller.mode == TRACKING  # not polled: the controller does not know yet
    controller.reset()
    err = np.abs(controller.robot.read_state().joint_positions - np.asarray(HOME_JOINTS))
    assert err.max() < HOME_TOL, f"joint error after reset {err.round(4).tolist()} rad"
    assert controller.mode == IDLE and controller.on_action([0, 0, -1.0, 0, 0, 0, 0]) is not None
    assert controller.mode == TRACKING


def test_estop_latches_until_recover(controller, franky_sim):
    _fresh(controller)
    controller.on_action([1.0, 0, 0, 0, 0, 0, 0])
    controller.estop()
    assert controller.mode == STOPPED
    with pytest.raises(CommandRejected, match="stopped"):
        controller.on_action([1.0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(CommandRejected, match="e-stop"):
        controller.reset()
    assert controller.recover()
    assert controller.mode == HOLDING
    controller.on_action([0, 0, 0, 0, 0, 0, 0])
    assert controller.mode == TRACKING


def test_invalid_commands_change_nothing(controller):
    _fresh(controller)
    before = controller.status()
    for bad in ([np.nan] * 7, [0.0] * 6, [2.0, 0, 0, 0, 0, 0, 0], [np.inf, 0, 0, 0, 0, 0, 0], ["x"] * 7):
        with pytest.raises(InvalidAction):
            controller.on_action(bad)
    after = controller.status()
    assert after.commands_applied == before.commands_applied
    assert sum(after.rejected.values()) == sum(before.rejected.values()) + 5
    assert after.mode == IDLE and after.target is None


def test_gripper_close_and_open_through_actions(controller):
    _fresh(controller)
    controller.on_action([0, 0, 0, 0, 0, 0, 1.0])  # right after the reset's "open": deferred, then sent by tick()
    deadline = time.monotonic() + controller.config.gripper_min_interval_s + 1.0
    while controller.gripper.state != "close" and time.monotonic() < deadline:
        controller.tick()
        time.sleep(0.02)
    assert controller.robot.wait_gripper(5.0)
    controller.update_state()
    assert controller.state.gripper_width < 0.01 and controller.state.gripper_grasped
    time.sleep(controller.config.gripper_min_interval_s)
    controller.on_action([0, 0, 0, 0, 0, 0, -1.0])
    assert controller.robot.wait_gripper(5.0)
    controller.update_state()
    assert controller.state.gripper_width > 0.07 and not controller.state.gripper_grasped


def test_random_reset_starts_inside_the_box(controller):
    _fresh(controller)
    pose = controller.reset("random", rng=np.random.default_rng(3))
    assert controller.box.contains(pose, position_tol=controller.config.reset_tolerance_m, rotation_tol=0.02)
    assert np.linalg.norm(pose.position - controller.box.center) > 1e-3  # not simply the centre


def test_fast_streams_are_speed_capped(controller):
    """Commands faster than max_command_rate_hz move the target proportionally less: the target speed is capped."""
    _fresh(controller)
    cfg = controller.config
    t0 = time.monotonic()
    first = controller.on_action([1.0, 0, 0, 0, 0, 0, 0], now=t0)
    dt = 0.2 / cfg.max_command_rate_hz  # five times the allowed rate
    second = controller.on_action([1.0, 0, 0, 0, 0, 0, 0], now=t0 + dt)
    step = np.linalg.norm(second.position - first.position)
    assert step == pytest.approx(cfg.max_translation_per_tick * dt * cfg.max_command_rate_hz, rel=1e-6)
    third = controller.on_action([1.0, 0, 0, 0, 0, 0, 0], now=t0 + dt + 1.0 / cfg.max_command_rate_hz)
    assert np.linalg.norm(third.position - second.position) == pytest.approx(cfg.max_translation_per_tick)

