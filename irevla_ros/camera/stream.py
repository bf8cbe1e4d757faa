"""Keep a camera streaming: a reader thread that reopens the device after a USB drop, without a node restart.

ROS-free. States: connecting -> streaming -> lost -> (connecting ...) -> streaming; a recording's end gives
`finished` (or a restart from the beginning with `loop=True`); `stopped` after `stop()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from irevla_ros.camera.base import (
    Camera,
    CameraDisconnectedError,
    CameraEndOfStreamError,
    CameraError,
    CameraFrame,
    CameraNotFoundError,
)

_log = logging.getLogger(__name__)

CONNECTING, STREAMING, LOST, FINISHED, STOPPED = "connecting", "streaming", "lost", "finished", "stopped"


@dataclass(frozen=True)
class StreamConfig:
    frame_timeout_s: float = 1.0
    """No frame for this long = the device is lost (a USB drop); then it is reopened."""
    reconnect_interval_s: float = 1.0
    """Pause between attempts to reopen a lost device."""
    loop: bool = False
    """Recordings: start again from the beginning at the end (else the stream is finished)."""

    def __post_init__(self) -> None:
        for name in ("frame_timeout_s", "reconnect_interval_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 < value <= 60):
                raise ValueError(f"{name} must be in (0, 60] seconds, got {value!r}")


class CameraStream:
    """Runs `camera.read` in a thread; calls `on_frame(frame)` per frame, `on_status(state, message)` on
    every state change. Callbacks run in the reader thread: keep them short (publish, don't compute)."""

    def __init__(self, camera: Camera, on_frame: Callable[[CameraFrame], None],
                 on_status: Callable[[str, str], None] | None = None, config: StreamConfig | None = None) -> None:
        self.camera = camera
        self.on_frame = on_frame
        self.on_status = on_status or (lambda state, message: None)
        self.config = config or StreamConfig()
        self.state = CONNECTING
        self.message = ""
        self.frames = 0
        self.reconnects = 0
        self.last_frame_monotonic: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading (the camera may already be open: start-up checks open it synchronously)."""
        if self._thread is not None:
            raise RuntimeError("stream already started")
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"camera-{self.camera.name}")
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.camera.close()
        self._set(STOPPED, "")

    def _set(self, state: str, message: str) -> None:
        if state != self.state or message != self.message:
            self.state, self.message = state, message
            try:
                self.on_status(state, message)
            except Exception:  # noqa: BLE001 - a callback bug must not kill the reader thread
                _log.exception("camera %s: status callback failed", self.camera.name)

    def _run(self) -> None:
        was_streaming = False
        while not self._stop.is_set():
            if not self.camera.is_open:
                try:
                    self.camera.open()
                except CameraNotFoundError as exc:
                    self._set(LOST if was_streaming else CONNECTING, str(exc))
                    self._stop.wait(self.config.reconnect_interval_s)
                    continue
                except CameraError as exc:  # found but misconfigured (mode missing...): keep telling the user
                    self.camera.close()
                    self._set(LOST if was_streaming else CONNECTING, str(exc))
                    self._stop.wait(self.config.reconnect_interval_s)
                    continue
                if was_streaming:
                    self.reconnects += 1
            try:
                frame = self.camera.read(self.config.frame_timeout_s)
            except CameraEndOfStreamError as exc:
                self.camera.close()
                if not self.config.loop:
                    self._set(FINISHED, str(exc))
                    return
                continue
            except CameraDisconnectedError as exc:
                self.camera.close()
                self._set(LOST, f"{exc}; reconnecting")
                was_streaming = True
                continue
            if self._stop.is_set():
                return
            self.frames += 1
            self.last_frame_monotonic = time.monotonic()
            was_streaming = True
            self._set(STREAMING, "reconnected" if self.reconnects else "")
            try:
                self.on_frame(frame)
            except Exception:  # noqa: BLE001 - a callback bug must not kill the reader thread
                _log.exception("camera %s: frame callback failed", self.camera.name)
