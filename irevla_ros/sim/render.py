"""Offscreen camera rendering of the cell with fast settings, and the matching pinhole intrinsics.

Fast settings: no MSAA (offsamples=0 in the scene), no shadows, no reflections, no skybox, and the robot drawn
with its collision meshes (~2k faces) instead of its visual meshes (~240k faces, ~40 ms per frame on a CPU):
detail="full" draws the visual meshes. One `mujoco.Renderer` per image size; `close()` frees the GL context
explicitly (leaked EGL contexts pile up in long test runs). An EGL context belongs to the thread that made it.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np

from irevla_ros.sim.scene import CAMERA_BY_NAME

DETAILS = ("fast", "full")


def intrinsics(camera: str, width: int, height: int) -> np.ndarray:
    """3x3 K of a MuJoCo camera (fovy is vertical; square pixels; principal point at the image centre, in the
    ROS/OpenCV convention where pixel (0, 0)'s centre has coordinates (0, 0))."""
    fovy = math.radians(CAMERA_BY_NAME[camera].fovy_deg)
    f = 0.5 * height / math.tan(0.5 * fovy)
    return np.array([[f, 0.0, 0.5 * (width - 1)], [0.0, f, 0.5 * (height - 1)], [0.0, 0.0, 1.0]])


class CameraRenderer:
    """Renders named cell cameras to uint8 HxWx3 arrays."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int, cameras=("wrist", "front"),
                 *, shadows: bool = False, detail: str = "fast"):
        unknown = [c for c in cameras if c not in CAMERA_BY_NAME]
        if unknown:
            raise ValueError(f"unknown camera(s) {unknown}; the cell has {sorted(CAMERA_BY_NAME)}")
        if not (16 <= width <= 640 and 16 <= height <= 640):
            raise ValueError(f"image size must be within 16..640 px, got {width}x{height}")
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {DETAILS}, got {detail!r}")
        self.cameras = tuple(cameras)
        self.width, self.height = int(width), int(height)
        self._renderer = mujoco.Renderer(model, height=self.height, width=self.width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = bool(shadows)
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        self._option = mujoco.MjvOption()
        if detail == "fast":  # franky-sim's FR3: group 2 = visual meshes, group 3 = collision meshes
            self._option.geomgroup[2] = 0
            self._option.geomgroup[3] = 1
        self._camera_ids = {c: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, f"{c}_camera") for c in cameras}

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        self._renderer.update_scene(data, camera=self._camera_ids[camera], scene_option=self._option)
        return self._renderer.render()  # fresh array each call

    def render_all(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        return {c: self.render(data, c) for c in self.cameras}

    def intrinsics(self, camera: str) -> np.ndarray:
        return intrinsics(camera, self.width, self.height)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> CameraRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; callers close explicitly
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
