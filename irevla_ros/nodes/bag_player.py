"""bag_player: republishes a bag with its original timing (scaled by `rate`) and publishes /clock.

Messages go out as the recorded CDR bytes (no re-encoding); with `validate` each is decoded first and a corrupt
one is skipped and counted instead of being put on the wire. Timing: message i is published at
wall_start + (t_i - t_0) / rate on a monotonic clock, from a dedicated thread so DDS callbacks never delay it;
/clock carries bag time at `clock_hz` and right before every message (nodes running with use_sim_time follow).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import rclpy
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock

from irevla_ros import interfaces as itf
from irevla_ros.bag.config import PlayerConfig
from irevla_ros.bag.rosio import message_class
from irevla_ros.bag.storage import BagError, BagReader, match_topics
from irevla_ros.nodes._common import declare_config, spin_node

PARAMETERS = PlayerConfig


def _stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class BagPlayerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bag_player", **kwargs)
        self.config = cfg = declare_config(self, PlayerConfig)
        if not cfg.bag:
            raise BagError("bag_player needs the `bag` parameter (a rosbag2 folder or an .mcap file)")
        self.reader = BagReader(cfg.bag, recover=cfg.recover)
        for problem in self.reader.problems:
            self.get_logger().warning(problem)
        self.publishers_by_topic: dict[str, tuple[object, type]] = {}
        for topic, info in sorted(self.reader.topics.items()):
            if not match_topics(topic, cfg.topics) or (topic == itf.CLOCK.name and cfg.clock_hz > 0):
                continue
            try:
                cls = message_class(info.msgtype)
            except BagError as exc:
                self.get_logger().warning(f"not playing {topic}: {exc}")
                continue
            qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if info.durability == "transient_local"
                             else DurabilityPolicy.VOLATILE)
            self.publishers_by_topic[topic] = (self.create_publisher(cls, cfg.topic_prefix + topic, qos), cls)
        if not self.publishers_by_topic:
            raise BagError(f"nothing to play: no topic of {sorted(self.reader.topics)} matches {list(cfg.topics)}")
        self.clock_pub = self.create_publisher(Clock, itf.CLOCK.name, 10) if cfg.clock_hz > 0 else None
        self.played: Counter = Counter()
        self.corrupt: Counter = Counter()
        self.finished = threading.Event()
        self.error = ""
        self._stop = threading.Event()
        self.get_logger().info(f"playing {self.reader.path} ({self.reader.message_count} messages, "
                               f"{self.reader.duration_s:.1f} s) at rate {cfg.rate}: "
                               f"{sorted(self.publishers_by_topic)}")
        self._thread = threading.Thread(target=self._run, name="bag_player", daemon=True)
        self._thread.start()

    def _publish_clock(self, bag_ns: int) -> None:
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=_stamp(bag_ns)))

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.config.wait_for_subscribers_s
        while time.monotonic() < deadline and not self._stop.is_set():
            missing = [t for t, (pub, _) in self.publishers_by_topic.items() if pub.get_subscription_count() == 0]
            if not missing:
                return
            time.sleep(0.05)
        if self.config.wait_for_subscribers_s > 0:
            self.get_logger().warning("starting although some topics have no subscriber yet")

    def _play_once(self) -> None:
        cfg = self.config
        bag_t0 = self.reader.start_ns + int(cfg.start_offset_s * 1e9)
        clock_period = 1.0 / cfg.clock_hz if cfg.clock_hz > 0 else 0.05
        wall_t0 = time.monotonic()
        next_clock = wall_t0
        for msg in self.reader.messages(self.publishers_by_topic):
            if msg.log_time_ns < bag_t0:
                continue
            target = wall_t0 + (msg.log_time_ns - bag_t0) * 1e-9 / cfg.rate
            while True:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                if now >= target:
                    break
                if self.clock_pub is not None and now >= next_clock:
                    self._publish_clock(bag_t0 + int((now - wall_t0) * cfg.rate * 1e9))
                    next_clock = now + clock_period
                time.sleep(min(target - now, max(0.0, next_clock - now) or clock_period))
            pub, cls = self.publishers_by_topic[msg.topic]
            if cfg.validate:
                try:
                    deserialize_message(msg.data, cls)
                except Exception as exc:  # noqa: BLE001 - any decoding failure: skip, count, say so
                    self.corrupt[msg.topic] += 1
                    self.get_logger().error(f"skipping a corrupt {msg.topic} message at "
                                            f"{msg.log_time_ns * 1e-9:.3f} s: {exc}", throttle_duration_sec=1.0)
                    continue
            self._publish_clock(msg.log_time_ns)
            pub.publish(msg.data)
            self.played[msg.topic] += 1

    def _warm_up(self) -> None:
        """Load every type's support code before the clock starts (the first decode of a type takes tens of ms,
        which would otherwise delay the first messages)."""
        from rclpy.serialization import serialize_message

        for _, cls in self.publishers_by_topic.values():
            deserialize_message(serialize_message(cls()), cls)

    def _run(self) -> None:
        try:
            self._warm_up()
            self._wait_for_subscribers()
            while not self._stop.is_set():
                self._play_once()
                if not self.config.loop:
                    break
            for pub, _ in self.publishers_by_topic.values():
                pub.wait_for_all_acked(Duration(seconds=2.0))
            self.get_logger().info(f"done: played {sum(self.played.values())} messages"
                                   + (f", skipped corrupt {dict(self.corrupt)}" if self.corrupt else ""))
        except BagError as exc:
            self.error = str(exc)
            self.get_logger().error(self.error)
        finally:
            self.finished.set()
            if self.config.exit_when_done and not self._stop.is_set():
                rclpy.try_shutdown(context=self.context)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


def main(args=None) -> int:
    made: list[BagPlayerNode] = []
    try:
        code = spin_node(lambda: made.append(BagPlayerNode()) or made[-1], args)
    except (BagError, ValueError) as exc:
        print(f"bag_player: {exc}", file=sys.stderr)
        return 2
    return 1 if made and made[0].error else code


if __name__ == "__main__":
    raise SystemExit(main())
