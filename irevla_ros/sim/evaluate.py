"""Policy evaluation in the fast simulator (ROS-free): success rate per task with deterministic actions.

Used by `irevla sim` before and after the online phase and by bench/learning.py, so "SFT only" and "after
iterations" are measured the same way on the same seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

EVAL_SEED_BASE = 10_000
"""Evaluation layouts start here: disjoint from the demo seeds (0..) so the policy is judged on unseen layouts."""


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def proprio_of(obs: dict) -> np.ndarray:
    """A SimEnv observation as the policy node's 8-D proprio (x y z qx qy qz qw gripper_width)."""
    return np.concatenate([obs["ee_position"], obs["ee_quaternion"], [obs["gripper_width"]]]).astype(np.float32)


def evaluate_layouts(model, task: str, seeds: Sequence[int], *, image_size: int = 128,
                     cameras: Sequence[str] = ("wrist", "front"), max_steps: int | None = None,
                     progress=None) -> list[bool]:
    """Success of one deterministic episode per layout seed, in order: per-layout outcomes let two policies be
    compared on the same layouts (`irevla eval`), which separates them with far fewer episodes than two rates."""
    from irevla_ros.sim.env import SimEnv

    model.eval()
    outcomes: list[bool] = []
    with SimEnv(task, seed=int(seeds[0]) if len(seeds) else EVAL_SEED_BASE, image_size=image_size,
                cameras=tuple(cameras)) as env:
        limit = max_steps or env.max_steps
        for seed in seeds:
            obs = env.reset(seed=int(seed))
            success = False
            for _ in range(limit):
                images = [torch.from_numpy(np.ascontiguousarray(obs["images"][c]))[None] for c in env.cameras]
                with torch.inference_mode():
                    out = model.act(images, [obs["instruction"]], proprio_of(obs)[None], stochastic=False)
                obs, success, info = env.step(np.clip(out.action[0], -1.0, 1.0))
                if success or info.get("timeout"):
                    break
            outcomes.append(bool(success))
            if progress is not None:
                progress(task, len(outcomes), sum(outcomes))
    return outcomes


def evaluate_policy(model, tasks: Sequence[str], episodes: int, *, image_size: int = 128,
                    cameras: Sequence[str] = ("wrist", "front"), seed: int = EVAL_SEED_BASE,
                    max_steps: int | None = None, progress=None) -> dict[str, TaskResult]:
    """Run `episodes` deterministic episodes per task (layout seeds `seed`, `seed + 1`, ...); `model` is a
    VLAModel (its current head and weights)."""
    results: dict[str, TaskResult] = {}
    for task in tasks:
        outcomes = evaluate_layouts(model, task, range(seed, seed + episodes), image_size=image_size,
                                    cameras=cameras, max_steps=max_steps, progress=progress)
        results[task] = TaskResult(task, episodes, sum(outcomes))
    return results
