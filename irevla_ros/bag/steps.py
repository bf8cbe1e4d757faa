"""Bag -> (observation, action) steps and episode boundaries, the way the policy would have seen them (ROS-free).

Each message on the action topic becomes a step whose observation is assembled by the policy's own
`ObservationBuffer` from the newest camera frames, EE pose, gripper width and instruction received before it
(same staleness rules: a step without fresh inputs is skipped and counted, never invented). Times are the bag's
receive stamps, one clock for every topic.

Episodes come from, in order of preference (`segment="auto"`): the episode events (/policy/episode: the policy
node's during RL, the teleop node's when recording demos), else the human labels (/reward/human_label: a label
ends the episode since the previous one), else the whole bag is one episode.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from irevla_ros import interfaces as itf
from irevla_ros.bag.storage import BagError, BagReader
from irevla_ros.core.model.processor import InputError
from irevla_ros.core.policy.observation import Observation, ObservationBuffer, Stale, image_from_buffer
from irevla_ros.core.safety import InvalidAction, validate_action

SEGMENTS = ("auto", "events", "labels", "whole")
FLAG_WINDOW_S = 0.05
"""How long after a mux command its intervention flag may arrive (the mux publishes both back to back)."""


@dataclass
class StepSpec:
    cameras: tuple[str, ...] = itf.CAMERA_NAMES
    action_topic: str = itf.ACTION.name
    """/franka/action = what the robot executed (policy or human); /teleop/action = the human's commands only."""
    instruction: str = ""
    """Overrides the instruction recorded in the bag (required when the bag has none)."""
    max_image_age_s: float = 0.5
    max_state_age_s: float = 0.5
    segment: str = "auto"

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        if self.segment not in SEGMENTS:
            raise ValueError(f"segment must be one of {SEGMENTS}, got {self.segment!r}")
        for name in ("max_image_age_s", "max_state_age_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass
class EpisodeStart:
    episode_id: str
    t: float


@dataclass
class Step:
    t: float
    observation: Observation
    action: np.ndarray
    intervention: bool


@dataclass
class EpisodeEnd:
    success: bool
    label: str
    """success | failure | discard | reset | unlabelled | whole-bag"""
    t: float


@dataclass
class StepStats:
    steps: int = 0
    skipped: Counter = field(default_factory=Counter)
    segment: str = ""


def _segment_mode(reader: BagReader, spec: StepSpec) -> str:
    if spec.segment != "auto":
        return spec.segment
    if reader.topics.get(itf.EPISODE_EVENT.name) and reader.topics[itf.EPISODE_EVENT.name].count:
        return "events"
    if reader.topics.get(itf.HUMAN_LABEL.name) and reader.topics[itf.HUMAN_LABEL.name].count:
        return "labels"
    return "whole"


def iter_steps(reader: BagReader, spec: StepSpec, stats: StepStats | None = None,
               assume_success: bool = False) -> Iterator[EpisodeStart | Step | EpisodeEnd]:
    """Yield EpisodeStart, Step..., EpisodeEnd in bag order. Raises BagError if the bag cannot give steps."""
    stats = stats if stats is not None else StepStats()
    if spec.action_topic not in reader.topics:
        raise BagError(f"{reader.path} has no action topic {spec.action_topic}; topics: {sorted(reader.topics)}")
    missing = [c for c in spec.cameras if itf.camera_image(c).name not in reader.topics]
    if missing:
        raise BagError(f"{reader.path} has no images for camera(s) {missing} (recorded: "
                       f"{sorted(t for t in reader.topics if t.startswith('/cameras/'))})")
    recorded = reader.topics.get(itf.INSTRUCTION.name)
    if not spec.instruction and (recorded is None or recorded.count == 0):
        raise BagError(f"{reader.path} records no instruction ({itf.INSTRUCTION.name}); pass one explicitly")
    mode = stats.segment = _segment_mode(reader, spec)
    buffer = ObservationBuffer(spec.cameras, max_image_age_s=spec.max_image_age_s,
                               max_state_age_s=spec.max_state_age_s, instruction=spec.instruction)
    camera_of = {itf.camera_image(c).name: c for c in spec.cameras}
    topics = [*camera_of, itf.EE_POSE.name, itf.GRIPPER.name, itf.INSTRUCTION.name, spec.action_topic,
              itf.INTERVENTION.name, itf.EPISODE_EVENT.name, itf.HUMAN_LABEL.name]
    decode = reader.registry.deserialize
    open_id: str | None = None
    counter = 0
    bag_name = reader.path.name.replace(".mcap", "")

    def start(t: float, episode_id: str = "") -> EpisodeStart:
        nonlocal open_id, counter
        open_id = episode_id or f"{bag_name}-{counter:04d}"
        counter += 1
        return EpisodeStart(open_id, t)

    # cmd_mux publishes each command and right after it the Bool saying whose it was: a step on the mux output
    # waits (at most FLAG_WINDOW_S) for its flag.
    wait_for_flag = spec.action_topic == itf.ACTION.name and itf.INTERVENTION.name in reader.topics
    pending: Step | None = None
    for msg in reader.messages(topics):
        t = msg.log_time_ns * 1e-9
        try:
            ros = decode(msg.data, msg.msgtype)
        except BagError as exc:
            stats.skipped[f"undecodable {msg.topic}: {str(exc)[:60]}"] += 1
            continue
        if pending is not None:
            if msg.topic == itf.INTERVENTION.name:
                pending.intervention = bool(ros.data)
                yield pending
                pending = None
                continue
            if t - pending.t > FLAG_WINDOW_S or msg.topic in (spec.action_topic, itf.EPISODE_EVENT.name,
                                                                itf.HUMAN_LABEL.name):
                yield pending
                pending = None
        try:
            if msg.topic in camera_of:
                img = image_from_buffer(ros.encoding, ros.height, ros.width, ros.step, ros.data.tobytes()
                                        if hasattr(ros.data, "tobytes") else bytes(ros.data))
                buffer.update_image(camera_of[msg.topic], img, t)
            elif msg.topic == itf.EE_POSE.name:
                p, q = ros.pose.position, ros.pose.orientation
                buffer.update_pose([p.x, p.y, p.z], [q.x, q.y, q.z, q.w], t)
            elif msg.topic == itf.GRIPPER.name:
                if len(ros.position):
                    buffer.update_gripper(float(ros.position[0]), t)
            elif msg.topic == itf.INSTRUCTION.name:
                if not spec.instruction and ros.data.strip():
                    buffer.set_instruction(ros.data)
        except InputError as exc:
            stats.skipped[f"bad {msg.topic}: {str(exc)[:60]}"] += 1
            continue
        if msg.topic == itf.EPISODE_EVENT.name and mode == "events":
            try:
                event = json.loads(ros.data)
                kind = event["event"]
            except (json.JSONDecodeError, KeyError, TypeError):
                stats.skipped["malformed episode event"] += 1
                continue
            if kind == "start":
                if open_id is not None:
                    yield EpisodeEnd(False, "unlabelled", t)
                yield start(t, str(event.get("episode_id", "")))
            elif kind == "end" and open_id is not None:
                label = str(event.get("label") or ("success" if event.get("success") else "failure"))
                yield EpisodeEnd(bool(event.get("success")) and label == "success", label, t)
                open_id = None
        elif msg.topic == itf.HUMAN_LABEL.name and mode == "labels":
            if open_id is not None and ros.data in ("success", "failure", "discard", "reset"):
                yield EpisodeEnd(ros.data == "success", ros.data, t)
                open_id = None
        elif msg.topic == spec.action_topic:
            try:
                action = validate_action(np.asarray(ros.data, dtype=np.float64))
            except InvalidAction as exc:
                stats.skipped[f"invalid action: {str(exc)[:60]}"] += 1
                continue
            if open_id is None:
                if mode == "events":
                    stats.skipped["action outside an episode"] += 1
                    continue
                yield start(t)
            obs = buffer.assemble(t)
            if isinstance(obs, Stale):
                stats.skipped[f"stale: {obs.reason.split(' is ')[0]}"] += 1
                continue
            stats.steps += 1
            step = Step(t, obs, action.astype(np.float32), spec.action_topic == itf.TELEOP_ACTION.name)
            if wait_for_flag:
                pending = step
            else:
                yield step
    if pending is not None:
        yield pending
    if open_id is not None:
        end_t = reader.end_ns * 1e-9
        yield EpisodeEnd(assume_success, "whole-bag", end_t) if mode == "whole" else EpisodeEnd(False, "unlabelled",
                                                                                                   end_t)
