"""Input devices for teleoperation (ROS-free): terminal keyboard, SpaceMouse, and a scripted stand-in.

A device is polled by the teleop node at its rate and returns a `DeviceSample` (six axes + button events).
`make_device(config)` picks one; tests inject `ScriptedDevice`, the stand-in for the physical SpaceMouse
(which cannot exist on a machine without USB HID hardware).
"""

from __future__ import annotations

import abc
import json
import os
import select
import stat
import sys
import termios
import tty
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irevla_ros.teleop.mapping import AXIS_NAMES, BUTTONS, DeviceSample, TeleopConfig


class DeviceError(RuntimeError):
    """The device cannot be opened or read; the message says what to do."""


class InputDevice(abc.ABC):
    name = "device"

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire the device (called once before the first poll)."""

    @abc.abstractmethod
    def poll(self, now: float) -> DeviceSample:
        """Current axes and the button presses since the last poll. `now` is in seconds (any monotonic base)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device; restores terminals."""

    def help(self) -> str:
        return ""


# --- Terminal keyboard (no X server: reads key bytes from a tty or a FIFO). -----------------------------
# key -> (axis index, sign); upper-case keys move at full speed, lower-case at half.
KEY_AXES: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),  # x forward / back
    "a": (1, 1.0), "d": (1, -1.0),  # y left / right
    "r": (2, 1.0), "f": (2, -1.0),  # z up / down
    "u": (3, 1.0), "o": (3, -1.0),  # roll
    "i": (4, 1.0), "k": (4, -1.0),  # pitch
    "j": (5, 1.0), "l": (5, -1.0),  # yaw
}
KEY_BUTTONS: dict[str, str] = {
    " ": "gripper",
    "g": "success", "\r": "success", "\n": "success",
    "b": "failure",
    "x": "discard",
    "n": "reset",
}
KEYBOARD_HELP = (
    "keyboard teleop: w/s x, a/d y, r/f z, u/o roll, i/k pitch, j/l yaw (UPPER-CASE = full speed); "
    "space = gripper toggle; g or Enter = success, b = failure, x = discard, n = reset"
)


class KeyboardDevice(InputDevice):
    """Reads key presses from a terminal (cbreak mode, restored on close) or any readable fd (FIFO, pipe).

    Terminals report presses (and auto-repeat), not releases, so a press drives its axis for `hold_s`;
    holding the key keeps it going through auto-repeat.
    """

    name = "keyboard"

    def __init__(self, source: str = "", hold_s: float = 0.3):
        self.source = source
        self.hold_s = hold_s
        self._fd: int | None = None
        self._owns_fd = False
        self._saved_tty: list | None = None
        self._axis_until = np.full(6, -np.inf)
        self._axis_value = np.zeros(6)
        self._pending = b""

    @classmethod
    def from_fd(cls, fd: int, hold_s: float = 0.3) -> KeyboardDevice:
        """Use an already open file descriptor (the caller keeps ownership)."""
        dev = cls(hold_s=hold_s)
        dev._fd = fd
        return dev

    def open(self) -> None:
        if self._fd is None:
            self._fd, self._owns_fd = self._open_source(), True
        if os.isatty(self._fd):
            self._saved_tty = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        os.set_blocking(self._fd, False)

    def _open_source(self) -> int:
        if self.source:
            path = Path(self.source)
            if not path.exists():
                raise DeviceError(f"keyboard_input {self.source!r} does not exist (give a tty or a FIFO path)")
            mode = path.stat().st_mode
            if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
                raise DeviceError(f"keyboard_input {self.source!r} is neither a terminal nor a FIFO")
            return os.open(self.source, os.O_RDONLY | os.O_NONBLOCK)
        if sys.stdin is not None and sys.stdin.isatty():
            return os.dup(sys.stdin.fileno())
        try:
            return os.open("/dev/tty", os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise DeviceError(
                "keyboard teleop needs a terminal and this process has none: run `teleop_node` in its own "
                "terminal, or set keyboard_input to a tty or FIFO path") from exc

    def _read_bytes(self) -> bytes:
        assert self._fd is not None, "open() the device first"
        chunks = []
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.0)
            if not ready:
                break
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                break
            if not data:  # writer closed (FIFO): nothing more for now
                break
            chunks.append(data)
        return b"".join(chunks)

    def feed(self, data: bytes, now: float) -> tuple[str, ...]:
        """Interpret key bytes (exposed so the key map is testable without a terminal)."""
        events = []
        text = (self._pending + data).decode("utf-8", errors="ignore")
        self._pending = b""
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":  # escape sequence (arrows, function keys): skip it
                i += 1
                if i < len(text) and text[i] in "[O":
                    i += 1
                    while i < len(text) and not text[i].isalpha() and text[i] != "~":
                        i += 1
                i += 1
                continue
            lower = ch.lower()
            if lower in KEY_AXES:
                axis, sign = KEY_AXES[lower]
                self._axis_value[axis] = sign * (1.0 if ch.isupper() else 0.5)
                self._axis_until[axis] = now + self.hold_s
            elif ch in KEY_BUTTONS:
                events.append(KEY_BUTTONS[ch])
            i += 1
        return tuple(events)

    def poll(self, now: float) -> DeviceSample:
        events = self.feed(self._read_bytes(), now)
        axes = np.where(now < self._axis_until, self._axis_value, 0.0)
        return DeviceSample(axes, events)

    def close(self) -> None:
        if self._fd is None:
            return
        if self._saved_tty is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
        if self._owns_fd:
            os.close(self._fd)
        self._fd = None

    def help(self) -> str:
        return KEYBOARD_HELP


# --- 3Dconnexion SpaceMouse via pyspacemouse (optional dependency, needs hidapi + udev access). -----------
class SpaceMouseDevice(InputDevice):
    """pyspacemouse reads the HID device; buttons map to logical buttons by index, edges become events."""

    name = "spacemouse"

    def __init__(self, buttons: tuple[str, ...] = ("gripper", "success")):
        self.button_map = buttons
        self._previous: list[int] = []
        self._lib = None

    def open(self) -> None:
        try:
            import pyspacemouse  # optional: pip install pyspacemouse (needs the hidapi system library)
        except ImportError as exc:
            raise DeviceError("SpaceMouse mode needs the optional package `pyspacemouse` (and libhidapi); "
                              "install it or use device:=keyboard") from exc
        if not pyspacemouse.open():
            raise DeviceError("no SpaceMouse found (is it plugged in, and does a udev rule give you access "
                              "to its /dev/hidraw node?)")
        self._lib = pyspacemouse

    def poll(self, now: float) -> DeviceSample:
        state = self._lib.read()  # type: ignore[union-attr]
        axes = np.array([state.x, state.y, state.z, state.roll, state.pitch, state.yaw], dtype=np.float64)
        buttons = list(getattr(state, "buttons", []) or [])
        events = []
        for i, pressed in enumerate(buttons):
            was = self._previous[i] if i < len(self._previous) else 0
            if pressed and not was and i < len(self.button_map):
                events.append(self.button_map[i])
        self._previous = buttons
        return DeviceSample(np.nan_to_num(axes), tuple(events))

    def close(self) -> None:
        if self._lib is not None:
            close = getattr(self._lib, "close", None)
            if callable(close):
                close()
            self._lib = None


# --- Scripted device: the test stand-in for the physical SpaceMouse. -------------------------------------
@dataclass(frozen=True)
class ScriptStep:
    duration_s: float
    axes: tuple[float, ...] = (0.0,) * 6
    events: tuple[str, ...] = ()


def parse_script(text: str) -> list[ScriptStep]:
    """A JSON list of steps, inline or in a file: [{"duration_s": 1.0, "axes": [6 floats], "events": [...]}]."""
    source = text
    if not text.lstrip().startswith("["):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"script {text!r} is neither inline JSON nor an existing file")
        source = path.read_text()
    try:
        raw = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ValueError(f"script is not valid JSON: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise ValueError("script must be a non-empty JSON list of steps")
    steps = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"duration_s", "axes", "events"}:
            raise ValueError(f"script step {i} must be an object with duration_s, axes, events: {item!r}")
        duration = float(item.get("duration_s", 0.0))
        axes = tuple(float(a) for a in item.get("axes", (0.0,) * 6))
        events = tuple(str(e) for e in item.get("events", ()))
        if not (np.isfinite(duration) and duration >= 0.0):
            raise ValueError(f"script step {i}: duration_s must be >= 0, got {duration}")
        if len(axes) != 6 or not np.all(np.isfinite(axes)) or np.any(np.abs(axes) > 1.0):
            raise ValueError(f"script step {i}: axes must be 6 finite values in [-1, 1] {AXIS_NAMES}, got {axes}")
        unknown = [e for e in events if e not in BUTTONS]
        if unknown:
            raise ValueError(f"script step {i}: unknown events {unknown}; known: {list(BUTTONS)}")
        steps.append(ScriptStep(duration, axes, events))
    return steps


class ScriptedDevice(InputDevice):
    """Plays a fixed script of axes and button presses against the clock: each step's events fire once when
    the step begins, its axes hold for `duration_s`. After the last step: zero axes, no events."""

    name = "scripted"

    def __init__(self, steps: list[ScriptStep]):
        self.steps = steps
        self._t0: float | None = None
        self._fired = 0

    def poll(self, now: float) -> DeviceSample:
        if self._t0 is None:
            self._t0 = now
        elapsed = now - self._t0
        start = 0.0
        events: list[str] = []
        axes: tuple[float, ...] = (0.0,) * 6
        for i, step in enumerate(self.steps):
            if elapsed < start:
                break
            if i >= self._fired:
                events.extend(step.events)
                self._fired = i + 1
            if elapsed < start + step.duration_s:
                axes = step.axes
            start += step.duration_s
        return DeviceSample(np.asarray(axes), tuple(events))

    @property
    def finished(self) -> bool:
        return self._fired == len(self.steps)


def make_device(config: TeleopConfig) -> InputDevice:
    if config.device == "keyboard":
        return KeyboardDevice(config.keyboard_input, config.key_hold_s)
    if config.device == "spacemouse":
        return SpaceMouseDevice(config.spacemouse_buttons)
    return ScriptedDevice(parse_script(config.script))
