"""foxglove_bridge: a live web view of the loop (Foxglove app -> ws://127.0.0.1:8765) via foxglove-sdk.

Serves camera images (foxglove.RawImage), EE pose and target (foxglove.PoseInFrame), the commands (policy,
teleop, executed), intervention flag, reward, success probability, human labels, episode events and the policy
version (JSON channels). Subscriptions are best-effort (they match any publisher and never slow the loop down);
images are throttled to `max_image_hz` per camera. Binds to loopback by default: the data (camera frames) stays
on the machine unless someone asks otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32, Float64MultiArray, String

from irevla_ros import interfaces as itf
from irevla_ros.nodes._common import LATCHED_QOS, declare_config, spin_node

IMAGE_ENCODINGS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4, "16UC1": 2, "mono16": 2, "32FC1": 4}
VIEW_QOS = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)


@dataclass
class FoxgloveConfig:
    host: str = "127.0.0.1"
    """Address to bind; keep loopback unless the view must be reachable from elsewhere (then use a tunnel)."""
    port: int = 8765
    """Websocket port (0 = any free port, logged at start)."""
    cameras: tuple[str, ...] = itf.CAMERA_NAMES
    max_image_hz: float = 10.0
    """Per-camera image rate sent to viewers (each RGB frame is ~1 MB at 640x480)."""
    server_name: str = "irevla_ros"

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError as exc:
            raise ValueError(f"host must be an IP address such as 127.0.0.1, got {self.host!r}") from exc
        if not (0 <= int(self.port) <= 65535):
            raise ValueError(f"port must be in [0, 65535], got {self.port!r}")
        if not (np.isfinite(self.max_image_hz) and 0.0 < self.max_image_hz <= 120.0):
            raise ValueError(f"max_image_hz must be in (0, 120], got {self.max_image_hz!r}")
        self.cameras = tuple(self.cameras)
        if not self.cameras or not all(c.isidentifier() for c in self.cameras):
            raise ValueError(f"cameras must be non-empty identifiers, got {self.cameras!r}")


PARAMETERS = FoxgloveConfig


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class FoxgloveBridgeNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("foxglove_bridge", **kwargs)
        import foxglove
        from foxglove.channels import PoseInFrameChannel, RawImageChannel

        self.config = cfg = declare_config(self, FoxgloveConfig)
        self._fox = foxglove
        try:
            self.server = foxglove.start_server(name=cfg.server_name, host=cfg.host, port=int(cfg.port))
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own error types (port in use, bad host)
            raise ValueError(f"cannot serve on {cfg.host}:{cfg.port} ({exc}); choose another `port`") from exc
        self.port = self.server.port
        if not ipaddress.ip_address(cfg.host).is_loopback:
            self.get_logger().warning(f"serving on {cfg.host}: camera frames are visible to that network")
        self.get_logger().info(f"Foxglove live view on ws://{cfg.host}:{self.port}")
        self._last_image: dict[str, float] = {}
        self._channels: list = []
        for cam in cfg.cameras:
            topic = itf.camera_image(cam).name
            channel = RawImageChannel(topic)
            self._channels.append(channel)
            self.create_subscription(Image, topic, lambda m, t=topic, c=channel: self.image_callback(t, c, m),
                                     VIEW_QOS)
        for endpoint in (itf.EE_POSE, itf.EE_TARGET):
            channel = PoseInFrameChannel(endpoint.name)
            self._channels.append(channel)
            self.create_subscription(PoseStamped, endpoint.name, lambda m, c=channel: self.pose_callback(c, m),
                                     VIEW_QOS)
        for endpoint in (itf.ACTION, itf.POLICY_ACTION, itf.TELEOP_ACTION):
            self._json(endpoint.name, Float64MultiArray, self.action_to_json)
        for endpoint in (itf.REWARD, itf.SUCCESS_PROB):
            self._json(endpoint.name, Float32, lambda m: {"value": float(m.data)} if np.isfinite(m.data) else None)
        self._json(itf.INTERVENTION.name, Bool, lambda m: {"value": bool(m.data)})
        self._json(itf.HUMAN_LABEL.name, String, lambda m: {"label": m.data})
        self._json(itf.EPISODE_EVENT.name, String, self.episode_to_json)
        self._json(itf.POLICY_VERSION.name, String, lambda m: {"version": m.data}, LATCHED_QOS)

    def _json(self, topic: str, msg_type, convert, qos=VIEW_QOS) -> None:
        channel = self._fox.Channel(topic)  # JSON, schemaless
        self._channels.append(channel)

        def callback(msg) -> None:
            payload = convert(msg)
            if payload is not None:
                channel.log(payload, log_time=self.get_clock().now().nanoseconds)

        self.create_subscription(msg_type, topic, callback, qos)

    @staticmethod
    def action_to_json(msg: Float64MultiArray) -> dict | None:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (itf.ACTION_DIM,) or not np.isfinite(values).all():
            return None
        return {"values": values.tolist(), **dict(zip(itf.ACTION_LABELS, values.tolist(), strict=True))}

    @staticmethod
    def episode_to_json(msg: String) -> dict | None:
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError:
            return None
        return event if isinstance(event, dict) else None

    def image_callback(self, topic: str, channel, msg: Image) -> None:
        from foxglove.messages import RawImage, Timestamp

        now = self.get_clock().now().nanoseconds * 1e-9
        if now - self._last_image.get(topic, -np.inf) < 1.0 / self.config.max_image_hz:
            return
        bpp = IMAGE_ENCODINGS.get(msg.encoding)
        if bpp is None or msg.step < msg.width * bpp or len(msg.data) != msg.step * msg.height or msg.height == 0:
            self.get_logger().warning(f"{topic}: skipping a malformed image ({msg.encoding}, {msg.width}x"
                                      f"{msg.height}, step {msg.step}, {len(msg.data)} bytes)",
                                      throttle_duration_sec=5.0)
            return
        self._last_image[topic] = now
        channel.log(RawImage(timestamp=Timestamp(msg.header.stamp.sec, msg.header.stamp.nanosec),
                             frame_id=msg.header.frame_id, width=msg.width, height=msg.height,
                             encoding=msg.encoding, step=msg.step, data=bytes(msg.data)),
                    log_time=self.get_clock().now().nanoseconds)

    def pose_callback(self, channel, msg: PoseStamped) -> None:
        from foxglove.messages import Pose, PoseInFrame, Quaternion, Timestamp, Vector3

        p, q = msg.pose.position, msg.pose.orientation
        values = [p.x, p.y, p.z, q.x, q.y, q.z, q.w]
        if not np.isfinite(values).all():
            return
        channel.log(PoseInFrame(timestamp=Timestamp(msg.header.stamp.sec, msg.header.stamp.nanosec),
                                frame_id=msg.header.frame_id,
                                pose=Pose(position=Vector3(x=p.x, y=p.y, z=p.z),
                                          orientation=Quaternion(x=q.x, y=q.y, z=q.z, w=q.w))),
                    log_time=self.get_clock().now().nanoseconds)

    def close(self) -> None:
        for channel in self._channels:
            close = getattr(channel, "close", None)
            if callable(close):
                close()
        self.server.stop()


def main(args=None) -> int:
    try:
        return spin_node(FoxgloveBridgeNode, args)
    except ValueError as exc:
        print(f"foxglove_bridge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
