"""Poses and the little rotation algebra the safety layer needs (numpy only, no scipy).

Quaternions are (x, y, z, w), the order ROS messages, franky's `Affine.quaternion` and RobotState use.
Rotation vectors ("axis * angle", radians) are the tangent coordinates the workspace box and the step limits
are expressed in: they have no gimbal singularity near the gripper-down orientation the arm works in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def normalize_quaternion(q: np.ndarray) -> np.ndarray:
    """Unit quaternion with w >= 0 (one canonical sign, so equal rotations compare equal)."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion must be 4 finite numbers (x, y, z, w), got {q!r}")
    n = float(np.linalg.norm(q))
    if n < 1e-6:
        raise ValueError(f"quaternion has (near) zero norm: {q.tolist()}")
    q = q / n
    return -q if q[3] < 0 else q


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b first, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])


def quat_from_rotvec(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    angle = float(np.linalg.norm(r))
    if angle < _EPS:
        return np.array([0.5 * r[0], 0.5 * r[1], 0.5 * r[2], 1.0]) / np.sqrt(1.0 + 0.25 * angle * angle)
    axis = r / angle
    s = np.sin(0.5 * angle)
    return np.array([axis[0] * s, axis[1] * s, axis[2] * s, np.cos(0.5 * angle)])


def rotvec_from_quat(q: np.ndarray) -> np.ndarray:
    """Rotation vector of a unit quaternion; angle in [0, pi] (the short way round)."""
    q = np.asarray(q, dtype=np.float64)
    if q[3] < 0:
        q = -q
    v = q[:3]
    s = float(np.linalg.norm(v))
    if s < _EPS:
        return 2.0 * v
    angle = 2.0 * np.arctan2(s, q[3])
    return v * (angle / s)


def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    """Rotation matrix (3x3) -> unit quaternion (x, y, z, w) (Shepperd's method)."""
    m = np.asarray(m, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    return normalize_quaternion(np.array(q))


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation vector r (base-frame axes) with b = Exp(r) * a."""
    return rotvec_from_quat(quat_multiply(b, quat_conjugate(a)))


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """Geodesic angle (rad) between two orientations."""
    return float(np.linalg.norm(rotation_between(a, b)))


@dataclass(frozen=True)
class Pose:
    """An EE pose in the robot base frame: position (m) and unit quaternion (x, y, z, w)."""

    position: np.ndarray
    quaternion: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.position, dtype=np.float64)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ValueError(f"position must be 3 finite numbers (m), got {self.position!r}")
        object.__setattr__(self, "position", p)
        object.__setattr__(self, "quaternion", normalize_quaternion(self.quaternion))

    def as_array(self) -> np.ndarray:
        """[x, y, z, qx, qy, qz, qw]."""
        return np.concatenate([self.position, self.quaternion])

    def distance_to(self, other: Pose) -> tuple[float, float]:
        """(translation m, rotation rad) between two poses."""
        return (float(np.linalg.norm(other.position - self.position)),
                angle_between(self.quaternion, other.quaternion))
