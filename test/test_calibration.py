"""Hand-eye calibration on synthetic data: known transforms, noisy poses, rendered ChArUco images, degenerate sets,
and the calibration file format.

Tolerances (stated here and in docs/cameras.md):
- exact poses: every solver recovers X to 1e-6 m / 1e-4 deg;
- noisy poses (robot 0.2 mm / 0.02 deg, board 0.5 mm / 0.1 deg per sample, 20 samples), closed-form solvers
  without refinement: within 5 mm / 0.3 deg (measured max over 10 seeds: tsai 1.8 mm, li 3.9 mm, andreff 6.5 mm:
  Andreff is left out of this check);
- rendered 640x480 ChArUco images (pixel noise sigma 2, 12 samples), refined on the reprojection error: within
  1 mm / 0.1 deg (measured up to 0.14 mm / 0.02 deg), reprojection rms < 0.5 px.
"""

from __future__ import annotations

import numpy as np
import pytest

from irevla_ros.camera.base import Intrinsics
from irevla_ros.camera.calibrate import Sample, solve_samples
from irevla_ros.camera.calibration import (
    CalibrationFileError,
    from_result,
    load_calibration,
    save_calibration,
)
from irevla_ros.camera.charuco import CharucoBoardSpec, detect_board, look_at, render_view
from irevla_ros.camera.handeye import EYE_IN_HAND, EYE_TO_HAND, METHODS, DegeneratePoseSet, calibrate
from irevla_ros.camera.transforms import (
    from_rvec,
    invert,
    make_transform,
    matrix_from_quaternion,
    quaternion_from_matrix,
    rotation_angle,
)

SPEC = CharucoBoardSpec()
INTR = Intrinsics(640, 480, 605.0, 604.0, 321.3, 238.6)
X_WRIST = make_transform(matrix_from_quaternion([0.0131, -0.0087, 0.7071, 0.7070]), [0.052, -0.031, 0.043])
"""T_ee_cam: a wrist camera 5 cm ahead, 4 cm along the flange axis, turned 90 deg about it."""
T_BASE_BOARD = make_transform(matrix_from_quaternion([1.0, 0.0, 0.0, 0.0]), [0.45, -0.12, 0.02])
"""Board on the table, its z (into the board) pointing down into the table."""
X_FRONT = look_at([1.3, 0.35, 0.65], [0.5, 0.0, 0.25])  # T_base_cam of a fixed front camera
T_EE_BOARD = make_transform(matrix_from_quaternion([0.0, 0.0, 0.3827, 0.9239]), [-0.14, -0.10, 0.03])
"""Board held by the gripper (its centre near the fingertips)."""


NOISY_MM, NOISY_DEG = 5.0, 0.3  # noisy poses: robot 0.2 mm / 0.02 deg, board 0.5 mm / 0.1 deg, 20 samples
RENDERED_MM, RENDERED_DEG = 1.0, 0.1  # rendered 640x480 images with pixel noise, 12 samples, refined


def error_mm_deg(T_true: np.ndarray, T_est: np.ndarray) -> tuple[float, float]:
    E = invert(T_true) @ T_est
    return float(np.linalg.norm(E[:3, 3]) * 1000), float(np.degrees(rotation_angle(E[:3, :3])))


def scenario(mode: str, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Robot poses T_base_ee and true board poses T_cam_board for n views that see the whole board."""
    rng = np.random.default_rng(seed)
    robot, boards = [], []
    while len(robot) < n:
        if mode == EYE_IN_HAND:
            center = T_BASE_BOARD @ np.r_[SPEC.center, 1.0]
            eye = center[:3] + [rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.3, 0.45)]
            up = [np.cos(a := rng.uniform(-0.8, 0.8)), np.sin(a), 0.0]
            T_base_cam = look_at(eye, center[:3] + rng.uniform(-0.03, 0.03, 3), up=up)
            T_base_ee = T_base_cam @ invert(X_WRIST)
            T_cam_board = invert(T_base_cam) @ T_BASE_BOARD
        else:
            # board centre somewhere in front of the camera, facing it (tilted)
            target = X_FRONT @ np.r_[rng.uniform(-0.1, 0.1), rng.uniform(-0.08, 0.08), rng.uniform(0.45, 0.65), 1]
            T_cam_board = make_transform(np.eye(3), [0, 0, 0])
            tilt = from_rvec(rng.uniform(-0.45, 0.45, 3), [0, 0, 0])
            T_cam_board = make_transform(tilt[:3, :3], (invert(X_FRONT) @ target)[:3] - tilt[:3, :3] @ SPEC.center)
            T_base_ee = X_FRONT @ T_cam_board @ invert(T_EE_BOARD)
        corners = np.array([[x, y, 0, 1] for x in (0, SPEC.size_m[0]) for y in (0, SPEC.size_m[1])]).T
        cam_pts = (T_cam_board @ corners)[:3]
        uv = (INTR.K @ cam_pts)[:2] / cam_pts[2]
        if np.all(cam_pts[2] > 0.15) and np.all((uv > 10) & (uv < [[630], [470]])):
            robot.append(T_base_ee)
            boards.append(T_cam_board)
    return robot, boards


def perturb(T: np.ndarray, rng, mm: float, deg: float, local: bool = False) -> np.ndarray:
    """Noise about the frame's parent (robot pose errors) or about the frame itself (`local`: PnP errors)."""
    axis = rng.normal(size=3)
    N = from_rvec(axis / np.linalg.norm(axis) * np.radians(rng.normal(0, deg)), rng.normal(0, mm / 1000, 3))
    return T @ N if local else N @ T


def truth(mode: str) -> tuple[np.ndarray, np.ndarray]:
    return (X_WRIST, T_BASE_BOARD) if mode == EYE_IN_HAND else (X_FRONT, T_EE_BOARD)


@pytest.mark.parametrize("mode", [EYE_IN_HAND, EYE_TO_HAND])
@pytest.mark.parametrize("method", METHODS)
def test_exact_poses_recover_the_known_transform(mode, method):
    robot, boards = scenario(mode, 10)
    result = calibrate(mode, robot, boards, method)
    X, Y = truth(mode)
    dt, dr = error_mm_deg(X, result.transform)
    assert dt < 1e-3 and dr < 1e-4, (dt, dr)
    assert error_mm_deg(Y, result.board_transform)[0] < 1e-3
    assert result.residuals["translation_rms_mm"] < 1e-3 and result.num_samples == 10


@pytest.mark.parametrize("mode,method", [(EYE_IN_HAND, "tsai"), (EYE_IN_HAND, "park"), (EYE_IN_HAND, "daniilidis"),
                                         (EYE_IN_HAND, "shah"), (EYE_TO_HAND, "shah"), (EYE_TO_HAND, "tsai"),
                                         (EYE_TO_HAND, "li")])
def test_noisy_poses_recover_within_tolerance_and_report_residuals(mode, method):
    rng = np.random.default_rng(42)
    robot, boards = scenario(mode, 20, seed=1)
    robot = [perturb(T, rng, 0.2, 0.02) for T in robot]
    boards = [perturb(T, rng, 0.5, 0.1, local=True) for T in boards]
    result = calibrate(mode, robot, boards, method)
    dt, dr = error_mm_deg(truth(mode)[0], result.transform)
    assert dt < NOISY_MM and dr < NOISY_DEG, f"{method}: {dt:.2f} mm, {dr:.3f} deg"
    res = result.residuals
    assert 0.1 < res["translation_rms_mm"] < 3.0 and 0.02 < res["rotation_rms_deg"] < 0.5, res
    assert len(res["per_sample_translation_mm"]) == 20


def _rendered_samples(mode: str, n: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    robot, boards = scenario(mode, n, seed=seed)
    return [Sample(render_view(SPEC, INTR, B, noise_std=2.0, rng=rng), T, f"view{i}")
            for i, (T, B) in enumerate(zip(robot, boards, strict=True))]


@pytest.mark.parametrize("mode", [EYE_IN_HAND, EYE_TO_HAND])
def test_rendered_charuco_images_recover_the_transform(mode):
    samples = _rendered_samples(mode, 12, seed=3)
    report = solve_samples(samples, INTR, SPEC, mode)
    dt, dr = error_mm_deg(truth(mode)[0], report.result.transform)
    assert dt < RENDERED_MM and dr < RENDERED_DEG, f"{dt:.2f} mm {dr:.3f} deg"
    assert report.skipped == [] and len(report.used) == 12 and report.result.refined
    assert 0.0 < report.reprojection_rms_px < 0.5
    closed_form = solve_samples(samples, INTR, SPEC, mode, refine=False)
    assert report.reprojection_rms_px <= closed_form.reprojection_rms_px
    assert report.result.residuals["translation_rms_mm"] < 3.0


def test_board_detection_pose_and_missing_board():
    T_cam_board = invert(look_at([0.25, 0.0, -0.45], SPEC.center, up=(0, -1, 0)))
    detection = detect_board(render_view(SPEC, INTR, T_cam_board, noise_std=2.0), INTR, SPEC)
    assert detection is not None and len(detection.corners) == (SPEC.squares_x - 1) * (SPEC.squares_y - 1)
    dt, dr = error_mm_deg(T_cam_board, detection.T_cam_board)
    assert dt < 2.0 and dr < 0.5
    assert detect_board(np.full((480, 640, 3), 90, np.uint8), INTR, SPEC) is None
    other = CharucoBoardSpec(dictionary="DICT_4X4_50")
    assert detect_board(render_view(other, INTR, T_cam_board), INTR, SPEC) is None


def test_degenerate_pose_sets_give_a_clear_error():
    robot, boards = scenario(EYE_IN_HAND, 10)
    base = robot[0]
    # pure translations: same orientation everywhere
    shifted = [make_transform(base[:3, :3], base[:3, 3] + d) for d in np.random.default_rng(0).uniform(-.1, .1, (8, 3))]
    with pytest.raises(DegeneratePoseSet, match="pure translations"):
        calibrate(EYE_IN_HAND, shifted, boards[:8])
    # one rotation axis only (rotations about the flange z axis)
    spun = [base @ from_rvec([0, 0, a], [0.01 * i, 0, 0]) for i, a in enumerate(np.linspace(-1, 1, 8))]
    with pytest.raises(DegeneratePoseSet, match="same axis"):
        calibrate(EYE_IN_HAND, spun, boards[:8])
    with pytest.raises(DegeneratePoseSet, match="at least 3"):
        calibrate(EYE_IN_HAND, robot[:2], boards[:2])
    with pytest.raises(ValueError, match="10 robot poses but 9 board poses"):
        calibrate(EYE_IN_HAND, robot, boards[:9])
    bad = [T.copy() for T in robot]
    bad[3][0, 0] = np.nan
    with pytest.raises(ValueError, match="robot pose 3"):
        calibrate(EYE_IN_HAND, bad, boards)


def test_calibration_file_round_trip_and_tampering(tmp_path):
    robot, boards = scenario(EYE_IN_HAND, 10)
    result = calibrate(EYE_IN_HAND, robot, boards)
    path = save_calibration(tmp_path / "wrist.yaml",
                            from_result(result, "wrist", "panda_hand_tcp", "wrist_camera_color_optical_frame",
                                        board=SPEC.as_dict()))
    calib = load_calibration(path)
    assert (calib.parent_frame, calib.child_frame, calib.mode, calib.method) == (
        "panda_hand_tcp", "wrist_camera_color_optical_frame", EYE_IN_HAND, "tsai")
    assert error_mm_deg(X_WRIST, calib.matrix)[0] < 1e-3
    assert calib.residuals["translation_rms_mm"] < 1e-3 and calib.num_samples == 10 and calib.date
    assert np.allclose(quaternion_from_matrix(calib.matrix[:3, :3]), calib.rotation_xyzw)
    text = path.read_text()
    cases = {
        "translation: [.nan, 0.0, 0.0]": "finite numbers",
        "rotation_xyzw: [0.0, 0.0, 0.0, 2.0]": "unit quaternion",
        "translation: [1200.0, 0.0, 40.0]": "metres expected",
        "mode: sideways": "mode must be one of",
        "child_frame: panda_hand_tcp": "both",
        "translation: [0.1, 0.2]": "list of 3 numbers",
    }
    for replacement, message in cases.items():
        key = replacement.split(":")[0]
        lines = [replacement if line.startswith(f"{key}:") else line for line in text.splitlines()]
        bad = tmp_path / "bad.yaml"
        bad.write_text("\n".join(lines))
        with pytest.raises(CalibrationFileError, match=message):
            load_calibration(bad)
    for content, message in (("- a list\n", "mapping"), ("camera: wrist\n", "missing field"),
                             (text + "surprise: 1\n", "unknown field"), ("!!python/object:os.system {}\n", "YAML"),
                             ("camera: [unclosed\n", "YAML")):
        (tmp_path / "bad.yaml").write_text(content)
        with pytest.raises(CalibrationFileError, match=message):
            load_calibration(tmp_path / "bad.yaml")
    with pytest.raises(CalibrationFileError, match="cannot read"):
        load_calibration(tmp_path / "absent.yaml")


def test_example_calibration_files_are_valid():
    from pathlib import Path

    from irevla_ros import interfaces as itf

    examples = Path(__file__).resolve().parent.parent / "calibration" / "examples"
    wrist, front = load_calibration(examples / "wrist.yaml"), load_calibration(examples / "front.yaml")
    assert (wrist.parent_frame, wrist.child_frame) == (itf.EE_FRAME, itf.camera_optical_frame("wrist"))
    assert (front.parent_frame, front.child_frame) == (itf.BASE_FRAME, itf.camera_optical_frame("front"))
    assert "EXAMPLE" in wrist.extra["notes"]


def test_intrinsics_fallback_from_charuco_views():
    """For a camera that reports no intrinsics: recover K from rendered views (fx/fy within 0.5 %, c within 2 px)."""
    from irevla_ros.camera.charuco import calibrate_intrinsics

    rng = np.random.default_rng(0)
    _, boards = scenario(EYE_IN_HAND, 12, seed=7)
    images = [render_view(SPEC, INTR, B, noise_std=2.0, rng=rng) for B in boards]
    found, rms = calibrate_intrinsics(images, SPEC, distortion=False)
    assert abs(found.fx / INTR.fx - 1) < 0.005 and abs(found.fy / INTR.fy - 1) < 0.005
    assert abs(found.cx - INTR.cx) < 2.0 and abs(found.cy - INTR.cy) < 2.0 and rms < 0.5
    with pytest.raises(ValueError, match="at least 6 views"):
        calibrate_intrinsics(images[:3], SPEC)


def test_find_calibrations_loads_camera_files_only(tmp_path):
    from pathlib import Path

    from irevla_ros.camera.calibration import find_calibrations

    examples = Path(__file__).resolve().parent.parent / "calibration" / "examples"
    assert set(find_calibrations(examples)) == {"wrist", "front"}
    assert set(find_calibrations(examples, cameras=("wrist",))) == {"wrist"}
    assert find_calibrations(tmp_path / "absent") == {}
    (tmp_path / "front.yaml").write_text((examples / "wrist.yaml").read_text())  # copied under the wrong name
    with pytest.raises(CalibrationFileError, match="file is named front.yaml"):
        find_calibrations(tmp_path)
