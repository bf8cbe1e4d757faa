"""SimEnv: the cell as a gym-like environment in sim time, no ROS (tests, benchmarks, demos, reward data).

    env = SimEnv("reach", seed=0)
    obs = env.reset()
    obs, success, info = env.step(action7)   # action7 in interfaces.ACTION_LABELS order, each in [-1, 1]
    env.close()

Actions go through the franka node's own FrankaController (validation, scaling, per-tick caps, anti-windup,
workspace box, gripper hysteresis, watchdog) clocked by sim time, and the arm is the fast MuJoCo backend
(MujocoFastRobot): the same composition the sim_world node runs in fast mode.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import mujoco
import numpy as np

from irevla_ros.core.control.franka_controller import FrankaControlConfig, FrankaController
from irevla_ros.robot.base import HOME_JOINTS
from irevla_ros.robot.mujoco_fast import MujocoFastRobot
from irevla_ros.sim import scene as sc
from irevla_ros.sim.control import sim_control_config
from irevla_ros.sim.render import CameraRenderer
from irevla_ros.sim.tasks import Episode, get_task, randomize
from irevla_ros.sim.world import World

SETTLE_S = 0.1  # s of physics after a reset so objects rest on the table before the first frame
RANDOM_START_S = 1.5  # s of sim time given to the arm to reach a random start pose
RANDOM_START_MIN_Z = 0.15  # m above the table: clear of the tallest object (the drawer cabinet, 7.5 cm)


@functools.lru_cache(maxsize=1)
def _cached_xml() -> str:
    return sc.scene_xml()


def _image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = (int(v) for v in image_size)
    return h, w


class SimEnv:
    def __init__(self, task: str, seed: int = 0, image_size: int | Sequence[int] = 128,
                 cameras: Sequence[str] = ("wrist", "front"), control_hz: float = 10.0, *,
                 control: FrankaControlConfig | None = None, control_decimation: int = 4,
                 render_detail: str = "fast", random_start: bool = False):
        get_task(task)  # raises ValueError naming the known tasks
        if not (np.isfinite(control_hz) and 1.0 <= control_hz <= 100.0):
            raise ValueError(f"control_hz must be in [1, 100], got {control_hz!r}")
        self.task = task
        self.control_hz = float(control_hz)
        self._next_seed = int(seed)
        self.model = sc.compile_model(_cached_xml())
        self.data = mujoco.MjData(self.model)
        self.world = World(self.model, self.data)
        self.robot = MujocoFastRobot(self.world, control_decimation=control_decimation)
        self.controller = FrankaController(self.robot, control or sim_control_config(), clock=self._now)
        h, w = _image_hw(image_size)
        self.cameras = tuple(cameras)
        self.renderer = (CameraRenderer(self.model, w, h, self.cameras, detail=render_detail)
                         if self.cameras else None)
        self.random_start = bool(random_start)
        self.episode: Episode | None = None
        self.steps = 0
        self.robot.teleport(HOME_JOINTS)
        self.controller.start()

    def _now(self) -> float:
        return float(self.data.time)

    @property
    def max_steps(self) -> int:
        return get_task(self.task).max_steps

    @property
    def instruction(self) -> str:
        return self.episode.instruction if self.episode else ""

    def reset(self, seed: int | None = None, task: str | None = None) -> dict:
        """Arm home (at rest, gripper open) or, with random_start, at a random pose in the workspace drawn from
        `seed`; objects re-randomised from `seed` (default: the next seed)."""
        if task is not None:
            get_task(task)
            self.task = task
        if seed is None:
            seed = self._next_seed
        self._next_seed = int(seed) + 1
        self.data.time = 0.0
        self.episode = randomize(self.world, self.task, int(seed))
        self.controller.reset()  # the franka reset path: home (teleported in sim), gripper open, target cleared
        if self.random_start:
            # Like the franka node's reset_mode "random": a pose inside the box near the home orientation, reached
            # by the arm itself (in sim time; the controller's wall-clock wait would not advance physics).
            cfg = self.controller.config
            goal = self.controller.box.sample(np.random.default_rng([int(seed), 7]), cfg.reset_random_margin_m,
                                              cfg.reset_random_max_tilt_rad, cfg.reset_random_max_yaw_rad)
            start = goal.position.copy()
            start[2] = max(start[2], RANDOM_START_MIN_Z)  # above every object: a start must not disturb the scene
            self.robot.move_ee_async(start, goal.quaternion)
            self.robot.advance(RANDOM_START_S)
            self.robot.hold()
        self.robot.advance(SETTLE_S)
        self.controller.update_state()
        self.steps = 0
        return self.observe()

    def step(self, action) -> tuple[dict, bool, dict]:
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        target = self.controller.on_action(np.asarray(action, dtype=np.float64))  # raises InvalidAction
        self.robot.advance(1.0 / self.control_hz)
        self.controller.update_state()
        self.controller.tick()
        self.steps += 1
        success = self.success()
        info = {"steps": self.steps, "task": self.task, "seed": self.episode.seed,
                "timeout": self.steps >= self.max_steps, "target_position": target.position}
        return self.observe(), success, info

    def success(self) -> bool:
        return bool(self.episode is not None and self.episode.success(self.world))

    def observe(self) -> dict:
        s = self.robot.read_state()
        images = self.renderer.render_all(self.data) if self.renderer else {}
        return {"images": images, "ee_position": s.ee_position, "ee_quaternion": s.ee_quaternion,
                "gripper_width": s.gripper_width, "instruction": self.instruction,
                "joint_positions": s.joint_positions, "time": s.time}

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
