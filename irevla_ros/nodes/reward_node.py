"""reward_node: camera images -> success probability and a debounced binary reward.

Subscribes /cameras/<cam>/color/image_raw (rgb8) for every configured camera, or /sim/success (Bool) when
``source: ground_truth``; /reward/human_label (String) overrides; /policy/episode "start" events reset the
debouncer. Publishes /reward/success_prob and /reward/reward (Float32) once per classified frame (or ground-truth
message) and at once on a human label, and /reward/success_marker (visualization_msgs/Marker, for rviz) with each:
a sphere at the TCP (/franka/ee_pose) and a text, coloured by the success probability. Service ~/reload (Trigger)
re-reads the classifier file now; it is also re-read when the file changes. A bad file is refused and the previous
classifier keeps running.

Inference runs in the image callbacks' own callback group (MultiThreadedExecutor), so labels, reloads and the
reload service are served while a frame is being classified.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float32, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from irevla_ros import interfaces as itf
from irevla_ros.core.reward.io import ClassifierFileError, ClassifierWatcher
from irevla_ros.core.reward.model import RewardClassifier
from irevla_ros.core.reward.runtime import (
    MARKER_FALLBACK_XYZ,
    MARKER_TEXT_LIFT,
    FrameError,
    RewardGate,
    RewardNodeConfig,
    decode_rgb8,
    marker_style,
)
from irevla_ros.nodes._common import DATA_QOS, IMAGE_QOS, SENSOR_QOS, STATE_QOS, declare_config, spin_node

PARAMETERS = RewardNodeConfig
REJECT_LOG_PERIOD_S = 5.0


class RewardNode(Node):
    def __init__(self) -> None:
        super().__init__("reward_node")
        self.config = declare_config(self, RewardNodeConfig)
        self.gate = RewardGate(self.config.consecutive_frames)
        self._lock = threading.Lock()
        self._last_prob = 0.0
        self._latest: dict[str, tuple[float, np.ndarray]] = {}
        self._reject_logged: dict[str, float] = {}
        self.rejected: dict[str, int] = {}
        self.prob_pub = self.create_publisher(Float32, itf.SUCCESS_PROB.name, STATE_QOS)
        self.reward_pub = self.create_publisher(Float32, itf.REWARD.name, STATE_QOS)
        self._ee_pose: PoseStamped | None = None
        self.marker_pub = None
        if self.config.publish_marker:
            self.marker_pub = self.create_publisher(Marker, itf.SUCCESS_MARKER.name, STATE_QOS)
            self.create_subscription(PoseStamped, itf.EE_POSE.name, self.ee_pose_callback, STATE_QOS)
        self.create_subscription(String, itf.HUMAN_LABEL.name, self.human_label_callback, STATE_QOS)
        self.create_subscription(String, itf.EPISODE_EVENT.name, self.episode_callback, DATA_QOS)
        self.watcher: ClassifierWatcher | None = None
        if self.config.source == "ground_truth":
            self.create_subscription(Bool, itf.SIM_SUCCESS.name, self.ground_truth_callback, STATE_QOS)
            self.get_logger().info(f"reward from ground truth {itf.SIM_SUCCESS.name}, "
                                   f"{self.config.consecutive_frames} consecutive frame(s)")
            return
        torch.set_num_threads(self.config.num_threads)
        self.watcher = ClassifierWatcher(self.config.classifier_path, check=self._check_classifier)
        self._log_reload(self.watcher.reload())
        self.create_timer(self.config.reload_period_s, self.reload_timer_callback)
        self.create_service(Trigger, "~/reload", self.reload_callback)
        qos = SENSOR_QOS if self.config.image_qos == "sensor" else IMAGE_QOS
        images = MutuallyExclusiveCallbackGroup()
        for cam in self.config.cameras:
            self.create_subscription(Image, itf.camera_image(cam).name,
                                     lambda msg, cam=cam: self.image_callback(cam, msg), qos, callback_group=images)
        self.get_logger().info(f"reward from classifier on cameras {list(self.config.cameras)}, "
                               f"{self.config.consecutive_frames} consecutive frame(s)")

    # -- classifier file ---------------------------------------------------------------------------------------
    def _check_classifier(self, classifier: RewardClassifier) -> None:
        missing = [c for c in classifier.spec.cameras if c not in self.config.cameras]
        if missing:
            raise ClassifierFileError(f"classifier needs cameras {missing} that this node does not subscribe "
                                      f"(cameras: {list(self.config.cameras)})")

    def _log_reload(self, event) -> None:
        if event is None:
            return
        if event.loaded:  # two call sites: rclpy refuses a severity change at one
            self.get_logger().info(event.message)
        else:
            self.get_logger().error(event.message)

    def reload_timer_callback(self) -> None:
        self._log_reload(self.watcher.poll())

    def reload_callback(self, request, response):
        event = self.watcher.reload()
        self._log_reload(event)
        response.success, response.message = event.loaded, event.message
        return response

    # -- inputs ----------------------------------------------------------------------------------------------
    def _reject(self, cam: str, reason: str) -> None:
        kind = reason.split(" ")[0]
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._reject_logged.get(kind, -np.inf) >= REJECT_LOG_PERIOD_S:
            self._reject_logged[kind] = now
            self.get_logger().warning(f"rejected image from camera {cam!r}: {reason} "
                                      f"({self.rejected[kind]} so far)")

    def image_callback(self, cam: str, msg: Image) -> None:
        classifier = self.watcher.classifier if self.watcher is not None else None
        if classifier is None:
            return
        try:
            frame = decode_rgb8(msg.encoding, msg.height, msg.width, msg.step, msg.data, classifier.spec.frame_size)
        except FrameError as exc:
            self._reject(cam, str(exc))
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self._latest[cam] = (stamp, frame)
        cams = classifier.spec.cameras
        if cam != cams[0]:
            return  # the first camera of the classifier paces inference; others just keep their newest frame
        frames = []
        for c in cams:
            if c not in self._latest:
                return
            t, f = self._latest[c]
            if abs(t - stamp) > self.config.max_camera_skew_s:
                self._reject(c, f"skew of {abs(t - stamp):.3f} s to camera {cams[0]!r} exceeds "
                                f"max_camera_skew_s={self.config.max_camera_skew_s}")
                return
            if f.shape != frame.shape:
                self._reject(c, f"size {f.shape[1]}x{f.shape[0]} differs from camera {cams[0]!r}")
                return
            frames.append(f)
        prob = float(classifier.predict_proba(np.stack(frames))[0])
        threshold = self.config.threshold or classifier.spec.threshold
        self._decide(prob, threshold, "classifier")

    def ground_truth_callback(self, msg: Bool) -> None:
        self._decide(1.0 if msg.data else 0.0, 0.5, "ground_truth")

    def _decide(self, prob: float, threshold: float, source: str) -> None:
        with self._lock:
            decision = self.gate.update(prob, threshold, source)
            self._last_prob = decision.prob
            self._publish(decision.prob, decision.reward, decision.source)

    def _publish(self, prob: float, reward: float, source: str) -> None:
        self.prob_pub.publish(Float32(data=float(prob)))
        self.reward_pub.publish(Float32(data=float(reward)))
        if self.marker_pub is not None:
            self._publish_marker(prob, reward, source)

    # -- rviz marker -----------------------------------------------------------------------------------------
    def ee_pose_callback(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        if np.isfinite([p.x, p.y, p.z]).all():  # a bad pose must not throw the marker to infinity
            self._ee_pose = msg

    def _publish_marker(self, prob: float, reward: float, source: str) -> None:
        style = marker_style(prob, reward, source)
        pose = self._ee_pose
        frame = pose.header.frame_id if pose is not None and pose.header.frame_id else itf.BASE_FRAME
        xyz = ((pose.pose.position.x, pose.pose.position.y, pose.pose.position.z) if pose is not None
               else MARKER_FALLBACK_XYZ)
        stamp = self.get_clock().now().to_msg()
        lifetime = Duration(seconds=self.config.marker_lifetime_s).to_msg()
        # One topic, two markers (ns "reward", ids 0 and 1): rviz keeps both and replaces each on update.
        for mid, kind, dz, size in ((0, Marker.SPHERE, 0.0, 0.04), (1, Marker.TEXT_VIEW_FACING, MARKER_TEXT_LIFT,
                                                                     0.04)):
            m = Marker()
            m.header.frame_id = frame
            m.header.stamp = stamp
            m.ns, m.id, m.type, m.action = "reward", mid, kind, Marker.ADD
            m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(xyz[0]), float(xyz[1]),
                                                                       float(xyz[2]) + dz)
            m.pose.orientation.w = 1.0
            m.scale.x = m.scale.y = m.scale.z = size  # TEXT uses scale.z as the letter height
            m.color.r, m.color.g, m.color.b, m.color.a = style.rgba
            if kind == Marker.TEXT_VIEW_FACING:
                m.text = style.text
            m.lifetime = lifetime
            self.marker_pub.publish(m)

    def human_label_callback(self, msg: String) -> None:
        try:
            with self._lock:
                self.gate.on_human(msg.data)
                if self.gate.human is not None:
                    self._publish(self._last_prob, 1.0 if self.gate.human == "success" else 0.0, "human")
        except ValueError as exc:
            self.get_logger().warning(f"ignored human label: {exc}")
            return
        self.get_logger().info(f"human label {msg.data.strip().lower()!r}")

    def episode_callback(self, msg: String) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            self.get_logger().warning(f"ignored malformed episode event {msg.data[:80]!r}")
            return
        if isinstance(event, dict) and event.get("event") == "start":
            with self._lock:
                self.gate.reset()


def main(args=None) -> int:
    return spin_node(RewardNode, args, multithreaded=True)


if __name__ == "__main__":
    raise SystemExit(main())
