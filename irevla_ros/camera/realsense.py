"""RealSense backend (pyrealsense2): color + optional depth aligned to color, by serial number or from a file.

The device comes from a *device factory* `factory(serial) -> rs.device`, so the same code drives a USB camera
(`UsbDeviceFactory`), a `.db3` recording (`PlaybackDeviceFactory`) or an `rs.software_device`
(`irevla_ros.camera.software.SoftwareRealSense`, used in tests where no USB camera can exist). We open sensors
directly (not `rs.pipeline`, which only knows USB and file devices) and let an `rs.syncer` pair depth with color.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyrealsense2 as rs

from irevla_ros.camera.base import (
    Camera,
    CameraDisconnectedError,
    CameraEndOfStreamError,
    CameraError,
    CameraFrame,
    CameraNotFoundError,
    Intrinsics,
)

DeviceFactory = Callable[[str], "rs.device"]
"""serial -> an rs.device (USB, playback or software); raises CameraNotFoundError naming what is available."""

_PLUMB_BOB_MODELS = {rs.distortion.none, rs.distortion.brown_conrady, rs.distortion.modified_brown_conrady,
                     rs.distortion.inverse_brown_conrady}


@dataclass(frozen=True)
class RealSenseConfig:
    serial: str = ""
    """Serial number; empty = the only connected camera (an error if there are several)."""
    width: int = 640
    height: int = 480
    fps: int = 30
    enable_depth: bool = False
    depth_width: int = 640
    depth_height: int = 480

    def __post_init__(self) -> None:
        for name in ("width", "height", "depth_width", "depth_height"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 < value <= 4096:
                raise ValueError(f"{name} must be an integer in 1..4096, got {value!r}")
        if not isinstance(self.fps, int) or not 0 < self.fps <= 300:
            raise ValueError(f"fps must be an integer in 1..300, got {self.fps!r}")


def device_serial(device: rs.device) -> str:
    try:
        return device.get_info(rs.camera_info.serial_number)
    except RuntimeError:
        return "?"


def intrinsics_from_rs(intr: rs.intrinsics) -> Intrinsics:
    """librealsense intrinsics -> ROS semantics. Brown-Conrady variants become plumb_bob (same k1 k2 p1 p2 k3
    order); Kannala-Brandt becomes equidistant. RealSense color streams normally report zero coefficients."""
    if intr.model in _PLUMB_BOB_MODELS:
        model, coeffs = "plumb_bob", tuple(intr.coeffs[:5])
    elif intr.model == rs.distortion.kannala_brandt4:
        model, coeffs = "equidistant", tuple(intr.coeffs[:4])
    else:
        raise CameraError(f"unsupported distortion model {intr.model} (no ROS CameraInfo equivalent)")
    return Intrinsics(int(intr.width), int(intr.height), float(intr.fx), float(intr.fy), float(intr.ppx),
                      float(intr.ppy), model, coeffs)


class UsbDeviceFactory:
    """Real cameras on USB, found by serial number through an rs.context."""

    def __init__(self) -> None:
        self.context = rs.context()

    def __call__(self, serial: str) -> rs.device:
        devices = list(self.context.query_devices())
        serials = [device_serial(d) for d in devices]
        if serial:
            for device, found in zip(devices, serials, strict=True):
                if found == serial:
                    return device
            raise CameraNotFoundError(f"no RealSense camera with serial {serial!r}; connected: "
                                      f"{serials or 'none (check the USB cable and `lsusb`)'}")
        if len(devices) == 1:
            return devices[0]
        if not devices:
            raise CameraNotFoundError("no RealSense camera connected (check the USB cable, `lsusb`, udev rules)")
        raise CameraNotFoundError(f"several RealSense cameras connected ({serials}): set the serial parameter")


class PlaybackDeviceFactory:
    """A `.db3` recording (rs.recorder) played back as a device; `real_time=False` reads as fast as consumed."""

    def __init__(self, path: str | Path, *, real_time: bool = True) -> None:
        self.path = Path(path)
        self.real_time = real_time
        self.context = rs.context()

    def __call__(self, serial: str) -> rs.device:
        if not self.path.is_file():
            raise CameraNotFoundError(f"recording {str(self.path)!r} does not exist")
        try:
            playback = self.context.load_device(str(self.path)).as_playback()
        except RuntimeError as exc:
            raise CameraNotFoundError(f"cannot read recording {str(self.path)!r}: {exc}") from exc
        playback.set_real_time(self.real_time)
        return playback

    def release(self, device: rs.device) -> None:
        try:
            self.context.unload_device(str(self.path))
        except RuntimeError:
            pass


class RealSenseCamera(Camera):
    """One RealSense device (USB, recording or software), color rgb8 + optional z16 depth aligned to color."""

    def __init__(self, config: RealSenseConfig, factory: DeviceFactory | None = None, *, name: str = "camera"):
        self.config = config
        self.factory = factory if factory is not None else UsbDeviceFactory()
        self.name = name
        self._device: rs.device | None = None
        self._sensors: list = []
        self._syncer: rs.syncer | None = None
        self._align = rs.align(rs.stream.color)
        self._intrinsics: Intrinsics | None = None
        self._depth_scale = 0.001
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._device is not None

    @property
    def intrinsics(self) -> Intrinsics:
        if self._intrinsics is None:
            raise CameraError(f"camera {self.name!r} is not open")
        return self._intrinsics

    @property
    def serial(self) -> str:
        return device_serial(self._device) if self._device is not None else self.config.serial

    def _find_profile(self, sensors, stream, fmt, width, height):
        for index, sensor in enumerate(sensors):
            for profile in sensor.get_stream_profiles():
                if profile.stream_type() != stream or profile.format() != fmt or profile.fps() != self.config.fps:
                    continue
                video = profile.as_video_stream_profile()
                if video.width() == width and video.height() == height:
                    return index, profile
        modes = sorted({f"{p.as_video_stream_profile().width()}x{p.as_video_stream_profile().height()}@{p.fps()}"
                        for s in sensors for p in s.get_stream_profiles()
                        if p.stream_type() == stream and p.format() == fmt and p.is_video_stream_profile()})
        raise CameraError(f"camera {self.name!r} ({device_serial(self._device)}) has no {stream} {fmt} mode "
                          f"{width}x{height}@{self.config.fps}; available: {modes or 'none'}")

    def open(self) -> None:
        with self._lock:
            if self._device is not None:
                return
            self._device = self.factory(self.config.serial)
            try:
                self._start_streams()
            except Exception:
                self._release_locked()
                raise

    def _start_streams(self) -> None:
        cfg = self.config
        sensors = list(self._device.query_sensors())
        wanted = [self._find_profile(sensors, rs.stream.color, rs.format.rgb8, cfg.width, cfg.height)]
        if cfg.enable_depth:
            wanted.append(self._find_profile(sensors, rs.stream.depth, rs.format.z16, cfg.depth_width,
                                             cfg.depth_height))
            depth_sensor = sensors[wanted[1][0]]
            if depth_sensor.supports(rs.option.depth_units):
                self._depth_scale = float(depth_sensor.get_option(rs.option.depth_units))
        self._intrinsics = intrinsics_from_rs(wanted[0][1].as_video_stream_profile().get_intrinsics())
        by_sensor: dict[int, list] = {}
        for index, profile in wanted:
            by_sensor.setdefault(index, []).append(profile)
        self._syncer = rs.syncer(10)
        for index, profiles in by_sensor.items():
            sensor = sensors[index]
            sensor.open(profiles if len(profiles) > 1 else profiles[0])
            self._sensors.append(sensor)
        for sensor in self._sensors:
            sensor.start(self._syncer)

    def read(self, timeout_s: float) -> CameraFrame:
        syncer = self._syncer
        if syncer is None:
            raise CameraDisconnectedError(f"camera {self.name!r} is not open")
        try:
            while True:
                ok, frames = syncer.try_wait_for_frames(max(1, int(timeout_s * 1000)))
                if not ok:
                    if self._device is not None and self._device.is_playback():
                        if self._device.as_playback().current_status() == rs.playback_status.stopped:
                            raise CameraEndOfStreamError(f"camera {self.name!r}: end of recording")
                    raise CameraDisconnectedError(f"camera {self.name!r} ({self.serial}): no frame for "
                                                  f"{timeout_s:.2f} s")
                color = frames.get_color_frame()
                if color:  # a lone depth frame (its color partner was dropped) is skipped
                    return self._to_frame(frames, color)
        except CameraError:
            raise
        except RuntimeError as exc:  # librealsense reports USB errors as RuntimeError
            raise CameraDisconnectedError(f"camera {self.name!r} ({self.serial}): {exc}") from exc

    def _to_frame(self, frames, color) -> CameraFrame:
        color_array = np.array(color.get_data(), dtype=np.uint8, copy=True)  # frame memory returns to the pool
        depth_array = None
        if self.config.enable_depth and frames.get_depth_frame():
            aligned = self._align.process(frames)
            depth = aligned.get_depth_frame()
            if depth:
                depth_array = np.array(depth.get_data(), dtype=np.uint16, copy=True)
        return CameraFrame(color=color_array, intrinsics=self._intrinsics,
                           device_time_s=color.get_timestamp() * 1e-3, frame_number=int(color.get_frame_number()),
                           depth=depth_array, depth_scale_m=self._depth_scale,
                           meta={"timestamp_domain": str(color.get_frame_timestamp_domain())})

    def close(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        for sensor in self._sensors:
            for action in (sensor.stop, sensor.close):
                try:
                    action()
                except RuntimeError:  # already stopped, or the device is gone
                    pass
        self._sensors = []
        self._syncer = None
        device, self._device = self._device, None
        release = getattr(self.factory, "release", None)
        if device is not None and callable(release):
            release(device)
