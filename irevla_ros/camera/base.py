"""The camera contract every backend implements (RealSense USB, RealSense playback, software device, sim).

ROS-free. A backend opens a device, hands out `CameraFrame`s (RGB, optional depth aligned to color, the
device's own timestamp) and says clearly what went wrong: `CameraNotFoundError` when the device is absent,
`CameraDisconnectedError` when frames stop (a USB drop), `CameraEndOfStreamError` when a recording ends.
The node turns the first into a start-up error and the other two into a reconnect / replay.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

DISTORTION_MODELS = {"plumb_bob": 5, "equidistant": 4}
"""ROS CameraInfo distortion models we emit and how many coefficients each takes (k1 k2 p1 p2 k3 / k1..k4)."""


class CameraError(RuntimeError):
    """Any camera failure the user has to act on; the message says what and how."""


class CameraNotFoundError(CameraError):
    """The requested device (serial number, file) is not there."""


class CameraDisconnectedError(CameraError):
    """An open device stopped delivering frames (USB drop, power loss, cable)."""


class CameraEndOfStreamError(CameraError):
    """A recording reached its end."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image, ROS CameraInfo semantics (pixel centres at integer coordinates)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if not (isinstance(self.width, int | np.integer) and isinstance(self.height, int | np.integer)):
            raise ValueError(f"image size must be integers, got {self.width!r}x{self.height!r}")
        if not (0 < self.width <= 16384 and 0 < self.height <= 16384):
            raise ValueError(f"image size must be in 1..16384, got {self.width}x{self.height}")
        values = (self.fx, self.fy, self.cx, self.cy, *self.coeffs)
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"intrinsics must be finite, got fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy} "
                             f"coeffs={self.coeffs}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be > 0, got fx={self.fx} fy={self.fy}")
        if self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(f"distortion_model must be one of {sorted(DISTORTION_MODELS)}, "
                             f"got {self.distortion_model!r}")
        if len(self.coeffs) != DISTORTION_MODELS[self.distortion_model]:
            raise ValueError(f"{self.distortion_model} takes {DISTORTION_MODELS[self.distortion_model]} "
                             f"coefficients, got {len(self.coeffs)}")
        object.__setattr__(self, "coeffs", tuple(float(c) for c in self.coeffs))

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the conventional name
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def P(self) -> np.ndarray:  # noqa: N802
        return np.hstack([self.K, np.zeros((3, 1))])

    @property
    def dist(self) -> np.ndarray:
        return np.asarray(self.coeffs, dtype=np.float64)


@dataclass
class CameraFrame:
    """One synchronized capture. `color` is HxWx3 uint8 RGB; `depth` (optional) is HxW uint16 aligned to
    color, in units of `depth_scale_m` metres; `device_time_s` is the device clock (mapped to ROS time by
    `DeviceClockMapper`), `frame_number` the device's counter."""

    color: np.ndarray
    intrinsics: Intrinsics
    device_time_s: float
    frame_number: int
    depth: np.ndarray | None = None
    depth_scale_m: float = 0.001
    meta: dict = field(default_factory=dict)


class Camera(ABC):
    """A camera backend. Not thread-safe: one reader thread (see `CameraStream`)."""

    name: str = "camera"

    @abstractmethod
    def open(self) -> None:
        """Find the device and start streaming; raise CameraNotFoundError (listing what is there) if absent."""

    @abstractmethod
    def read(self, timeout_s: float) -> CameraFrame:
        """The next frame; CameraDisconnectedError if none arrives within `timeout_s`."""

    @abstractmethod
    def close(self) -> None:
        """Stop streaming and release the device; safe to call twice and after a disconnection."""

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    def __enter__(self) -> Camera:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
