"""The actor's observation: newest frame per camera + robot state + instruction, with staleness rules.

Callbacks write into an `ObservationBuffer` from any thread; the control tick `assemble`s a consistent snapshot
or gets a `Stale` reason (then no command is sent and the franka node's watchdog holds the arm). A frame is
stale when its capture stamp is older than `max_image_age_s` (or older than the last reset, so no pre-reset
image can drive the first step of an episode).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from irevla_ros.core.model.processor import InputError

FUTURE_TOLERANCE_S = 0.05
"""A stamp this far ahead of the node's clock is still accepted (clock skew between processes)."""


def image_from_buffer(encoding: str, height: int, width: int, step: int, data: bytes | bytearray | memoryview |
                      Sequence[int]) -> np.ndarray:
    """sensor_msgs/Image fields -> uint8 [H, W, 3] RGB (copy). rgb8, bgr8, rgba8, bgra8 accepted."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(encoding)
    if channels is None:
        raise InputError(f"unsupported image encoding {encoding!r} (expected rgb8, bgr8, rgba8 or bgra8)")
    if height <= 0 or width <= 0 or height > 8192 or width > 8192:
        raise InputError(f"image size {width}x{height} is out of range")
    if step < width * channels:
        raise InputError(f"image step {step} is smaller than width*channels = {width * channels}")
    buf = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray)) else data, dtype=np.uint8)
    if buf.size != step * height:
        raise InputError(f"image data has {buf.size} bytes, expected step*height = {step * height} "
                         f"({width}x{height} {encoding})")
    img = buf.reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    if encoding.startswith("bgr"):
        img = img[..., [2, 1, 0]]
    else:
        img = img[..., :3]
    return np.array(img, dtype=np.uint8, order="C", copy=True)  # own, writable memory (the message may be reused)


@dataclass
class Observation:
    images: list[np.ndarray]  # per camera, uint8 [H, W, 3]
    proprio: np.ndarray  # float32 [8]: x y z qx qy qz qw gripper_width
    instruction: str
    stamps: dict[str, float] = field(default_factory=dict)


@dataclass
class Stale:
    reason: str


@dataclass
class _Stamped:
    value: object
    stamp: float


class ObservationBuffer:
    def __init__(self, cameras: Sequence[str], *, max_image_age_s: float, max_state_age_s: float,
                 instruction: str = ""):
        if not cameras:
            raise ValueError("at least one camera is needed")
        self.cameras = tuple(cameras)
        self.max_image_age_s = float(max_image_age_s)
        self.max_state_age_s = float(max_state_age_s)
        self._lock = threading.Lock()
        self._images: dict[str, _Stamped] = {}
        self._pose: _Stamped | None = None
        self._gripper: _Stamped | None = None
        self._instruction = instruction

    # --- writers (any thread) ---
    def update_image(self, camera: str, image: np.ndarray, stamp: float) -> None:
        if camera not in self.cameras:
            raise InputError(f"unknown camera {camera!r}; expected one of {self.cameras}")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise InputError(f"camera {camera}: expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
        with self._lock:
            self._images[camera] = _Stamped(image, float(stamp))

    def update_pose(self, position: Sequence[float], quaternion: Sequence[float], stamp: float) -> None:
        pos = np.asarray(position, dtype=np.float64)
        quat = np.asarray(quaternion, dtype=np.float64)
        if pos.shape != (3,) or quat.shape != (4,) or not (np.isfinite(pos).all() and np.isfinite(quat).all()):
            raise InputError(f"EE pose must be finite position[3] + quaternion[4], got {pos} {quat}")
        norm = np.linalg.norm(quat)
        if not 0.9 < norm < 1.1:
            raise InputError(f"EE quaternion is not unit length (|q| = {norm:.3g})")
        with self._lock:
            self._pose = _Stamped(np.concatenate([pos, quat / norm]), float(stamp))

    def update_gripper(self, width: float, stamp: float) -> None:
        if not np.isfinite(width) or not -0.01 <= width <= 0.2:
            raise InputError(f"gripper width must be finite and within [-0.01, 0.2] m, got {width!r}")
        with self._lock:
            self._gripper = _Stamped(float(width), float(stamp))

    def set_instruction(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise InputError("instruction must be a non-empty string")
        if len(text) > 1000:
            raise InputError(f"instruction is {len(text)} characters long (max 1000)")
        with self._lock:
            self._instruction = text.strip()

    @property
    def instruction(self) -> str:
        with self._lock:
            return self._instruction

    # --- reader (control tick) ---
    def assemble(self, now: float, not_before: float = -np.inf) -> Observation | Stale:
        with self._lock:
            images = dict(self._images)
            pose, gripper, instruction = self._pose, self._gripper, self._instruction
        if not instruction:
            return Stale("no instruction (parameter empty and nothing on the instruction topic)")
        stamps: dict[str, float] = {}
        frames = []
        for cam in self.cameras:
            item = images.get(cam)
            if item is None:
                return Stale(f"no image from camera {cam!r} yet")
            problem = self._age_problem(f"camera {cam!r} frame", item.stamp, now, self.max_image_age_s, not_before)
            if problem:
                return Stale(problem)
            frames.append(item.value)
            stamps[cam] = item.stamp
        for label, item in (("EE pose", pose), ("gripper state", gripper)):
            if item is None:
                return Stale(f"no {label} yet")
            problem = self._age_problem(label, item.stamp, now, self.max_state_age_s, not_before)
            if problem:
                return Stale(problem)
        stamps["pose"], stamps["gripper"] = pose.stamp, gripper.stamp
        proprio = np.concatenate([pose.value, [gripper.value]]).astype(np.float32)
        return Observation(frames, proprio, instruction, stamps)

    @staticmethod
    def _age_problem(label: str, stamp: float, now: float, max_age: float, not_before: float) -> str:
        age = now - stamp
        if age > max_age:
            return f"{label} is {age:.3f} s old (max {max_age} s)"
        if age < -FUTURE_TOLERANCE_S:
            return f"{label} is stamped {-age:.3f} s in the future"
        if stamp < not_before:
            return f"{label} predates the last reset"
        return ""
