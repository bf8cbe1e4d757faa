"""Demo data for the demo buffer: expert episodes whose features the frozen backbone computed once.

Two layouts are read from `demo_dir`:
1. an episode store root (irevla_ros.core.data.episodes: meta/episodes.jsonl + parquet), episodes of source
   "expert" or "teleop" recorded WITH features (column observation.features); rows become steps in order;
   the last row of a successful episode is terminal;
2. a folder of transition payload files `*.transition` (the exact bytes of `Transition.to_bytes()`, i.e. what
   the policy node publishes), grouped by episode_id and ordered by step.
Bad files are skipped with a counted reason (`rejected`), never loaded half-way.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from irevla_ros.core.data.codec import PayloadError, Transition

DEMO_SOURCES = ("expert", "teleop")


def load_demo_episodes(demo_dir: str, rejected: Counter | None = None) -> list[list[Transition]]:
    """Episodes (lists of Transitions ordered by step) found in `demo_dir`; raises ValueError if it is missing."""
    root = Path(demo_dir)
    if not root.is_dir():
        raise ValueError(f"demo_dir {demo_dir!r} is not a directory")
    rejected = rejected if rejected is not None else Counter()
    if (root / "meta" / "episodes.jsonl").is_file():
        return _from_episode_store(root, rejected)
    return _from_transition_files(root, rejected)


def _from_transition_files(root: Path, rejected: Counter) -> list[list[Transition]]:
    episodes: dict[str, list[Transition]] = defaultdict(list)
    for path in sorted(root.glob("*.transition")):
        try:
            t = Transition.from_bytes(path.read_bytes())
        except PayloadError:
            rejected["demo: corrupt file"] += 1
            continue
        episodes[t.episode_id].append(t)
    out = []
    for steps in episodes.values():
        steps.sort(key=lambda s: s.step)
        out.append(steps)
    return out


def _from_episode_store(root: Path, rejected: Counter) -> list[list[Transition]]:
    from irevla_ros.core.data.episodes import EpisodeError, EpisodeStore

    store = EpisodeStore(root)
    out = []
    for info in store.episodes(source=DEMO_SOURCES):
        try:
            ep = store.load(info, columns=None)
        except EpisodeError:
            rejected["demo: corrupt episode"] += 1
            continue
        if ep.features is None:
            rejected["demo: episode without features"] += 1
            continue
        n = len(ep)
        steps = []
        for i in range(n):
            last = i == n - 1
            steps.append(Transition(
                episode_id=f"demo-{info.episode_id}", step=i, features=ep.features[i].astype(np.float16),
                action=np.clip(ep.action[i], -1.0, 1.0).astype(np.float32), reward=float(ep.reward[i]),
                done=bool(ep.done[i]) or last, terminal=last and bool(info.success), success=bool(ep.success[i]),
                intervention=True, policy_version=str(info.policy_version), task=info.task,
                proprio=ep.state[i].astype(np.float32)))
        try:
            for s in steps:
                s.validate()
        except PayloadError:
            rejected["demo: invalid step"] += 1
            continue
        out.append(steps)
    return out
