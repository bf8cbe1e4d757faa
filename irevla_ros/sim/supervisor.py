"""A simulated human supervisor: the scripted expert takes over only when the arm goes astray.

On the real robot a person watches the policy and grabs the SpaceMouse when the arm heads somewhere wrong, drives it
back on course for a moment and lets go (HIL-SERL's interventions; our teleop node and cmd_mux carry them, the
policy node flags the steps, the learner keeps them in its demo buffer and stage 2 trains on the episodes). In
simulation the scripted expert plays that person: each control period it compares where the arm actually moved with
where the expert would have moved it, and after `patience_ticks` periods off course in a row (or `stuck_ticks`
periods without moving while the expert would move: an arm pressing against the workspace box) it drives for
`hold_ticks` periods. It never sees the policy's outputs, only the arm, as a person would, and it judges only while
an episode is live (the caller says so): never while the arm is homed or waits for the next episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class SupervisorConfig:
    min_cosine: float = 0.0
    """Off course: the arm's last motion points more than acos(min_cosine) (90 degrees: away from where the expert
    would go) from the expert's. 0.5 (60 degrees) took over in 95 % of SFT-0's episodes, successes included."""
    min_motion_m: float = 0.002
    """Periods where the arm moved less than this are not judged for direction (only by `stuck_ticks`)."""
    min_expert_speed: float = 0.2
    """Only judge periods where the expert's translation command (per-axis units of the step) is at least this
    long: when the expert itself barely moves (at the goal), any small motion is fine."""
    patience_ticks: int = 2
    """Periods off course in a row before taking over."""
    stuck_ticks: int = 3
    """Periods in a row with the arm standing still (< min_motion_m) while the expert would move at least
    min_expert_speed before taking over (0 = never): SFT-0's failures end pressed into the table or the box's
    walls, where no motion is there to judge."""
    hold_ticks: int = 10
    """Periods the expert drives once it took over (then it hands back and watches again)."""
    max_interventions_per_episode: int = 3
    """A person gives up correcting after a few tries (0 = no limit)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_cosine) and -1.0 <= self.min_cosine <= 1.0):
            raise ValueError(f"min_cosine must be in [-1, 1], got {self.min_cosine!r}")
        for name in ("min_motion_m", "min_expert_speed"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("patience_ticks", "hold_ticks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.stuck_ticks) < 0:
            raise ValueError(f"stuck_ticks must be >= 0 (0 = never), got {self.stuck_ticks!r}")
        if int(self.max_interventions_per_episode) < 0:
            raise ValueError(f"max_interventions_per_episode must be >= 0, got {self.max_interventions_per_episode}")


class CorrectiveSupervisor:
    """Call `reset()` at each episode start and `tick(tcp, expert_action, live)` once per control period; it returns
    True while the expert should drive."""

    def __init__(self, config: SupervisorConfig | None = None) -> None:
        self.config = config or SupervisorConfig()
        self.interventions_total = 0
        self.ticks_driven_total = 0
        self.reset()

    def reset(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (tcp, expert action) one period ago
        self._strikes = 0
        self._still = 0
        self._holding = 0
        self.interventions = 0  # this episode

    def off_course(self, moved: np.ndarray, wanted: np.ndarray) -> bool:
        """Did a motion `moved` (m) go astray from the expert's translation command `wanted`?"""
        cfg = self.config
        want = float(np.linalg.norm(wanted))
        if want < cfg.min_expert_speed:
            return False
        step = float(np.linalg.norm(moved))
        if step < cfg.min_motion_m:
            return False
        return float(np.dot(moved, wanted)) / (step * want) < cfg.min_cosine

    def stood_still(self, moved: np.ndarray, wanted: np.ndarray) -> bool:
        """Did the arm stay put (`moved`, m) through a period in which the expert would have moved (`wanted`)?"""
        cfg = self.config
        return (float(np.linalg.norm(wanted)) >= cfg.min_expert_speed
                and float(np.linalg.norm(moved)) < cfg.min_motion_m)

    def tick(self, tcp_position, expert_action, live: bool = True) -> bool:
        """`live`: an episode is running and the arm takes commands (not homing, not waiting for the next one);
        otherwise nothing is judged and a takeover in progress ends."""
        cfg = self.config
        if not live:
            self._previous = None
            self._strikes = self._still = self._holding = 0
            return False
        tcp = np.asarray(tcp_position, dtype=np.float64).copy()
        expert = np.asarray(expert_action, dtype=np.float64).copy()
        previous, self._previous = self._previous, (tcp, expert)
        if self._holding > 0:
            self._holding -= 1
            self.ticks_driven_total += 1
            return True
        moved, wanted = (tcp - previous[0], previous[1][:3]) if previous is not None else (None, None)
        self._strikes = self._strikes + 1 if moved is not None and self.off_course(moved, wanted) else 0
        self._still = self._still + 1 if moved is not None and self.stood_still(moved, wanted) else 0
        stuck = cfg.stuck_ticks > 0 and self._still >= cfg.stuck_ticks
        budget_left = cfg.max_interventions_per_episode == 0 or self.interventions < cfg.max_interventions_per_episode
        if (self._strikes >= cfg.patience_ticks or stuck) and budget_left:
            self._strikes = self._still = 0
            self._holding = cfg.hold_ticks - 1
            self.interventions += 1
            self.interventions_total += 1
            self.ticks_driven_total += 1
            return True
        return False
