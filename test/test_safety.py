"""The pure safety layer: pose math, workspace box, step limits, apply_action, gripper hysteresis, watchdog,
recovery backoff, and the franka configs' validation. No ROS, no robot: fast, many examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irevla_ros.core.control.franka_controller import FrankaControlConfig
from irevla_ros.core.safety import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    GripperLatch,
    InvalidAction,
    Pose,
    RecoveryBackoff,
    StepLimits,
    Watchdog,
    WorkspaceBox,
    apply_action,
    limit_step,
    safe_target,
)
from irevla_ros.core.safety.pose import (
    angle_between,
    matrix_from_quat,
    normalize_quaternion,
    quat_from_matrix,
    quat_from_rotvec,
    quat_multiply,
    rotation_between,
    rotvec_from_quat,
)
from irevla_ros.robot.franky_backend import FrankyConfig

BOX = WorkspaceBox()
LIMITS = StepLimits(0.01, 0.05)
DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down

unit = st.floats(-1.0, 1.0, allow_nan=False)
rotvec = st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3).map(np.array).filter(
    lambda r: np.linalg.norm(r) < math.pi - 1e-3)
quaternion = st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 0.1)


@st.composite
def pose_in_box(draw, box: WorkspaceBox = BOX) -> Pose:
    lo, hi = np.asarray(box.position_min), np.asarray(box.position_max)
    p = lo + np.array([draw(st.floats(0.0, 1.0)) for _ in range(3)]) * (hi - lo)
    olo, ohi = np.asarray(box.orientation_min), np.asarray(box.orientation_max)
    r = olo + np.array([draw(st.floats(0.0, 1.0)) for _ in range(3)]) * (ohi - olo)
    return Pose(p, quat_multiply(quat_from_rotvec(r), np.asarray(box.orientation_reference)))


# --- pose math ---------------------------------------------------------------------------------------------
@given(rotvec)
def test_rotvec_quaternion_round_trip(r):
    np.testing.assert_allclose(rotvec_from_quat(quat_from_rotvec(r)), r, atol=1e-9)


@given(quaternion)
def test_matrix_quaternion_round_trip(q):
    q = normalize_quaternion(q)
    back = quat_from_matrix(matrix_from_quat(q))
    assert angle_between(q, back) < 1e-6
    np.testing.assert_allclose(matrix_from_quat(q) @ matrix_from_quat(q).T, np.eye(3), atol=1e-9)


def test_down_quaternion_is_gripper_down():
    # (x, y, z, w) = (1, 0, 0, 0) is a half turn about x: the tool z axis points along base -z.
    np.testing.assert_allclose(matrix_from_quat(DOWN) @ [0, 0, 1], [0, 0, -1], atol=1e-12)


@given(quaternion, rotvec)
def test_rotation_between_inverts_left_multiplication(q, r):
    q = normalize_quaternion(q)
    np.testing.assert_allclose(rotation_between(q, quat_multiply(quat_from_rotvec(r), q)), r, atol=1e-7)


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [math.nan, 0, 0, 1], [1, 0, 0], [math.inf, 0, 0, 0]])
def test_bad_quaternions_are_rejected(bad):
    with pytest.raises(ValueError, match="quaternion"):
        Pose([0.5, 0, 0.3], bad)


@pytest.mark.parametrize("bad", [[math.nan, 0, 0], [0, 0], [0, 0, math.inf]])
def test_bad_positions_are_rejected(bad):
    with pytest.raises(ValueError, match="position"):
        Pose(bad, DOWN)


# --- apply_action ----------------------------------------------------------------------------------------------
def test_plus_x_action_moves_by_the_scale():
    start = Pose([0.5, 0.0, 0.3], DOWN)
    target = apply_action(start, [1, 0, 0, 0, 0, 0, 0], LIMITS, BOX)
    np.testing.assert_allclose(target.position - start.position, [0.01, 0, 0], atol=1e-12)
    assert angle_between(target.quaternion, start.quaternion) < 1e-12
    half = apply_action(start, [0, -0.5, 0, 0, 0, 0, 1.0], LIMITS, BOX)  # gripper component ignored here
    np.testing.assert_allclose(half.position - start.position, [0, -0.005, 0], atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rotation_actions_rotate_about_base_axes(axis):
    start = Pose([0.5, 0.0, 0.3], DOWN)
    a = np.zeros(7)
    a[3 + axis] = -1.0
    target = apply_action(start, a, LIMITS, BOX)
    expected = np.zeros(3)
    expected[axis] = -0.05
    np.testing.assert_allclose(rotation_between(start.quaternion, target.quaternion), expected, atol=1e-12)
    np.testing.assert_allclose(target.position, start.position)


def test_diagonal_step_norm_is_capped():
    start = Pose([0.5, 0.0, 0.3], DOWN)
    target = apply_action(start, [1, 1, 1, 1, 1, 1, 0], LIMITS, BOX)
    assert np.linalg.norm(target.position - start.position) == pytest.approx(0.01)
    assert angle_between(start.quaternion, target.quaternion) == pytest.approx(0.05)


@pytest.mark.parametrize("bad", [[math.nan] + [0] * 6, [0] * 6, [0] * 8, [1.01] + [0] * 6, [-math.inf] + [0] * 6,
                                 ["a"] * 7, None])
def test_invalid_actions_raise(bad):
    with pytest.raises(InvalidAction):
        apply_action(Pose([0.5, 0, 0.3], DOWN), bad, LIMITS, BOX)


@settings(max_examples=200, deadline=None)
@given(pose_in_box(), st.lists(unit, min_size=7, max_size=7))
def test_any_action_from_inside_stays_inside_and_within_one_step(start, action):
    target = apply_action(start, action, LIMITS, BOX)
    assert BOX.contains(target, 1e-9, 1e-9)
    dp, dr = start.distance_to(target)
    assert dp <= LIMITS.max_translation_per_tick + 1e-12
    assert dr <= LIMITS.max_rotation_per_tick + 1e-9


@settings(max_examples=60, deadline=None)
@given(pose_in_box(), st.lists(st.sampled_from([-1.0, 1.0, 0.0]), min_size=7, max_size=7), st.integers(1, 200))
def test_repeated_outward_actions_never_escape(start, action, n):
    pose = start
    for _ in range(n):
        pose = apply_action(pose, action, LIMITS, BOX)
    assert BOX.contains(pose, 1e-9, 1e-9)


def test_from_outside_the_box_every_target_is_inside():
    outside = Pose([0.76, 0.0, 0.3], quat_multiply(quat_from_rotvec([1.0, 0, 0]), DOWN))  # overshot a wall
    target = apply_action(outside, [1, 0, 0, 0, 0, 0, 0], LIMITS, BOX)
    assert BOX.contains(target, 1e-9, 1e-9)
    np.testing.assert_allclose(target.position, [0.75, 0.0, 0.3], atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3), quaternion, st.lists(unit, min_size=7, max_size=7))
def test_any_action_from_anywhere_targets_inside_the_box(position, q, action):
    assert BOX.contains(apply_action(Pose(position, q), action, LIMITS, BOX), 1e-9, 1e-9)


# --- box, limit_step, safe_target -------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=3), quaternion)
def test_clip_always_lands_inside(position, q):
    clipped = BOX.clip(Pose(position, q))
    assert BOX.contains(clipped, 1e-9, 1e-9)


def test_clip_keeps_inside_poses_unchanged_and_reports_violation():
    inside = Pose([0.5, 0.1, 0.3], quat_multiply(quat_from_rotvec([0.1, -0.2, 1.0]), DOWN))
    assert BOX.clip(inside).distance_to(inside) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert BOX.violation(inside) == (0.0, 0.0)
    dp, dr = BOX.violation(Pose([0.9, 0.1, 0.3], quat_multiply(quat_from_rotvec([1.0, 0, 0]), DOWN)))
    assert dp == pytest.approx(0.15) and dr == pytest.approx(0.2)


def test_limit_step_caps_translation_and_rotation():
    a = Pose([0.5, 0, 0.3], DOWN)
    b = Pose([0.8, 0, 0.3], quat_multiply(quat_from_rotvec([0, 0, 1.0]), DOWN))
    c = limit_step(a, b, 0.1, 0.2)
    np.testing.assert_allclose(c.position, [0.6, 0, 0.3])
    np.testing.assert_allclose(rotation_between(a.quaternion, c.quaternion), [0, 0, 0.2], atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(pose_in_box(), st.lists(st.floats(-3, 3), min_size=3, max_size=3), quaternion)
def test_absolute_targets_are_clipped_and_jump_limited(start, position, q):
    target = safe_target(start, Pose(position, q), 0.25, 0.8, BOX)
    assert BOX.contains(target, 1e-9, 1e-9)
    dp, dr = start.distance_to(target)
    assert dp <= 0.25 + 1e-12 and dr <= 0.8 + 1e-9


def test_sample_gives_poses_inside_with_margin():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = BOX.sample(rng, margin=0.05, max_tilt=0.2, max_yaw=0.5)
        assert BOX.contains(p, 1e-9, 1e-9)
        assert np.all(p.position >= np.asarray(BOX.position_min) + 0.05 - 1e-12)
    with pytest.raises(ValueError, match="margin"):
        BOX.sample(rng, margin=1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(position_min=(0.5, 0, 0), position_max=(0.4, 1, 1)), "below"),
    (dict(position_min=(math.nan, 0, 0)), "finite"),
    (dict(orientation_min=(-4.0, 0, 0)), "pi"),
    (dict(orientation_min=(0.1, 0, 0), orientation_max=(0.0, 0, 0)), "exceed"),
    (dict(orientation_reference=(0, 0, 0, 0)), "quaternion"),
])
def test_bad_boxes_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorkspaceBox(**kwargs)


@pytest.mark.parametrize("t, r", [(0.0, 0.05), (0.2, 0.05), (math.nan, 0.05), (0.01, 0.0), (0.01, math.inf)])
def test_bad_step_limits_are_rejected(t, r):
    with pytest.raises(ValueError, match="per_tick"):
        StepLimits(t, r)


# --- guards ----------------------------------------------------------------------------------------------------
def test_gripper_hysteresis_does_not_flood():
    latch = GripperLatch(threshold=0.5, min_interval_s=0.5)
    t, sent = 0.0, []
    for v in [0.0, 0.4, 0.6, 0.45, 0.55, 0.3, 0.51, 0.9, -0.4, 0.2]:  # hovering near +threshold
        cmd = latch.update(v, t)
        if cmd:
            sent.append(cmd)
        t += 0.05
    assert sent == [GRIPPER_CLOSE]
    assert latch.update(-0.6, t + 1.0) == GRIPPER_OPEN


def test_gripper_flapping_is_rate_limited_and_deferred():
    latch = GripperLatch(threshold=0.5, min_interval_s=0.5)
    sent = [c for i in range(20) if (c := latch.update(1.0 if i % 2 else -1.0, i * 0.05))]
    assert len(sent) <= 2  # one per 0.5 s at most over 1 s
    latch2 = GripperLatch(threshold=0.5, min_interval_s=0.5)
    assert latch2.update(1.0, 0.0) == GRIPPER_CLOSE
    assert latch2.update(-1.0, 0.1) is None and latch2.pending == GRIPPER_OPEN
    assert latch2.flush(0.3) is None
    assert latch2.flush(0.6) == GRIPPER_OPEN and latch2.pending is None
    assert latch2.update(-1.0, 0.7) is None  # already open


def test_gripper_pending_is_cancelled_by_a_later_request():
    latch = GripperLatch(threshold=0.5, min_interval_s=0.5)
    latch.update(1.0, 0.0)
    latch.update(-1.0, 0.1)
    latch.update(1.0, 0.2)  # back to the current state: nothing pending
    assert latch.flush(1.0) is None


def test_watchdog():
    w = Watchdog(0.3)
    assert w.stale(0.0)  # never fed
    w.feed(10.0)
    assert not w.stale(10.29) and w.stale(10.31)
    with pytest.raises(ValueError, match="command_timeout_s"):
        Watchdog(0.0)


def test_recovery_backoff_doubles_caps_and_exhausts():
    b = RecoveryBackoff(max_attempts=4, initial_backoff_s=0.2, max_backoff_s=0.5)
    b.rearm(0.0)
    assert b.due(0.0)
    b.failed(0.0)
    assert not b.due(0.19) and b.due(0.2)
    b.failed(0.2)
    assert b.next_attempt_t == pytest.approx(0.6)  # 0.2 + 0.4
    b.failed(0.6)
    assert b.next_attempt_t == pytest.approx(1.1)  # capped at 0.5
    b.failed(1.1)
    assert b.exhausted and not b.due(100.0)
    b.rearm(5.0)
    assert b.due(5.0) and b.attempts == 0


# --- configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(command_timeout_s=-1.0), "command_timeout_s"),
    (dict(gripper_threshold=1.0), "gripper threshold"),
    (dict(max_recover_attempts=0), "max_recover_attempts"),
    (dict(reset_mode="teleport"), "reset_mode"),
    (dict(home_joints=(0.0,) * 6), "home_joints"),
    (dict(max_translation_per_tick=0.05, max_tracking_error_m=0.01), "max_tracking_error_m"),
    (dict(workspace_min=(0.0, 0.0), workspace_max=(1.0, 1.0)), "position_min"),
    (dict(reset_speed=math.nan), "reset_speed"),
])
def test_control_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrankaControlConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(robot_ip=""), "robot_ip"),
    (dict(realtime_config="sometimes"), "realtime_config"),
    (dict(relative_dynamics_factor=2.0), "relative_dynamics_factor"),
    (dict(cartesian_stiffness=(1.0,) * 5), "cartesian_stiffness"),
    (dict(collision_force_thresholds=(math.nan,) * 6), "collision_force_thresholds"),
    (dict(gripper_force=500.0), "gripper_force"),
])
def test_franky_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrankyConfig(**kwargs)
