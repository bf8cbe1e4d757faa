"""Labelled frames from the MuJoCo sim: scripted-expert and perturbed episodes, labels = ground-truth success.

Both classes need variety near the decision boundary, so episodes come in kinds (chosen per episode, seeded):
- ``expert``: the scripted expert; it keeps going ``post_success_steps`` after success (success frames);
- ``noisy``: expert + Gaussian action noise (sometimes succeeds, sometimes not: labels decide);
- ``quit``: the expert until a random step short of its usual success, then it opens the gripper and drifts
  (hard negatives: object grasped / almost there, but not done);
- ``random``: smooth random motion (easy negatives, other arm poses);
- ``hold``: frames AT the decision boundary. Pick tasks: the expert grasps, then holds the object at a random
  height around the lift threshold (below it: a held, half-lifted object, a hard negative; above it: a barely
  lifted success). Other tasks: the expert at a random fraction of its speed, so the approach to success is
  sampled densely. Without these, the only boundary frames are the one or two an expert passes through in
  3 cm steps, and the classifier fires a frame early (measured: most false positives were the frame before the
  first success frame, bench/reward.py).
Every frame's label is the task's ground-truth success predicate at that frame. ROS-free (irevla_ros.sim is).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from irevla_ros.core.reward.data import LabelledFrames

log = logging.getLogger(__name__)
KINDS = ("expert", "noisy", "quit", "random", "hold")
HOLD_HEIGHTS = (0.04, 0.13)
"""Pick ``hold`` episodes: the object's centre is held at a height drawn from this range (m above the table top;
the task's success threshold is tasks.LIFT_HEIGHT = 0.08)."""
HOLD_SPEED = (0.25, 0.6)
"""Other tasks' ``hold`` episodes: the expert's translation/rotation actions are scaled by a factor from here."""


@dataclass
class SimFramesConfig:
    episodes: int = 40
    task: str = ""
    """Sim task (irevla_ros.sim.tasks); empty = 'pick'."""
    cameras: tuple[str, ...] = ("front",)
    height: int = 96
    width: int = 96
    seed: int = 0
    kind_weights: tuple[float, ...] = (0.3, 0.2, 0.2, 0.1, 0.2)
    """Probability of each kind in KINDS order (four numbers: the first round's mix, no ``hold`` episodes)."""
    post_success_steps: int = 6
    noise: float = 0.5
    """Std of the action noise of ``noisy`` episodes (actions are in [-1, 1])."""
    max_steps: int = 0
    """Cap on steps per episode; 0 = the task's own limit."""

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        self.task = self.task or "pick"
        self.kind_weights = tuple(float(v) for v in self.kind_weights)
        if len(self.kind_weights) == len(KINDS) - 1:
            self.kind_weights += (0.0,)
        if self.episodes < 2:
            raise ValueError(f"episodes must be >= 2 (some are held out), got {self.episodes}")
        w = np.asarray(self.kind_weights, dtype=float)
        if w.shape != (len(KINDS),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"kind_weights must be {len(KINDS)} non-negative numbers, got {self.kind_weights!r}")
        if not (0.0 <= self.noise <= 2.0) or self.post_success_steps < 0 or self.max_steps < 0:
            raise ValueError("noise must be in [0, 2], post_success_steps and max_steps >= 0")


def _episode_actions(kind: str, rng: np.random.Generator, cfg: SimFramesConfig, typical_success: int):
    """A policy closure for one episode: (env, step) -> action."""
    from irevla_ros.sim.experts import expert_action, family

    quit_at = int(rng.uniform(0.4, 0.95) * typical_success)
    drift = rng.normal(0, 0.3, 3)
    smooth = np.zeros(7)
    # Drawn only for ``hold`` episodes, so the other kinds' random streams stay those of the first round.
    hold_z = rng.uniform(*HOLD_HEIGHTS) if kind == "hold" else 0.0
    speed = rng.uniform(*HOLD_SPEED) if kind == "hold" else 1.0

    def act(env, k: int) -> np.ndarray:
        nonlocal smooth
        if kind == "expert":
            return expert_action(env)
        if kind == "noisy":
            a = expert_action(env)
            a[:6] += rng.normal(0, cfg.noise, 6)
            return np.clip(a, -1, 1)
        if kind == "quit":
            if k < quit_at:
                return expert_action(env)
            a = np.zeros(7)
            a[:3] = np.clip(drift + rng.normal(0, 0.2, 3), -1, 1)
            a[6] = -1.0
            return a
        if kind == "hold":
            a = expert_action(env)
            if family(env.task) != "pick":
                a[:6] *= speed
                return a
            obj = env.world.free_position(env.episode.params["object"])
            rest = 0.03 if "cylinder" in env.episode.params["object"] else 0.025  # centre height on the table + 5 mm
            if a[6] > 0 and obj[2] > rest:  # grasped and off the table: servo the object to hold_z, not to 0.2 m
                step = env.controller.config.max_translation_per_tick
                a[2] = float(np.clip((hold_z - obj[2]) / step, -1.0, 1.0))
            return a
        smooth = 0.8 * smooth + 0.2 * rng.uniform(-1, 1, 7)
        return np.clip(smooth * 2.0, -1, 1)

    return act


def _object_height(env) -> float | None:
    """Pick tasks: the object's centre height (m); None for other task families."""
    from irevla_ros.sim.experts import family

    if family(env.task) != "pick":
        return None
    return float(env.world.free_position(env.episode.params["object"])[2])


def generate_sim_frames(cfg: SimFramesConfig, progress: bool = True) -> LabelledFrames:
    from irevla_ros.sim.env import SimEnv

    rng = np.random.default_rng(cfg.seed)
    weights = np.asarray(cfg.kind_weights, dtype=float) / np.sum(cfg.kind_weights)
    images, labels, episodes = [], [], []
    kinds_done: dict[str, list[bool]] = {k: [] for k in KINDS}
    env = SimEnv(cfg.task, seed=cfg.seed, image_size=(cfg.height, cfg.width), cameras=cfg.cameras)
    typical_success = max(5, int(0.45 * env.max_steps))
    limit = min(cfg.max_steps or env.max_steps, env.max_steps)
    it = range(cfg.episodes)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"sim episodes ({cfg.task})", unit="ep")
    try:
        for e in it:
            kind = KINDS[int(rng.choice(len(KINDS), p=weights))]
            act = _episode_actions(kind, rng, cfg, typical_success)
            obs = env.reset(seed=cfg.seed * 100_003 + e)
            succeeded_at = None
            frames_e = [np.stack([obs["images"][c] for c in cfg.cameras])]
            labels_e = [env.success()]
            settled, prev_z = 0, _object_height(env)
            for k in range(limit):
                obs, success, _ = env.step(act(env, k))
                frames_e.append(np.stack([obs["images"][c] for c in cfg.cameras]))
                labels_e.append(bool(success))
                if success and succeeded_at is None:
                    succeeded_at = k
                if succeeded_at is not None and k - succeeded_at >= cfg.post_success_steps:
                    break
                # A pick ``hold`` below the threshold never succeeds: stop once it has been held still a while.
                z = _object_height(env) if kind == "hold" else None
                held = z is not None and prev_z is not None and z > 0.03 and abs(z - prev_z) < 0.002
                settled, prev_z = (settled + 1 if held else 0), z
                if settled > cfg.post_success_steps:
                    break
            images += frames_e
            labels += labels_e
            episodes += [e] * len(frames_e)
            kinds_done[kind].append(any(labels_e))
    finally:
        env.close()
    log.info("sim frames: %s", ", ".join(f"{k}: {sum(v)}/{len(v)} episodes reached success"
                                        for k, v in kinds_done.items() if v))
    return LabelledFrames(np.stack(images), np.array(labels), np.array(episodes), cfg.cameras,
                          f"sim_ground_truth:{cfg.task}")
