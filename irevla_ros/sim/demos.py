"""`irevla demos`: record scripted expert demos in the fast simulation into the episode store.

    irevla demos --task reach --episodes 20 --out data/demos
    irevla demos --task expert --episodes 10 --out data/demos     # every expert task, 10 episodes each

Episodes go through `irevla_ros.core.data.episodes.EpisodeWriter` (source "expert"), so SFT and the RL demo
buffer read them like any other episode. Per step: the observation BEFORE the action (images of every camera and
observation.state = [ee x, y, z (m), ee quaternion x, y, z, w, gripper width (m)]), the executed action, the
sparse reward (1.0 on the step that reaches success), success/done flags. Failed episodes are dropped unless
--keep-failures.
"""

from __future__ import annotations

import argparse

import numpy as np

from irevla_ros.interfaces import CAMERA_NAMES
from irevla_ros.sim.tasks import EXPERT_TASKS, NEW_TASKS, TASKS

STATE_LABELS = ("ee_x", "ee_y", "ee_z", "ee_qx", "ee_qy", "ee_qz", "ee_qw", "gripper_width")


def state_vector(obs: dict) -> np.ndarray:
    return np.concatenate([obs["ee_position"], obs["ee_quaternion"], [obs["gripper_width"]]]).astype(np.float32)


def _tasks(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name == "expert":
            out += list(EXPERT_TASKS)
        elif name == "new":
            out += list(NEW_TASKS)
        elif name in TASKS:
            out.append(name)
        else:
            raise SystemExit(f"irevla demos: unknown task {name!r}; choose from expert, new, {', '.join(TASKS)}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", nargs="+", default=["reach"],
                        help=f"task name(s), or 'expert' / 'new' for a whole split; known: {', '.join(TASKS)}")
    parser.add_argument("--episodes", type=int, default=10, help="successful episodes to record per task")
    parser.add_argument("--out", required=True, help="dataset root (created if missing; appended to if present)")
    parser.add_argument("--seed", type=int, default=0, help="layout seed of the first episode (+1 per attempt)")
    parser.add_argument("--image-size", type=int, default=128, help="square camera images, pixels")
    parser.add_argument("--cameras", nargs="+", default=list(CAMERA_NAMES), choices=list(CAMERA_NAMES))
    parser.add_argument("--action-noise", type=float, default=0.0,
                        help="std of Gaussian noise added to the executed (and recorded) expert action")
    parser.add_argument("--dart-noise", type=float, default=0.0,
                        help="std of Gaussian noise added to the EXECUTED action while the clean expert action is "
                        "recorded (DART): the demos then also show how to recover from small mistakes")
    parser.add_argument("--keep-failures", action="store_true", help="also store episodes that did not succeed")
    parser.add_argument("--max-attempts", type=int, default=0, help="give up after this many attempts per task "
                        "(0 = 2 x episodes)")
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from irevla_ros.core.data.episodes import EpisodeMeta, EpisodeWriter
    from irevla_ros.sim.env import SimEnv
    from irevla_ros.sim.experts import expert_action

    if args.episodes < 1:
        raise SystemExit("irevla demos: --episodes must be >= 1")
    for name in ("action_noise", "dart_noise"):
        value = getattr(args, name, 0.0)
        if not (np.isfinite(value) and 0.0 <= value <= 1.0):
            raise SystemExit(f"irevla demos: --{name.replace('_', '-')} must be in [0, 1]")
    tasks = _tasks(args.task)
    writer = EpisodeWriter(args.out, image_format=args.image_format)
    rng = np.random.default_rng(args.seed)
    max_attempts = args.max_attempts or 2 * args.episodes
    total_ok = 0
    for task in tasks:
        ok = attempts = 0
        with SimEnv(task, seed=args.seed, image_size=args.image_size, cameras=tuple(args.cameras)) as env, \
                tqdm(total=args.episodes, desc=f"demos {task}", unit="ep") as bar:
            while ok < args.episodes and attempts < max_attempts:
                seed = args.seed + attempts
                attempts += 1
                obs = env.reset(seed=seed)
                rec = writer.begin(EpisodeMeta(task=obs["instruction"], source="expert", cameras=env.cameras,
                                               fps=env.control_hz,
                                               extra={"sim_task": task, "seed": seed, "expert": "scripted",
                                                      "dart_noise": getattr(args, "dart_noise", 0.0),
                                                      "state_labels": list(STATE_LABELS)}))
                success = False
                for _ in range(env.max_steps):
                    action = expert_action(env)
                    if args.action_noise > 0:
                        action = np.clip(action + rng.normal(0.0, args.action_noise, 7), -1.0, 1.0)
                    executed = action
                    if getattr(args, "dart_noise", 0.0) > 0:
                        executed = np.clip(action + rng.normal(0.0, args.dart_noise, 7), -1.0, 1.0)
                    next_obs, success, info = env.step(executed)
                    done = success or info["timeout"]
                    rec.add_step(action=action, state=state_vector(obs), images=obs["images"],
                                 reward=1.0 if success else 0.0, success=success, done=done)
                    obs = next_obs
                    if done:
                        break
                if success or args.keep_failures:
                    rec.finish(success=success)
                else:
                    rec.abort(keep=False, reason="expert failed")
                if success:
                    ok += 1
                    bar.update(1)
                bar.set_postfix(attempts=attempts)
        total_ok += ok
        if ok < args.episodes:
            print(f"irevla demos: {task}: only {ok}/{args.episodes} successful episodes in {attempts} attempts")
    print(f"irevla demos: {total_ok} successful episodes in {args.out} ({len(writer.store)} in the store)")
    return 0 if total_ok >= args.episodes * len(tasks) else 1
