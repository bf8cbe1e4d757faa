"""packager_node: every episode on disk, durably; SFT jobs out through the spool; verified SFT weights back in.

Subscribes TRANSITION (codec Transition; frames included when the policy's `transition_images` is on),
EPISODE_EVENT (JSON) and HEAD_WEIGHTS (the RL head a stage-2 job starts from). Publishes FULL_WEIGHTS_READY
({"path", "version", "sha256"}, latched) once an SFT result has passed the signature, checksum and held-out
checks, and ITERATION_STATUS (JSON, latched, on change: the iteration state with SFT enabled, plus the recording
counters and `transition_publishers` / `event_publishers`, the publishers this node has discovered on its inputs).
Service SFT_TRIGGER (std_srvs/Trigger) requests a stage-2 job now.
Logic lives in irevla_ros/core/data/packager.py.
"""

from __future__ import annotations

import json

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String, UInt8MultiArray
from std_srvs.srv import Trigger

from irevla_ros import interfaces as itf
from irevla_ros.core.data.codec import PayloadError, Transition
from irevla_ros.core.data.packager import Packager, PackagerConfig
from irevla_ros.nodes._common import DATA_QOS, LATCHED_QOS, declare_config, spin_node

PARAMETERS = PackagerConfig


class _RosLog:
    """Routes the core's log calls to the node's logger (one place for rosout)."""

    def __init__(self, logger):
        self._l = logger

    def info(self, msg, *a):
        self._l.info(msg % a if a else msg)

    def warning(self, msg, *a):
        self._l.warning(msg % a if a else msg)

    def error(self, msg, *a):
        self._l.error(msg % a if a else msg)


class PackagerNode(Node):
    def __init__(self) -> None:
        super().__init__("packager_node")
        self.config = declare_config(self, PackagerConfig)
        self.weights_pub = self.create_publisher(String, itf.FULL_WEIGHTS_READY.name, LATCHED_QOS)
        self.status_pub = self.create_publisher(String, itf.ITERATION_STATUS.name, LATCHED_QOS)
        self._last_status = ""
        self.packager = Packager(self.config, announce=self._announce, publish_status=self._status,
                                 log=_RosLog(self.get_logger()))
        data_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(UInt8MultiArray, itf.TRANSITION.name, self.transition_callback, DATA_QOS,
                                 callback_group=data_group)
        self.create_subscription(String, itf.EPISODE_EVENT.name, self.episode_callback, DATA_QOS,
                                 callback_group=data_group)
        # Job building, uploads and result checks can take seconds: their own group, never blocking recording.
        slow_group = MutuallyExclusiveCallbackGroup()
        self.create_timer(self.config.poll_s, self.poll_callback, callback_group=slow_group)
        self.create_subscription(UInt8MultiArray, itf.HEAD_WEIGHTS.name, self.head_weights_callback, LATCHED_QOS,
                                 callback_group=data_group)
        self.create_service(Trigger, itf.SFT_TRIGGER.name, self.trigger_callback, callback_group=data_group)
        self.create_timer(0.2, self.packager.tick, callback_group=data_group)
        self.get_logger().info(f"recording {self.config.episode_source} episodes to {self.config.dataset_path}; "
                               f"SFT {'via ' + self.config.spool if self.config.sft_enabled else 'disabled'}")

    def transition_callback(self, msg: UInt8MultiArray) -> None:
        try:
            t = Transition.from_bytes(bytes(msg.data))
        except PayloadError as exc:
            self.packager.stats["rejected"] += 1
            self.get_logger().warning(f"rejected a transition: {exc}", throttle_duration_sec=1.0)
            return
        self.packager.on_transition(t)

    def head_weights_callback(self, msg: UInt8MultiArray) -> None:
        try:
            version = self.packager.on_head_weights(bytes(msg.data))
        except PayloadError as exc:
            self.get_logger().warning(f"rejected head weights: {exc}", throttle_duration_sec=1.0)
            return
        self.get_logger().debug(f"kept RL head v{version} for the next stage-2 job")

    def episode_callback(self, msg: String) -> None:
        try:
            event = json.loads(msg.data)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            self.packager.on_episode_event(event)
        except ValueError as exc:
            self.get_logger().warning(f"rejected an episode event {msg.data[:200]!r}: {exc}")

    def poll_callback(self) -> None:
        try:
            self.packager.poll()
        except Exception as exc:  # noqa: BLE001 - keep recording whatever the SFT side does; say why loudly
            self.get_logger().error(f"SFT poll failed: {type(exc).__name__}: {exc}")

    def trigger_callback(self, request, response):
        response.success, response.message = self.packager.trigger()
        return response

    def _announce(self, payload: dict) -> None:
        self.weights_pub.publish(String(data=json.dumps(payload, sort_keys=True)))
        self.get_logger().info(f"announced SFT weights version {payload['version']} at {payload['path']}")

    def _status(self, status: dict) -> None:
        # Publishers of our inputs as this node sees them: a client must wait for these, not only for its own side
        # of the match (a volatile reader that matches a writer late skips what was sent before).
        status = {**status, "transition_publishers": self.count_publishers(itf.TRANSITION.name),
                  "event_publishers": self.count_publishers(itf.EPISODE_EVENT.name)}
        text = json.dumps(status, sort_keys=True)
        if text != self._last_status:
            self._last_status = text
            self.status_pub.publish(String(data=text))

    def close(self) -> None:
        self.packager.close()


def main(args=None) -> int:
    return spin_node(PackagerNode, args, multithreaded=True)


if __name__ == "__main__":
    raise SystemExit(main())
