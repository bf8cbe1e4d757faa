"""`irevla calibrate`: ChArUco hand-eye calibration for the wrist camera (eye-in-hand) and fixed cameras.

  irevla calibrate board --out board.png                     print this, glue it flat, measure a square
  irevla calibrate hand-eye --camera wrist --capture 20      live: robot poses from /franka/ee_pose, images from
                                                             the camera topics; samples saved, then solved
  irevla calibrate hand-eye --camera wrist --samples DIR     solve again from saved samples (no ROS needed)
  irevla calibrate show calibration/wrist.yaml               validate and print a calibration file
  irevla calibrate intrinsics --images DIR --out front_intrinsics.yaml
                                                             fallback intrinsics from ChArUco views, for
                                                             cameras that report none (use with --intrinsics)

A samples folder holds intrinsics.yaml, samples.jsonl (one line per sample: image file, EE pose in the base
frame) and the PNG images, so every calibration can be re-solved and audited offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from irevla_ros import interfaces as itf
from irevla_ros.camera.base import Intrinsics
from irevla_ros.camera.calibration import (
    CalibrationFileError,
    default_frames,
    from_result,
    load_calibration,
    save_calibration,
)
from irevla_ros.camera.charuco import CharucoBoardSpec, board_image, calibrate_intrinsics, detect_board
from irevla_ros.camera.handeye import EYE_IN_HAND, METHODS, MODES, HandEyeResult, calibrate, predicted_board_poses
from irevla_ros.camera.transforms import pose_matrix, quaternion_from_matrix, rotation_angle

SAMPLES_FILE = "samples.jsonl"
INTRINSICS_FILE = "intrinsics.yaml"


# --- samples on disk ------------------------------------------------------------------------------------------
@dataclass
class Sample:
    image: np.ndarray
    """RGB uint8."""
    T_base_ee: np.ndarray
    name: str = ""


def write_intrinsics(path: Path, intrinsics: Intrinsics, **extra) -> None:
    data = {"width": intrinsics.width, "height": intrinsics.height, "fx": intrinsics.fx, "fy": intrinsics.fy,
            "cx": intrinsics.cx, "cy": intrinsics.cy, "distortion_model": intrinsics.distortion_model,
            "coeffs": list(intrinsics.coeffs), **extra}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def save_intrinsics(folder: Path, intrinsics: Intrinsics) -> None:
    write_intrinsics(folder / INTRINSICS_FILE, intrinsics)


def load_intrinsics(folder: Path) -> Intrinsics:
    return read_intrinsics(folder / INTRINSICS_FILE)


def read_intrinsics(path: Path) -> Intrinsics:
    try:
        data = yaml.safe_load(path.read_text())
        return Intrinsics(int(data["width"]), int(data["height"]), float(data["fx"]), float(data["fy"]),
                          float(data["cx"]), float(data["cy"]), str(data.get("distortion_model", "plumb_bob")),
                          tuple(float(c) for c in data.get("coeffs", (0.0,) * 5)))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read intrinsics: {exc}") from exc


def append_sample(folder: Path, sample: Sample, index: int) -> str:
    """Write the image (PNG, lossless) and its line in samples.jsonl; the line goes last so a crash never leaves
    a line without its image."""
    name = f"sample_{index:03d}.png"
    if not cv2.imwrite(str(folder / name), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {folder / name}")
    line = {"image": name, "ee_position": sample.T_base_ee[:3, 3].tolist(),
            "ee_orientation_xyzw": quaternion_from_matrix(sample.T_base_ee[:3, :3]).tolist()}
    with open(folder / SAMPLES_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")
    return name


def load_samples(folder: Path) -> list[Sample]:
    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist (capture samples first, see --capture)")
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            position = np.asarray(entry["ee_position"], dtype=np.float64)
            quaternion = np.asarray(entry["ee_orientation_xyzw"], dtype=np.float64)
            image_name = str(entry["image"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: bad sample line: {exc}") from exc
        if position.shape != (3,) or quaternion.shape != (4,) or not np.all(np.isfinite(np.r_[position, quaternion])):
            raise ValueError(f"{path}:{number}: ee_position needs 3 and ee_orientation_xyzw 4 finite numbers")
        if abs(np.linalg.norm(quaternion) - 1.0) > 1e-3:
            raise ValueError(f"{path}:{number}: ee_orientation_xyzw is not a unit quaternion")
        if Path(image_name).name != image_name:
            raise ValueError(f"{path}:{number}: image must be a file name inside the folder, got {image_name!r}")
        bgr = cv2.imread(str(folder / image_name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}:{number}: cannot read image {image_name!r}")
        samples.append(Sample(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), pose_matrix(position, quaternion), image_name))
    return samples


# --- solving ------------------------------------------------------------------------------------------------
@dataclass
class SolveReport:
    result: HandEyeResult
    used: list[str]
    skipped: list[str]
    reprojection_rms_px: float


def solve_samples(samples: list[Sample], intrinsics: Intrinsics, spec: CharucoBoardSpec, mode: str,
                  method: str | None = None, *, refine: bool = True) -> SolveReport:
    """Detect the board in every sample, solve hand-eye (closed form, then refined on the corner reprojection
    error), and report how well the result reprojects the corners (rms over corners, pixels)."""
    robot, boards, detections, used, skipped = [], [], [], [], []
    for sample in samples:
        if sample.image.shape[:2] != (intrinsics.height, intrinsics.width):
            raise ValueError(f"{sample.name}: image is {sample.image.shape[1]}x{sample.image.shape[0]}, intrinsics "
                             f"are for {intrinsics.width}x{intrinsics.height}")
        detection = detect_board(sample.image, intrinsics, spec)
        if detection is None:
            skipped.append(sample.name)
            continue
        robot.append(sample.T_base_ee)
        boards.append(detection.T_cam_board)
        detections.append(detection)
        used.append(sample.name)

    def reprojection(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        errors = []
        for T_cam_board, detection in zip(predicted_board_poses(mode, robot, X, Y), detections, strict=True):
            rvec, _ = cv2.Rodrigues(np.ascontiguousarray(T_cam_board[:3, :3]))
            projected, _ = cv2.projectPoints(detection.object_points, rvec, T_cam_board[:3, 3], intrinsics.K,
                                             intrinsics.dist)
            errors.append((projected.reshape(-1, 2) - detection.corners).ravel())
        return np.concatenate(errors)

    result = calibrate(mode, robot, boards, method, refine=reprojection if refine else None)
    errors = reprojection(result.transform, result.board_transform)
    rms = float(np.sqrt(np.mean(errors.reshape(-1, 2) ** 2) * 2))
    result.residuals["reprojection_rms_px"] = rms
    return SolveReport(result, used, skipped, rms)


# --- live capture (ROS) -------------------------------------------------------------------------------------
class _Capture:
    """Subscribes EE pose, image and camera info; decides when a sample can be taken."""

    def __init__(self, camera: str, still_s: float) -> None:
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import CameraInfo, Image

        from irevla_ros.nodes._common import IMAGE_QOS, STATE_QOS

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("irevla_calibrate", context=self.context)
        self.lock = threading.Lock()
        self.still_s = still_s
        self.poses: list[tuple[float, np.ndarray]] = []
        self.image: tuple[float, object] | None = None
        self.info = None
        self.node.create_subscription(PoseStamped, itf.EE_POSE.name, self._pose, STATE_QOS)
        self.node.create_subscription(Image, itf.camera_image(camera).name, self._image, IMAGE_QOS)
        self.node.create_subscription(CameraInfo, itf.camera_info(camera).name, self._info, IMAGE_QOS)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _pose(self, msg) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        values = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        if not np.all(np.isfinite(values)) or abs(np.linalg.norm(values[3:]) - 1) > 1e-3:
            return
        with self.lock:
            self.poses.append((time.monotonic(), pose_matrix(values[:3], values[3:])))
            cutoff = time.monotonic() - max(5.0, 2 * self.still_s)
            while self.poses and self.poses[0][0] < cutoff:
                self.poses.pop(0)

    def _image(self, msg) -> None:
        with self.lock:
            self.image = (time.monotonic(), msg)

    def _info(self, msg) -> None:
        with self.lock:
            self.info = msg

    def intrinsics(self) -> Intrinsics | None:
        from irevla_ros.camera.messages import intrinsics_from_camera_info

        with self.lock:
            return intrinsics_from_camera_info(self.info) if self.info is not None else None

    def still_sample(self, lin_tol_m: float = 0.0005, ang_tol_deg: float = 0.2) -> Sample | None:
        """A sample if the robot has not moved for still_s and an image arrived after it stopped."""
        from irevla_ros.camera.messages import image_to_array

        now = time.monotonic()
        with self.lock:
            poses, image = list(self.poses), self.image
        if not poses or image is None or now - poses[0][0] < self.still_s:
            return None
        recent = [T for t, T in poses if t >= now - self.still_s]
        if len(recent) < 2 or poses[-1][0] < now - 0.5:
            return None  # no fresh pose: the robot node is not publishing
        last = recent[-1]
        for T in recent:
            if (np.linalg.norm(T[:3, 3] - last[:3, 3]) > lin_tol_m
                    or np.degrees(rotation_angle(T[:3, :3].T @ last[:3, :3])) > ang_tol_deg):
                return None
        if image[0] < now - self.still_s * 0.5:
            return None
        return Sample(np.array(image_to_array(image[1], "rgb8")), last)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def capture_samples(args, folder: Path, spec: CharucoBoardSpec, intrinsics: Intrinsics | None = None) -> None:
    capture = _Capture(args.camera, args.still_s)
    try:
        deadline = time.monotonic() + args.timeout_s
        while intrinsics is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CameraInfo on {itf.camera_info(args.camera).name} within {args.timeout_s} s")
            intrinsics = capture.intrinsics()
            time.sleep(0.05)
        save_intrinsics(folder, intrinsics)
        (folder / SAMPLES_FILE).write_text("")
        taken: list[np.ndarray] = []
        print(f"capturing {args.capture} samples: move the robot, hold still {args.still_s} s per pose"
              + ("" if args.auto else ", then press Enter"), file=sys.stderr)
        enter = threading.Event()
        if not args.auto:
            threading.Thread(target=lambda: [enter.set() for _ in iter(sys.stdin.readline, "")], daemon=True).start()
        while len(taken) < args.capture:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(taken)} of {args.capture} samples within {args.timeout_s} s")
            time.sleep(0.05)
            if not args.auto and not enter.is_set():
                continue
            sample = capture.still_sample()
            if sample is None:
                continue
            enter.clear()
            if any(np.linalg.norm(sample.T_base_ee[:3, 3] - T[:3, 3]) < args.min_move_m
                   and np.degrees(rotation_angle(sample.T_base_ee[:3, :3].T @ T[:3, :3])) < args.min_turn_deg
                   for T in taken):
                continue  # same place as an earlier sample
            if detect_board(sample.image, intrinsics, spec) is None:
                print("  board not visible: sample skipped", file=sys.stderr)
                continue
            name = append_sample(folder, sample, len(taken))
            taken.append(sample.T_base_ee)
            print(f"  sample {len(taken)}/{args.capture}: {name}", file=sys.stderr)
    finally:
        capture.close()


# --- CLI ----------------------------------------------------------------------------------------------------
def _board_arguments(parser: argparse.ArgumentParser) -> None:
    d = CharucoBoardSpec()
    parser.add_argument("--squares-x", type=int, default=d.squares_x, help="board squares along x")
    parser.add_argument("--squares-y", type=int, default=d.squares_y, help="board squares along y")
    parser.add_argument("--square-length", type=float, default=d.square_length_m,
                        help="printed square side in metres (measure it)")
    parser.add_argument("--marker-length", type=float, default=d.marker_length_m, help="marker side in metres")
    parser.add_argument("--dictionary", default=d.dictionary, help="ArUco dictionary")


def _spec(args) -> CharucoBoardSpec:
    return CharucoBoardSpec(args.squares_x, args.squares_y, args.square_length, args.marker_length, args.dictionary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    board = sub.add_parser("board", help="write a printable ChArUco board image",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    board.add_argument("--out", type=Path, default=Path("charuco_board.png"), help="PNG to write")
    board.add_argument("--pixels-per-square", type=int, default=200)
    _board_arguments(board)
    he = sub.add_parser("hand-eye", help="capture samples (live) and/or solve hand-eye from a samples folder",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    he.add_argument("--camera", default="wrist",
                    help=f"camera name (topics /cameras/NAME/...), e.g. {itf.CAMERA_NAMES}")
    he.add_argument("--mode", choices=MODES, default=None,
                    help="eye_in_hand (camera on the flange) or eye_to_hand (fixed camera, board in the gripper); "
                         "default: eye_in_hand for 'wrist', else eye_to_hand")
    he.add_argument("--method", choices=METHODS, default=None,
                    help="solver (default: tsai for eye_in_hand, shah for eye_to_hand)")
    he.add_argument("--samples", type=Path, default=None, help="samples folder (default calibration/samples/CAMERA)")
    he.add_argument("--capture", type=int, default=0, metavar="N",
                    help="capture N new samples live over ROS first (replaces the folder's samples)")
    he.add_argument("--auto", action="store_true", help="live: take a sample whenever the robot holds still "
                                                        "somewhere new (no Enter key)")
    he.add_argument("--still-s", type=float, default=0.5, help="live: how long the robot must hold still")
    he.add_argument("--min-move-m", type=float, default=0.02, help="live: min distance to earlier samples")
    he.add_argument("--min-turn-deg", type=float, default=5.0, help="live: or min rotation to earlier samples")
    he.add_argument("--timeout-s", type=float, default=600.0, help="live: give up after this long")
    he.add_argument("--out", type=Path, default=None, help="calibration file (default calibration/CAMERA.yaml)")
    he.add_argument("--max-residual-mm", type=float, default=10.0,
                    help="refuse to write a result whose rms board-position residual exceeds this")
    _board_arguments(he)
    he.add_argument("--intrinsics", type=Path, default=None,
                    help="intrinsics yaml (from `irevla calibrate intrinsics`) instead of the camera's CameraInfo")
    intr = sub.add_parser("intrinsics", help="camera intrinsics from ChArUco images (fallback)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    intr.add_argument("--images", type=Path, required=True, help="folder of PNG/JPG views of the board")
    intr.add_argument("--out", type=Path, required=True, help="intrinsics yaml to write")
    intr.add_argument("--no-distortion", action="store_true", help="fit K only (distortion-free camera)")
    _board_arguments(intr)
    show = sub.add_parser("show", help="validate and print a calibration file")
    show.add_argument("file", type=Path)


def run(args) -> int:
    try:
        if args.action == "board":
            spec = _spec(args)
            image = board_image(spec, args.pixels_per_square, args.pixels_per_square // 2)
            if not cv2.imwrite(str(args.out), image):
                raise OSError(f"cannot write {args.out}")
            w, h = spec.size_m
            print(f"wrote {args.out}: {spec.squares_x}x{spec.squares_y} squares; print it so that a square measures "
                  f"{spec.square_length_m * 1000:.1f} mm (board {w * 1000:.0f} x {h * 1000:.0f} mm)")
            return 0
        if args.action == "intrinsics":
            return _intrinsics(args)
        if args.action == "show":
            calib = load_calibration(args.file)
            print(yaml.safe_dump(calib.to_dict(), sort_keys=False, default_flow_style=None), end="")
            return 0
        return _hand_eye(args)
    except (CalibrationFileError, ValueError, OSError, TimeoutError) as exc:
        print(f"irevla calibrate: {exc}", file=sys.stderr)
        return 1


def _intrinsics(args) -> int:
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) \
        if args.images.is_dir() else []
    if not paths:
        raise ValueError(f"no PNG/JPG images in {args.images}")
    images = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {path}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    intrinsics, rms = calibrate_intrinsics(images, _spec(args), distortion=not args.no_distortion)
    write_intrinsics(args.out, intrinsics, reprojection_rms_px=rms, views=len(images))
    print(f"fx={intrinsics.fx:.2f} fy={intrinsics.fy:.2f} cx={intrinsics.cx:.2f} cy={intrinsics.cy:.2f} "
          f"coeffs={np.round(intrinsics.coeffs, 4).tolist()} from {len(images)} images, rms {rms:.3f} px")
    print(f"wrote {args.out}")
    return 0


def _hand_eye(args) -> int:
    mode = args.mode or (EYE_IN_HAND if args.camera == "wrist" else "eye_to_hand")
    spec = _spec(args)
    folder = args.samples or Path("calibration") / "samples" / args.camera
    out = args.out or Path("calibration") / f"{args.camera}.yaml"
    override = read_intrinsics(args.intrinsics) if args.intrinsics else None
    if args.capture:
        folder.mkdir(parents=True, exist_ok=True)
        capture_samples(args, folder, spec, override)
    samples = load_samples(folder)
    report = solve_samples(samples, override or load_intrinsics(folder), spec, mode, args.method)
    res = report.result.residuals
    T = report.result.transform
    print(f"{mode} ({report.result.method}) from {len(report.used)} samples"
          + (f", skipped (board not found): {report.skipped}" if report.skipped else ""))
    print(f"  translation [m]: {np.round(T[:3, 3], 4).tolist()}  rotation xyzw: "
          f"{np.round(quaternion_from_matrix(T[:3, :3]), 4).tolist()}")
    print(f"  residuals: board position rms {res['translation_rms_mm']:.2f} mm (max {res['translation_max_mm']:.2f}),"
          f" rotation rms {res['rotation_rms_deg']:.3f} deg, reprojection rms {res['reprojection_rms_px']:.2f} px")
    if res["translation_rms_mm"] > args.max_residual_mm:
        print(f"irevla calibrate: residual {res['translation_rms_mm']:.1f} mm > --max-residual-mm "
              f"{args.max_residual_mm}: not written (check the square length, board flatness, samples)",
              file=sys.stderr)
        return 1
    parent, child = default_frames(args.camera, mode, itf.BASE_FRAME, itf.EE_FRAME,
                                   itf.camera_optical_frame(args.camera))
    calib = from_result(report.result, args.camera, parent, child, board=spec.as_dict())
    save_calibration(out, calib)
    print(f"wrote {out} ({parent} -> {child})")
    return 0
