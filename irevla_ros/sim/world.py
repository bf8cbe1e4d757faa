"""Named access to the cell's MuJoCo state (robot TCP, objects, button, drawer), the same in both modes.

`World` wraps an (MjModel, MjData) pair: fast mode owns them, faithful mode borrows franky-sim's. Everything the
tasks read or write (object poses, colours, joint positions of the button and drawer) goes through here, so the
task code never depends on the mode.
"""

from __future__ import annotations

import mujoco
import numpy as np

from irevla_ros.sim import scene as sc

ARM_JOINTS = tuple(f"{sc.ROBOT_PREFIX}fr3_joint{i}" for i in range(1, 8))
FINGER_JOINTS = (f"{sc.ROBOT_PREFIX}finger_joint1", f"{sc.ROBOT_PREFIX}finger_joint2")


def _id(model, kind, name: str) -> int:
    i = mujoco.mj_name2id(model, kind, name)
    if i < 0:
        raise KeyError(f"{name!r} not found in the MuJoCo model")
    return i


class World:
    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model = model
        self.data = data
        J = mujoco.mjtObj.mjOBJ_JOINT
        self.arm_joint_ids = [_id(model, J, n) for n in ARM_JOINTS]
        self.arm_qpos = np.array([model.jnt_qposadr[j] for j in self.arm_joint_ids])
        self.arm_dof = np.array([model.jnt_dofadr[j] for j in self.arm_joint_ids])
        finger_ids = [_id(model, J, n) for n in FINGER_JOINTS]
        self.finger_qpos = np.array([model.jnt_qposadr[j] for j in finger_ids])
        self.finger_dof = np.array([model.jnt_dofadr[j] for j in finger_ids])
        self.tcp_site = _id(model, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        B = mujoco.mjtObj.mjOBJ_BODY
        self.mocap = {}
        for name in [f"target{i}" for i in range(sc.N_TARGETS)] + ["zone0", "button0", "drawer0"]:
            self.mocap[name] = int(model.body_mocapid[_id(model, B, name)])
        self.free = {}
        for name in [f"cube{i}" for i in range(sc.N_CUBES)] + ["cylinder0"]:
            j = _id(model, J, f"{name}_joint")
            self.free[name] = (int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j]))
        self.body = {name: _id(model, B, name) for name in list(self.free) + list(self.mocap)}
        self.body["drawer0_drawer"] = _id(model, B, "drawer0_drawer")
        self.slide = {}
        for name in ("button0_joint", "drawer0_joint"):
            j = _id(model, J, name)
            self.slide[name] = (int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j]))
        self.geom = {model.geom(i).name: i for i in range(model.ngeom) if model.geom(i).name}
        self.default_rgba = model.geom_rgba.copy()
        self._contype = model.geom_contype.copy()
        self._conaffinity = model.geom_conaffinity.copy()
        self._free_geoms = {name: np.flatnonzero(model.geom_bodyid == self.body[name]) for name in self.free}

    # --- robot -------------------------------------------------------------------------------------------
    def tcp_position(self) -> np.ndarray:
        return self.data.site_xpos[self.tcp_site].copy()

    def tcp_rotation(self) -> np.ndarray:
        return self.data.site_xmat[self.tcp_site].reshape(3, 3).copy()

    def tcp_quaternion_xyzw(self) -> np.ndarray:
        q = np.empty(4)
        mujoco.mju_mat2Quat(q, self.data.site_xmat[self.tcp_site])
        return np.array([q[1], q[2], q[3], q[0]])

    def arm_q(self) -> np.ndarray:
        return self.data.qpos[self.arm_qpos].copy()

    def gripper_width(self) -> float:
        return float(self.data.qpos[self.finger_qpos].sum())

    def set_arm(self, q: np.ndarray, finger_width: float = 0.08) -> None:
        self.data.qpos[self.arm_qpos] = q
        self.data.qvel[self.arm_dof] = 0.0
        self.data.qpos[self.finger_qpos] = finger_width / 2.0
        self.data.qvel[self.finger_dof] = 0.0

    # --- objects -----------------------------------------------------------------------------------------
    def set_mocap(self, name: str, position, yaw: float = 0.0) -> None:
        i = self.mocap[name]
        self.data.mocap_pos[i] = position
        self.data.mocap_quat[i] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def mocap_position(self, name: str) -> np.ndarray:
        return self.data.mocap_pos[self.mocap[name]].copy()

    def set_free(self, name: str, position, yaw: float = 0.0, *, active: bool = True) -> None:
        """Place a free object at rest. active=False parks it: no collisions and gravity compensated, so an unused
        object costs the solver nothing (no resting contacts) and stays where it was put."""
        g = self._free_geoms[name]
        self.model.geom_contype[g] = self._contype[g] if active else 0
        self.model.geom_conaffinity[g] = self._conaffinity[g] if active else 0
        self.model.body_gravcomp[self.body[name]] = 0.0 if active else 1.0
        qa, da = self.free[name]
        self.data.qpos[qa:qa + 3] = position
        self.data.qpos[qa + 3:qa + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self.data.qvel[da:da + 6] = 0.0

    def free_position(self, name: str) -> np.ndarray:
        qa, _ = self.free[name]
        return self.data.qpos[qa:qa + 3].copy()

    def free_yaw(self, name: str) -> float:
        qa, _ = self.free[name]
        w, x, y, z = self.data.qpos[qa + 3:qa + 7]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def slide_position(self, joint: str) -> float:
        return float(self.data.qpos[self.slide[joint][0]])

    def set_slide(self, joint: str, value: float) -> None:
        qa, da = self.slide[joint]
        self.data.qpos[qa] = value
        self.data.qvel[da] = 0.0

    def set_rgba(self, geom: str, rgba) -> None:
        self.model.geom_rgba[self.geom[geom]] = rgba

    def park_all(self) -> None:
        """Move every task object out of the way (each task then places the ones it uses)."""
        for k, name in enumerate(self.mocap):
            self.set_mocap(name, sc.PARK_POSITION + [0.0, 0.5 * k - 2.0, 0.0])
        for k, name in enumerate(self.free):
            self.set_free(name, sc.PARK_POSITION + [0.5, 0.3 * k - 0.6, sc.CYLINDER_HALF_HEIGHT], active=False)
        for joint in self.slide:
            self.set_slide(joint, 0.0)
        self.model.geom_rgba[:] = self.default_rgba

    def forward(self) -> None:
        mujoco.mj_forward(self.model, self.data)
