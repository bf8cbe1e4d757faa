"""What the reward node does, without ROS: its config, frame checks, debouncing and the human override.

Debouncing: a success is declared only after ``consecutive_frames`` frames in a row at/above the threshold (the
classifier flickers on single frames; one false positive ends an RL episode). The same debouncer runs on the
sim's ground-truth signal so both sources behave alike.

Human labels (teleop keys) win over everything until the next ``reset`` label or episode start:
``success`` -> reward 1, ``failure`` / ``discard`` -> reward 0 (a discarded episode must not be rewarded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCES = ("classifier", "ground_truth")
HUMAN_LABELS = ("success", "failure", "discard", "reset")
IMAGE_QOS_CHOICES = ("sensor", "reliable")


@dataclass
class RewardNodeConfig:
    source: str = "classifier"
    """'classifier' (images -> learned classifier) or 'ground_truth' (sim only: /sim/success)."""
    classifier_path: str = "runs/default/reward/classifier.safetensors"
    """The versioned classifier file (irevla train-reward writes it). Reloaded when it changes; a missing file
    is waited for, a bad one is refused and the previous one keeps running."""
    cameras: tuple[str, ...] = ("front",)
    """Cameras to subscribe (/cameras/<name>/color/image_raw); must match the classifier's cameras."""
    consecutive_frames: int = 3
    """Frames in a row at/above the threshold before reward 1 is published."""
    threshold: float = 0.0
    """Success threshold; 0 = use the one stored in the classifier file (picked for a target precision)."""
    reload_period_s: float = 1.0
    """How often the classifier file is checked for changes (one stat call)."""
    image_qos: str = "sensor"
    """'sensor' (best effort, matches any publisher) or 'reliable' (sim: every frame matters)."""
    max_camera_skew_s: float = 0.1
    """Multi-camera: frames whose stamps differ by more than this are not classified together."""
    num_threads: int = 1
    """torch CPU threads for inference. 1: the classifier is tiny, and on a busy 2-core machine a second intra-op
    thread spin-waits (measured: CNN 0.9 ms with 1 thread vs 90-150 ms with 2 under load, bench/reward.py)."""
    publish_marker: bool = True
    """Publish /reward/success_marker (visualization_msgs/Marker, rviz): a sphere at the TCP (from /franka/ee_pose)
    and a text above it, coloured red -> green by the success probability."""
    marker_lifetime_s: float = 1.0
    """rviz drops the marker this long after the last update (a stopped node does not leave a stale one)."""

    def __post_init__(self) -> None:
        self.cameras = tuple(str(c) for c in self.cameras)
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.source == "classifier" and not self.classifier_path:
            raise ValueError("classifier_path must be set when source is 'classifier'")
        if self.source == "classifier" and (not self.cameras or len(set(self.cameras)) != len(self.cameras)
                                            or not all(self.cameras)):
            raise ValueError(f"cameras must be distinct non-empty names, got {list(self.cameras)!r}")
        if not 1 <= int(self.consecutive_frames) <= 1000:
            raise ValueError(f"consecutive_frames must be in [1, 1000], got {self.consecutive_frames!r}")
        if not (np.isfinite(self.threshold) and 0.0 <= self.threshold < 1.0):
            raise ValueError(f"threshold must be 0 (use the file's) or in (0, 1), got {self.threshold!r}")
        if not (np.isfinite(self.reload_period_s) and 0.05 <= self.reload_period_s <= 3600.0):
            raise ValueError(f"reload_period_s must be in [0.05, 3600], got {self.reload_period_s!r}")
        if self.image_qos not in IMAGE_QOS_CHOICES:
            raise ValueError(f"image_qos must be one of {IMAGE_QOS_CHOICES}, got {self.image_qos!r}")
        if not (np.isfinite(self.max_camera_skew_s) and 0.0 < self.max_camera_skew_s <= 10.0):
            raise ValueError(f"max_camera_skew_s must be in (0, 10], got {self.max_camera_skew_s!r}")
        if not 1 <= int(self.num_threads) <= 64:
            raise ValueError(f"num_threads must be in [1, 64], got {self.num_threads!r}")
        if not (np.isfinite(self.marker_lifetime_s) and 0.0 <= self.marker_lifetime_s <= 3600.0):
            raise ValueError(f"marker_lifetime_s must be in [0, 3600] (0 = forever), got {self.marker_lifetime_s!r}")


# --- The rviz success marker (the node fills a visualization_msgs/Marker from these). -----------------------
MARKER_FALLBACK_XYZ = (0.45, 0.0, 0.45)
"""Where the marker sits (m, robot base frame) until an EE pose arrives: above the middle of the workspace."""
MARKER_TEXT_LIFT = 0.08
"""The text floats this far (m) above the sphere so the two do not overlap."""


@dataclass
class MarkerStyle:
    rgba: tuple[float, float, float, float]
    text: str


def marker_style(prob: float, reward: float, source: str) -> MarkerStyle:
    """Colour red (p = 0) -> yellow -> green (p = 1); the text says p, the reward and who decided it. A human
    override shows blue, so a viewer sees at a glance that the classifier is not in charge."""
    p = float(np.clip(prob, 0.0, 1.0)) if np.isfinite(prob) else 0.0
    if source == "human":
        rgba = (0.2, 0.4, 1.0, 0.9)
    else:
        rgba = (float(min(1.0, 2.0 * (1.0 - p))), float(min(1.0, 2.0 * p)), 0.1, 0.9)
    verdict = "SUCCESS" if reward >= 0.5 else "no success"
    return MarkerStyle(rgba, f"{verdict}  p={p:.2f}  [{source}]")


class FrameError(ValueError):
    """An image the classifier must not see; the message is the reason."""


def decode_rgb8(encoding: str, height: int, width: int, step: int, data: bytes | bytearray | memoryview,
                expected_hw: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Check a sensor_msgs/Image's fields and return it as uint8 [H, W, 3] (a copy, rows unpadded)."""
    if encoding != "rgb8":
        raise FrameError(f"encoding {encoding!r} is not supported (only 'rgb8')")
    if height <= 0 or width <= 0:
        raise FrameError(f"empty image {width}x{height}")
    if expected_hw != (0, 0) and (height, width) != tuple(expected_hw):
        raise FrameError(f"image is {width}x{height} (WxH) but the classifier was trained on "
                         f"{expected_hw[1]}x{expected_hw[0]} frames")
    if step < 3 * width:
        raise FrameError(f"step {step} is smaller than 3 * width ({3 * width}) for rgb8")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != step * height:
        raise FrameError(f"data has {buf.size} bytes, expected step * height = {step * height}")
    return buf.reshape(height, step)[:, :3 * width].reshape(height, width, 3).copy()


@dataclass
class RewardDecision:
    prob: float
    reward: float
    source: str  # "classifier" | "ground_truth" | "human"


class RewardGate:
    """k-consecutive-frame debouncing + human override."""

    def __init__(self, consecutive_frames: int):
        if consecutive_frames < 1:
            raise ValueError(f"consecutive_frames must be >= 1, got {consecutive_frames}")
        self.k = int(consecutive_frames)
        self.streak = 0
        self.human: str | None = None

    def reset(self) -> None:
        self.streak = 0
        self.human = None

    def on_human(self, label: str) -> None:
        label = label.strip().lower()
        if label not in HUMAN_LABELS:
            raise ValueError(f"human label must be one of {HUMAN_LABELS}, got {label!r}")
        if label == "reset":
            self.reset()
        else:
            self.human = label

    def update(self, prob: float, threshold: float, source: str) -> RewardDecision:
        if not np.isfinite(prob):
            raise ValueError(f"success probability is not finite: {prob!r}")
        self.streak = self.streak + 1 if prob >= threshold else 0
        if self.human is not None:
            return RewardDecision(float(prob), 1.0 if self.human == "success" else 0.0, "human")
        return RewardDecision(float(prob), 1.0 if self.streak >= self.k else 0.0, source)
