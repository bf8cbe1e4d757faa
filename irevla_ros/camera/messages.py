"""sensor_msgs conversions shared by camera_node and the sim cameras (same encodings, frames, CameraInfo).

Imports ROS message types (not rclpy): use it from nodes, not from irevla_ros.core. Color is `rgb8`, aligned
depth is `16UC1` in millimetres (REP 118), CameraInfo has K/P from `Intrinsics`, R = identity, no ROI/binning
(crop and resize are already applied to the pixels, see image_ops.crop_resize).
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image

from irevla_ros.camera.base import Intrinsics

ENCODINGS = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 1), "16UC1": (np.uint16, 1),
             "mono16": (np.uint16, 1), "32FC1": (np.float32, 1)}
"""Encodings we read and write: dtype and channels."""


class ImageMessageError(ValueError):
    """A received Image/CameraInfo does not describe its own data (size, encoding, step, values)."""


def stamp_from_ns(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """An Image holding `array` (HxW or HxWxC, C-contiguous bytes, little-endian)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}; use one of {sorted(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    array = np.ascontiguousarray(array)
    if array.dtype != dtype or (array.shape[2] if array.ndim == 3 else 1) != channels or array.ndim not in (2, 3):
        raise ValueError(f"{encoding} needs HxW{f'x{channels}' if channels > 1 else ''} {np.dtype(dtype)}, got "
                         f"{array.shape} {array.dtype}")
    msg = Image()
    msg.header.stamp = stamp_from_ns(stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.shape[1] * channels * array.itemsize)
    msg.data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return msg


def image_to_array(msg: Image, expect_encoding: str | None = None) -> np.ndarray:
    """The pixels of an Image as a read-only numpy array, after checking size, step and encoding."""
    if expect_encoding is not None and msg.encoding != expect_encoding:
        raise ImageMessageError(f"expected encoding {expect_encoding!r}, got {msg.encoding!r}")
    if msg.encoding not in ENCODINGS:
        raise ImageMessageError(f"unsupported encoding {msg.encoding!r}; supported: {sorted(ENCODINGS)}")
    dtype, channels = ENCODINGS[msg.encoding]
    row = msg.width * channels * np.dtype(dtype).itemsize
    if msg.width <= 0 or msg.height <= 0 or msg.step < row:
        raise ImageMessageError(f"bad image geometry {msg.width}x{msg.height} step {msg.step} for {msg.encoding}")
    try:
        buffer = np.frombuffer(msg.data, dtype=np.uint8)  # bytes / array.array('B'): no copy
    except TypeError:
        buffer = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if buffer.size != msg.step * msg.height:
        raise ImageMessageError(f"image data has {buffer.size} bytes, expected step*height = "
                                f"{msg.step * msg.height}")
    rows = buffer.reshape(msg.height, msg.step)[:, :row]
    order = ">" if msg.is_bigendian else "<"
    array = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order))
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    array = array.reshape(shape).astype(dtype, copy=False)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array) | np.isnan(array)):
        raise ImageMessageError("float image contains infinities")
    return array


def camera_info_msg(intrinsics: Intrinsics, stamp_ns: int, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = stamp_from_ns(stamp_ns)
    msg.header.frame_id = frame_id
    msg.width, msg.height = intrinsics.width, intrinsics.height
    msg.distortion_model = intrinsics.distortion_model
    msg.d = [float(c) for c in intrinsics.coeffs]
    msg.k = [float(v) for v in intrinsics.K.ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(v) for v in intrinsics.P.ravel()]
    return msg


def intrinsics_from_camera_info(msg: CameraInfo) -> Intrinsics:
    """Validated Intrinsics from a CameraInfo (raises ImageMessageError naming the bad field)."""
    k = np.asarray(msg.k, dtype=np.float64)
    if k.shape != (9,) or not np.all(np.isfinite(k)) or k[1] != 0 or k[3] != 0 or tuple(k[6:]) != (0.0, 0.0, 1.0):
        raise ImageMessageError(f"CameraInfo.k is not a pinhole matrix: {list(k)}")
    try:
        return Intrinsics(int(msg.width), int(msg.height), float(k[0]), float(k[4]), float(k[2]), float(k[5]),
                          msg.distortion_model or "plumb_bob",
                          tuple(msg.d) if len(msg.d) else (0.0,) * (4 if msg.distortion_model == "equidistant" else 5))
    except ValueError as exc:
        raise ImageMessageError(f"bad CameraInfo: {exc}") from exc
