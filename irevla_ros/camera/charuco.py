"""ChArUco board: definition, printable image, synthetic camera views, detection -> board pose in the camera.

ROS-free (cv2.aruco, OpenCV 4.x). Board frame: origin at the board's top-left corner as printed, x to the right,
y down, z into the board; corners at multiples of `square_length_m` (OpenCV's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from irevla_ros.camera.base import Intrinsics
from irevla_ros.camera.transforms import from_rvec


@dataclass(frozen=True)
class CharucoBoardSpec:
    squares_x: int = 7
    squares_y: int = 5
    square_length_m: float = 0.04
    """Measure it on the print: the scale of every translation comes from this number."""
    marker_length_m: float = 0.03
    dictionary: str = "DICT_5X5_100"

    def __post_init__(self) -> None:
        if not (isinstance(self.squares_x, int) and isinstance(self.squares_y, int)
                and 3 <= self.squares_x <= 30 and 3 <= self.squares_y <= 30):
            raise ValueError(f"squares must be integers in 3..30, got {self.squares_x}x{self.squares_y}")
        if not (np.isfinite(self.square_length_m) and 0.001 <= self.square_length_m <= 1.0):
            raise ValueError(f"square_length_m must be in [0.001, 1] m, got {self.square_length_m!r}")
        if not (np.isfinite(self.marker_length_m) and 0 < self.marker_length_m < self.square_length_m):
            raise ValueError(f"marker_length_m must be in (0, square_length_m), got {self.marker_length_m!r}")
        if not self.dictionary.startswith("DICT_") or not hasattr(cv2.aruco, self.dictionary):
            raise ValueError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. DICT_5X5_100)")
        n_markers = (self.squares_x * self.squares_y) // 2
        size = int(self.dictionary.split("_")[-1]) if self.dictionary.split("_")[-1].isdigit() else 1000
        if n_markers > size:
            raise ValueError(f"a {self.squares_x}x{self.squares_y} board needs {n_markers} markers, "
                             f"{self.dictionary} has {size}")

    def board(self) -> cv2.aruco.CharucoBoard:
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_length_m, self.marker_length_m,
                                      dictionary)

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_length_m, self.squares_y * self.square_length_m

    @property
    def center(self) -> np.ndarray:
        w, h = self.size_m
        return np.array([w / 2, h / 2, 0.0])

    def as_dict(self) -> dict:
        return {"squares_x": self.squares_x, "squares_y": self.squares_y, "square_length_m": self.square_length_m,
                "marker_length_m": self.marker_length_m, "dictionary": self.dictionary}


def board_image(spec: CharucoBoardSpec, pixels_per_square: int = 100, margin_px: int = 0) -> np.ndarray:
    """The board as a grayscale image (white margin of `margin_px` around it), e.g. to print."""
    size = (spec.squares_x * pixels_per_square + 2 * margin_px, spec.squares_y * pixels_per_square + 2 * margin_px)
    return spec.board().generateImage(size, marginSize=margin_px, borderBits=1)


def render_view(spec: CharucoBoardSpec, intrinsics: Intrinsics, T_cam_board: np.ndarray, *,
                pixels_per_square: int = 120, background: int = 90, supersample: int = 2,
                noise_std: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """A synthetic RGB image of the board seen by a pinhole camera (no distortion) at pose T_cam_board.

    The printed board (with a white quiet zone of one square) is mapped onto the image by the plane homography
    K [r1 r2 t]; rendering at `supersample`x and area-averaging down avoids aliasing. Pixels behind the camera
    are not drawn (the caller keeps the board in front)."""
    margin = pixels_per_square
    texture = board_image(spec, pixels_per_square, margin)
    ppm = pixels_per_square / spec.square_length_m
    s = supersample
    K = intrinsics.K.copy()
    K[0, 0] *= s
    K[1, 1] *= s
    K[0, 2] = (K[0, 2] + 0.5) * s - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * s - 0.5
    # texture pixel (u, v) -> board point ((u - margin + 0.5) / ppm, (v - margin + 0.5) / ppm, 0)
    tex_to_board = np.array([[1 / ppm, 0, (0.5 - margin) / ppm], [0, 1 / ppm, (0.5 - margin) / ppm], [0, 0, 1]])
    R, t = T_cam_board[:3, :3], T_cam_board[:3, 3]
    if t[2] <= 0:
        raise ValueError("the board must be in front of the camera (positive z)")
    homography = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ tex_to_board
    size = (intrinsics.width * s, intrinsics.height * s)
    big = cv2.warpPerspective(texture, homography, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=background)
    gray = cv2.resize(big, (intrinsics.width, intrinsics.height), interpolation=cv2.INTER_AREA).astype(np.float64)
    if noise_std > 0:
        gray += (rng or np.random.default_rng()).normal(0.0, noise_std, gray.shape)
    gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


@dataclass
class BoardDetection:
    T_cam_board: np.ndarray
    corners: np.ndarray
    """Nx2 detected ChArUco corners (pixels)."""
    object_points: np.ndarray
    """Nx3 the same corners in the board frame (metres)."""
    reprojection_rms_px: float


def detect_board(image: np.ndarray, intrinsics: Intrinsics, spec: CharucoBoardSpec,
                 min_corners: int = 6) -> BoardDetection | None:
    """Find the board and its pose (solvePnP on the ChArUco corners); None if too few corners are seen."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    board = spec.board()
    detector = cv2.aruco.CharucoDetector(board)
    corners, ids, _marker_corners, _marker_ids = detector.detectBoard(gray)
    if ids is None or len(ids) < min_corners:
        return None
    object_points, image_points = board.matchImagePoints(corners, ids)
    object_points = object_points.reshape(-1, 3).astype(np.float64)
    image_points = image_points.reshape(-1, 2).astype(np.float64)
    if np.ptp(object_points[:, 0]) == 0 or np.ptp(object_points[:, 1]) == 0:
        return None  # collinear corners: the pose is ambiguous
    ok, rvec, tvec = cv2.solvePnP(object_points, image_points, intrinsics.K, intrinsics.dist,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    rvec, tvec = cv2.solvePnPRefineLM(object_points, image_points, intrinsics.K, intrinsics.dist, rvec, tvec)
    projected, _ = cv2.projectPoints(object_points, rvec, tvec, intrinsics.K, intrinsics.dist)
    rms = float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - image_points) ** 2, axis=1))))
    return BoardDetection(from_rvec(rvec, tvec), image_points, object_points, rms)


def calibrate_intrinsics(images: list[np.ndarray], spec: CharucoBoardSpec, *, min_views: int = 6,
                         distortion: bool = True) -> tuple[Intrinsics, float]:
    """Camera intrinsics from ChArUco views (the fallback when a camera reports none): cv2.calibrateCamera on
    the detected corners. Returns the intrinsics (plumb_bob) and the rms reprojection error in pixels.
    Needs `min_views` views with the board at different tilts (fronto-parallel views alone leave f undetermined)."""
    if not images:
        raise ValueError("no images given")
    height, width = images[0].shape[:2]
    board = spec.board()
    detector = cv2.aruco.CharucoDetector(board)
    object_points, image_points = [], []
    for image in images:
        if image.shape[:2] != (height, width):
            raise ValueError(f"all images must have one size; got {image.shape[1]}x{image.shape[0]} and "
                             f"{width}x{height}")
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        corners, ids, _, _ = detector.detectBoard(gray)
        if ids is None or len(ids) < 8:
            continue
        obj, img = board.matchImagePoints(corners, ids)
        object_points.append(obj.astype(np.float32))
        image_points.append(img.astype(np.float32))
    if len(object_points) < min_views:
        raise ValueError(f"the board was found in {len(object_points)} of {len(images)} images; intrinsics need "
                         f"at least {min_views} views at different tilts")
    flags = 0 if distortion else (cv2.CALIB_ZERO_TANGENT_DIST | cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2
                                  | cv2.CALIB_FIX_K3)
    rms, K, dist, _, _ = cv2.calibrateCamera(object_points, image_points, (width, height), None, None, flags=flags)
    coeffs = tuple(float(c) for c in np.asarray(dist).ravel()[:5])
    coeffs = coeffs + (0.0,) * (5 - len(coeffs))
    return Intrinsics(int(width), int(height), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                      "plumb_bob", coeffs), float(rms)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Pose T_world_cam of an optical frame (z forward, x right, y down) at `eye` looking at `target`."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T
