"""Small stateful guards the controller composes: gripper hysteresis, command watchdog, recovery backoff.

Each takes the time as an argument (seconds, any monotonic clock), so the same code runs on wall time
(real robot, franky-sim) and on sim time (fast MuJoCo), and tests can drive it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRIPPER_OPEN = "open"
GRIPPER_CLOSE = "close"


@dataclass
class GripperLatch:
    """Turns the continuous gripper action into rare open/close commands.

    Close when the value rises above +threshold, open when it falls below -threshold; values in between keep
    the last state (hysteresis). A command is only issued when the state changes, and never twice within
    `min_interval_s`, so an action hovering around a threshold cannot flood the gripper. A change requested
    inside the interval is kept as `pending` and issued by `flush()` once the interval has passed (unless a
    later request cancels it).
    """

    threshold: float = 0.5
    min_interval_s: float = 0.5
    state: str | None = None
    """Last commanded state (GRIPPER_OPEN / GRIPPER_CLOSE), None before the first command."""
    pending: str | None = None
    _last_command_t: float = -np.inf

    def __post_init__(self) -> None:
        if not (np.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"gripper threshold must be in (0, 1), got {self.threshold!r}")
        if not (np.isfinite(self.min_interval_s) and 0.0 <= self.min_interval_s <= 10.0):
            raise ValueError(f"gripper min_interval_s must be in [0, 10] s, got {self.min_interval_s!r}")

    def update(self, value: float, now: float) -> str | None:
        """The command to send now (GRIPPER_OPEN / GRIPPER_CLOSE) or None."""
        if value > self.threshold:
            wanted = GRIPPER_CLOSE
        elif value < -self.threshold:
            wanted = GRIPPER_OPEN
        else:
            return None
        if wanted == self.state:
            self.pending = None
            return None
        if now - self._last_command_t < self.min_interval_s:
            self.pending = wanted
            return None
        return self._issue(wanted, now)

    def flush(self, now: float) -> str | None:
        """A pending change whose interval has passed (call periodically)."""
        if self.pending is None or now - self._last_command_t < self.min_interval_s:
            return None
        return self._issue(self.pending, now)

    def _issue(self, command: str, now: float) -> str:
        self.state = command
        self.pending = None
        self._last_command_t = now
        return command

    def force(self, state: str, now: float) -> None:
        """Record a state set from outside (reset opens the gripper)."""
        self.state = state
        self.pending = None
        self._last_command_t = now


@dataclass
class Watchdog:
    """Commands older than `timeout_s` are stale: the robot must hold instead of chasing an old target."""

    timeout_s: float = 0.3
    last_feed: float = -np.inf

    def __post_init__(self) -> None:
        if not (np.isfinite(self.timeout_s) and 0.0 < self.timeout_s <= 10.0):
            raise ValueError(f"command_timeout_s must be in (0, 10] s, got {self.timeout_s!r}")

    def feed(self, now: float) -> None:
        self.last_feed = now

    def stale(self, now: float) -> bool:
        return now - self.last_feed > self.timeout_s

    def age(self, now: float) -> float:
        return now - self.last_feed


@dataclass
class RecoveryBackoff:
    """Bounded error recovery: attempt k (0-based) waits initial * 2**k seconds (capped) after the previous one;
    after `max_attempts` failures recovery stops until someone calls `rearm()` (the recover service)."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    attempts: int = 0
    next_attempt_t: float = -np.inf

    def __post_init__(self) -> None:
        if not (isinstance(self.max_attempts, int) and 1 <= self.max_attempts <= 100):
            raise ValueError(f"max_recover_attempts must be an int in [1, 100], got {self.max_attempts!r}")
        if not (np.isfinite(self.initial_backoff_s) and 0.0 <= self.initial_backoff_s <= 60.0):
            raise ValueError(f"recover_backoff_s must be in [0, 60] s, got {self.initial_backoff_s!r}")
        if not (np.isfinite(self.max_backoff_s) and self.initial_backoff_s <= self.max_backoff_s <= 600.0):
            raise ValueError(f"recover_max_backoff_s must be in [recover_backoff_s, 600] s, got {self.max_backoff_s!r}")

    def delay(self, attempt: int) -> float:
        return min(self.initial_backoff_s * (2.0 ** attempt), self.max_backoff_s)

    @property
    def exhausted(self) -> bool:
        return self.attempts >= self.max_attempts

    def due(self, now: float) -> bool:
        return not self.exhausted and now >= self.next_attempt_t

    def failed(self, now: float) -> None:
        """An attempt failed: schedule the next one."""
        self.next_attempt_t = now + self.delay(self.attempts)
        self.attempts += 1

    def rearm(self, now: float = -np.inf) -> None:
        """Start a fresh series (after a success, or a manual recover request)."""
        self.attempts = 0
        self.next_attempt_t = now
