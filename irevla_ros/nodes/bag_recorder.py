"""bag_recorder: records topics into a rosbag2-compatible MCAP bag (irevla_ros.bag.storage.BagWriter).

Subscribes raw (the CDR bytes DDS delivered, nothing re-encoded), with each topic's QoS adapted to what its
publishers offer (a reliable subscription would not match a best-effort camera; latched topics are received
as latched). Topics are discovered every `discovery_period_s`, so nodes started later are recorded too.
Stamps are the node clock's receive time (sim time under use_sim_time), like `ros2 bag record`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from irevla_ros.bag.config import RecorderConfig
from irevla_ros.bag.rosio import message_class
from irevla_ros.bag.storage import BagError, BagWriter, match_topics
from irevla_ros.nodes._common import declare_config, spin_node

PARAMETERS = RecorderConfig


def default_output(output_dir: str) -> str:
    return str(Path(output_dir) / time.strftime("irevla_%Y%m%dT%H%M%SZ", time.gmtime()))


class BagRecorderNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bag_recorder", **kwargs)
        self.config = declare_config(self, RecorderConfig)
        output = self.config.output or default_output(self.config.output_dir)
        self.writer = BagWriter(output, split_duration_s=self.config.split_duration_s,
                                split_size_mb=self.config.split_size_mb, compression=self.config.compression)
        self.subscriptions_by_topic: dict[str, object] = {}
        self._refused: set[str] = set()
        self.get_logger().info(f"recording into {self.writer.path} (topics {list(self.config.topics)})")
        self.discover_callback()
        self.create_timer(self.config.discovery_period_s, self.discover_callback)
        self.create_timer(1.0, self.writer.flush)  # a crash loses at most the last second

    def _wanted(self, topic: str) -> bool:
        return match_topics(topic, self.config.topics) and not match_topics(topic, self.config.exclude)

    def _qos_for(self, topic: str) -> tuple[QoSProfile, str] | None:
        infos = self.get_publishers_info_by_topic(topic)
        if not infos:
            return None
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        return qos, "transient_local" if latched else "volatile"

    def discover_callback(self) -> None:
        for topic, types in self.get_topic_names_and_types():
            if topic in self.subscriptions_by_topic or topic in self._refused or not self._wanted(topic):
                continue
            if len(types) != 1:
                self.get_logger().warning(f"not recording {topic}: it has several types {types}")
                self._refused.add(topic)
                continue
            qos = self._qos_for(topic)
            if qos is None:  # only subscribers so far: wait for a publisher to know its QoS
                continue
            try:
                cls = message_class(types[0])
                self.writer.add_topic(topic, types[0], qos[1])
            except BagError as exc:
                self.get_logger().warning(f"not recording {topic}: {exc}")
                self._refused.add(topic)
                continue
            self.subscriptions_by_topic[topic] = self.create_subscription(
                cls, topic, lambda data, topic=topic: self.message_callback(topic, data), qos[0], raw=True)
            self.get_logger().info(f"recording {topic} [{types[0]}]")

    def message_callback(self, topic: str, data: bytes) -> None:
        self.writer.write(topic, self.get_clock().now().nanoseconds, data)

    def close(self) -> None:
        self.writer.close()
        # stderr, not the ROS logger: on SIGTERM the context is already shut down when this runs.
        print(f"bag_recorder: closed {self.writer.path}: {self.writer.message_count} messages in "
              f"{len(self.writer.files)} file(s)", file=sys.stderr)


def main(args=None) -> int:
    try:
        return spin_node(BagRecorderNode, args)
    except (BagError, ValueError) as exc:
        print(f"bag_recorder: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
