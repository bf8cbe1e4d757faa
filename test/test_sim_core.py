"""The simulated cell without ROS: tasks, success predicates, experts, SimEnv, cameras, the fast MuJoCo backend.

Everything here is real MuJoCo physics and real offscreen rendering (EGL); no mocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from irevla_ros import interfaces as itf
from irevla_ros.core.safety import InvalidAction
from irevla_ros.robot.base import HOME_JOINTS
from irevla_ros.sim import scene as sc
from irevla_ros.sim.env import SimEnv
from irevla_ros.sim.experts import expert_action
from irevla_ros.sim.tasks import EXPERT_TASKS, NEW_TASKS, TASKS, get_task, randomize

POS_TOL = 0.003  # m: impedance tracking error allowed once settled
PIXEL_TOL = 2.5  # px: projected point vs rendered blob centroid (shading biases the blob slightly)


@pytest.fixture(scope="module")
def env():
    e = SimEnv("reach", seed=0, image_size=96)
    yield e
    e.close()


def _layout(world) -> np.ndarray:
    parts = [world.mocap_position(n) for n in world.mocap] + [world.free_position(n) for n in world.free]
    return np.concatenate(parts)


def test_task_registry_split_and_instructions():
    assert len(EXPERT_TASKS) >= 5 and len(NEW_TASKS) >= 4
    assert not set(EXPERT_TASKS) & set(NEW_TASKS)
    assert set(EXPERT_TASKS) | set(NEW_TASKS) == set(TASKS)
    for name, task in TASKS.items():
        assert 0 < task.max_steps <= 60, name
    with pytest.raises(ValueError, match="unknown task"):
        get_task("fly")


def test_randomisation_is_reproducible_per_seed(env):
    for task in ("reach", "pick", "push", "button", "drawer"):
        a = randomize(env.world, task, 7)
        layout_a = _layout(env.world)
        b = randomize(env.world, task, 7)
        assert a.instruction == b.instruction and np.allclose(layout_a, _layout(env.world)), task
        randomize(env.world, task, 8)
        assert not np.allclose(layout_a, _layout(env.world)), f"{task}: seed 8 gave seed 7's layout"


def test_new_tasks_use_unseen_colours_or_objects():
    from irevla_ros.sim.env import SimEnv

    with SimEnv("reach", seed=0, cameras=()) as e:
        seen = {w for t in EXPERT_TASKS for s in range(5) for w in e.reset(seed=s, task=t)["instruction"].split()}
        for t in NEW_TASKS:
            words = set(e.reset(seed=0, task=t)["instruction"].split())
            assert words - seen, f"{t}: instruction uses only words from the expert tasks: {words}"


@pytest.mark.parametrize("task", list(TASKS))
def test_expert_succeeds_and_success_starts_false(task):
    """A handful of seeds per task (the full rate is in bench/sim_speed.py --experts)."""
    with SimEnv(task, seed=100, cameras=()) as e:
        for seed in (100, 101, 102):
            e.reset(seed=seed)
            assert not e.success(), f"{task} seed {seed}: success before any action"
            done = False
            for _ in range(e.max_steps):
                _, done, _ = e.step(expert_action(e))
                if done:
                    break
            assert done, f"{task} seed {seed}: expert failed within {e.max_steps} steps"


def test_observation_layout(env):
    obs = env.reset(seed=3)
    assert set(obs["images"]) == {"wrist", "front"}
    for img in obs["images"].values():
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert img.std() > 5.0, "blank frame"
    assert obs["ee_position"].shape == (3,) and obs["ee_quaternion"].shape == (4,)
    assert obs["instruction"].startswith("reach the ")
    assert 0.07 < obs["gripper_width"] <= 0.081


def test_action_moves_ee_in_commanded_direction_and_scaling(env):
    env.reset(seed=0)
    step = env.controller.config.max_translation_per_tick
    for axis, label in enumerate(("dx", "dy", "dz")):
        for sign in (1.0, -1.0):
            start = env.observe()["ee_position"]
            a = np.zeros(7)
            a[axis] = sign
            for _ in range(3):
                obs, _, _ = env.step(a)
            moved = obs["ee_position"] - start
            assert sign * moved[axis] > 2.5 * step, f"{label}={sign}: moved {moved}"
            off = np.delete(moved, axis)
            assert np.all(np.abs(off) < 0.01), f"{label}={sign}: drifted {moved}"


def test_bad_actions_are_rejected_and_change_nothing(env):
    env.reset(seed=0)
    before = env.observe()
    for bad in ([np.nan] * 7, [0.0] * 6, [2.0, 0, 0, 0, 0, 0, 0], [np.inf, 0, 0, 0, 0, 0, 0]):
        with pytest.raises(InvalidAction):
            env.step(bad)
    assert env.steps == 0
    assert np.allclose(env.observe()["ee_position"], before["ee_position"], atol=1e-9)


def test_reset_restores_home_and_opens_gripper(env):
    env.reset(seed=0)
    for _ in range(8):
        env.step([0.5, 0.5, -1.0, 0, 0, 0.5, 1.0])
    assert not np.allclose(env.world.arm_q(), HOME_JOINTS, atol=0.05)
    env.reset(seed=0)
    assert np.allclose(env.world.arm_q(), HOME_JOINTS, atol=0.01)
    assert env.observe()["gripper_width"] > 0.075


def _blob_centroid(img: np.ndarray, rgb) -> np.ndarray:
    mask = np.all(np.abs(img.astype(int) - np.asarray(rgb)) < 40, axis=-1)
    assert mask.sum() > 3, "marker not visible"
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def _project(env, camera: str, point: np.ndarray) -> np.ndarray:
    """Pinhole projection with the published intrinsics (MuJoCo camera: -z forward, +y up)."""
    import mujoco

    cid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, f"{camera}_camera")
    R = env.data.cam_xmat[cid].reshape(3, 3)
    p_cam = R.T @ (point - env.data.cam_xpos[cid])
    x, y, z = p_cam[0], -p_cam[1], -p_cam[2]  # to the optical frame: x right, y down, z forward
    K = env.renderer.intrinsics(camera)
    return np.array([K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]])


def test_front_camera_is_upright_and_matches_its_intrinsics(env):
    env.reset(seed=0)
    world = env.world
    marker = (255, 0, 255)
    world.set_rgba("target1_geom", (1.0, 0.0, 1.0, 1.0))
    world.set_mocap("target2", sc.PARK_POSITION)
    world.set_mocap("target0", sc.PARK_POSITION)
    centroids = {}
    for name, p in {"low": [0.5, 0.0, 0.05], "high": [0.5, 0.0, 0.25], "left": [0.5, 0.15, 0.05]}.items():
        world.set_mocap("target1", p)
        world.forward()
        img = env.renderer.render(env.data, "front")
        centroids[name] = _blob_centroid(img, marker)
        assert np.linalg.norm(centroids[name] - _project(env, "front", np.array(p))) < PIXEL_TOL, name
    assert centroids["high"][1] < centroids["low"][1] - 5, "higher point must appear higher in the image"
    assert centroids["left"][0] > centroids["low"][0] + 5, "+y must be image right for the front camera"


def test_frames_change_when_the_arm_moves(env):
    obs0 = env.reset(seed=0)
    for _ in range(4):
        obs1, _, _ = env.step([0.0, 1.0, -1.0, 0, 0, 0, 0])
    for cam in ("wrist", "front"):
        diff = np.abs(obs1["images"][cam].astype(int) - obs0["images"][cam].astype(int)).mean()
        assert diff > 1.0, f"{cam} frame did not change when the arm moved ({diff:.2f})"


def test_fast_backend_tracks_targets_and_grasps(env):
    robot = env.robot
    env.reset(seed=0, task="pick")
    state = robot.read_state()
    goal = state.ee_position + np.array([0.05, -0.04, -0.1])
    robot.move_ee_async(goal, state.ee_quaternion)
    robot.advance(0.8)
    assert np.linalg.norm(robot.read_state().ee_position - goal) < POS_TOL
    with pytest.raises(ValueError):
        robot.move_ee_async(np.array([np.nan, 0, 0]), state.ee_quaternion)
    with pytest.raises(ValueError):
        robot.move_ee_async(goal, np.array([0.0, 0.0, 0.0, 0.1]))
    # Grasp a cube: fingers stop at the cube's width instead of closing.
    cube = env.world.free_position("cube0")
    robot.move_ee_async(cube, state.ee_quaternion)
    robot.advance(1.0)
    robot.gripper_grasp()
    robot.advance(1.0)
    s = robot.read_state()
    assert abs(s.gripper_width - 2 * sc.CUBE_HALF) < 0.006 and s.gripper_grasped
    robot.move_ee_async(cube + [0, 0, 0.15], state.ee_quaternion)
    robot.advance(1.0)
    assert env.world.free_position("cube0")[2] > 0.12, "cube not lifted with the gripper"
    robot.gripper_open()
    robot.advance(1.0)
    assert robot.read_state().gripper_width > 0.075
    assert env.world.free_position("cube0")[2] < 0.05, "cube did not drop when the gripper opened"


def test_faithful_and_fast_share_model_layout_and_success():
    """franky-sim's compiled scene and the fast mode's model are the same cell: same bodies and geometry, same
    randomised layout per seed, same success verdict on the same state."""
    import mujoco

    from irevla_ros.sim.world import World

    sim = sc.make_simulator()
    sim.init()
    sim.start()  # what SimulationServer.init does after binding its ports
    try:
        fw = World(sim.model, sim.data)
        with SimEnv("push", seed=0, cameras=()) as e:
            assert (sim.model.nq, sim.model.nv, sim.model.nbody, sim.model.ngeom) == \
                (e.model.nq, e.model.nv, e.model.nbody, e.model.ngeom)
            assert np.allclose(sim.model.geom_size, e.model.geom_size)
            assert np.allclose(sim.model.body_mass, e.model.body_mass)
            assert sim.model.opt.timestep == e.model.opt.timestep
            for task in ("reach", "pick", "push", "button", "drawer"):
                ep_fast = randomize(e.world, task, 11)
                ep_faithful = randomize(fw, task, 11)
                assert ep_fast.instruction == ep_faithful.instruction
                assert np.allclose(_layout(e.world), _layout(fw))
                # Drive the fast copy to success with the expert, then copy its state into the faithful model.
                e.episode = ep_fast
                e.controller.reset()
                for _ in range(e.max_steps):
                    _, done, _ = e.step(expert_action(e))
                    if done:
                        break
                assert done
                sim.data.qpos[:] = e.data.qpos
                sim.data.mocap_pos[:] = e.data.mocap_pos
                mujoco.mj_forward(sim.model, sim.data)
                assert ep_faithful.success(fw), f"{task}: faithful model disagrees on success"
    finally:
        sim.cleanup()


def test_camera_names_match_the_interfaces():
    assert {c.name for c in sc.CAMERAS} == set(itf.CAMERA_NAMES)


def test_demos_cli_records_successful_expert_episodes(tmp_path):
    from irevla_ros.cli import main
    from irevla_ros.core.data.episodes import EpisodeStore

    out = tmp_path / "demos"
    assert main(["demos", "--task", "button", "--episodes", "2", "--out", str(out), "--image-size", "32",
                 "--seed", "4"]) == 0
    store = EpisodeStore(out)
    infos = store.infos()
    assert len(infos) == 2 and all(i.success and i.source == "expert" for i in infos)
    ep = store.load(infos[0])
    assert ep.frames("wrist").shape[1:] == (32, 32, 3) and ep.frames("front").shape[0] == len(ep)
    assert ep.action.shape == (len(ep), 7) and np.all(np.abs(ep.action) <= 1.0)
    assert ep.success[-1] and not ep.success[:-1].any(), "success only on the last step"
    assert infos[0].tasks[0].startswith("press the ")


def test_sim_yaml_gives_the_franka_node_the_sim_step_scale():
    """SimEnv and the graph's franka node (faithful and fast mode) must scale actions alike: config/sim.yaml's
    franka_node section has to carry SimEnv's per-tick scale."""
    from pathlib import Path

    import yaml

    from irevla_ros.sim.control import SIM_MAX_ROTATION_PER_TICK, SIM_MAX_TRANSLATION_PER_TICK

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "sim.yaml").read_text())
    franka = (cfg.get("franka_node") or {}).get("ros__parameters") or {}
    assert franka.get("max_translation_per_tick") == SIM_MAX_TRANSLATION_PER_TICK, franka
    assert franka.get("max_rotation_per_tick") == SIM_MAX_ROTATION_PER_TICK, franka


def test_random_start_is_reproducible_and_experts_cope():
    with SimEnv("pick", seed=0, cameras=(), random_start=True) as e:
        a = e.reset(seed=3)["ee_position"]
        b = e.reset(seed=4)["ee_position"]
        assert np.linalg.norm(a - b) > 0.02, "different seeds should give different starts"
        assert np.allclose(e.reset(seed=3)["ee_position"], a, atol=2e-3), "same seed, same start"
        done = False
        while not done and e.steps < e.max_steps:
            _, done, _ = e.step(expert_action(e))
        assert done


def test_dart_demos_execute_noisy_actions_but_record_the_clean_expert(tmp_path):
    """`irevla demos --dart-noise`: the arm is pushed off the expert's path, the label stays the expert's action for
    the state actually reached (what lets behaviour cloning learn to recover); --action-noise records the noise."""
    import argparse

    from irevla_ros.core.data.episodes import EpisodeStore
    from irevla_ros.sim import demos

    def record(out, dart: float, noise: float):
        ns = argparse.Namespace(task=["button"], episodes=1, out=str(out), seed=3, image_size=32, cameras=["wrist"],
                                action_noise=noise, dart_noise=dart, keep_failures=True, max_attempts=1,
                                image_format="png")
        demos.run(ns)
        store = EpisodeStore(out)
        return store.load(store.episodes()[0])

    clean, dart, noisy = record(tmp_path / "c", 0, 0), record(tmp_path / "d", 0.5, 0), record(tmp_path / "n", 0, 0.5)
    with SimEnv("button", seed=3, image_size=32, cameras=()) as env:
        env.reset(seed=3)
        first = expert_action(env)
    np.testing.assert_allclose(clean.action[0], first, atol=1e-6)
    np.testing.assert_allclose(dart.action[0], first, atol=1e-6)  # label: the clean expert action
    assert np.abs(noisy.action[0] - first).max() > 0.05  # action noise is recorded as given
    # the executed noise moved the arm: later states (and so labels) differ from the clean run
    n = min(len(clean), len(dart))
    assert np.abs(dart.state[1:n] - clean.state[1:n]).max() > 1e-3
    assert dart.info.extra["dart_noise"] == 0.5
