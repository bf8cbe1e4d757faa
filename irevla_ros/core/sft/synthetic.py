"""Synthetic demonstrations with a learnable image -> action mapping (tests and benchmarks; no simulator needed).

Each step shows a flat colour (plus noise) on every camera; the demonstrated action's translation is that colour
mapped to [-1, 1], rotation zero, gripper = sign of the red channel. A VLA that reads its images can learn it,
one that ignores them cannot beat the mean: so "SFT lowers the held-out action error" is a real check.
"""

from __future__ import annotations

import numpy as np

from irevla_ros.core.data.episodes import EpisodeInfo, EpisodeWriter


def target_action(color: np.ndarray) -> np.ndarray:
    a = np.zeros(7, dtype=np.float32)
    a[:3] = color * 1.6 - 0.8
    a[6] = 1.0 if color[0] > 0.5 else -1.0
    return a


def record_synthetic(writer: EpisodeWriter, *, episodes: int, steps: int, cameras=("front",), size: int = 32,
                     source: str = "expert", success: bool = True, task: str = "reach the coloured target",
                     seed: int = 0, policy_version: str = "0") -> list[EpisodeInfo]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        rec = writer.begin(task=task, source=source, cameras=tuple(cameras), policy_version=policy_version)
        for s in range(steps):
            color = rng.uniform(0, 1, 3).astype(np.float32)
            img = np.clip(color * 255 + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
            rec.add_step(action=target_action(color), state=np.r_[color, [0.0] * 5].astype(np.float32),
                         images={c: img for c in cameras}, reward=float(success and s == steps - 1),
                         success=success and s == steps - 1, done=s == steps - 1)
        out.append(rec.finish(success))
    return out
