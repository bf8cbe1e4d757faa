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


def evaluate_policy(model, tasks: Sequence[str], episodes: int, *, image_size: int = 128,
                    cameras: Sequence[str] = ("wrist", "front"), seed: int = EVAL_SEED_BASE,
                    max_steps: int | None = None, progress=None) -> dict[str, TaskResult]:
    """Run `episodes` deterministic episodes per task; `model` is a VLAModel (its current head and weights)."""
    from irevla_ros.sim.env import SimEnv

    results: dict[str, TaskResult] = {}
    model.eval()
    for task in tasks:
        ok = 0
        with SimEnv(task, seed=seed, image_size=image_size, cameras=tuple(cameras)) as env:
            limit = max_steps or env.max_steps
            for i in range(episodes):
                obs = env.reset(seed=seed + i)
                success = False
                for _ in range(limit):
                    images = [torch.from_numpy(np.ascontiguousarray(obs["images"][c]))[None] for c in env.cameras]
                    with torch.inference_mode():
                        out = model.act(images, [obs["instruction"]], proprio_of(obs)[None], stochastic=False)
                    obs, success, info = env.step(np.clip(out.action[0], -1.0, 1.0))
                    if success or info.get("timeout"):
                        break
                ok += int(success)
                if progress is not None:
                    progress(task, i + 1, ok)
        results[task] = TaskResult(task, episodes, ok)
    return results
