"""franka_node as a real process over real DDS, driving the real franky client against franky-sim.

franky-sim runs inside the test process (FrankySimHost), so the simulator's own EE pose is checked every 5 ms
against the workspace box while the node is fed random, adversarial and malformed command streams.
The node runs with a small box around home (reached within a few commands) and twice the default dynamics
(shorter resets); everything else is the shipped config/franka_node.yaml.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import REPO, ProcessGroup, RosHelper, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from test_franka_backend import FrankySimHost
from visualization_msgs.msg import Marker

from irevla_ros import interfaces as itf
from irevla_ros.core.safety import Pose, WorkspaceBox
from irevla_ros.nodes._common import COMMAND_QOS, LATCHED_QOS, STATE_QOS
from irevla_ros.nodes.franka_node import DIAGNOSTIC_NAME
from irevla_ros.robot.base import FINGER_JOINT_NAMES, HOME_JOINTS, JOINT_NAMES

# The test box: +-5 cm around the FR3 home EE position (0.307, 0, 0.487) m, +-0.2 rad tilt, +-0.3 rad yaw.
BOX = WorkspaceBox((0.26, -0.05, 0.44), (0.36, 0.05, 0.54), (1.0, 0.0, 0.0, 0.0), (-0.2, -0.2, -0.3), (0.2, 0.2, 0.3))
STEP_M, STEP_RAD = 0.02, 0.1  # max_translation_per_tick, max_rotation_per_tick for these tests
TIMEOUT_S, CONTROL_HZ = 0.5, 50.0
# franky-sim lags franky's plan and then overshoots the target by up to ~13 mm at 0.1 m/s (measured), so the
# simulated EE is allowed this far past a wall; the targets the node commands are checked strictly.
BOX_TOL_M, BOX_TOL_RAD = 0.02, 0.06
# The node's control timer runs in a Python executor on a shared 2-core machine (load ~10 while these tests
# were written): allow it to run this late. bench/control_loop.py measures the real figure.
SCHEDULING_SLACK_S = 0.1
HOME_TOL = 0.02  # rad per joint
EXTRA: dict = {}


def _vec(values) -> str:
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


class NodeUnderTest:
    def __init__(self, tmp_dir, ros_env):
        self.sim = FrankySimHost()
        self.procs = ProcessGroup(ros_env, tmp_dir)
        params = {
            "robot_ip": self.sim.hostname, "wait_for_robot_s": 20.0, "relative_dynamics_factor": 0.4,
            "reset_timeout_s": 120.0,
            "workspace_min": _vec(BOX.position_min), "workspace_max": _vec(BOX.position_max),
            "orientation_min": _vec(BOX.orientation_min), "orientation_max": _vec(BOX.orientation_max),
            "max_translation_per_tick": STEP_M, "max_rotation_per_tick": STEP_RAD,
            "max_tracking_error_m": 0.04, "command_timeout_s": TIMEOUT_S, "control_rate_hz": CONTROL_HZ,
            "max_command_rate_hz": 10.0,  # target speed <= 0.2 m/s whatever the stream rate
            "reset_seed": 0, **EXTRA,
        }
        cmd = ["franka_node", "--ros-args", "--params-file", str(REPO / "config" / "franka_node.yaml")]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={v}"]
        self.proc = self.procs.start(cmd, name="franka_node")
        self.ros = RosHelper()
        node = self.ros.node
        self.action_pub = node.create_publisher(Float64MultiArray, itf.ACTION.name, COMMAND_QOS)
        self.pose_pub = node.create_publisher(PoseStamped, itf.TARGET_POSE.name, COMMAND_QOS)
        self.ee = self.ros.collect(PoseStamped, itf.EE_POSE.name, STATE_QOS)
        self.targets = self.ros.collect(PoseStamped, itf.EE_TARGET.name, STATE_QOS)
        self.joints = self.ros.collect(JointState, itf.JOINT_STATES.name, STATE_QOS)
        self.gripper = self.ros.collect(JointState, itf.GRIPPER.name, STATE_QOS)
        self.diags = self.ros.collect(DiagnosticArray, itf.DIAGNOSTICS.name, STATE_QOS)
        self.markers = self.ros.collect(Marker, itf.WORKSPACE_MARKER.name, LATCHED_QOS)
        try:
            self.ros.wait_for_subscribers(self.action_pub, timeout=60.0)
            self.ros.wait_for_subscribers(self.pose_pub, timeout=10.0)
            wait_for(lambda: self.ee, 20.0, what="first EE pose")
        except TimeoutError:
            raise AssertionError(f"franka_node did not come up:\n{self.procs.log_of(self.proc)[-3000:]}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, values) -> None:
        msg = Float64MultiArray()
        msg.data = [float(v) for v in values]
        self.action_pub.publish(msg)

    def send_pose(self, position, quaternion, frame: str = itf.BASE_FRAME) -> None:
        msg = PoseStamped()
        msg.header.frame_id = frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
        (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
         msg.pose.orientation.w) = (float(v) for v in quaternion)
        self.pose_pub.publish(msg)

    def stream(self, action, n: int, rate_hz: float = 10.0) -> None:
        """Fire-and-forget at a rate (commands may be dropped if the node stalls: only the newest counts)."""
        for _ in range(n):
            self.send(action)
            time.sleep(1.0 / rate_hz)

    def step(self, action, n: int = 1, period: float = 0.1) -> None:
        """Lockstep: send, wait until the node published the resulting target, then wait out the period.
        On this shared 2-core machine the node's executor can stall for 100s of ms; lockstep makes the
        number of applied commands exact."""
        for _ in range(n):
            t0 = time.monotonic()
            count = len(self.targets)
            self.send(action)
            wait_for(lambda c=count: len(self.targets) > c, 5.0, what="the node's target for a command")
            time.sleep(max(0.0, period - (time.monotonic() - t0)))

    def call(self, endpoint) -> Trigger.Response:
        return self.ros.call(Trigger, endpoint.name, timeout=150.0)

    def go_to_center(self) -> None:
        """Stream the box centre as an absolute target (lockstep, 10 Hz) until the arm is there and still.
        Cheaper than a reset: tests that only need room around the EE use this. (Re-sending the pose, not zero
        actions, so a watchdog hold caused by a stalled executor cannot freeze the arm off-centre.)"""
        deadline = time.monotonic() + 60.0
        settled = 0
        while settled < 5:
            assert time.monotonic() < deadline, (
                f"arm did not reach the box centre: sim EE {self.sim.ee_pose().position}, last target "
                f"{self.targets[-1].pose.position}, node {self.diag()[-1:]}")
            t0, count = time.monotonic(), len(self.targets)
            self.send_pose(BOX.center, BOX.orientation_reference)
            wait_for(lambda c=count: len(self.targets) > c, 5.0, what="target for the centre pose")
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
            near = np.linalg.norm(self.sim.ee_pose().position - BOX.center) < 0.003
            settled = settled + 1 if near else 0

    def diag(self, after: int = 0) -> list[dict[str, str]]:
        out = []
        for arr in list(self.diags)[after:]:
            for s in arr.status:
                if s.name == DIAGNOSTIC_NAME:
                    out.append({kv.key: kv.value for kv in s.values})
        return out

    def ee_pose(self) -> Pose:
        p = self.ee[-1].pose
        return Pose([p.position.x, p.position.y, p.position.z],
                    [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])

    def close(self) -> None:
        self.ros.close()
        self.procs.stop_all()
        self.sim.close()


@pytest.fixture(scope="module")
def franka(tmp_path_factory, ros_env):
    n = NodeUnderTest(tmp_path_factory.mktemp("franka_node"), ros_env)
    try:
        reply = n.call(itf.RESET)
        assert reply.success, reply.message
        yield n
    finally:
        n.close()


def _reset(franka: NodeUnderTest) -> None:
    reply = franka.call(itf.RESET)
    if not reply.success:  # e.g. an e-stop left latched by a failed test
        assert franka.call(itf.RECOVER).success
        reply = franka.call(itf.RESET)
    assert reply.success, reply.message


def test_state_outputs_marker_and_diagnostics(franka):
    wait_for(lambda: franka.joints and franka.gripper and franka.markers and franka.diag(), 10.0, what="state")
    js = franka.joints[-1]
    assert list(js.name) == list(JOINT_NAMES) + list(FINGER_JOINT_NAMES)
    assert len(js.position) == 9 and all(math.isfinite(v) for v in js.position)
    assert franka.ee[-1].header.frame_id == itf.BASE_FRAME
    assert list(franka.gripper[-1].name) == ["gripper_width"]
    m = franka.markers[-1]
    assert m.type == Marker.CUBE and m.header.frame_id == itf.BASE_FRAME
    np.testing.assert_allclose([m.scale.x, m.scale.y, m.scale.z], BOX.size, atol=1e-9)
    np.testing.assert_allclose([m.pose.position.x, m.pose.position.y, m.pose.position.z], BOX.center, atol=1e-9)
    assert franka.diag()[-1]["mode"] in ("idle", "tracking", "holding")


def test_reset_service_reaches_home(franka):
    franka.stream([1.0, 1.0, 0, 0, 0, 0.5, 0], 3)
    _reset(franka)
    time.sleep(0.1)
    q = np.array(franka.joints[-1].position[:7])
    assert np.abs(q - np.asarray(HOME_JOINTS)).max() < HOME_TOL, q.round(4).tolist()


def test_action_topic_moves_by_scaled_amount(franka):
    franka.go_to_center()
    start = franka.sim.ee_pose()
    franka.step([0.5, 0, 0, 0, 0, 0, 0], 3, period=0.12)  # 3 x 0.5 x 0.02 m = 3 cm along +x (below 10 Hz: full steps)
    franka.step([0.0] * 7, 30)  # keep the stream fresh while it settles (3 s)
    moved = franka.sim.ee_pose().position - start.position
    np.testing.assert_allclose(moved, [0.03, 0.0, 0.0], atol=0.002)
    np.testing.assert_allclose(franka.ee_pose().position - start.position, moved, atol=0.002)


def test_gripper_close_and_open_via_action_topic(franka):
    franka.stream([0, 0, 0, 0, 0, 0, 1.0], 5)  # one close command despite five requests (hysteresis)
    wait_for(lambda: franka.gripper[-1].position[0] < 0.01 and franka.gripper[-1].effort[0] == 1.0, 10.0,
             what="gripper closed and grasped")
    time.sleep(0.6)
    franka.stream([0, 0, 0, 0, 0, 0, -1.0], 5)
    wait_for(lambda: franka.gripper[-1].position[0] > 0.07 and franka.gripper[-1].effort[0] == 0.0, 10.0,
             what="gripper open")
    assert franka.diag()[-1]["gripper"] == "open" if franka.diag() else True


def test_watchdog_holds_when_the_stream_stops(franka):
    franka.go_to_center()
    latencies = []
    for trial in range(3):
        n_diag = len(franka.diags)
        franka.step([0.5 if trial % 2 == 0 else -0.5, 0, 0, 0, 0, 0, 0], 6, period=0.05)
        t_last = time.monotonic()
        wait_for(lambda n=n_diag: any(d["mode"] == "holding" for d in franka.diag(n)), 2.0, what="hold")
        seen = time.monotonic() - t_last
        held = [d for d in franka.diag(n_diag) if d["mode"] == "holding"][0]
        latency = float(held["hold_latency_s"])
        latencies.append(latency)
        assert latency <= TIMEOUT_S + 1.0 / CONTROL_HZ + SCHEDULING_SLACK_S, latencies
        assert seen <= TIMEOUT_S + 1.0 / CONTROL_HZ + SCHEDULING_SLACK_S + 0.2  # incl. DDS delivery
        time.sleep(1.0)  # deceleration + franky-sim catching up
        here = franka.sim.ee_pose().position
        time.sleep(0.5)
        assert np.linalg.norm(franka.sim.ee_pose().position - here) < 0.003, "arm still moving while held"
    print(f"watchdog hold latency (timeout {TIMEOUT_S}s, tick {1 / CONTROL_HZ}s): {latencies}")


def test_estop_latches_and_recover_releases(franka):
    franka.go_to_center()
    assert franka.call(itf.ESTOP).success
    here = franka.sim.ee_pose().position
    franka.stream([1.0, 0, 0, 0, 0, 0, 0], 5)
    time.sleep(0.3)
    assert np.linalg.norm(franka.sim.ee_pose().position - here) < 0.002, "moved while e-stopped"
    assert franka.diag()[-1]["mode"] == "stopped"
    assert not franka.call(itf.RESET).success  # reset refuses while the e-stop is latched
    assert franka.call(itf.RECOVER).success
    franka.stream([1.0, 0, 0, 0, 0, 0, 0], 3)
    wait_for(lambda: np.linalg.norm(franka.sim.ee_pose().position - here) > 0.01, 5.0, what="motion after recover")


def test_injected_error_is_recovered_and_reported(franka):
    franka.go_to_center()
    n_diag = len(franka.diags)
    franka.stream([0.3, 0, 0, 0, 0, 0, 0], 3)
    franka.sim.inject_preemption()
    franka.stream([0.0, 0.3, 0, 0, 0, 0, 0], 10)
    wait_for(lambda: any("preempted" in d["last_error"].lower() for d in franka.diag(n_diag)), 5.0,
             what="the error reported on /diagnostics")
    franka.stream([0.0] * 7, 5)
    wait_for(lambda: int(franka.diag()[-1]["recoveries"]) >= 1 and franka.diag()[-1]["mode"] in
             ("tracking", "holding"), 5.0, what="recovery")
    assert any(d["mode"] == "error" for d in franka.diag(n_diag))
    assert franka.alive()


def test_fast_streams_are_coalesced_and_the_newest_target_is_reached(franka):
    """A 50 Hz stream does not replan franky's motion 50 times a second (that drove franky's own commanded pose
    0.09 rad past an in-box target): the robot gets at most 1.25 x max_command_rate_hz motions per second, the newest
    target each time, and the last one is not lost."""
    franka.go_to_center()

    def counters() -> tuple[int, int]:
        n = len(franka.diags)
        wait_for(lambda: len(franka.diags) > n and franka.diag(n), 5.0, what="fresh diagnostics")
        d = franka.diag(n)[-1]
        return int(d["commands_applied"]), int(d["motions_sent"])

    applied0, motions0 = counters()
    t0 = time.monotonic()
    n_targets = len(franka.targets)
    franka.stream([0.4, -0.3, 0, 0, 0, 0.5, 0], 40, rate_hz=50.0)
    elapsed = time.monotonic() - t0
    wait_for(lambda: len(franka.targets) > n_targets, 5.0, what="targets for the stream")
    last = franka.targets[-1].pose
    applied1, motions1 = counters()
    applied, motions = applied1 - applied0, motions1 - motions0
    max_motions = 1.25 * 10.0 * elapsed + 2  # max_command_rate_hz 10 here; +1 motion at each end of the window
    assert motions <= max_motions, (applied, motions, elapsed)
    assert applied >= 20 and motions < applied, (applied, motions)  # commands were coalesced, not refused
    # A zero action re-targets the newest target: keep the stream fresh until the arm is there.
    target = Pose([last.position.x, last.position.y, last.position.z],
                  [last.orientation.x, last.orientation.y, last.orientation.z, last.orientation.w])
    franka.step([0.0] * 7, 20)
    dp, dr = franka.sim.ee_pose().distance_to(target)
    assert dp < 0.003 and dr < 0.01, (dp, dr)


# --- property: nothing drives the EE out of the box, nothing kills the node. ---------------------------------
finite = st.floats(-1.0, 1.0, allow_nan=False)
bad_value = st.sampled_from([math.nan, math.inf, -math.inf, 1.5, -7.0, 1e308])
valid_action = st.lists(finite, min_size=7, max_size=7)
outward = st.builds(lambda axis, sign: [sign if i == axis else 0.0 for i in range(6)] + [0.0],
                    st.integers(0, 5), st.sampled_from([-1.0, 1.0]))
corrupt = st.builds(lambda a, i, v: a[:i] + [v] + a[i + 1:], valid_action, st.integers(0, 6), bad_value)
wrong_length = st.lists(finite, min_size=0, max_size=12).filter(lambda v: len(v) != 7)
far_pose = st.tuples(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
                     st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4))
nan_pose = st.tuples(st.just([math.nan, 0.0, 0.5]), st.just([0.0, 0.0, 0.0, 1.0]))
zero_quat = st.tuples(st.just([0.3, 0.0, 0.5]), st.just([0.0, 0.0, 0.0, 0.0]))
command = st.one_of(
    st.tuples(st.just("action"), valid_action), st.tuples(st.just("action"), outward),
    st.tuples(st.just("action"), outward), st.tuples(st.just("action"), corrupt),
    st.tuples(st.just("action"), wrong_length),
    st.tuples(st.just("pose"), st.one_of(far_pose, nan_pose, zero_quat)),
)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=st.lists(st.tuples(command, st.integers(1, 8)), min_size=3, max_size=8))
def test_random_adversarial_and_nan_streams_never_leave_the_box(franka, stream):
    franka.sim.watch(BOX)
    n_targets = len(franka.targets)
    try:
        for (kind, payload), repeat in stream:
            for _ in range(repeat):
                if kind == "action":
                    franka.send(payload)
                else:
                    franka.send_pose(*payload)
                time.sleep(0.02)
        time.sleep(0.3)
    finally:
        franka.sim.watch(None)
    assert franka.alive(), franka.procs.log_of(franka.proc)[-2000:]
    assert franka.sim.alive() and not franka.sim.errors, franka.sim.errors[-3:]
    assert franka.sim.watched > 0
    dp, dr = franka.sim.max_violation
    print(f"sim EE outside the box by at most {dp:.4f} m / {dr:.4f} rad")
    assert dp <= BOX_TOL_M and dr <= BOX_TOL_RAD, f"EE left the box by {dp:.4f} m / {dr:.4f} rad"
    for msg in list(franka.targets)[n_targets:]:  # every commanded target strictly inside
        p = msg.pose
        target = Pose([p.position.x, p.position.y, p.position.z],
                      [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])
        assert BOX.contains(target, 1e-9, 1e-6), target


def test_sigint_while_moving_exits_cleanly(franka):
    """Keep this the module's last test: it ends the node. Shutdown with a motion and a gripper command in
    flight must stop the arm and exit 0 (franky's gripper futures once hung / crashed the process at exit)."""
    franka.stream([1.0, 0, 0, 0, 0, 0, 1.0], 5, rate_hz=50.0)
    franka.stream([0, 0, 0, 0, 0, 0, -1.0], 3, rate_hz=50.0)
    os.killpg(franka.proc.pid, signal.SIGINT)
    try:
        rc = franka.proc.wait(10.0)
    except subprocess.TimeoutExpired:
        os.kill(franka.proc.pid, signal.SIGUSR1)  # faulthandler: every thread's stack into the log
        time.sleep(1.0)
        raise AssertionError(f"franka_node did not exit:\n{franka.procs.log_of(franka.proc)[-4000:]}") from None
    assert rc == 0, franka.procs.log_of(franka.proc)[-2000:]
