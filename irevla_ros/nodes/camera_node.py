"""camera_node: RealSense cameras -> rgb8 Image + CameraInfo (+ aligned 16UC1 depth), same topics as the sim.

Per camera `c` (names from the `cameras` parameter, "wrist"/"front"): /cameras/c/color/image_raw,
/cameras/c/color/camera_info, optionally /cameras/c/aligned_depth/image_raw, frame `c_camera_color_optical_frame`,
stamped with the device clock mapped to ROS time (DeviceClockMapper). Each camera has a reader thread that
reopens it after a USB drop; /diagnostics says which cameras stream. A camera missing at start-up (after
`wait_for_device_s`) is a start-up error naming the serials that are connected.

Sources: `realsense` (USB, by serial), `playback` (.db3 recordings, one per camera), `software`
(rs.software_device test pattern: a mock of the hardware for dry runs and tests).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from irevla_ros import interfaces as itf
from irevla_ros.camera.base import CameraError, CameraFrame, CameraNotFoundError
from irevla_ros.camera.image_ops import CropResize, crop_resize
from irevla_ros.camera.messages import camera_info_msg, image_msg
from irevla_ros.camera.realsense import (
    DeviceFactory,
    PlaybackDeviceFactory,
    RealSenseCamera,
    RealSenseConfig,
    UsbDeviceFactory,
)
from irevla_ros.camera.stream import STREAMING, CameraStream, StreamConfig
from irevla_ros.camera.timestamps import DeviceClockMapper
from irevla_ros.nodes._common import IMAGE_QOS, SENSOR_QOS, STATE_QOS, declare_config, spin_node

SOURCES = ("realsense", "playback", "software")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class CameraNodeConfig:
    cameras: tuple[str, ...] = ("front",)
    """Camera names; topics /cameras/<name>/..., frame <name>_camera_color_optical_frame."""
    serials: tuple[str, ...] = ("",)
    """Serial number per camera; "" only with one camera (= the only one connected)."""
    source: str = "realsense"
    """realsense (USB) | playback (.db3 files) | software (rs.software_device test pattern, no hardware)."""
    playback_files: tuple[str, ...] = ("",)
    """source=playback: one .db3 recording per camera."""
    playback_loop: bool = True
    """source=playback: start the recording again at its end."""
    width: int = 640
    height: int = 480
    fps: int = 30
    enable_depth: bool = False
    """Also publish depth aligned to color (16UC1, mm), on the color camera's intrinsics and frame."""
    depth_width: int = 640
    depth_height: int = 480
    crop_x: int = 0
    crop_y: int = 0
    crop_width: int = 0
    """0 = no crop."""
    crop_height: int = 0
    output_width: int = 0
    """0 = keep the (cropped) size; else resize, CameraInfo adjusted accordingly."""
    output_height: int = 0
    frame_timeout_s: float = 1.0
    """No frame for this long = device lost: reopen it every reconnect_interval_s."""
    reconnect_interval_s: float = 1.0
    wait_for_device_s: float = 5.0
    """At start-up, wait this long for every camera, then fail naming what is connected."""
    best_effort: bool = False
    """False: reliable depth-2 (IMAGE_QOS, like the sim; matches every subscriber). True: sensor-data QoS."""

    def __post_init__(self) -> None:
        n = len(self.cameras)
        if n == 0:
            raise ValueError("cameras must name at least one camera")
        for name in self.cameras:
            if not _NAME.match(name):
                raise ValueError(f"camera name {name!r} must match {_NAME.pattern} (it becomes a topic and a frame)")
        if len(set(self.cameras)) != n:
            raise ValueError(f"camera names must be unique, got {list(self.cameras)}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if len(self.serials) != n:
            raise ValueError(f"serials has {len(self.serials)} entries for {n} cameras {list(self.cameras)}")
        if self.source != "playback":
            if n > 1 and not all(self.serials):
                raise ValueError(f"with several cameras every serial must be set, got {list(self.serials)}")
            given = [s for s in self.serials if s]
            if len(set(given)) != len(given):
                raise ValueError(f"serials must be unique, got {list(self.serials)}")
        else:
            if len(self.playback_files) != n or not all(self.playback_files):
                raise ValueError(f"source=playback needs one recording per camera in playback_files, got "
                                 f"{list(self.playback_files)} for {list(self.cameras)}")
        self.realsense_config("")  # validates resolution / fps
        self.crop_resize.check_fits(self.width, self.height)
        StreamConfig(self.frame_timeout_s, self.reconnect_interval_s)
        if not (np.isfinite(self.wait_for_device_s) and 0 <= self.wait_for_device_s <= 600):
            raise ValueError(f"wait_for_device_s must be in [0, 600], got {self.wait_for_device_s!r}")

    def realsense_config(self, serial: str) -> RealSenseConfig:
        return RealSenseConfig(serial=serial, width=self.width, height=self.height, fps=self.fps,
                               enable_depth=self.enable_depth, depth_width=self.depth_width,
                               depth_height=self.depth_height)

    @property
    def crop_resize(self) -> CropResize:
        return CropResize(self.crop_x, self.crop_y, self.crop_width, self.crop_height, self.output_width,
                          self.output_height)


PARAMETERS = CameraNodeConfig


class _CameraPublisher:
    """One camera: its stream thread, clock mapper and publishers."""

    def __init__(self, node: CameraNode, name: str, camera: RealSenseCamera, qos) -> None:
        self.node, self.name, self.camera = node, name, camera
        self.frame_id = itf.camera_optical_frame(name)
        self.clock = DeviceClockMapper()
        self.image_pub = node.create_publisher(Image, itf.camera_image(name).name, qos)
        self.info_pub = node.create_publisher(CameraInfo, itf.camera_info(name).name, qos)
        self.depth_pub = (node.create_publisher(Image, itf.camera_depth(name).name, qos)
                          if node.config.enable_depth else None)
        self.stream = CameraStream(camera, self.on_frame, self.on_status,
                                   StreamConfig(node.config.frame_timeout_s, node.config.reconnect_interval_s,
                                                loop=node.config.playback_loop))
        self.published = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def on_status(self, state: str, message: str) -> None:
        log = self.node.get_logger()
        text = f"camera {self.name!r}: {state}" + (f" ({message})" if message else "")
        if state == STREAMING:
            log.info(text)
        else:
            log.warning(text)
        if state != STREAMING:
            self.clock.reset()

    def on_frame(self, frame: CameraFrame) -> None:
        arrival_ns = self.node.get_clock().now().nanoseconds
        try:
            stamp_ns = self.clock.map_ns(frame.device_time_s, arrival_ns)
            op = self.node.config.crop_resize
            color, intrinsics = crop_resize(frame.color, frame.intrinsics, op)
            depth = None
            if frame.depth is not None and self.depth_pub is not None:
                depth, _ = crop_resize(self._depth_mm(frame), frame.intrinsics, op, nearest=True)
        except ValueError as exc:
            self.dropped += 1
            self.node.get_logger().error(f"camera {self.name!r}: dropped frame {frame.frame_number}: {exc}",
                                         throttle_duration_sec=2.0)
            return
        self.image_pub.publish(image_msg(color, "rgb8", stamp_ns, self.frame_id))
        self.info_pub.publish(camera_info_msg(intrinsics, stamp_ns, self.frame_id))
        if depth is not None:
            self.depth_pub.publish(image_msg(depth, "16UC1", stamp_ns, self.frame_id))
        with self._lock:
            self.published += 1

    @staticmethod
    def _depth_mm(frame: CameraFrame) -> np.ndarray:
        if abs(frame.depth_scale_m - 0.001) < 1e-9:
            return frame.depth
        mm = np.rint(frame.depth.astype(np.float64) * (frame.depth_scale_m * 1000.0))
        return np.clip(mm, 0, 65535).astype(np.uint16)


class CameraNode(Node):
    def __init__(self, *, device_factory: DeviceFactory | None = None, **node_kwargs) -> None:
        """`device_factory` injects devices (tests: a SoftwareRealSense); otherwise `source` picks it."""
        super().__init__("camera_node", **node_kwargs)
        self.config = declare_config(self, CameraNodeConfig)
        cfg = self.config
        qos = SENSOR_QOS if cfg.best_effort else IMAGE_QOS
        self._owned_factory = None
        self.cameras: list[_CameraPublisher] = []
        for index, name in enumerate(cfg.cameras):
            factory = device_factory or self._factory_for(index)
            camera = RealSenseCamera(cfg.realsense_config(cfg.serials[index]), factory, name=name)
            self.cameras.append(_CameraPublisher(self, name, camera, qos))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, itf.DIAGNOSTICS.name, STATE_QOS)
        try:
            self._open_all()
        except Exception:
            self.close()
            raise
        for cam in self.cameras:
            cam.stream.start()
        self.create_timer(1.0, self.diagnostics_callback)

    def _factory_for(self, index: int) -> DeviceFactory:
        cfg = self.config
        if cfg.source == "playback":
            return PlaybackDeviceFactory(cfg.playback_files[index], real_time=True)
        if self._owned_factory is None:
            if cfg.source == "software":
                from irevla_ros.camera.software import SoftwareRealSense

                serials = [s or f"software-{i}" for i, s in enumerate(cfg.serials)]
                self._owned_factory = SoftwareRealSense(serials, width=cfg.width, height=cfg.height, fps=cfg.fps,
                                                        depth=cfg.enable_depth)
                if cfg.enable_depth and (cfg.depth_width, cfg.depth_height) != (cfg.width, cfg.height):
                    raise ValueError("source=software streams depth at the color size: set depth_width/height "
                                     "equal to width/height")
                self.get_logger().warning("source=software: publishing a synthetic test pattern from "
                                          "rs.software_device, not a real camera")
            else:
                self._owned_factory = UsbDeviceFactory()
        return self._owned_factory

    def _open_all(self) -> None:
        """Open every camera now, retrying up to wait_for_device_s, so a missing one fails the start-up."""
        deadline = time.monotonic() + self.config.wait_for_device_s
        for cam in self.cameras:
            while True:
                try:
                    cam.camera.open()
                    break
                except CameraNotFoundError as exc:
                    if time.monotonic() >= deadline:
                        raise CameraNotFoundError(f"camera {cam.name!r}: {exc}") from exc
                    time.sleep(min(0.5, self.config.reconnect_interval_s))
            intr = cam.camera.intrinsics
            self.get_logger().info(f"camera {cam.name!r}: serial {cam.camera.serial}, {intr.width}x{intr.height}"
                                   f"@{self.config.fps} fx={intr.fx:.1f} fy={intr.fy:.1f} "
                                   f"depth={'on' if self.config.enable_depth else 'off'}")

    def diagnostics_callback(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for cam in self.cameras:
            status = DiagnosticStatus()
            status.name = f"camera_node: {cam.name}"
            status.hardware_id = cam.camera.serial
            streaming = cam.stream.state == STREAMING
            status.level = DiagnosticStatus.OK if streaming else DiagnosticStatus.ERROR
            status.message = cam.stream.state + (f": {cam.stream.message}" if cam.stream.message else "")
            status.values = [KeyValue(key="published", value=str(cam.published)),
                             KeyValue(key="reconnects", value=str(cam.stream.reconnects)),
                             KeyValue(key="dropped", value=str(cam.dropped))]
            msg.status.append(status)
        self.diagnostics_pub.publish(msg)

    def close(self) -> None:
        for cam in self.cameras:
            cam.stream.stop()
        close = getattr(self._owned_factory, "close", None)
        if callable(close):
            close()


def main(args=None) -> int:
    try:
        return spin_node(CameraNode, args)
    except (CameraError, ValueError) as exc:
        print(f"camera_node: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
