"""Map a camera's device clock onto the host (ROS) clock: stamps near the true capture time, always increasing.

Why not the arrival time: USB transfer and driver queues add 5-40 ms of jittery latency. Why not the device
time: it counts from the camera's power-on (hardware clock) or drifts from the host. We keep the smallest
observed (arrival - device) offset over a sliding window: that frame had the least latency, so
device + min_offset tracks capture time with the minimum latency and no jitter; the window lets slow clock
drift through. A device clock jump (reconnect, recording restart) resets the estimate. Output is strictly
increasing and never later than the arrival time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class DeviceClockConfig:
    window_s: float = 10.0
    """How long a low-latency sample keeps defining the offset (drift between host and device passes)."""
    jump_threshold_s: float = 1.0
    """A device-clock step this far from the host's elapsed time is a reset (reconnect, replay)."""

    def __post_init__(self) -> None:
        for name in ("window_s", "jump_threshold_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


class DeviceClockMapper:
    """Stateful device-time -> host-time map for one camera (see module docstring)."""

    def __init__(self, config: DeviceClockConfig | None = None) -> None:
        self.config = config or DeviceClockConfig()
        self._offsets: deque[tuple[float, float]] = deque()  # (arrival, offset), offsets increasing
        self._last_device: float | None = None
        self._last_arrival: float | None = None
        self._last_out_ns: int | None = None
        self.resets = 0

    def reset(self) -> None:
        """Forget the offset (the device clock changed meaning); monotonic output is still guaranteed."""
        self._offsets.clear()
        self._last_device = None
        self._last_arrival = None
        self.resets += 1

    def map_ns(self, device_time_s: float, arrival_ns: int) -> int:
        """Host time in nanoseconds for a frame stamped `device_time_s` that arrived at `arrival_ns`."""
        if not np.isfinite(device_time_s):
            raise ValueError(f"device timestamp must be finite, got {device_time_s!r}")
        arrival = arrival_ns * 1e-9
        if self._last_device is not None:
            device_step = device_time_s - self._last_device
            host_step = arrival - self._last_arrival
            if device_step <= 0 or abs(device_step - host_step) > self.config.jump_threshold_s:
                self.reset()
        self._last_device, self._last_arrival = device_time_s, arrival
        offset = arrival - device_time_s
        # Monotonic deque of candidate minima: drop older entries that are no better than this one.
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()
        self._offsets.append((arrival, offset))
        while self._offsets[0][0] < arrival - self.config.window_s:
            self._offsets.popleft()
        stamp_ns = min(int(round((device_time_s + self._offsets[0][1]) * 1e9)), arrival_ns)
        if self._last_out_ns is not None and stamp_ns <= self._last_out_ns:
            stamp_ns = self._last_out_ns + 1
        self._last_out_ns = stamp_ns
        return stamp_ns
