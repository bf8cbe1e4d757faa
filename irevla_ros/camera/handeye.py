"""Hand-eye calibration from robot poses and board poses. ROS-free (numpy + cv2).

Eye-in-hand (wrist camera): find X = T_ee_cam, the camera on the flange, from T_base_ee[i] (robot) and
T_cam_board[i] (ChArUco), the board fixed in the world: T_base_ee[i] X T_cam_board[i] = T_base_board for all i.
Eye-to-hand (fixed camera): find X = T_base_cam, the board held by the gripper:
T_base_ee[i] T_ee_board = X T_cam_board[i].

Solvers: cv2.calibrateHandEye (tsai, park, horaud, andreff, daniilidis) for both (eye-to-hand passes the inverted
robot poses) and cv2.calibrateRobotWorldHandEye (shah, li), which also returns the second unknown.
The closed-form solvers weigh noise unevenly (Andreff and Li lose centimetres in translation on noisy data). Given a
residual function (with images: the corner reprojection error in pixels, the maximum-likelihood objective for
detection noise), `calibrate` refines both unknowns by Levenberg-Marquardt from the closed-form start.
A pose set whose rotations do not span two axes cannot determine X (Tsai & Lenz 1989): it is rejected up front
with `DegeneratePoseSet` instead of returning an arbitrary answer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from irevla_ros.camera.transforms import (
    from_rvec,
    invert,
    make_transform,
    mean_transform,
    rotation_angle,
    rotation_axis,
)

EYE_IN_HAND, EYE_TO_HAND = "eye_in_hand", "eye_to_hand"
MODES = (EYE_IN_HAND, EYE_TO_HAND)
HAND_EYE_METHODS = {"tsai": cv2.CALIB_HAND_EYE_TSAI, "park": cv2.CALIB_HAND_EYE_PARK,
                    "horaud": cv2.CALIB_HAND_EYE_HORAUD, "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
                    "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS}
ROBOT_WORLD_METHODS = {"shah": cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH, "li": cv2.CALIB_ROBOT_WORLD_HAND_EYE_LI}
METHODS = tuple(HAND_EYE_METHODS) + tuple(ROBOT_WORLD_METHODS)
MIN_SAMPLES = 3


class DegeneratePoseSet(ValueError):
    """The robot poses cannot determine the hand-eye transform (too few, no rotation, one rotation axis)."""


@dataclass(frozen=True)
class DiversityConfig:
    min_rotation_deg: float = 10.0
    """A relative motion counts as a rotation only above this angle."""
    min_axis_angle_deg: float = 15.0
    """At least two such rotations must have axes this far apart (else the rotation about them is unknown)."""


@dataclass
class HandEyeResult:
    mode: str
    method: str
    transform: np.ndarray
    """eye_in_hand: T_ee_cam; eye_to_hand: T_base_cam."""
    board_transform: np.ndarray
    """eye_in_hand: T_base_board; eye_to_hand: T_ee_board (the other, constant, unknown)."""
    residuals: dict = field(default_factory=dict)
    num_samples: int = 0
    refined: bool = False


def _check_inputs(robot_poses, board_poses) -> tuple[list[np.ndarray], list[np.ndarray]]:
    robot = [np.asarray(T, dtype=np.float64) for T in robot_poses]
    board = [np.asarray(T, dtype=np.float64) for T in board_poses]
    if len(robot) != len(board):
        raise ValueError(f"{len(robot)} robot poses but {len(board)} board poses")
    for name, poses in (("robot", robot), ("board", board)):
        for i, T in enumerate(poses):
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise ValueError(f"{name} pose {i} is not a finite 4x4 matrix")
            R = T[:3, :3]
            if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or abs(np.linalg.det(R) - 1) > 1e-4:
                raise ValueError(f"{name} pose {i} has a rotation part that is not a rotation matrix")
    return robot, board


def check_pose_diversity(robot_poses, config: DiversityConfig | None = None) -> dict:
    """Raise DegeneratePoseSet unless the relative robot motions rotate about two clearly different axes.
    Returns a summary (largest rotation, largest angle between rotation axes) for the report."""
    config = config or DiversityConfig()
    poses = [np.asarray(T, dtype=np.float64) for T in robot_poses]
    if len(poses) < MIN_SAMPLES:
        raise DegeneratePoseSet(f"{len(poses)} samples: hand-eye calibration needs at least {MIN_SAMPLES} "
                                "(15-25 recommended), with the wrist rotated about different axes")
    axes, max_rotation = [], 0.0
    for a, b in itertools.combinations(poses, 2):
        R = a[:3, :3].T @ b[:3, :3]
        angle = np.degrees(rotation_angle(R))
        max_rotation = max(max_rotation, angle)
        if angle >= config.min_rotation_deg:
            axes.append(rotation_axis(R))
    if not axes:
        raise DegeneratePoseSet(
            f"degenerate pose set: no two of the {len(poses)} robot poses differ by a rotation of "
            f"{config.min_rotation_deg:g} deg or more (largest {max_rotation:.1f} deg): pure translations cannot "
            "determine the camera's rotation. Tilt the wrist by 15-30 deg about different axes between samples.")
    A = np.asarray(axes)
    cos = np.abs(np.clip(A @ A.T, -1.0, 1.0))
    max_axis_angle = float(np.degrees(np.arccos(cos.min())))
    if max_axis_angle < config.min_axis_angle_deg:
        raise DegeneratePoseSet(
            f"degenerate pose set: every robot rotation is about (nearly) the same axis "
            f"{np.round(A[0], 2).tolist()} (largest angle between axes {max_axis_angle:.1f} deg < "
            f"{config.min_axis_angle_deg:g}): the translation along that axis cannot be determined. "
            "Rotate the wrist about at least two clearly different axes (e.g. roll and pitch).")
    return {"max_relative_rotation_deg": float(max_rotation), "max_rotation_axis_angle_deg": max_axis_angle}


def _split(poses: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return [T[:3, :3] for T in poses], [T[:3, 3].reshape(3, 1) for T in poses]


def _solve_ax_xb(gripper_in_base: list[np.ndarray], target_in_cam: list[np.ndarray], method: str) -> np.ndarray:
    R, t = cv2.calibrateHandEye(*_split(gripper_in_base), *_split(target_in_cam), method=HAND_EYE_METHODS[method])
    return make_transform(R, t)


def _solve_robot_world(world_in_cam: list[np.ndarray], base_in_gripper: list[np.ndarray],
                       method: str) -> tuple[np.ndarray, np.ndarray]:
    """cv2.calibrateRobotWorldHandEye: returns (T_world_base, T_cam_gripper) in OpenCV's naming."""
    R_bw, t_bw, R_gc, t_gc = cv2.calibrateRobotWorldHandEye(*_split(world_in_cam), *_split(base_in_gripper),
                                                            method=ROBOT_WORLD_METHODS[method])
    return make_transform(R_bw, t_bw), make_transform(R_gc, t_gc)


ResidualFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(X, Y) -> residual vector to minimize (e.g. reprojection errors of the board corners, pixels)."""


def calibrate(mode: str, robot_poses, board_poses, method: str | None = None,
              diversity: DiversityConfig | None = None, *, refine: ResidualFn | None = None) -> HandEyeResult:
    """Solve hand-eye for `mode` from T_base_ee[i] and T_cam_board[i]; residuals say how consistent it is."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    method = method or ("tsai" if mode == EYE_IN_HAND else "shah")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    robot, board = _check_inputs(robot_poses, board_poses)
    diversity_summary = check_pose_diversity(robot, diversity)
    if mode == EYE_IN_HAND:
        if method in HAND_EYE_METHODS:
            X = _solve_ax_xb(robot, board, method)
        else:
            # OpenCV's "world" is our board (fixed), its "cam" our camera, its "gripper" our flange.
            T_board_base, T_cam_ee = _solve_robot_world(board, [invert(T) for T in robot], method)
            X = invert(T_cam_ee)
        Y = mean_transform([T @ X @ B for T, B in zip(robot, board, strict=True)])  # T_base_board
    else:
        if method in HAND_EYE_METHODS:
            # Fixed camera: the same AX = XB with the robot motion inverted gives T_base_cam.
            X = _solve_ax_xb([invert(T) for T in robot], board, method)
        else:
            # Map: OpenCV "cam" -> our board, "world" -> our camera, "gripper" -> our flange.
            T_cam_base, T_board_ee = _solve_robot_world([invert(B) for B in board], [invert(T) for T in robot],
                                                        method)
            X = invert(T_cam_base)
        Y = mean_transform([invert(T) @ X @ B for T, B in zip(robot, board, strict=True)])  # T_ee_board
    if not np.all(np.isfinite(X)):
        raise DegeneratePoseSet(f"{method} returned a non-finite transform: the poses do not constrain it")
    if refine is not None:
        X, Y = refine_transforms(X, Y, refine)
    residuals = consistency_residuals(mode, robot, board, X, Y)
    residuals.update(diversity_summary)
    return HandEyeResult(mode, method, X, Y, residuals, len(robot), refine is not None)


def refine_transforms(X: np.ndarray, Y: np.ndarray, residual_fn: ResidualFn,
                      iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on (X, Y): 12 parameters (local rotation vector + translation each), numeric Jacobian,
    minimizing |residual_fn(X, Y)|^2. Never returns a worse solution than the start."""

    def apply(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (X @ from_rvec(delta[0:3], delta[3:6]), Y @ from_rvec(delta[6:9], delta[9:12]))

    def residual(delta: np.ndarray) -> np.ndarray:
        return residual_fn(*apply(delta))

    lam, eps = 1e-3, 1e-7
    r = residual(np.zeros(12))
    cost = float(r @ r)
    for _ in range(iterations):
        J = np.empty((r.size, 12))
        for k in range(12):
            step = np.zeros(12)
            step[k] = eps
            J[:, k] = (residual(step) - r) / eps
        JtJ, Jtr = J.T @ J, J.T @ r
        improved = converged = False
        while lam < 1e8:
            delta = -np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), Jtr)
            r_new = residual(delta)
            cost_new = float(r_new @ r_new)
            if cost_new < cost:
                X, Y = apply(delta)
                r, lam, improved = r_new, lam * 0.3, True
                converged = cost - cost_new < 1e-12 * max(cost, 1e-30) or np.linalg.norm(delta) < 1e-10
                cost = cost_new
                break
            lam *= 10.0
        if not improved or converged:
            break
    return X, Y


def predicted_board_poses(mode: str, robot_poses, X: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
    """T_cam_board[i] the calibration predicts (for residuals and reprojection checks)."""
    if mode == EYE_IN_HAND:
        return [invert(X) @ invert(T) @ Y for T in robot_poses]
    return [invert(X) @ T @ Y for T in robot_poses]


def consistency_residuals(mode: str, robot_poses, board_poses, X: np.ndarray, Y: np.ndarray) -> dict:
    """How far each observed board pose is from the one predicted by (X, Y): translation in mm at the board
    origin, rotation in degrees; rms and max over samples."""
    predicted = predicted_board_poses(mode, robot_poses, X, Y)
    dt, dr = [], []
    for P, B in zip(predicted, board_poses, strict=True):
        E = invert(P) @ B
        dt.append(np.linalg.norm(E[:3, 3]) * 1000.0)
        dr.append(np.degrees(rotation_angle(E[:3, :3])))
    dt, dr = np.asarray(dt), np.asarray(dr)
    return {"translation_rms_mm": float(np.sqrt(np.mean(dt**2))), "translation_max_mm": float(dt.max()),
            "rotation_rms_deg": float(np.sqrt(np.mean(dr**2))), "rotation_max_deg": float(dr.max()),
            "per_sample_translation_mm": [round(float(v), 3) for v in dt]}
