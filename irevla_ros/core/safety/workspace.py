"""The workspace box and per-tick step limits: every EE target passes through here before it reaches a robot.

Position box: axis-aligned bounds (m) in the base frame.
Orientation box: per-axis bounds (rad) on the rotation vector r of the target relative to a reference
orientation, target = Exp(r) * reference, with r in base-frame axes. With the default reference (gripper
pointing down) r = (tilt about x, tilt about y, yaw about z). Clipping clamps each component of r, so a
clipped orientation is inside the box by construction.

`apply_action` is the one function that turns a normalised 7-D action into a safe EE target: the franka node's
controller and the ROS-free simulation environment both call it, so both obey the same limits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from irevla_ros.core.safety.action import validate_action
from irevla_ros.core.safety.pose import (
    Pose,
    normalize_quaternion,
    quat_from_rotvec,
    quat_multiply,
    rotation_between,
)


def _check_vector(name: str, value, size: int) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be {size} finite numbers, got {value!r}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class WorkspaceBox:
    """Where the EE may be. Defaults: a 0.5 x 0.7 x 0.6 m box in front of a Panda on a table at z = 0."""

    position_min: tuple[float, float, float] = (0.25, -0.35, 0.02)
    position_max: tuple[float, float, float] = (0.75, 0.35, 0.65)
    orientation_reference: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    """(x, y, z, w); the default is the gripper pointing straight down (Panda/FR3 home orientation)."""
    orientation_min: tuple[float, float, float] = (-0.8, -0.8, -2.6)
    orientation_max: tuple[float, float, float] = (0.8, 0.8, 2.6)

    def __post_init__(self) -> None:
        lo = _check_vector("position_min", self.position_min, 3)
        hi = _check_vector("position_max", self.position_max, 3)
        if not all(a < b for a, b in zip(lo, hi, strict=True)):
            raise ValueError(f"position_min {lo} must be below position_max {hi} on every axis")
        olo = _check_vector("orientation_min", self.orientation_min, 3)
        ohi = _check_vector("orientation_max", self.orientation_max, 3)
        if not all(a <= b for a, b in zip(olo, ohi, strict=True)):
            raise ValueError(f"orientation_min {olo} must not exceed orientation_max {ohi}")
        if not all(-np.pi <= a and b <= np.pi for a, b in zip(olo, ohi, strict=True)):
            raise ValueError(f"orientation bounds must be within [-pi, pi] rad, got {olo} .. {ohi}")
        ref = normalize_quaternion(_check_vector("orientation_reference", self.orientation_reference, 4))
        object.__setattr__(self, "position_min", lo)
        object.__setattr__(self, "position_max", hi)
        object.__setattr__(self, "orientation_min", olo)
        object.__setattr__(self, "orientation_max", ohi)
        object.__setattr__(self, "orientation_reference", tuple(float(v) for v in ref))

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (np.asarray(self.position_min) + np.asarray(self.position_max))

    @property
    def size(self) -> np.ndarray:
        return np.asarray(self.position_max) - np.asarray(self.position_min)

    def orientation_offset(self, quaternion: np.ndarray) -> np.ndarray:
        """Rotation vector r (base axes) with quaternion = Exp(r) * reference."""
        return rotation_between(np.asarray(self.orientation_reference), quaternion)

    def clip(self, pose: Pose) -> Pose:
        position = np.clip(pose.position, self.position_min, self.position_max)
        r = self.orientation_offset(pose.quaternion)
        r_clipped = np.clip(r, self.orientation_min, self.orientation_max)
        if np.array_equal(r, r_clipped):
            quaternion = pose.quaternion
        else:
            quaternion = quat_multiply(quat_from_rotvec(r_clipped), np.asarray(self.orientation_reference))
        return Pose(position, quaternion)

    def violation(self, pose: Pose) -> tuple[float, float]:
        """How far outside the box a pose is: (metres, radians); (0, 0) inside."""
        p = pose.position
        dp = np.maximum(np.asarray(self.position_min) - p, 0.0) + np.maximum(p - np.asarray(self.position_max), 0.0)
        r = self.orientation_offset(pose.quaternion)
        dr = (np.maximum(np.asarray(self.orientation_min) - r, 0.0)
              + np.maximum(r - np.asarray(self.orientation_max), 0.0))
        return float(np.linalg.norm(dp)), float(np.linalg.norm(dr))

    def contains(self, pose: Pose, position_tol: float = 1e-9, rotation_tol: float = 1e-9) -> bool:
        dp, dr = self.violation(pose)
        return dp <= position_tol and dr <= rotation_tol

    def sample(self, rng: np.random.Generator, margin: float = 0.0, max_tilt: float = 0.0,
               max_yaw: float = 0.0) -> Pose:
        """A random pose inside the box (randomised episode starts); `margin` m away from the walls, the
        orientation within +-max_tilt (x, y) and +-max_yaw (z) rad of the reference, clipped into the box."""
        lo = np.asarray(self.position_min) + margin
        hi = np.asarray(self.position_max) - margin
        if np.any(lo > hi):
            raise ValueError(f"margin {margin} m leaves no room in the box {self.position_min}..{self.position_max}")
        r = rng.uniform([-max_tilt, -max_tilt, -max_yaw], [max_tilt, max_tilt, max_yaw])
        q = quat_multiply(quat_from_rotvec(r), np.asarray(self.orientation_reference))
        return self.clip(Pose(rng.uniform(lo, hi), q))


@dataclass(frozen=True)
class StepLimits:
    """How far one command may move the target: the action scale and the per-tick caps (norms)."""

    max_translation_per_tick: float = 0.01
    """m: an action component of 1.0 moves the target this far along that axis; the step norm is capped to it."""
    max_rotation_per_tick: float = 0.05
    """rad: likewise for droll/dpitch/dyaw (rotation-vector components about base axes)."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_translation_per_tick) and 0.0 < self.max_translation_per_tick <= 0.1):
            raise ValueError(f"max_translation_per_tick must be in (0, 0.1] m, got {self.max_translation_per_tick!r}")
        if not (np.isfinite(self.max_rotation_per_tick) and 0.0 < self.max_rotation_per_tick <= 0.5):
            raise ValueError(f"max_rotation_per_tick must be in (0, 0.5] rad, got {self.max_rotation_per_tick!r}")


def _cap_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v if n <= limit else v * (limit / n)


def limit_step(reference: Pose, target: Pose, max_translation: float, max_rotation: float) -> Pose:
    """Move from `reference` toward `target` by at most max_translation m and max_rotation rad."""
    dp = _cap_norm(target.position - reference.position, max_translation)
    r = rotation_between(reference.quaternion, target.quaternion)
    r_capped = _cap_norm(r, max_rotation)
    if np.array_equal(r, r_capped):
        quaternion = target.quaternion
    else:
        quaternion = quat_multiply(quat_from_rotvec(r_capped), reference.quaternion)
    return Pose(reference.position + dp, quaternion)


def apply_action(current_pose: Pose, action, limits: StepLimits, box: WorkspaceBox) -> Pose:
    """The safe EE target for a normalised 7-D action taken from `current_pose`.

    Translation: current + action[:3] * max_translation_per_tick (base frame), norm capped to the per-tick max.
    Rotation: Exp(action[3:6] * max_rotation_per_tick) * current (base-frame axes, about the EE point),
    angle capped likewise. The result is clipped into the box. The gripper component is not used here.
    Every target is inside the box, also from a `current_pose` outside it (see safe_target).
    Raises InvalidAction for NaN/inf/out-of-range/wrong-length actions.
    """
    a = validate_action(action)
    dp = _cap_norm(a[:3] * limits.max_translation_per_tick, limits.max_translation_per_tick)
    dr = _cap_norm(a[3:6] * limits.max_rotation_per_tick, limits.max_rotation_per_tick)
    target = Pose(current_pose.position + dp, quat_multiply(quat_from_rotvec(dr), current_pose.quaternion))
    return safe_target(current_pose, target, limits.max_translation_per_tick, limits.max_rotation_per_tick, box)


def safe_target(reference: Pose, target: Pose, max_translation: float, max_rotation: float,
                box: WorkspaceBox) -> Pose:
    """Clip `target` into the box, then cap the step from `reference` to max_translation m / max_rotation rad.

    With `reference` inside the box the capped target lies on the straight line from reference to the clipped
    target in (position, box rotation-vector) coordinates: the box is convex there, so the result is inside
    the box AND within the step limits. From a reference outside the box (an arm that started outside, or
    overshot a wall) every target is still inside the box: the step cap yields to the box there, and the
    step exceeds the cap by at most the reference's distance from the box.
    """
    clipped = box.clip(target)
    if not box.contains(reference, 1e-9, 1e-9):
        return box.clip(limit_step(reference, clipped, max_translation, max_rotation))

    def within(p: Pose) -> bool:
        dp, dr = reference.distance_to(p)
        return dp <= max_translation + 1e-12 and dr <= max_rotation + 1e-12

    if within(clipped):
        return clipped
    r0 = box.orientation_offset(reference.quaternion)
    r1 = box.orientation_offset(clipped.quaternion)
    ref_q = np.asarray(box.orientation_reference)

    def along(f: float) -> Pose:
        return Pose(reference.position + f * (clipped.position - reference.position),
                    quat_multiply(quat_from_rotvec(r0 + f * (r1 - r0)), ref_q))

    lo, hi = 0.0, 1.0  # along(lo) is always within the limits
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if within(along(mid)):
            lo = mid
        else:
            hi = mid
    return along(lo)
