"""rl_node: the stage-1 learner. Trains the action head (and its critics / value net) on the policy's
transitions while the VLM stays frozen; publishes versioned head weights; checkpoints and resumes.

Subscribes /policy/transition (UInt8MultiArray codec payloads, DATA_QOS) and /sft/weights_ready (a new model
from stage 2: a new stage with fresh buffers and the new folder's head). Publishes /rl/head_weights
(head_weights payloads, LATCHED_QOS) and /rl/status (JSON, LATCHED_QOS). All learning logic lives in
irevla_ros.core.rl.OnlineLearner; this node only moves bytes and time.

Threads: the subscription only appends the raw payload to a queue (its own callback group), so a long update
never delays message intake; a timer in a second group drains the queue, trains within `max_tick_s`,
publishes and checkpoints. Only that timer (and shutdown, under the same lock) touches the learner.
"""

from __future__ import annotations

import array
import json
import threading
import time
from collections import deque

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from std_msgs.msg import String, UInt8MultiArray

from irevla_ros import interfaces as itf
from irevla_ros.core.rl import OnlineLearner, RLConfig
from irevla_ros.nodes._common import DATA_QOS, LATCHED_QOS, declare_config, spin_node

PARAMETERS = RLConfig


class RLNode(Node):
    def __init__(self) -> None:
        super().__init__("rl_node")
        self.config = declare_config(self, RLConfig)
        self.lock = threading.Lock()
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.learner = OnlineLearner(self.config, log=self.get_logger().info)
        self.weights_pub = self.create_publisher(UInt8MultiArray, itf.HEAD_WEIGHTS.name, LATCHED_QOS)
        self.status_pub = self.create_publisher(String, itf.RL_STATUS.name, LATCHED_QOS)
        intake, work = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        self.create_subscription(UInt8MultiArray, itf.TRANSITION.name, self.transition_callback, DATA_QOS,
                                 callback_group=intake)
        self.create_subscription(String, itf.FULL_WEIGHTS_READY.name, self.full_weights_callback, LATCHED_QOS,
                                 callback_group=intake)
        self.new_model: dict | None = None
        self.create_timer(self.config.tick_period_s, self.tick_callback, callback_group=work)
        # Own group: in `work` the 10 ms tick (always ready while updates are due) starved the status timer, so
        # /rl/status went silent exactly while the learner was busiest (seen as 0 updates in `irevla sim`).
        self.create_timer(1.0, self.status_callback, callback_group=MutuallyExclusiveCallbackGroup())
        self.closed = False
        if self.learner.version > 0:  # resumed: the policy gets the learner's latest head again
            self._publish(self.learner.current_weights_payload())
        self.status_callback()

    def transition_callback(self, msg: UInt8MultiArray) -> None:
        if len(self.queue) >= self.config.queue_limit:
            self.dropped += 1
            self.get_logger().warning("learner queue full: dropping transitions", throttle_duration_sec=5.0)
            return
        self.queue.append(bytes(msg.data))

    def full_weights_callback(self, msg: String) -> None:
        """Stage-2 SFT produced a new model: handled in the tick (a new stage: fresh buffers, head from it)."""
        try:
            info = json.loads(msg.data)
            ok = isinstance(info, dict) and all(isinstance(info.get(k), str) for k in ("path", "sha256"))
        except json.JSONDecodeError:
            ok = False
        if not ok:
            self.get_logger().error(f"FULL_WEIGHTS_READY needs JSON with string path and sha256, got {msg.data!r}")
            return
        self.new_model = info

    def _maybe_next_stage(self) -> None:
        info, self.new_model = self.new_model, None
        version = str(info.get("version", "")) or info["sha256"][:12]
        if version == self.learner.base_version:
            return  # the latched announcement of the model this run already started from
        try:
            self.learner = self.learner.next_stage(info["path"], version, info["sha256"])
        except ValueError as exc:
            self.get_logger().error(f"new model refused, learning goes on with the current one: {exc}")
            return
        self.get_logger().info(f"new stage: learning from model v{version}, features and buffers reset")

    def tick_callback(self) -> None:
        with self.lock:
            if self.closed:
                return
            if self.new_model is not None:
                self._maybe_next_stage()
            start = time.monotonic()
            rejected_before = sum(self.learner.rejected.values())
            while self.queue:
                self.learner.ingest(self.queue.popleft())
            if sum(self.learner.rejected.values()) > rejected_before:
                self.get_logger().warning(f"rejected transitions so far: {dict(self.learner.rejected)}",
                                          throttle_duration_sec=5.0)
            if self.dropped:
                self.learner.rejected["queue_full"] += self.dropped
                self.dropped = 0
            self.learner.train(max_seconds=max(0.0, self.config.max_tick_s - (time.monotonic() - start)))
            if self.learner.publish_due():
                self._publish(self.learner.weights_payload())
            if self.learner.maybe_checkpoint():
                self.get_logger().info(f"checkpoint {self.learner.checkpoint_name}", throttle_duration_sec=30.0)

    def _publish(self, payload: bytes) -> None:
        msg = UInt8MultiArray()
        msg.data = array.array("B", payload)
        self.weights_pub.publish(msg)

    def status_callback(self) -> None:
        with self.lock:
            summary = self.learner.summary()
            summary.update(resumed_from=self.learner.resumed_from, resumed=self.learner.resumed_state,
                           checkpoint=self.learner.checkpoint_name, queued=len(self.queue),
                           due=self.learner.updates_due(),
                           transition_publishers=self.count_publishers(itf.TRANSITION.name))
        self.status_pub.publish(String(data=json.dumps(summary)))

    def close(self) -> None:
        """Final checkpoint at shutdown (spin_node calls this)."""
        with self.lock:
            if not self.closed:
                self.closed = True
                while self.queue:
                    self.learner.ingest(self.queue.popleft())
                self.learner.close(checkpoint=True)


def main(args=None) -> int:
    return spin_node(RLNode, args, multithreaded=True)


if __name__ == "__main__":
    raise SystemExit(main())
