"""Rigid transforms as 4x4 matrices, quaternions in ROS order (x, y, z, w). ROS-free, numpy + cv2 only.

Naming: `T_a_b` is the pose of frame b in frame a (maps points from b to a), so T_a_c = T_a_b @ T_b_c.
"""

from __future__ import annotations

import cv2
import numpy as np

from irevla_ros.core.safety.pose import matrix_from_quat, normalize_quaternion, quat_from_matrix


def make_transform(rotation: np.ndarray, translation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    T[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    return make_transform(R.T, -R.T @ t)


def from_rvec(rvec, tvec) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    return make_transform(R, tvec)


def to_rvec(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rvec, _ = cv2.Rodrigues(np.ascontiguousarray(T[:3, :3]))
    return rvec.reshape(3), T[:3, 3].copy()


def rotation_angle(R: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix, robust near 0 and pi."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.arccos(cos))


def rotation_axis(R: np.ndarray) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(np.ascontiguousarray(R))
    n = np.linalg.norm(rvec)
    return (rvec.reshape(3) / n) if n > 0 else np.zeros(3)


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """(x, y, z, w) with w >= 0 (one sign per rotation, so calibration files compare equal)."""
    return quat_from_matrix(R)


def matrix_from_quaternion(q) -> np.ndarray:
    """Rotation matrix of a quaternion (x, y, z, w) of any non-zero norm."""
    return matrix_from_quat(normalize_quaternion(q))


def pose_matrix(position, quaternion_xyzw) -> np.ndarray:
    return make_transform(matrix_from_quaternion(quaternion_xyzw), position)


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """The nearest rotation matrix (SVD), e.g. for a mean of rotations."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def mean_transform(transforms: list[np.ndarray]) -> np.ndarray:
    """Chordal mean: mean translation, rotation = nearest rotation to the mean matrix."""
    stack = np.asarray(transforms)
    return make_transform(project_to_rotation(stack[:, :3, :3].mean(axis=0)), stack[:, :3, 3].mean(axis=0))


def is_rigid(T: np.ndarray, atol: float = 1e-6) -> bool:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (np.allclose(R.T @ R, np.eye(3), atol=atol) and abs(np.linalg.det(R) - 1) < atol
            and np.allclose(T[3], [0, 0, 0, 1], atol=atol))
