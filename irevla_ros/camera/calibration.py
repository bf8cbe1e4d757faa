"""Calibration files: calibration/<camera>.yaml holds a camera's hand-eye result as a parent -> child transform.

ROS-free. `load_calibration(path)` is what launch files use to publish the static transform on real installs:
it validates everything (keys, finite numbers, unit quaternion, frame names) and raises CalibrationFileError
naming the file and the field. Format (translation in metres, quaternion x y z w, REP 103):

    camera: wrist
    mode: eye_in_hand                       # or eye_to_hand
    parent_frame: panda_hand_tcp            # eye_to_hand: panda_link0
    child_frame: wrist_camera_color_optical_frame
    translation: [0.05, 0.0, 0.04]
    rotation_xyzw: [0.0, 0.0, 0.7071, 0.7071]
    method: tsai
    residuals: {translation_rms_mm: 0.8, rotation_rms_deg: 0.1, ...}
    num_samples: 18
    date: '2026-11-25T21:00:00+00:00'
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from irevla_ros.camera.handeye import EYE_IN_HAND, MODES, HandEyeResult
from irevla_ros.camera.transforms import make_transform, matrix_from_quaternion, quaternion_from_matrix
from irevla_ros.core.data.episodes import atomic_write

FORMAT_VERSION = 1
_FRAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_/]*$")
_REQUIRED = ("camera", "mode", "parent_frame", "child_frame", "translation", "rotation_xyzw")
_OPTIONAL = ("method", "residuals", "num_samples", "date", "board", "version", "board_transform", "intrinsics",
             "notes")
MAX_TRANSLATION_M = 5.0
"""A camera further than this from its parent frame is a typo (mm instead of m), not a calibration."""


class CalibrationFileError(ValueError):
    """A calibration file is missing, unreadable, or holds invalid values."""


@dataclass
class HandEyeCalibration:
    camera: str
    mode: str
    parent_frame: str
    child_frame: str
    translation: tuple[float, float, float]
    rotation_xyzw: tuple[float, float, float, float]
    method: str = ""
    residuals: dict = field(default_factory=dict)
    num_samples: int = 0
    date: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def matrix(self) -> np.ndarray:
        """T_parent_child."""
        return make_transform(matrix_from_quaternion(self.rotation_xyzw), self.translation)

    def to_dict(self) -> dict:
        out = {"version": FORMAT_VERSION, "camera": self.camera, "mode": self.mode, "parent_frame": self.parent_frame,
               "child_frame": self.child_frame, "translation": [float(v) for v in self.translation],
               "rotation_xyzw": [float(v) for v in self.rotation_xyzw], "method": self.method,
               "residuals": _plain(self.residuals), "num_samples": int(self.num_samples), "date": self.date}
        out.update(_plain(self.extra))
        return out


def _plain(value):
    """numpy scalars/arrays -> plain Python for yaml.safe_dump."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_result(result: HandEyeResult, camera: str, parent_frame: str, child_frame: str, **extra) -> HandEyeCalibration:
    T = result.transform
    return HandEyeCalibration(
        camera=camera, mode=result.mode, parent_frame=parent_frame, child_frame=child_frame,
        translation=tuple(float(v) for v in T[:3, 3]),
        rotation_xyzw=tuple(float(v) for v in quaternion_from_matrix(T[:3, :3])),
        method=result.method, residuals={k: v for k, v in result.residuals.items()},
        num_samples=result.num_samples, date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"board_transform": {"translation": result.board_transform[:3, 3].tolist(),
                                   "rotation_xyzw": quaternion_from_matrix(result.board_transform[:3, :3]).tolist()},
               **extra})


def save_calibration(path: str | Path, calibration: HandEyeCalibration) -> Path:
    """Write atomically (temp file + rename): a crash never leaves half a calibration behind."""
    validate(calibration.to_dict(), str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ("# irevla_ros hand-eye calibration (irevla calibrate hand-eye). T_parent_child: translation in m, "
            "quaternion x y z w.\n" + yaml.safe_dump(calibration.to_dict(), sort_keys=False, default_flow_style=None))
    atomic_write(path, text.encode())
    return path


def _numbers(data: dict, key: str, n: int, where: str) -> tuple[float, ...]:
    value = data[key]
    if not isinstance(value, list) or len(value) != n:
        raise CalibrationFileError(f"{where}: {key} must be a list of {n} numbers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise CalibrationFileError(f"{where}: {key} must hold finite numbers, got {value!r}")
        out.append(float(v))
    return tuple(out)


def validate(data, where: str) -> HandEyeCalibration:
    """Check a parsed calibration mapping; return it as a HandEyeCalibration (quaternion normalized)."""
    if not isinstance(data, dict):
        raise CalibrationFileError(f"{where}: expected a mapping of calibration fields, got {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CalibrationFileError(f"{where}: missing field(s) {missing}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CalibrationFileError(f"{where}: unknown field(s) {unknown}")
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise CalibrationFileError(f"{where}: format version {data.get('version')!r}, expected {FORMAT_VERSION}")
    if data["mode"] not in MODES:
        raise CalibrationFileError(f"{where}: mode must be one of {MODES}, got {data['mode']!r}")
    for key in ("camera", "parent_frame", "child_frame"):
        if not isinstance(data[key], str) or not _FRAME.match(data[key]):
            raise CalibrationFileError(f"{where}: {key} must be a frame-like name, got {data[key]!r}")
    if data["parent_frame"] == data["child_frame"]:
        raise CalibrationFileError(f"{where}: parent_frame and child_frame are both {data['parent_frame']!r}")
    translation = _numbers(data, "translation", 3, where)
    if np.linalg.norm(translation) > MAX_TRANSLATION_M:
        raise CalibrationFileError(f"{where}: translation {translation} is more than {MAX_TRANSLATION_M} m long "
                                   "(metres expected)")
    q = np.asarray(_numbers(data, "rotation_xyzw", 4, where))
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > 1e-3:
        raise CalibrationFileError(f"{where}: rotation_xyzw must be a unit quaternion (norm {norm:.6f})")
    num_samples = data.get("num_samples", 0)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise CalibrationFileError(f"{where}: num_samples must be an integer >= 0, got {num_samples!r}")
    residuals = data.get("residuals", {}) or {}
    if not isinstance(residuals, dict):
        raise CalibrationFileError(f"{where}: residuals must be a mapping")
    extra = {k: data[k] for k in ("board", "board_transform", "intrinsics", "notes") if k in data}
    return HandEyeCalibration(camera=data["camera"], mode=data["mode"], parent_frame=data["parent_frame"],
                              child_frame=data["child_frame"], translation=translation,
                              rotation_xyzw=tuple(float(v) for v in q / norm), method=str(data.get("method", "")),
                              residuals=residuals, num_samples=num_samples, date=str(data.get("date", "")),
                              extra=extra)


def load_calibration(path: str | Path) -> HandEyeCalibration:
    """Read and validate calibration/<camera>.yaml. `.parent_frame`, `.child_frame`, `.translation`,
    `.rotation_xyzw`, `.matrix` (T_parent_child) are what a static transform publisher needs."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CalibrationFileError(f"cannot read calibration {str(path)!r}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibrationFileError(f"{path}: not valid YAML: {exc}") from exc
    return validate(data, str(path))


def default_frames(camera: str, mode: str, base_frame: str, ee_frame: str, optical_frame: str) -> tuple[str, str]:
    """(parent, child): the flange for a wrist camera, the robot base for a fixed one."""
    return (ee_frame if mode == EYE_IN_HAND else base_frame), optical_frame


def find_calibrations(folder: str | Path, cameras: tuple[str, ...] | None = None) -> dict[str, HandEyeCalibration]:
    """Every `<camera>.yaml` directly in `folder` (not examples/ or samples/), validated, keyed by camera name.
    A file whose `camera` field disagrees with its name is an error (a copied file would publish a wrong TF);
    with `cameras`, only those names are loaded, and a missing one is simply absent (launch decides)."""
    folder = Path(folder)
    found: dict[str, HandEyeCalibration] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.yaml")):
        if cameras is not None and path.stem not in cameras:
            continue
        calib = load_calibration(path)
        if calib.camera != path.stem:
            raise CalibrationFileError(f"{path}: camera is {calib.camera!r} but the file is named {path.name}")
        found[path.stem] = calib
    return found
