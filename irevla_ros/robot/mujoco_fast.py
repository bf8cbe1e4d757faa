"""Fast MuJoCo Robot backend: the cell's own physics, stepped in sim time, no network, no libfranka.

It drives the same FR3 model franky-sim uses (irevla_ros.sim.scene) with an operational-space Cartesian impedance
controller at the physics rate (1 kHz sim time): F = Λ(x)·(Kp·e - Kd·v), τ = Jᵀ·F + null-space posture + bias
(gravity/Coriolis from MuJoCo), clipped to the FR3 torque limits. The gripper uses franky-sim's finger PD law,
so a grasp in fast mode behaves like a grasp in faithful mode.

Time only advances when the owner calls `advance(seconds)`: that is what makes "as fast as the consumers allow"
possible (the sim_world node advances one control period per received action).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")  # before the first mujoco import (the cell's cameras render offscreen)

import mujoco  # noqa: E402
import numpy as np

from irevla_ros.robot.base import HOME_JOINTS, Robot, RobotError, RobotState  # noqa: E402
from irevla_ros.sim.world import World  # noqa: E402

# FR3 joint torque limits (Nm), franky_sim.constants (from the FR3 datasheet).
TORQUE_LIMIT = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
# Gripper finger PD and limits: franky_sim.mujoco_simulator.FrankaMujocoRobot (same numbers on purpose).
FINGER_KP = 1000.0
FINGER_KV = 50.0
GRIPPER_MAX_WIDTH = 0.08  # m
GRIPPER_SPEED = 0.05  # m/s, Franka Hand limit
GRASP_FORCE = 40.0  # N


@dataclass(frozen=True)
class ImpedanceGains:
    """Cartesian impedance of the fast backend (per unit of task-space inertia, i.e. 1/s²)."""

    translational: float = 1200.0
    rotational: float = 800.0
    damping_ratio: float = 1.0
    nullspace_stiffness: float = 10.0  # Nm/rad toward the home posture (keeps the elbow sane)
    max_position_error: float = 0.08  # m: larger errors are clamped (bounded Cartesian speed on big jumps)
    max_rotation_error: float = 0.5  # rad

    def __post_init__(self) -> None:
        for name in ("translational", "rotational", "damping_ratio", "max_position_error", "max_rotation_error"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"ImpedanceGains.{name} must be finite and > 0, got {v!r}")
        if not np.isfinite(self.nullspace_stiffness) or self.nullspace_stiffness < 0:
            raise ValueError(f"ImpedanceGains.nullspace_stiffness must be >= 0, got {self.nullspace_stiffness!r}")


def _quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    m = np.empty(9)
    mujoco.mju_quat2Mat(m, np.array([q[3], q[0], q[1], q[2]], dtype=np.float64))
    return m.reshape(3, 3)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame) taking `current` to `target` (both 3x3)."""
    r = target @ current.T
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, r.ravel())
    if q[0] < 0:
        q = -q
    v = q[1:]
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.zeros(3)
    return 2.0 * np.arctan2(s, q[0]) * v / s


class MujocoFastRobot(Robot):
    """Robot over a World's (model, data). Owns stepping: call `advance(dt)` to move sim time forward.

    teleport_resets: move_joints puts the arm at the goal at rest instead of sweeping it through the scene
    (simulation episode resets; set False to simulate the joint motion).
    control_decimation: physics steps per controller update (1 = 1 kHz like libfranka; 4 = 250 Hz, the default,
    quarters the Python cost per sim second with no visible change in tracking at 10 Hz commands; the gains are
    far inside the zero-order-hold stability limit: Kd·dt ≈ 0.28, and the fingers' 0.195 kg armature keeps their
    PD at kv·dt/m ≈ 0.95).
    """

    def __init__(self, world: World, *, gains: ImpedanceGains | None = None,
                 home: np.ndarray | tuple = HOME_JOINTS, control_decimation: int = 4,
                 teleport_resets: bool = True):
        self.world = world
        self.gains = gains or ImpedanceGains()
        self.home = np.asarray(home, dtype=np.float64)
        m = world.model
        self._nv = m.nv
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._M = np.zeros((m.nv, m.nv))
        self._target_pos = world.tcp_position()
        self._target_rot = world.tcp_rotation()
        self._finger_goal = GRIPPER_MAX_WIDTH
        self._finger_force = GRASP_FORCE
        self._joint_target: np.ndarray | None = None  # set during move_joints
        self._connected = False
        self._error = ""
        self.tracking = False
        if control_decimation < 1:
            raise ValueError(f"control_decimation must be >= 1, got {control_decimation}")
        self.control_decimation = int(control_decimation)
        self.teleport_resets = bool(teleport_resets)
        self.lock = threading.RLock()  # the sim loop and ROS callbacks (fast mode) share model/data
        self._J = np.zeros((6, 7))
        self._err = np.zeros(6)
        self._arm_block = np.ix_(world.arm_dof, world.arm_dof)
        self._lam_reg = 1e-4 * np.eye(6)
        g = self.gains
        self._kp = np.array([g.translational] * 3 + [g.rotational] * 3)
        self._kd = 2.0 * g.damping_ratio * np.sqrt(self._kp)
        self._null_kd = 2.0 * np.sqrt(g.nullspace_stiffness)
        self._joint_kp = np.array([600.0, 600.0, 500.0, 500.0, 250.0, 150.0, 80.0])
        self._joint_kd = 2.0 * np.sqrt(self._joint_kp)

    # --- Robot interface ----------------------------------------------------------------------------------
    def connect(self) -> None:
        self.world.forward()
        self._connected = True
        self.hold()

    def read_state(self) -> RobotState:
        with self.lock:
            return self._read_state()

    def _read_state(self) -> RobotState:
        w = self.world
        d = w.data
        width = w.gripper_width()
        return RobotState(
            joint_positions=d.qpos[w.arm_qpos].copy(),
            joint_velocities=d.qvel[w.arm_dof].copy(),
            ee_position=w.tcp_position(),
            ee_quaternion=w.tcp_quaternion_xyzw(),
            ee_wrench=np.zeros(6),
            gripper_width=width,
            gripper_grasped=bool(self._finger_goal < 0.01 and width > 0.004),
            mode="move" if self.tracking else "idle",
            last_error=self._error,
            time=float(d.time),
        )

    def move_ee_async(self, position: np.ndarray, quaternion: np.ndarray) -> None:
        position = np.asarray(position, dtype=np.float64)
        quaternion = np.asarray(quaternion, dtype=np.float64)
        if position.shape != (3,) or quaternion.shape != (4,):
            raise ValueError(f"move_ee_async needs position[3] and quaternion[4], got {position.shape} "
                             f"and {quaternion.shape}")
        if not (np.isfinite(position).all() and np.isfinite(quaternion).all()):
            raise ValueError("move_ee_async: non-finite target")
        n = np.linalg.norm(quaternion)
        if not 0.9 < n < 1.1:
            raise ValueError(f"move_ee_async: quaternion is not unit length (|q| = {n:.3f})")
        rot = _quat_xyzw_to_mat(quaternion / n)
        with self.lock:
            self._target_pos = position.copy()
            self._target_rot = rot
            self.tracking = True

    def hold(self) -> None:
        with self.lock:
            self._target_pos = self.world.tcp_position()
            self._target_rot = self.world.tcp_rotation()
            self.tracking = False

    def move_joints(self, joints: np.ndarray, relative_speed: float = 0.2) -> None:
        """Joint-space move in sim time: a linear joint ramp (max 1 rad/s · relative_speed) tracked by PD."""
        joints = np.asarray(joints, dtype=np.float64)
        if joints.shape != (7,) or not np.isfinite(joints).all():
            raise ValueError(f"move_joints needs 7 finite joint angles, got {joints!r}")
        if not 0.0 < relative_speed <= 1.0:
            raise ValueError(f"relative_speed must be in (0, 1], got {relative_speed}")
        if self.teleport_resets:
            with self.lock:
                self.teleport(joints, GRIPPER_MAX_WIDTH)
            return
        with self.lock:
            self._ramp_joints(joints, relative_speed)

    def _ramp_joints(self, joints: np.ndarray, relative_speed: float) -> None:
        start = self.world.arm_q()
        duration = max(0.3, float(np.max(np.abs(joints - start))) / (1.0 * relative_speed))
        n = int(duration / self.world.model.opt.timestep)
        for k in range(n):
            self._joint_target = start + (joints - start) * (k + 1) / n
            self._control_step(1)
        self._joint_target = joints
        for _ in range(300):  # settle
            self._control_step(1)
        self._joint_target = None
        self.hold()
        err = float(np.max(np.abs(self.world.arm_q() - joints)))
        if err > 0.05:
            raise RobotError(f"move_joints did not reach its goal (max error {err:.3f} rad)")

    def gripper_open(self) -> None:
        self._finger_goal = GRIPPER_MAX_WIDTH

    def gripper_grasp(self) -> None:
        self._finger_goal = 0.0

    def recover(self) -> None:
        self._error = ""

    def stop(self) -> None:
        self.hold()

    # --- sim-only helpers ---------------------------------------------------------------------------------
    def teleport(self, joints: np.ndarray | tuple = HOME_JOINTS, gripper_width: float = GRIPPER_MAX_WIDTH) -> None:
        """Put the arm at `joints` at rest (episode resets in simulation; a real arm uses move_joints)."""
        with self.lock:
            self.world.set_arm(np.asarray(joints, dtype=np.float64), gripper_width)
            self.world.data.qfrc_applied[:] = 0.0
            self.world.forward()
            self._finger_goal = gripper_width
            self.hold()

    def advance(self, seconds: float) -> None:
        """Step physics (controller at every step) for `seconds` of sim time."""
        n = max(1, int(round(seconds / self.world.model.opt.timestep)))
        k = self.control_decimation
        while n > 0:
            with self.lock:
                self._control_step(min(k, n))
            n -= k

    # --- control law --------------------------------------------------------------------------------------
    def _arm_torque(self) -> np.ndarray:
        w, m, d, g = self.world, self.world.model, self.world.data, self.gains
        dof = w.arm_dof
        qd = d.qvel[dof]
        q = d.qpos[w.arm_qpos]
        bias = d.qfrc_bias[dof]
        if self._joint_target is not None:
            return self._joint_kp * (self._joint_target - q) - self._joint_kd * qd + bias
        mujoco.mj_jacSite(m, d, self._jacp, self._jacr, w.tcp_site)
        J = self._J
        J[:3] = self._jacp[:, dof]
        J[3:] = self._jacr[:, dof]
        mujoco.mj_fullM(m, d, self._M)
        M = self._M[self._arm_block]
        Minv = np.linalg.inv(M)
        minv_jt = Minv @ J.T
        lam = np.linalg.inv(J @ minv_jt + self._lam_reg)
        ep = self._target_pos - d.site_xpos[w.tcp_site]
        n = np.sqrt(ep @ ep)
        if n > g.max_position_error:
            ep *= g.max_position_error / n
        er = rotation_error(self._target_rot, d.site_xmat[w.tcp_site].reshape(3, 3))
        n = np.sqrt(er @ er)
        if n > g.max_rotation_error:
            er *= g.max_rotation_error / n
        self._err[:3] = ep
        self._err[3:] = er
        force = lam @ (self._kp * self._err - self._kd * (J @ qd))
        # Null space: pull toward home posture without disturbing the task (dynamically consistent projector).
        tau0 = g.nullspace_stiffness * (self.home - q) - self._null_kd * qd
        jbar_t = lam @ J @ Minv  # = (M⁻¹ Jᵀ Λ)ᵀ
        return J.T @ force + tau0 - J.T @ (jbar_t @ tau0) + bias

    def _control_step(self, nstep: int) -> None:
        """Compute torques once, hold them for `nstep` physics steps (zero-order hold, like a fieldbus)."""
        w, d = self.world, self.world.data
        tau = np.clip(self._arm_torque(), -TORQUE_LIMIT, TORQUE_LIMIT)
        d.qfrc_applied[w.arm_dof] = tau
        # Fingers: franky-sim's PD on each finger toward goal/2, speed- and force-limited.
        q = d.qpos[w.finger_qpos]
        dq = d.qvel[w.finger_dof]
        ftau = FINGER_KP * (self._finger_goal / 2.0 - q) - FINGER_KV * dq
        fast = (np.abs(dq) > GRIPPER_SPEED) & (np.sign(dq) == np.sign(ftau))
        ftau[fast] = -FINGER_KV * dq[fast]
        d.qfrc_applied[w.finger_dof] = np.clip(ftau, -self._finger_force, self._finger_force)
        mujoco.mj_step(w.model, d, nstep)
