"""Tasks: language instruction, seeded randomisation of the cell, ground-truth success.

As in iRe-VLA, tasks are split into EXPERT_TASKS (expert demos exist, used for SFT) and NEW_TASKS (unseen colours,
objects or layouts, used to measure how online RL generalises). Every task is short (≤ 60 control steps at 10 Hz)
so a head-only learner on a CPU can make progress on the reach task within minutes.

ROS-free and mode-free: a task only reads/writes the cell through `World`, so faithful and fast mode share the
same randomisation and success semantics by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from irevla_ros.sim import scene as sc
from irevla_ros.sim.world import World

COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.0, 1.0),
}
EXPERT_COLORS = ("red", "green", "blue")
NEW_COLORS = ("yellow", "purple", "orange")
ZONE_RGBA = (0.95, 0.95, 0.95, 1.0)

# Success thresholds (m).
REACH_TOLERANCE = 0.04
LIFT_HEIGHT = 0.08  # object centre above the table top
BUTTON_PRESSED = 0.007  # cap travel (of sc.BUTTON_TRAVEL)
DRAWER_OPEN = 0.09

# Where objects may be placed (robot base frame, table top z = 0): inside the arm's comfortable workspace.
X_RANGE = (0.35, 0.62)
Y_RANGE = (-0.22, 0.22)


@dataclass
class Episode:
    """One randomised instance of a task: what to say, what was placed where, how success is judged."""

    task: str
    seed: int
    instruction: str
    params: dict = field(default_factory=dict)
    _success: Callable[[World], bool] | None = None

    def success(self, world: World) -> bool:
        assert self._success is not None
        return bool(self._success(world))


@dataclass(frozen=True)
class Task:
    name: str
    split: str  # "expert" | "new"
    description: str
    max_steps: int  # control steps at 10 Hz
    setup: Callable[[World, np.random.Generator, int], Episode]


def _sample_xy(rng: np.random.Generator, taken: list[np.ndarray], min_dist: float,
               x_range=X_RANGE, y_range=Y_RANGE) -> np.ndarray:
    for _ in range(1000):
        p = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
        if all(np.linalg.norm(p - t) >= min_dist for t in taken):
            taken.append(p)
            return p
    raise RuntimeError("could not place objects with the requested spacing")


# --- reach ---------------------------------------------------------------------------------------------
def _reach(colors: tuple[str, ...]) -> Callable[[World, np.random.Generator, int], Episode]:
    def setup(world: World, rng: np.random.Generator, seed: int) -> Episode:
        names = list(rng.permutation(colors))
        taken: list[np.ndarray] = []
        positions = []
        for i in range(sc.N_TARGETS):
            xy = _sample_xy(rng, taken, 0.12)
            p = np.array([xy[0], xy[1], rng.uniform(0.06, 0.3)])
            world.set_mocap(f"target{i}", p)
            world.set_rgba(f"target{i}_geom", COLORS[names[i]])
            positions.append(p)
        goal = "target0"
        color = names[0]

        def success(w: World) -> bool:
            return float(np.linalg.norm(w.tcp_position() - w.mocap_position(goal))) < REACH_TOLERANCE

        return Episode("", seed, f"reach the {color} ball", {"object": goal, "color": color}, success)

    return setup


# --- pick and lift -------------------------------------------------------------------------------------
def _pick(colors: tuple[str, ...], obj: str, noun: str) -> Callable[[World, np.random.Generator, int], Episode]:
    def setup(world: World, rng: np.random.Generator, seed: int) -> Episode:
        names = list(rng.permutation(colors))
        taken: list[np.ndarray] = []
        xy = _sample_xy(rng, taken, 0.12, x_range=(0.4, 0.6), y_range=(-0.18, 0.18))
        height = sc.CYLINDER_HALF_HEIGHT if obj.startswith("cylinder") else sc.CUBE_HALF
        world.set_free(obj, [xy[0], xy[1], height + 1e-4], yaw=rng.uniform(-0.5, 0.5))
        world.set_rgba(f"{obj}_geom", COLORS[names[0]])
        distractor = "cube1" if obj != "cube1" else "cube0"
        dxy = _sample_xy(rng, taken, 0.12, x_range=(0.4, 0.6), y_range=(-0.18, 0.18))
        world.set_free(distractor, [dxy[0], dxy[1], sc.CUBE_HALF + 1e-4], yaw=rng.uniform(-0.5, 0.5))
        world.set_rgba(f"{distractor}_geom", COLORS[names[1]])

        def success(w: World) -> bool:
            return float(w.free_position(obj)[2]) > LIFT_HEIGHT

        return Episode("", seed, f"pick up the {names[0]} {noun}", {"object": obj, "color": names[0]}, success)

    return setup


# --- push into a zone -----------------------------------------------------------------------------------
def _push(colors: tuple[str, ...], angle_range: tuple[float, float]) -> Callable[[World, np.random.Generator, int],
                                                                               Episode]:
    def setup(world: World, rng: np.random.Generator, seed: int) -> Episode:
        color = str(rng.choice(colors))
        for _ in range(1000):
            cube = np.array([rng.uniform(0.42, 0.56), rng.uniform(-0.12, 0.12)])
            angle = rng.uniform(*angle_range)
            dist = rng.uniform(0.12, 0.17)
            zone = cube + dist * np.array([np.cos(angle), np.sin(angle)])
            if X_RANGE[0] <= zone[0] <= X_RANGE[1] + 0.03 and Y_RANGE[0] <= zone[1] <= Y_RANGE[1]:
                break
        world.set_free("cube0", [cube[0], cube[1], sc.CUBE_HALF + 1e-4], yaw=rng.uniform(-0.3, 0.3))
        world.set_rgba("cube0_geom", COLORS[color])
        world.set_mocap("zone0", [zone[0], zone[1], 0.0008])
        world.set_rgba("zone0_geom", ZONE_RGBA)

        def success(w: World) -> bool:
            p = w.free_position("cube0")
            return float(np.linalg.norm(p[:2] - w.mocap_position("zone0")[:2])) < sc.ZONE_RADIUS - 0.01 and p[2] < 0.05

        return Episode("", seed, f"push the {color} cube onto the white circle",
                       {"object": "cube0", "zone": "zone0", "color": color}, success)

    return setup


# --- press a button -------------------------------------------------------------------------------------
def _button(colors: tuple[str, ...], x_range=X_RANGE, y_range=Y_RANGE) -> Callable[[World, np.random.Generator, int],
                                                                                  Episode]:
    def setup(world: World, rng: np.random.Generator, seed: int) -> Episode:
        color = str(rng.choice(colors))
        xy = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
        world.set_mocap("button0", [xy[0], xy[1], 0.0], yaw=rng.uniform(-0.5, 0.5))
        world.set_rgba("button0_geom", COLORS[color])

        def success(w: World) -> bool:
            return -w.slide_position("button0_joint") > BUTTON_PRESSED

        return Episode("", seed, f"press the {color} button", {"object": "button0", "color": color}, success)

    return setup


# --- open a drawer --------------------------------------------------------------------------------------
def _drawer(x_range: tuple[float, float], y_range: tuple[float, float], front: str) -> Callable[
        [World, np.random.Generator, int], Episode]:
    def setup(world: World, rng: np.random.Generator, seed: int) -> Episode:
        xy = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
        world.set_mocap("drawer0", [xy[0], xy[1], 0.0])
        world.set_rgba("drawer0_front", COLORS[front])

        def success(w: World) -> bool:
            return w.slide_position("drawer0_joint") > DRAWER_OPEN

        return Episode("", seed, f"open the {front} drawer", {"object": "drawer0", "color": front}, success)

    return setup


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("reach", "expert", "move the gripper to the ball of the named colour (two distractors)", 40,
             _reach(EXPERT_COLORS)),
        Task("pick", "expert", "grasp the named cube and lift it", 60, _pick(EXPERT_COLORS, "cube0", "cube")),
        Task("push", "expert", "push a cube onto a white circle (away from / beside the robot)", 60,
             _push(EXPERT_COLORS, (-np.pi / 2, np.pi / 2))),
        Task("button", "expert", "press the button down", 40, _button(EXPERT_COLORS)),
        Task("drawer", "expert", "pull the drawer open by its handle", 60, _drawer((0.56, 0.64), (-0.1, 0.1), "blue")),
        # New tasks: unseen colours, an unseen object, unseen layouts.
        Task("reach_novel", "new", "reach, with colours never seen in the expert data", 40, _reach(NEW_COLORS)),
        Task("pick_cylinder", "new", "pick up a cylinder (object never seen in the expert data)", 60,
             _pick(NEW_COLORS, "cylinder0", "cylinder")),
        Task("push_novel", "new", "push toward the robot (unseen layout), unseen colours", 60,
             _push(NEW_COLORS, (np.pi / 2 + 0.3, 3 * np.pi / 2 - 0.3))),
        Task("button_novel", "new", "press a button of an unseen colour", 40, _button(NEW_COLORS)),
        Task("drawer_novel", "new", "open a drawer of an unseen colour, placed further to the side", 60,
             _drawer((0.56, 0.64), (-0.2, -0.12), "orange")),
    )
}
EXPERT_TASKS = tuple(n for n, t in TASKS.items() if t.split == "expert")
NEW_TASKS = tuple(n for n, t in TASKS.items() if t.split == "new")


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def randomize(world: World, task: str, seed: int) -> Episode:
    """Park every object, then let `task` place its objects from `seed`. Reproducible: same seed, same layout.
    Does not touch the arm (the robot's own reset does) and does not step physics; calls mj_forward."""
    spec = get_task(task)
    world.park_all()
    episode = spec.setup(world, np.random.default_rng(seed), seed)
    episode.task = task
    world.forward()
    return episode
