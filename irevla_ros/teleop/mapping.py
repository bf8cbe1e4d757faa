"""Device samples -> the policy's 7-D command, human labels and demo-episode bookkeeping (ROS-free).

Every device (SpaceMouse, terminal keyboard, the scripted stand-in used by tests) produces `DeviceSample`s:
six motion axes in [-1, 1] plus the button *events* that happened since the last poll. `TeleopMapper` applies
deadband and scale, keeps the gripper toggle state and decides when the human is actually commanding; the node
publishes whatever it returns. Keeping this here (not in the node) makes it testable without DDS.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from irevla_ros.interfaces import ACTION_DIM

# Logical buttons a device can report (the label buttons are published on interfaces.HUMAN_LABEL).
GRIPPER = "gripper"
LABELS = ("success", "failure", "discard", "reset")
BUTTONS = (GRIPPER, *LABELS)
AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw")


@dataclass
class DeviceSample:
    """One poll of a device: motion axes (x, y, z, roll, pitch, yaw) in [-1, 1] and button presses."""

    axes: np.ndarray = field(default_factory=lambda: np.zeros(6))
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.axes = np.asarray(self.axes, dtype=np.float64).reshape(-1)
        if self.axes.shape != (6,):
            raise ValueError(f"a device sample has 6 axes {AXIS_NAMES}, got shape {self.axes.shape}")
        unknown = [e for e in self.events if e not in BUTTONS]
        if unknown:
            raise ValueError(f"unknown button event(s) {unknown}; known: {list(BUTTONS)}")


@dataclass
class TeleopConfig:
    """How device motion becomes a command. Also the teleop node's ROS parameters (config/teleop_node.yaml)."""

    device: str = "keyboard"
    """keyboard (terminal, no X server) | spacemouse (pyspacemouse/hidapi) | scripted (the test stand-in)."""
    rate_hz: float = 20.0
    """How often the device is polled and a command published while the human moves (the policy rate)."""
    deadband: float = 0.1
    """Axis magnitudes below this are zero (SpaceMouse rest noise); above it they are rescaled from 0."""
    translation_scale: float = 0.5
    """Multiplies the x/y/z axes; 1.0 = full step (`max_translation_per_tick` in franka_node)."""
    rotation_scale: float = 0.5
    """Multiplies the roll/pitch/yaw axes."""
    axis_signs: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    """Per-axis sign (+1/-1) from the device frame to the robot base frame (x, y, z, roll, pitch, yaw)."""
    gripper_closed_at_start: bool = False
    keyboard_input: str = ""
    """Keyboard mode: '' = this process's terminal (stdin if it is a tty, else /dev/tty); or a tty/FIFO path."""
    key_hold_s: float = 0.3
    """Keyboard mode: a key press drives its axis this long (terminals report presses, not releases)."""
    spacemouse_buttons: tuple[str, ...] = ("gripper", "success")
    """SpaceMouse mode: the logical button for each device button index (gripper, success, failure, ...)."""
    script: str = ""
    """Scripted mode: a JSON list of {"duration_s", "axes": [6], "events": [...]}, inline or a file path."""
    reset_services: str = ""
    """Comma-separated std_srvs/Trigger services called when the human presses reset (e.g.
    "/franka/reset,/sim/reset"). A string, not a list: an empty list default gets no ROS parameter type."""
    publish_episode_events: bool = False
    """Demo recording: this node runs the episodes (start on first motion, end on a label) and publishes them
    on interfaces.EPISODE_EVENT. Off during RL, where the policy node runs the episodes."""
    min_command_subscribers: int = 1
    """Commands go out only once this many subscribers have matched /teleop/action (1: cmd_mux; 2 with a bag
    recorder that must record them too); until then the device's input is dropped with a warning (a scripted
    device starts its script then). A command published before cmd_mux matched would be lost, and in demo
    recording it would start an episode whose first steps never reached the arm. 0 = do not wait."""

    def __post_init__(self) -> None:
        if self.device not in ("keyboard", "spacemouse", "scripted"):
            raise ValueError(f"device must be keyboard, spacemouse or scripted, got {self.device!r}")
        if not (np.isfinite(self.rate_hz) and 1.0 <= self.rate_hz <= 1000.0):
            raise ValueError(f"rate_hz must be in [1, 1000], got {self.rate_hz!r}")
        if not (np.isfinite(self.deadband) and 0.0 <= self.deadband < 1.0):
            raise ValueError(f"deadband must be in [0, 1), got {self.deadband!r}")
        for name in ("translation_scale", "rotation_scale"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1] (commands are normalised), got {value!r}")
        signs = tuple(float(s) for s in self.axis_signs)
        if len(signs) != 6 or any(s not in (-1.0, 1.0) for s in signs):
            raise ValueError(f"axis_signs must be six values of +1 or -1, got {self.axis_signs!r}")
        self.axis_signs = signs
        if not (np.isfinite(self.key_hold_s) and 0.0 < self.key_hold_s <= 2.0):
            raise ValueError(f"key_hold_s must be in (0, 2] seconds, got {self.key_hold_s!r}")
        bad = [b for b in self.spacemouse_buttons if b not in BUTTONS]
        if bad:
            raise ValueError(f"spacemouse_buttons has unknown button(s) {bad}; known: {list(BUTTONS)}")
        bad = [s for s in self.reset_service_names if not s.startswith("/")]
        if bad:
            raise ValueError(f"reset_services must be absolute service names, got {bad}")
        if not isinstance(self.min_command_subscribers, int) or not 0 <= self.min_command_subscribers <= 100:
            raise ValueError(f"min_command_subscribers must be an int in [0, 100], got "
                             f"{self.min_command_subscribers!r}")
        if self.device == "scripted" and not self.script:
            raise ValueError("device 'scripted' needs the `script` parameter (JSON list or file path)")


    @property
    def reset_service_names(self) -> list[str]:
        return [s.strip() for s in self.reset_services.split(",") if s.strip()]


@dataclass
class TeleopOutput:
    action: np.ndarray | None
    """The 7-D command to publish now, or None (human not commanding: the policy / watchdog takes over)."""
    labels: tuple[str, ...] = ()


class TeleopMapper:
    """Stateful: deadband + scale + gripper toggle. Publishes only while the human moves or toggles."""

    def __init__(self, config: TeleopConfig):
        self.config = config
        self.gripper_closed = config.gripper_closed_at_start
        self._signs = np.asarray(config.axis_signs)
        self._scales = np.array([config.translation_scale] * 3 + [config.rotation_scale] * 3)

    def shape_axes(self, axes: np.ndarray) -> np.ndarray:
        """Deadband (rescaled so motion starts smoothly at the band's edge), sign, scale, clip to [-1, 1]."""
        axes = np.clip(np.nan_to_num(np.asarray(axes, dtype=np.float64), nan=0.0), -1.0, 1.0)
        db = self.config.deadband
        magnitude = np.clip((np.abs(axes) - db) / (1.0 - db), 0.0, 1.0)
        return np.clip(np.sign(axes) * magnitude * self._signs * self._scales, -1.0, 1.0)

    def update(self, sample: DeviceSample) -> TeleopOutput:
        toggled = False
        for event in sample.events:
            if event == GRIPPER:
                self.gripper_closed = not self.gripper_closed
                toggled = True
        labels = tuple(e for e in sample.events if e in LABELS)
        motion = self.shape_axes(sample.axes)
        if not (toggled or np.any(motion != 0.0)):
            return TeleopOutput(None, labels)
        action = np.zeros(ACTION_DIM)
        action[:6] = motion
        action[6] = 1.0 if self.gripper_closed else -1.0
        return TeleopOutput(action, labels)


@dataclass
class EpisodeEvent:
    """What the node publishes on interfaces.EPISODE_EVENT (as JSON) in demo-recording mode."""

    episode_id: str
    event: str  # "start" | "end"
    success: bool = False
    steps: int = 0
    instruction: str = ""
    policy_version: str = "teleop"
    label: str = ""
    source: str = "teleop"


class DemoEpisodes:
    """Episode boundaries for teleoperated demos: start at the first command, end on a label.

    success -> end(success=True); failure -> end(success=False); discard -> end(label='discard', the packager
    drops it); reset -> ends an open episode as 'reset' (not kept as a demo: nobody judged it).
    """

    def __init__(self, prefix: str = "teleop"):
        self._ids = itertools.count()
        self._prefix = f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}"
        self.current: str | None = None
        self.steps = 0

    def on_command(self, instruction: str) -> list[EpisodeEvent]:
        events = []
        if self.current is None:
            self.current = f"{self._prefix}-{next(self._ids):04d}"
            self.steps = 0
            events.append(EpisodeEvent(self.current, "start", instruction=instruction))
        self.steps += 1
        return events

    def on_label(self, label: str, instruction: str) -> list[EpisodeEvent]:
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}")
        if self.current is None:
            return []
        event = EpisodeEvent(self.current, "end", success=label == "success", steps=self.steps,
                             instruction=instruction, label=label)
        self.current = None
        self.steps = 0
        return [event]
