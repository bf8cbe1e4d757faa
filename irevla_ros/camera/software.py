"""A RealSense stand-in built on `rs.software_device`: what tests and dry runs use where no USB camera exists.

This is a MOCK OF HARDWARE (the RealSense USB device cannot exist on CI machines). Everything downstream of the
device is real librealsense: sensors, stream profiles, syncer, align, recorder. Each "plug" builds a fresh
software device (as a real camera re-enumerates after a USB drop) and a feeder thread pushes a deterministic
test pattern at `fps`: `pattern_color(k)` is the color image of frame number k, so a receiver can check
bytes. `unplug(serial)` stops the frames and hides the device; `replug(serial)` brings it back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pyrealsense2 as rs

from irevla_ros.camera.base import CameraNotFoundError, Intrinsics

FRAME_NUMBER_BYTES = 8
"""The first bytes of every pattern image hold its frame number (uint64 little-endian)."""


def pattern_color(frame_number: int, width: int, height: int) -> np.ndarray:
    """The synthetic color image for a frame number: seeded noise, frame number in its first 8 bytes."""
    image = np.random.default_rng(frame_number).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image.reshape(-1)[:FRAME_NUMBER_BYTES] = np.frombuffer(np.uint64(frame_number).tobytes(), dtype=np.uint8)
    return image


def pattern_frame_number(image: np.ndarray) -> int:
    """Inverse of `pattern_color`'s stamp: the frame number a pattern image claims to be."""
    return int(np.frombuffer(np.ascontiguousarray(image).reshape(-1)[:FRAME_NUMBER_BYTES].tobytes(), np.uint64)[0])


def pattern_depth(frame_number: int, width: int, height: int) -> np.ndarray:
    """A depth ramp (mm) that moves with the frame number: 400..~1400 mm."""
    x = np.arange(width, dtype=np.uint32)[None, :]
    y = np.arange(height, dtype=np.uint32)[:, None]
    return (400 + (x + y + frame_number) % 1000).astype(np.uint16)


def default_intrinsics(width: int, height: int) -> Intrinsics:
    """D435-like color intrinsics (about 69 x 42 degrees field of view) for a width x height stream."""
    return Intrinsics(width, height, fx=0.95 * width, fy=0.95 * width, cx=(width - 1) / 2 + 1.5,
                      cy=(height - 1) / 2 - 0.75, coeffs=(0.0, 0.0, 0.0, 0.0, 0.0))


def _rs_intrinsics(intr: Intrinsics) -> rs.intrinsics:
    out = rs.intrinsics()
    out.width, out.height = intr.width, intr.height
    out.fx, out.fy, out.ppx, out.ppy = intr.fx, intr.fy, intr.cx, intr.cy
    out.model = rs.distortion.brown_conrady
    out.coeffs = list(intr.coeffs)
    return out


@dataclass
class _Plugged:
    device: rs.software_device
    color_sensor: rs.software_sensor
    color_profile: rs.video_stream_profile
    depth_sensor: rs.software_sensor | None
    depth_profile: rs.video_stream_profile | None
    stop: threading.Event
    thread: threading.Thread | None = None


class SoftwareRealSense:
    """A device factory (`factory(serial) -> rs.device`) serving software RealSense devices (see module doc)."""

    def __init__(self, serials: list[str] | tuple[str, ...], *, width: int = 640, height: int = 480, fps: int = 30,
                 depth: bool = False, intrinsics: Intrinsics | None = None, depth_units_m: float = 0.001,
                 feed: bool = True) -> None:
        if not serials or any(not s for s in serials):
            raise ValueError(f"software cameras need non-empty serial numbers, got {list(serials)}")
        self.serials = list(serials)
        self.width, self.height, self.fps, self.depth = width, height, fps, depth
        self.intrinsics = intrinsics or default_intrinsics(width, height)
        if (self.intrinsics.width, self.intrinsics.height) != (width, height):
            raise ValueError("intrinsics size must match the stream size")
        self.depth_units_m = depth_units_m
        self.feed = feed
        self._plugged: dict[str, _Plugged] = {}
        self._unplugged: set[str] = set()
        self._frame_numbers: dict[str, int] = dict.fromkeys(self.serials, 0)
        self._lock = threading.Lock()
        self.plug_count: dict[str, int] = dict.fromkeys(self.serials, 0)

    # --- the factory interface -------------------------------------------------------------------------------
    def __call__(self, serial: str) -> rs.device:
        with self._lock:
            available = [s for s in self.serials if s not in self._unplugged]
            if not serial and len(available) == 1:
                serial = available[0]
            if serial not in available:
                raise CameraNotFoundError(f"no RealSense camera with serial {serial!r}; connected: "
                                          f"{available or 'none'} (software devices)")
            old = self._plugged.pop(serial, None)
            plugged = self._build(serial)
            self._plugged[serial] = plugged
            self.plug_count[serial] += 1
            if self.feed:
                plugged.thread = threading.Thread(target=self._feed, args=(serial, plugged), daemon=True,
                                                  name=f"software-realsense-{serial}")
                plugged.thread.start()
        self._stop(old)
        return plugged.device

    def _build(self, serial: str) -> _Plugged:
        device = rs.software_device()
        device.register_info(rs.camera_info.serial_number, serial)
        device.register_info(rs.camera_info.name, "Intel RealSense software device")
        color_sensor = device.add_sensor("RGB Camera")
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
        stream.width, stream.height, stream.fps, stream.bpp, stream.fmt = self.width, self.height, self.fps, 3, \
            rs.format.rgb8
        stream.intrinsics = _rs_intrinsics(self.intrinsics)
        color_profile = color_sensor.add_video_stream(stream).as_video_stream_profile()
        depth_sensor = depth_profile = None
        if self.depth:
            depth_sensor = device.add_sensor("Stereo Module")
            dstream = rs.video_stream()
            dstream.type, dstream.index, dstream.uid = rs.stream.depth, 0, 1
            dstream.width, dstream.height, dstream.fps, dstream.bpp, dstream.fmt = self.width, self.height, \
                self.fps, 2, rs.format.z16
            dstream.intrinsics = _rs_intrinsics(self.intrinsics)
            depth_profile = depth_sensor.add_video_stream(dstream).as_video_stream_profile()
            depth_sensor.add_read_only_option(rs.option.depth_units, self.depth_units_m)
            extrinsics = rs.extrinsics()
            extrinsics.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            extrinsics.translation = [0.0, 0.0, 0.0]
            depth_profile.register_extrinsics_to(color_profile, extrinsics)
        device.create_matcher(rs.matchers.default)
        return _Plugged(device, color_sensor, color_profile, depth_sensor, depth_profile, threading.Event())

    # --- the feeder ------------------------------------------------------------------------------------------
    def push(self, serial: str, color: np.ndarray, depth: np.ndarray | None = None,
             timestamp_ms: float | None = None) -> int:
        """Push one frame (used by the feeder, or by a test with feed=False). Returns its frame number."""
        with self._lock:
            plugged = self._plugged.get(serial)
            number = self._frame_numbers[serial]
            self._frame_numbers[serial] = number + 1
        if plugged is None:
            raise CameraNotFoundError(f"software camera {serial!r} is not plugged")
        # librealsense's syncer pairs streams only with wall-clock-like millisecond timestamps.
        stamp = time.time() * 1000.0 if timestamp_ms is None else timestamp_ms
        frame = rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(color, dtype=np.uint8)
        frame.stride, frame.bpp = self.width * 3, 3
        frame.timestamp, frame.domain, frame.frame_number = stamp, rs.timestamp_domain.hardware_clock, number
        frame.profile = plugged.color_profile
        plugged.color_sensor.on_video_frame(frame)
        if plugged.depth_sensor is not None and depth is not None:
            dframe = rs.software_video_frame()
            dframe.pixels = np.ascontiguousarray(depth, dtype=np.uint16)
            dframe.stride, dframe.bpp = self.width * 2, 2
            dframe.timestamp, dframe.domain, dframe.frame_number = stamp, rs.timestamp_domain.hardware_clock, number
            dframe.depth_units = self.depth_units_m
            dframe.profile = plugged.depth_profile
            plugged.depth_sensor.on_video_frame(dframe)
        return number

    def _feed(self, serial: str, plugged: _Plugged) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not plugged.stop.is_set():
            number = self._frame_numbers[serial]
            depth = pattern_depth(number, self.width, self.height) if self.depth else None
            try:
                self.push(serial, pattern_color(number, self.width, self.height), depth)
            except (CameraNotFoundError, RuntimeError):
                return
            next_t += period
            plugged.stop.wait(max(0.0, next_t - time.monotonic()))

    # --- simulated USB events --------------------------------------------------------------------------------
    def unplug(self, serial: str) -> None:
        """Simulate a USB drop: frames stop and the serial disappears until `replug`."""
        with self._lock:
            self._unplugged.add(serial)
            plugged = self._plugged.pop(serial, None)
        self._stop(plugged)

    def replug(self, serial: str) -> None:
        with self._lock:
            self._unplugged.discard(serial)

    @staticmethod
    def _stop(plugged: _Plugged | None) -> None:
        if plugged is not None:
            plugged.stop.set()
            if plugged.thread is not None and plugged.thread is not threading.current_thread():
                plugged.thread.join(2.0)

    def close(self) -> None:
        with self._lock:
            plugged, self._plugged = list(self._plugged.values()), {}
        for p in plugged:
            self._stop(p)
