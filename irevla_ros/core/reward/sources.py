"""Where labelled frames come from: recorded episodes (per-step success flags or episode outcomes)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from irevla_ros.core.reward.data import FramesError, LabelledFrames

log = logging.getLogger(__name__)


def frames_from_episode_store(root: str | Path, cameras: tuple[str, ...], *, outcome_tail: int = 3,
                              stride: int = 1, max_episodes: int | None = None) -> LabelledFrames:
    """Label every `stride`-th step of every complete episode in an EpisodeStore.

    Labels: the step's recorded success flag (sim ground truth or a teleop success key) when the episode has any;
    otherwise the episode's outcome: the last ``outcome_tail`` frames of a successful episode are success, all
    other frames failure (a demo is not finished before its end).
    """
    from irevla_ros.core.data.episodes import EpisodeStore

    if outcome_tail < 1 or stride < 1:
        raise ValueError(f"outcome_tail and stride must be >= 1, got {outcome_tail}, {stride}")
    store = EpisodeStore(root)
    infos = store.episodes()
    if max_episodes is not None:
        infos = infos[-max_episodes:]
    if not infos:
        raise FramesError(f"no complete episodes in {root}")
    images, labels, episodes = [], [], []
    for i, info in enumerate(infos):
        missing = [c for c in cameras if c not in info.cameras]
        if missing:
            log.warning("skipping episode %s: no camera(s) %s", info.episode_id, missing)
            continue
        ep = store.load(info)
        n = len(ep)
        if ep.success.any():
            lab = ep.success.astype(np.uint8)
        else:
            lab = np.zeros(n, np.uint8)
            if info.success:
                lab[max(0, n - outcome_tail):] = 1
        idx = np.arange(0, n, stride)
        cams = np.stack([ep.frames(c)[idx] for c in cameras], axis=1)
        images.append(cams)
        labels.append(lab[idx])
        episodes.append(np.full(len(idx), i, np.int64))
    if not images:
        raise FramesError(f"no episode in {root} has cameras {list(cameras)}")
    sizes = {im.shape[2:4] for im in images}
    if len(sizes) > 1:
        raise FramesError(f"episodes in {root} have different frame sizes {sorted(sizes)}")
    return LabelledFrames(np.concatenate(images), np.concatenate(labels), np.concatenate(episodes), cameras,
                          "episode_store")
