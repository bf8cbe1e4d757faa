"""Parameters of the bag recorder and player nodes (ROS-free dataclasses; also the CLI's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RECORD_TOPICS = (
    "/cameras/*", "/franka/*", "/joint_states", "/teleop/*", "/policy/action", "/policy/episode",
    "/policy/version", "/reward/*", "/task/*", "/sim/success", "/tf", "/tf_static", "/diagnostics",
)
"""What a demo or debugging session needs; the learning traffic (/policy/transition, weights) is left out."""


def _check_patterns(name: str, patterns: tuple[str, ...]) -> tuple[str, ...]:
    patterns = tuple(str(p) for p in patterns)
    bad = [p for p in patterns if not p or not (p.startswith("/") or p == "*")]
    if bad:
        raise ValueError(f"{name} must be absolute topic names or patterns ('/cameras/*', '*'), got {bad}")
    return patterns


@dataclass
class RecorderConfig:
    output: str = ""
    """Bag folder to create (must not exist or be empty); '' = <output_dir>/irevla_<UTC time>."""
    output_dir: str = "bags"
    """Where automatically named bags go (e.g. <run_dir>/bags): every start makes a new bag."""
    topics: tuple[str, ...] = DEFAULT_RECORD_TOPICS
    """Topic names or fnmatch patterns to record; ['*'] = everything."""
    exclude: tuple[str, ...] = ("/rosout", "/parameter_events")
    split_duration_s: float = 300.0
    """Start a new .mcap file after this long (0 = never): a crash costs at most one file's unflushed tail."""
    split_size_mb: float = 0.0
    """Start a new file beyond this size (0 = no size limit)."""
    compression: str = "none"
    """MCAP chunk compression: none | zstd | lz4 (none keeps up with two 30 Hz cameras on a small CPU)."""
    discovery_period_s: float = 1.0
    """How often new topics are looked for (topics that appear later are recorded from then on)."""

    def __post_init__(self) -> None:
        self.topics = _check_patterns("topics", self.topics)
        self.exclude = _check_patterns("exclude", self.exclude)
        if not self.output and not self.output_dir:
            raise ValueError("give `output` (the bag folder) or `output_dir` (where named bags go)")
        if self.compression not in ("none", "zstd", "lz4"):
            raise ValueError(f"compression must be none, zstd or lz4, got {self.compression!r}")
        for name in ("split_duration_s", "split_size_mb"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be >= 0 (0 = no split), got {value!r}")
        if not (np.isfinite(self.discovery_period_s) and 0.05 <= self.discovery_period_s <= 60.0):
            raise ValueError(f"discovery_period_s must be in [0.05, 60], got {self.discovery_period_s!r}")


@dataclass
class PlayerConfig:
    bag: str = ""
    """The bag to play: a rosbag2 folder (mcap or sqlite3) or an .mcap file."""
    rate: float = 1.0
    """Playback speed: 2.0 plays twice as fast (inter-message gaps halved)."""
    topics: tuple[str, ...] = ("*",)
    """Topic names or fnmatch patterns to play."""
    topic_prefix: str = ""
    """Publish under this prefix (e.g. /replay) so a replay can run next to a live graph; '' = original names."""
    clock_hz: float = 100.0
    """Publish /clock (bag time) at this rate and with every message; 0 = no /clock."""
    start_offset_s: float = 0.0
    """Skip the first seconds of the bag."""
    loop: bool = False
    wait_for_subscribers_s: float = 0.0
    """Before playing, wait up to this long until every played topic has a subscriber (messages published
    before a subscriber matches are lost)."""
    exit_when_done: bool = True
    recover: bool = False
    """Play the complete chunks of truncated files (a recorder that crashed) instead of refusing them."""
    validate: bool = True
    """Decode every message before publishing it; undecodable messages are skipped and counted."""

    def __post_init__(self) -> None:
        self.topics = _check_patterns("topics", self.topics)
        if not (np.isfinite(self.rate) and 0.01 <= self.rate <= 100.0):
            raise ValueError(f"rate must be in [0.01, 100], got {self.rate!r}")
        if not (np.isfinite(self.clock_hz) and 0.0 <= self.clock_hz <= 1000.0):
            raise ValueError(f"clock_hz must be in [0, 1000] (0 = no /clock), got {self.clock_hz!r}")
        for name in ("start_offset_s", "wait_for_subscribers_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.topic_prefix and (not self.topic_prefix.startswith("/") or self.topic_prefix.endswith("/")):
            raise ValueError(f"topic_prefix must look like /replay, got {self.topic_prefix!r}")
