"""Priority mux between the policy and a human teleoperator.

The human wins whenever their last valid command is younger than `teleop_timeout_s`; the policy is passed
through otherwise. Invalid commands are rejected (counted by reason) and never forwarded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from irevla_ros.core.safety import InvalidAction, validate_action


@dataclass
class MuxConfig:
    teleop_timeout_s: float = 0.5
    """A teleop command keeps priority this long; afterwards the policy drives again."""

    def __post_init__(self) -> None:
        for name in ("teleop_timeout_s",):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 < value <= 10.0):
                raise ValueError(f"{name} must be in (0, 10] seconds, got {value!r}")


@dataclass
class MuxDecision:
    action: np.ndarray | None
    source: str  # "teleop" | "policy" | "none"
    intervention: bool


@dataclass
class CommandMux:
    config: MuxConfig = field(default_factory=MuxConfig)
    rejected: Counter = field(default_factory=Counter)
    _last_teleop_t: float = -np.inf

    def on_teleop(self, values, now: float) -> MuxDecision:
        try:
            action = validate_action(values)
        except InvalidAction as exc:
            self.rejected[f"teleop: {str(exc).split(':')[0]}"] += 1
            raise
        self._last_teleop_t = now
        return MuxDecision(action, "teleop", True)

    def on_policy(self, values, now: float) -> MuxDecision:
        try:
            action = validate_action(values)
        except InvalidAction as exc:
            self.rejected[f"policy: {str(exc).split(':')[0]}"] += 1
            raise
        if self.teleop_active(now):
            return MuxDecision(None, "teleop", True)
        return MuxDecision(action, "policy", False)

    def teleop_active(self, now: float) -> bool:
        return (now - self._last_teleop_t) < self.config.teleop_timeout_s
