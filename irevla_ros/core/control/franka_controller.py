"""FrankaController: every command that can move the arm goes through here (ROS-free).

    action / absolute pose --validate--> step limits + workspace box --> Robot.move_ee_async
    gripper component ------hysteresis--> Robot.gripper_grasp / gripper_open
    tick(): watchdog (stale commands -> Robot.hold) and bounded error recovery with backoff

The franka node only translates messages and timers into these calls; the fast-sim world composes the same
controller with its MuJoCo backend, so the real arm and both simulations get identical protection.

Modes: idle (connected, no command yet) -> tracking (fresh commands) -> holding (watchdog fired) -> tracking ...
error (a robot call failed; tick() retries recover with backoff) -> fault (retries exhausted; needs recover()),
stopped (e-stop latched; needs recover()), resetting (reset motion in progress; commands refused).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

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
    validate_action,
)
from irevla_ros.robot.base import HOME_JOINTS, Robot, RobotError, RobotState

log = logging.getLogger(__name__)

IDLE, TRACKING, HOLDING, RESETTING, ERROR, FAULT, STOPPED = (
    "idle", "tracking", "holding", "resetting", "error", "fault", "stopped")
MODES = (IDLE, TRACKING, HOLDING, RESETTING, ERROR, FAULT, STOPPED)
_ACCEPTS_COMMANDS = (IDLE, TRACKING, HOLDING)
RESET_MODES = ("home", "random")
MOTION_RATE_SLACK = 1.25
"""A new motion is sent at once if 1 / (MOTION_RATE_SLACK x max_command_rate_hz) has passed since the previous one
(a stream at the cap rate with up to 20 % jitter is never delayed); faster commands are coalesced (see _send_target)."""


class CommandRejected(RuntimeError):
    """A well-formed command the robot cannot take now (e-stop latched, resetting, recovering)."""


def _finite_in(name: str, value, lo: float, hi: float) -> None:
    if not (isinstance(value, (int, float)) and np.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")


@dataclass
class FrankaControlConfig:
    """Safety and command parameters (units: m, rad, s). Every field is a franka_node ROS parameter."""

    workspace_min: tuple[float, ...] = (0.25, -0.35, 0.02)
    """m, base frame: lower corner of the box the EE target is clipped into."""
    workspace_max: tuple[float, ...] = (0.75, 0.35, 0.65)
    orientation_reference: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0)
    """(x, y, z, w): the orientation the orientation box is centred on (default: gripper pointing down)."""
    orientation_min: tuple[float, ...] = (-0.8, -0.8, -2.6)
    """rad: per-axis bounds of the rotation vector target * reference^-1 (base axes: tilt x, tilt y, yaw)."""
    orientation_max: tuple[float, ...] = (0.8, 0.8, 2.6)
    max_translation_per_tick: float = 0.01
    """m: scale of dx/dy/dz (action 1.0 -> this far) and cap on the step norm of one command."""
    max_rotation_per_tick: float = 0.05
    """rad: scale of droll/dpitch/dyaw and cap on the rotation of one command."""
    max_command_rate_hz: float = 20.0
    """Hz: commands arriving faster than this move the target proportionally less (step cap x dt x rate), so the
    target never moves faster than max_translation_per_tick x max_command_rate_hz (0.2 m/s by default) however
    fast a client sends; and they do not each replan the running motion: the robot gets the newest target at most
    1.25 x this rate (faster streams are coalesced, the control tick sends the newest). franky's planner may pass a
    target by its braking distance v^2 / (2 a_max): keep the box that far from anything the arm must not touch."""
    max_pose_jump_m: float = 0.25
    """m: an absolute target pose further than this from the current target is approached this far only."""
    max_pose_jump_rad: float = 0.8
    max_tracking_error_m: float = 0.04
    """m: anti-windup; a new target is never further than this ahead of the measured EE (blocked arm)."""
    max_tracking_error_rad: float = 0.3
    command_timeout_s: float = 0.3
    """s: no fresh valid command for this long -> hold the current pose (watchdog)."""
    gripper_threshold: float = 0.5
    """gripper > threshold closes, < -threshold opens, in between keeps the state (hysteresis)."""
    gripper_min_interval_s: float = 0.5
    """s: at most one gripper command per interval."""
    max_recover_attempts: int = 5
    recover_backoff_s: float = 0.2
    """s: first retry delay after an error; doubles each failed attempt up to recover_max_backoff_s."""
    recover_max_backoff_s: float = 5.0
    reset_mode: str = "home"
    """home: joint motion to home_joints; random: home, then a random pose inside the box."""
    home_joints: tuple[float, ...] = tuple(float(v) for v in HOME_JOINTS)
    reset_speed: float = 1.0
    """Fraction of the robot's (already reduced) dynamics used for reset motions."""
    reset_random_margin_m: float = 0.05
    reset_random_max_tilt_rad: float = 0.15
    reset_random_max_yaw_rad: float = 0.5
    reset_timeout_s: float = 30.0
    reset_tolerance_m: float = 0.01
    """m: a random-start reset waits until the EE is this close to the sampled pose."""
    reset_joint_tolerance_rad: float = 0.02
    """rad: a reset waits until every joint is this close to home_joints."""

    def __post_init__(self) -> None:
        self.workspace  # noqa: B018 - builds and validates the box
        self.step_limits  # noqa: B018
        for name, lo, hi in (("max_pose_jump_m", 1e-3, 2.0), ("max_pose_jump_rad", 1e-3, np.pi),
                             ("max_tracking_error_m", 1e-3, 1.0), ("max_tracking_error_rad", 1e-3, np.pi),
                             ("reset_speed", 0.01, 1.0), ("reset_random_margin_m", 0.0, 1.0),
                             ("reset_random_max_tilt_rad", 0.0, np.pi / 2), ("reset_random_max_yaw_rad", 0.0, np.pi),
                             ("reset_timeout_s", 0.1, 600.0), ("reset_tolerance_m", 1e-4, 0.2),
                             ("reset_joint_tolerance_rad", 1e-4, 0.5), ("max_command_rate_hz", 0.1, 1000.0)):
            _finite_in(name, getattr(self, name), lo, hi)
        if self.max_tracking_error_m < self.max_translation_per_tick:
            raise ValueError(f"max_tracking_error_m ({self.max_tracking_error_m}) must be >= "
                             f"max_translation_per_tick ({self.max_translation_per_tick})")
        Watchdog(self.command_timeout_s)
        GripperLatch(self.gripper_threshold, self.gripper_min_interval_s)
        RecoveryBackoff(self.max_recover_attempts, self.recover_backoff_s, self.recover_max_backoff_s)
        if self.reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {self.reset_mode!r}")
        home = np.asarray(self.home_joints, dtype=np.float64)
        if home.shape != (7,) or not np.all(np.isfinite(home)):
            raise ValueError(f"home_joints must be 7 finite joint angles (rad), got {self.home_joints!r}")

    @property
    def workspace(self) -> WorkspaceBox:
        return WorkspaceBox(tuple(self.workspace_min), tuple(self.workspace_max), tuple(self.orientation_reference),
                            tuple(self.orientation_min), tuple(self.orientation_max))

    @property
    def step_limits(self) -> StepLimits:
        return StepLimits(self.max_translation_per_tick, self.max_rotation_per_tick)


@dataclass
class ControllerStatus:
    mode: str
    last_error: str
    commands_applied: int
    rejected: dict[str, int]
    recover_attempts: int
    recoveries: int
    target: Pose | None
    command_age_s: float
    gripper: str | None
    last_hold_t: float | None = None
    """Controller-clock time the watchdog last held the arm."""
    hold_latency_s: float | None = None
    """Last command -> watchdog hold, measured on the controller clock (<= timeout + one control tick)."""
    motions_sent: int = 0
    """Targets actually sent to the robot (<= commands_applied: faster-than-cap streams are coalesced)."""


@dataclass
class _Counters:
    applied: int = 0
    motions: int = 0
    recoveries: int = 0
    rejected: Counter = field(default_factory=Counter)


class FrankaController:
    """Owns all command logic between clients and a `Robot` backend. Thread-safe: the node may call
    on_action / tick / update_state / services from different executor threads."""

    def __init__(self, robot: Robot, config: FrankaControlConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.robot = robot
        self.config = config or FrankaControlConfig()
        self.clock = clock
        self.box = self.config.workspace
        self.limits = self.config.step_limits
        self.watchdog = Watchdog(self.config.command_timeout_s)
        self.gripper = GripperLatch(self.config.gripper_threshold, self.config.gripper_min_interval_s)
        self.backoff = RecoveryBackoff(self.config.max_recover_attempts, self.config.recover_backoff_s,
                                       self.config.recover_max_backoff_s)
        self.mode = IDLE
        self.last_error = ""
        self.target: Pose | None = None
        self.state: RobotState | None = None
        self.last_hold_t: float | None = None
        self.hold_latency_s: float | None = None
        self.pending: Pose | None = None
        """A target accepted but not sent yet (commands faster than the motion rate): the control tick sends it."""
        self._last_motion_t = -np.inf
        self._motion_interval_s = 1.0 / (MOTION_RATE_SLACK * self.config.max_command_rate_hz)
        self._counters = _Counters()
        self._lock = threading.RLock()

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> RobotState:
        """Connect the backend and read the first state (raises RobotError if the robot is unreachable)."""
        self.robot.connect()
        state = self.update_state()
        if state is None:
            raise RobotError(f"connected, but reading the first state failed: {self.last_error}")
        return state

    def close(self) -> None:
        with self._lock:
            try:
                self.robot.close()
            except RobotError as exc:
                log.warning("robot close failed: %s", exc)

    # --- state ------------------------------------------------------------------------------------------
    def update_state(self) -> RobotState | None:
        """Read the backend state and cache it (the command path uses the cached pose: no blocking read)."""
        try:
            state = self.robot.read_state()
        except RobotError as exc:
            self._on_error(exc, self.clock())
            return None
        self.state = state
        if state.last_error and self.mode in _ACCEPTS_COMMANDS:
            # The backend reports an error (e.g. a reflex) although no call of ours failed yet.
            self._on_error(RobotError(state.last_error), self.clock())
        return state

    def measured_pose(self) -> Pose:
        state = self.state if self.state is not None else self.update_state()
        if state is None:
            raise CommandRejected(f"no robot state available: {self.last_error}")
        return Pose(state.ee_position, state.ee_quaternion)

    def status(self) -> ControllerStatus:
        now = self.clock()
        with self._lock:
            return ControllerStatus(self.mode, self.last_error, self._counters.applied,
                                    dict(self._counters.rejected), self.backoff.attempts, self._counters.recoveries,
                                    self.target, self.watchdog.age(now), self.gripper.state, self.last_hold_t,
                                    self.hold_latency_s, self._counters.motions)

    # --- commands ---------------------------------------------------------------------------------------
    def _reject(self, reason: str, exc: Exception) -> Exception:
        self._counters.rejected[reason] += 1
        return exc

    def _check_accepting(self) -> None:
        if self.mode not in _ACCEPTS_COMMANDS:
            raise self._reject(f"robot {self.mode}", CommandRejected(
                f"robot is {self.mode}" + (f" ({self.last_error})" if self.last_error else "")
                + "; command ignored"))

    def _base_pose(self, measured: Pose) -> Pose:
        """Where a delta starts: the last target while tracking (no lag accumulates), pulled to within the
        tracking-error bound of the measured EE (no wind-up against an obstacle); the measured pose otherwise."""
        if self.mode != TRACKING or self.target is None:
            return measured
        return limit_step(measured, self.target, self.config.max_tracking_error_m,
                          self.config.max_tracking_error_rad)

    def _rate_scale(self, now: float) -> float:
        """1 for commands at or below max_command_rate_hz; dt x rate for faster ones (speed cap)."""
        if self.mode != TRACKING:
            return 1.0
        return float(np.clip((now - self.watchdog.last_feed) * self.config.max_command_rate_hz, 1e-3, 1.0))

    def on_action(self, values, now: float | None = None) -> Pose:
        """Execute one normalised 7-D action. Returns the target sent to the robot.

        Raises InvalidAction (bad values: nothing applied) or CommandRejected (robot cannot move now).
        """
        now = self.clock() if now is None else now
        with self._lock:
            try:
                action = validate_action(values)
            except InvalidAction as exc:
                raise self._reject(f"invalid: {str(exc).split(':')[0]}", exc) from None
            self._check_accepting()
            base = self._base_pose(self.measured_pose())
            target = apply_action(base, action, self.limits, self.box)
            rate_scale = self._rate_scale(now)
            if rate_scale < 1.0:
                target = safe_target(base, target, rate_scale * self.config.max_translation_per_tick,
                                     rate_scale * self.config.max_rotation_per_tick, self.box)
            self._send_target(target, now)
            command = self.gripper.update(float(action[6]), now)
            if command is not None:
                self._send_gripper(command, now)
            return target

    def on_target_pose(self, pose: Pose, now: float | None = None) -> Pose:
        """Move toward an absolute EE pose (teleop, scripted resets): clipped into the box, and at most
        max_pose_jump_m / max_pose_jump_rad away from the current target. Returns the target sent."""
        now = self.clock() if now is None else now
        with self._lock:
            if not isinstance(pose, Pose):
                try:
                    pose = Pose(*pose)
                except (TypeError, ValueError) as exc:
                    raise self._reject("invalid: pose", InvalidAction(f"invalid target pose: {exc}")) from None
            self._check_accepting()
            base = self._base_pose(self.measured_pose())
            rate_scale = self._rate_scale(now)
            target = safe_target(base, pose, self.config.max_pose_jump_m * rate_scale,
                                 self.config.max_pose_jump_rad * rate_scale, self.box)
            self._send_target(target, now)
            return target

    def on_gripper(self, close: bool, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        with self._lock:
            self._check_accepting()
            self._send_gripper(GRIPPER_CLOSE if close else GRIPPER_OPEN, now)
            self.gripper.force(GRIPPER_CLOSE if close else GRIPPER_OPEN, now)

    def _send_target(self, target: Pose, now: float) -> None:
        """Accept a safe target: sent to the robot now, or, while a motion sent less than the motion interval ago
        is running, kept as `pending` (newest wins) for the control tick to send. Why: every new motion makes franky
        replan from the robot's reported velocity/acceleration; replanned at 50 Hz, franky-sim's low-pass-filtered
        (lagging) velocity fed each plan more speed than the arm had, and franky's own commanded pose overshot an
        in-box target by 0.07-0.1 rad (at <= 25 Hz: < 0.01 rad). The target speed is capped anyway
        (max_command_rate_hz), so replanning faster gains nothing."""
        if self.mode == TRACKING and now - self._last_motion_t < self._motion_interval_s:
            self.pending = target
        else:
            self._move(target, now)
        self.target = target
        self.mode = TRACKING
        self.watchdog.feed(now)
        self._counters.applied += 1

    def _move(self, target: Pose, now: float) -> None:
        try:
            self.robot.move_ee_async(target.position, target.quaternion)
        except RobotError as exc:
            self._on_error(exc, now)
            raise self._reject("robot error", CommandRejected(f"robot error: {exc}")) from exc
        self.pending = None
        self._last_motion_t = now
        self._counters.motions += 1

    def _send_gripper(self, command: str, now: float) -> None:
        try:
            if command == GRIPPER_CLOSE:
                self.robot.gripper_grasp()
            else:
                self.robot.gripper_open()
        except RobotError as exc:
            # A gripper failure must not stop the arm: report it and let the next command retry.
            self.last_error = f"gripper {command} failed: {exc}"
            self.gripper.state = None
            log.warning(self.last_error)

    # --- periodic -----------------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> str:
        """Watchdog and recovery; call at a fixed rate (>= the command rate). Returns the mode."""
        now = self.clock() if now is None else now
        with self._lock:
            if self.mode == TRACKING and self.watchdog.stale(now):
                try:
                    self.robot.hold()
                except RobotError as exc:
                    self._on_error(exc, now)
                else:
                    self.mode = HOLDING
                    self.target = self.pending = None
                    self.last_hold_t = now
                    self.hold_latency_s = now - self.watchdog.last_feed
            elif self.mode == TRACKING and self.pending is not None and now - self._last_motion_t >= \
                    self._motion_interval_s:
                try:
                    self._move(self.pending, now)
                except CommandRejected:
                    pass  # _move reported the error (mode ERROR): recovery runs from the next ticks
            elif self.mode == ERROR and self.backoff.due(now):
                self._attempt_recover(now)
            if self.mode in _ACCEPTS_COMMANDS:
                command = self.gripper.flush(now)
                if command is not None:
                    self._send_gripper(command, now)
            return self.mode

    def _on_error(self, exc: Exception, now: float) -> None:
        with self._lock:
            self.last_error = str(exc) or type(exc).__name__
            if self.mode in (STOPPED, FAULT):
                return
            if self.mode != ERROR:
                self.backoff.rearm(now)
            self.mode = ERROR
            self.target = self.pending = None
            log.warning("robot error (will recover with backoff): %s", self.last_error)

    def _attempt_recover(self, now: float) -> bool:
        try:
            self.robot.recover()
            state = self.robot.read_state()
        except RobotError as exc:
            self.last_error = f"recover attempt {self.backoff.attempts + 1} failed: {exc}"
            self.backoff.failed(now)
            if self.backoff.exhausted:
                self.mode = FAULT
                log.error("giving up recovery after %d attempts: %s", self.backoff.attempts, exc)
            return False
        self.state = state
        self.mode = HOLDING
        self.target = self.pending = None
        self._counters.recoveries += 1
        self.backoff.rearm(now)
        log.info("recovered from: %s", self.last_error)
        return True

    # --- services -----------------------------------------------------------------------------------------
    def estop(self) -> None:
        """Stop now and latch: commands are refused until recover() (or reset after recover)."""
        with self._lock:
            self.mode = STOPPED
            self.target = self.pending = None
        try:
            self.robot.stop()
        except RobotError as exc:
            self.last_error = f"stop failed: {exc}"
            log.error(self.last_error)

    def recover(self) -> bool:
        """Clear errors, a fault or the e-stop latch (operator request). True if the robot is ready."""
        now = self.clock()
        with self._lock:
            if self.mode == RESETTING:
                return False
            self.backoff.rearm(now)
            self.mode = ERROR
            ok = self._attempt_recover(now)
            if ok:
                self.last_error = ""
            return ok

    def reset(self, mode: str | None = None, rng: np.random.Generator | None = None) -> Pose:
        """Blocking: move home (or home + a random pose in the box), open the gripper, clear the target.
        Returns the measured EE pose afterwards. Raises CommandRejected / RobotError on failure."""
        mode = mode or self.config.reset_mode
        if mode not in RESET_MODES:
            raise ValueError(f"reset mode must be one of {RESET_MODES}, got {mode!r}")
        with self._lock:
            if self.mode == STOPPED:
                raise CommandRejected("e-stop is latched; call recover first")
            if self.mode == RESETTING:
                raise CommandRejected("a reset is already running")
            if self.mode in (ERROR, FAULT) and not self.recover():
                raise CommandRejected(f"robot is {self.mode} and recovery failed: {self.last_error}")
            self.mode = RESETTING
            self.target = self.pending = None
        try:
            self.robot.move_joints(np.asarray(self.config.home_joints, dtype=np.float64), self.config.reset_speed)
            self._wait_until_reached(None)
            if mode == "random":
                goal = self.box.sample(rng or np.random.default_rng(), self.config.reset_random_margin_m,
                                       self.config.reset_random_max_tilt_rad, self.config.reset_random_max_yaw_rad)
                self.robot.move_ee_async(goal.position, goal.quaternion)
                self._wait_until_reached(goal)
            self.robot.gripper_open()
            state = self.robot.read_state()
        except RobotError as exc:
            with self._lock:
                if self.mode == RESETTING:
                    self.mode = IDLE
                self._on_error(exc, self.clock())
            raise
        with self._lock:
            self.state = state
            if self.mode == RESETTING:
                self.mode = IDLE
            self.gripper.force(GRIPPER_OPEN, self.clock())
            self.watchdog.last_feed = -np.inf
        return Pose(state.ee_position, state.ee_quaternion)

    def _wait_until_reached(self, goal: Pose | None) -> None:
        """Poll until the arm is at the goal (EE within reset_tolerance_m; or, for goal None, joints within
        reset_joint_tolerance_rad of home_joints) and has stopped (< 1 mm EE motion in 50 ms). A finished
        motion plan is not enough: the arm may still be catching up with it."""
        deadline = time.monotonic() + self.config.reset_timeout_s
        home = np.asarray(self.config.home_joints, dtype=np.float64)
        previous = None
        while True:
            state = self.robot.read_state()
            if goal is None:
                err = float(np.max(np.abs(state.joint_positions - home)))
                there = err <= self.config.reset_joint_tolerance_rad
                what = f"{err:.4f} rad from home"
            else:
                err = float(np.linalg.norm(state.ee_position - goal.position))
                there = err <= self.config.reset_tolerance_m
                what = f"{err:.4f} m from the start pose"
            still = previous is not None and float(np.linalg.norm(state.ee_position - previous)) < 1e-3
            if there and still:
                return
            previous = state.ee_position
            if self.mode != RESETTING:
                raise RobotError(f"reset interrupted (robot {self.mode})")
            if time.monotonic() > deadline:
                raise RobotError(f"reset did not settle within {self.config.reset_timeout_s}s ({what})")
            time.sleep(0.05)
