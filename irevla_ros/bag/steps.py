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
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from irevla_ros import interfaces as itf
from irevla_ros.bag.storage import BagError, BagReader
from irevla_ros.core.model.processor import InputError
from irevla_ros.core.policy.observation import Observation, ObservationBuffer, Stale, image_from_buffer
from irevla_ros.core.safety import InvalidAction, validate_action

SEGMENTS = ("auto", "events", "labels", "whole")
FLAG_WINDOW_S = 0.5
"""How long (bag time) a mux command waits for its intervention flag before it is taken as unflagged. The mux
publishes both back to back, but the recorder stamps each on receipt, and a busy recorder can take a while between
the two (image writes in between); pairing is by order, so a long window costs nothing when flags arrive."""
TRAILING_S = 0.25
"""Commands received this soon after an episode's end event are its trailing ones, never the next episode's."""
EARLY_FLAG_S = 0.05
"""A flag received before any command waits for it (a recorder that takes the flag topic's message first) this
long at most; older ones belong to commands the bag does not hold (e.g. recorded before the action topic)."""

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
    max_start_delay_s: float = 5.0
    """Events mode: commands recorded at most this long before an episode's start event belong to that episode (a
    recorder may match the event topic seconds late: it subscribes once it has discovered the publisher, which
    re-sends its latest events to late subscribers). Older commands outside an episode, and those received within
    TRAILING_S after an end (the mux forwards the policy's last command after its end event went out), are skipped
    and counted."""

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if not self.cameras:
            raise ValueError("at least one camera is needed")
        if self.segment not in SEGMENTS:
            raise ValueError(f"segment must be one of {SEGMENTS}, got {self.segment!r}")
        for name in ("max_image_age_s", "max_state_age_s", "max_start_delay_s"):
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


class _Slot:
    """One action message in bag order: its step (None when the action was skipped) and, while `waiting`, the
    intervention flag it still expects (each mux command is followed by exactly one flag)."""

    __slots__ = ("t", "step", "waiting")

    def __init__(self, t: float, step: Step | None, waiting: bool):
        self.t, self.step, self.waiting = t, step, waiting


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

    # cmd_mux publishes each command and right after it the Bool saying whose it was. Commands on the mux output
    # are paired with flags by ORDER (the k-th flag belongs to the k-th command; receipt stamps of two topics can
    # be far apart and even swapped on a busy recorder): a command waits in `out` until its flag arrives or
    # FLAG_WINDOW_S passes; episode events queue behind it, so nothing is emitted out of order.
    wait_for_flag = spec.action_topic == itf.ACTION.name and itf.INTERVENTION.name in reader.topics
    out: deque[_Slot | EpisodeStart | EpisodeEnd] = deque()
    awaiting: deque[_Slot] = deque()  # slots still expecting their flag, oldest first
    early_flags: deque[tuple[float, bool]] = deque()  # flags received before their command
    orphans: list[_Slot] = []  # events mode: actions while no episode is open (a start may still adopt them)
    last_end_t = -np.inf

    def start(t: float, episode_id: str = "") -> EpisodeStart:
        nonlocal open_id, counter
        open_id = episode_id or f"{bag_name}-{counter:04d}"
        counter += 1
        return EpisodeStart(open_id, t)

    def drop_orphans(older_than: float | None = None) -> None:
        keep = [o for o in orphans if older_than is not None and o.t >= older_than]
        for o in orphans:
            if o not in keep and o.step is not None:
                stats.skipped["action outside an episode"] += 1
                stats.steps -= 1
                o.step = None
        orphans[:] = keep

    def expire(now: float) -> None:
        while awaiting and now - awaiting[0].t > FLAG_WINDOW_S:
            slot = awaiting.popleft()
            slot.waiting = False
            if slot.step is not None:
                stats.skipped["intervention flag missing (step kept, flagged False)"] += 1
        while early_flags and now - early_flags[0][0] > EARLY_FLAG_S:
            early_flags.popleft()

    def ready() -> Iterator[EpisodeStart | Step | EpisodeEnd]:
        while out and not (isinstance(out[0], _Slot) and out[0].waiting):
            item = out.popleft()
            if isinstance(item, _Slot):
                if item.step is not None:
                    yield item.step
            else:
                yield item

    for msg in reader.messages(topics):
        t = msg.log_time_ns * 1e-9
        try:
            ros = decode(msg.data, msg.msgtype)
        except BagError as exc:
            stats.skipped[f"undecodable {msg.topic}: {str(exc)[:60]}"] += 1
            continue
        expire(t)
        yield from ready()
        if msg.topic == itf.INTERVENTION.name:
            if wait_for_flag:
                if awaiting:
                    slot = awaiting.popleft()
                    slot.waiting = False
                    if slot.step is not None:
                        slot.step.intervention = bool(ros.data)
                    yield from ready()
                else:
                    early_flags.append((t, bool(ros.data)))
            continue
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
                    out.append(EpisodeEnd(False, "unlabelled", t))
                drop_orphans(older_than=t - spec.max_start_delay_s)
                out.append(start(orphans[0].t if orphans else t, str(event.get("episode_id", ""))))
                out.extend(orphans)  # the episode's first commands, received before its start event
                orphans.clear()
            elif kind == "end" and open_id is not None:
                label = str(event.get("label") or ("success" if event.get("success") else "failure"))
                out.append(EpisodeEnd(bool(event.get("success")) and label == "success", label, t))
                open_id = None
                last_end_t = t
            elif kind == "end":
                drop_orphans()
                last_end_t = t
        elif msg.topic == itf.HUMAN_LABEL.name and mode == "labels":
            if open_id is not None and ros.data in ("success", "failure", "discard", "reset"):
                out.append(EpisodeEnd(ros.data == "success", ros.data, t))
                open_id = None
        elif msg.topic == spec.action_topic:
            step = None
            try:
                action = validate_action(np.asarray(ros.data, dtype=np.float64))
            except InvalidAction as exc:
                stats.skipped[f"invalid action: {str(exc)[:60]}"] += 1
                action = None
            if action is not None:
                if open_id is None and mode != "events":
                    out.append(start(t))
                obs = buffer.assemble(t)
                if isinstance(obs, Stale):
                    stats.skipped[f"stale: {obs.reason.split(' is ')[0]}"] += 1
                else:
                    stats.steps += 1
                    step = Step(t, obs, action.astype(np.float32), spec.action_topic == itf.TELEOP_ACTION.name)
            slot = _Slot(t, step, waiting=wait_for_flag)
            if wait_for_flag and early_flags:  # its flag came first
                slot.waiting = False
                if step is not None:
                    step.intervention = early_flags.popleft()[1]
                else:
                    early_flags.popleft()
            elif wait_for_flag:
                awaiting.append(slot)
            if open_id is None and mode == "events":
                if step is not None and t - last_end_t <= TRAILING_S:
                    stats.skipped["action outside an episode"] += 1
                    stats.steps -= 1
                    slot.step = None
                elif step is not None:
                    orphans.append(slot)
            else:
                out.append(slot)
        yield from ready()
    expire(float("inf"))
    drop_orphans()
    yield from ready()
    if open_id is not None:
        end_t = reader.end_ns * 1e-9
        yield EpisodeEnd(assume_success, "whole-bag", end_t) if mode == "whole" else EpisodeEnd(False, "unlabelled",
                                                                                                   end_t)
