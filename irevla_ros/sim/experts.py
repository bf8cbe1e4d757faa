"""Scripted experts: privileged (ground-truth) state -> normalised 7-D action, one per task family.

Stateless on purpose: each call decides from the current world state (TCP, gripper width, object poses) what
to do next, so an expert can take over mid-episode (after a human or a policy) and works the same in fast mode
(SimEnv) and in faithful mode (the sim_world node reads the same World).
"""

from __future__ import annotations

import numpy as np

from irevla_ros.core.safety.pose import rotation_between
from irevla_ros.sim import scene as sc
from irevla_ros.sim.control import SIM_MAX_ROTATION_PER_TICK, SIM_MAX_TRANSLATION_PER_TICK
from irevla_ros.sim.tasks import Episode
from irevla_ros.sim.world import World

DOWN = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down (x, y, z, w), the workspace reference
OPEN, CLOSE = -1.0, 1.0


def _move(world: World, goal: np.ndarray, gripper: float, step: float) -> np.ndarray:
    a = np.zeros(7)
    a[:3] = np.clip((np.asarray(goal) - world.tcp_position()) / step, -1.0, 1.0)
    r = rotation_between(world.tcp_quaternion_xyzw(), DOWN)  # keep the gripper pointing down
    a[3:6] = np.clip(r / SIM_MAX_ROTATION_PER_TICK, -1.0, 1.0)
    a[6] = gripper
    return a


def _reach(world: World, ep: Episode, step: float) -> np.ndarray:
    return _move(world, world.mocap_position(ep.params["object"]), OPEN, step)


def _pick(world: World, ep: Episode, step: float) -> np.ndarray:
    obj = world.free_position(ep.params["object"])
    tcp = world.tcp_position()
    width = world.gripper_width()
    xy_err = float(np.linalg.norm(tcp[:2] - obj[:2]))
    z_err = tcp[2] - obj[2]
    holding = 0.02 < width < 0.06 and xy_err < 0.02 and abs(z_err) < 0.03
    if holding:
        return _move(world, [obj[0], obj[1], 0.2], CLOSE, step)
    if xy_err > 0.012:
        height = 0.08 if xy_err > 0.03 else max(z_err, 0.0) + obj[2]
        return _move(world, [obj[0], obj[1], obj[2] + max(height - obj[2], 0.0)], OPEN, step)
    if z_err > 0.008:
        return _move(world, obj, OPEN, step)
    return _move(world, obj, CLOSE, step)  # at the object: close (the latch closes once), then lift


def _push(world: World, ep: Episode, step: float) -> np.ndarray:
    cube = world.free_position(ep.params["object"])
    zone = world.mocap_position(ep.params["zone"])
    tcp = world.tcp_position()
    d = zone[:2] - cube[:2]
    dist = float(np.linalg.norm(d))
    if dist < 0.01:
        return _move(world, [tcp[0], tcp[1], 0.1], CLOSE, step)  # done: back off upward
    d /= dist
    rel = tcp[:2] - cube[:2]
    behind = float(rel @ d)  # < 0: on the side away from the zone
    lateral = abs(float(rel[0] * d[1] - rel[1] * d[0]))
    push_z = 0.025
    standoff = sc.CUBE_HALF + 0.03
    pre = cube[:2] - d * standoff
    if behind < -0.02 and lateral < 0.015 and tcp[2] < push_z + 0.015:
        goal_xy = zone[:2] - d * (standoff - 0.01)  # drive the cube centre onto the zone centre
        return _move(world, [goal_xy[0], goal_xy[1], push_z], CLOSE, step)
    near_pre = float(np.linalg.norm(tcp[:2] - pre))
    if near_pre < 0.012:
        return _move(world, [pre[0], pre[1], push_z], CLOSE, step)
    if tcp[2] < 0.07 and near_pre > 0.03:
        return _move(world, [tcp[0], tcp[1], 0.1], CLOSE, step)  # lift clear before repositioning
    return _move(world, [pre[0], pre[1], 0.09], CLOSE, step)


def _button(world: World, ep: Episode, step: float) -> np.ndarray:
    base = world.mocap_position(ep.params["object"])
    tcp = world.tcp_position()
    if float(np.linalg.norm(tcp[:2] - base[:2])) > 0.01:
        return _move(world, [base[0], base[1], max(0.1, min(tcp[2], 0.12))], CLOSE, step)
    return _move(world, [base[0], base[1], 0.025], CLOSE, step)


def _drawer(world: World, ep: Episode, step: float) -> np.ndarray:
    cab = world.mocap_position(ep.params["object"])
    s = world.slide_position("drawer0_joint")
    hook = cab + np.array([sc.DRAWER_HOOK_X - s, 0.0, sc.DRAWER_HANDLE_Z])
    tcp = world.tcp_position()
    xy_err = float(np.linalg.norm(tcp[:2] - hook[:2]))
    low = tcp[2] < hook[2] + 0.02
    if low and xy_err < 0.02:
        return _move(world, [hook[0] - 0.04, hook[1], hook[2]], CLOSE, step)  # pull toward the robot
    if xy_err < 0.008:
        return _move(world, hook, CLOSE, step)
    if tcp[2] < 0.1 and xy_err > 0.02:
        return _move(world, [tcp[0], tcp[1], 0.13], CLOSE, step)
    return _move(world, [hook[0], hook[1], 0.12], CLOSE, step)


_EXPERTS = {"reach": _reach, "pick": _pick, "push": _push, "button": _button, "drawer": _drawer}


def family(task: str) -> str:
    """'reach_novel' -> 'reach', 'pick_cylinder' -> 'pick' ..."""
    return task.split("_")[0]


def expert_action(env_or_world, episode: Episode | str | None = None, *, step: float | None = None) -> np.ndarray:
    """The expert's next action. Pass a SimEnv (optionally with its task name, checked), or a World plus its
    current Episode (faithful mode: the sim_world node)."""
    if isinstance(episode, str):
        current = getattr(env_or_world, "task", None)
        if current != episode:
            raise ValueError(f"expert_action: the environment runs task {current!r}, not {episode!r}")
        episode = None
    if episode is None:
        world, episode = env_or_world.world, env_or_world.episode
        if episode is None:
            raise RuntimeError("the environment has no episode yet: call reset() first")
        step = step or env_or_world.controller.config.max_translation_per_tick
    else:
        world = env_or_world
    step = step or SIM_MAX_TRANSLATION_PER_TICK
    fn = _EXPERTS.get(family(episode.task))
    if fn is None:
        raise ValueError(f"no expert for task {episode.task!r}")
    return np.clip(fn(world, episode, step), -1.0, 1.0)
