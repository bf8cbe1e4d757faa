"""Building SFT jobs: which episodes go in (expert demos + successful online ones), how they are mixed, split.

A job folder is itself a small dataset root in the episode-store format (meta/episodes.jsonl, meta/tasks.jsonl,
data/...parquet), so the worker reads it with `EpisodeStore`; the job's signed manifest body carries the rest:

    {"id", "stage", "iteration", "version", "created", "cameras", "base_model", "train", "val",
     "groups": {episode_id: "expert"|"online"}, "mix": {"expert_fraction", "online_task_balance"},
     "sft": {SFTConfig overrides}}

iRe-VLA stage 2 trains on expert demos AND the successful online episodes: the experts are replayed so the
tasks already known are not forgotten; `expert_fraction` is the share of training samples drawn from them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from irevla_ros.core.data.episodes import (
    DATA_PATH,
    EpisodeInfo,
    EpisodeStore,
    atomic_write,
)

EXPERT, ONLINE = "expert", "online"
TASK_BALANCE = ("none", "sqrt", "equal")
LR_SCHEDULES = ("constant", "cosine")
"""SFTConfig.lr_schedule values (here, not in train.py, so the packager can validate without importing torch)."""
SFT_MODES = ("lora", "full", "head")
"""SFTConfig.mode values, for the same reason (SFTConfig, the packager and `irevla sim` share this one list)."""


class JobBuildError(ValueError):
    """Not enough (or inconsistent) data to build an SFT job."""


@dataclass
class JobConfig:
    expert_sources: tuple[str, ...] = ("expert", "teleop")
    """Episode sources treated as demonstrations (always successful by construction, filtered anyway)."""
    expert_fraction: float = 0.5
    """Share of training samples drawn from expert episodes in stage 2 (replay against forgetting)."""
    online_task_balance: str = "sqrt"
    """How the online share is split between instructions: "none" (by samples), "sqrt", "equal" (train.py,
    mixing_weights): a new task's few successes are not drowned by the expert task's many."""
    max_expert_episodes: int = 0
    """0 = all of them; otherwise the newest N."""
    max_online_episodes: int = 200
    """The newest N successful online episodes (recency filter)."""
    assisted_failures: bool = True
    """Also select failed online episodes in which a person took over (`intervention_steps` in the manifest); stage 2
    learns only the person's steps from them (train.py, `steps_to_train`), as HG-DAgger learns from interventions:
    a correction is a label whatever the episode's outcome. They share the `max_online_episodes` cap."""
    online_max_age_s: float = 0.0
    """Ignore online episodes older than this (0 = no age limit)."""
    require_expert_success: bool = True
    val_fraction: float = 0.1
    """Held-out episodes (per group, chosen by a hash of the episode id so reruns pick the same ones)."""
    min_episodes: int = 2

    def __post_init__(self) -> None:
        self.expert_sources = tuple(self.expert_sources)
        if not 0.0 <= self.expert_fraction <= 1.0:
            raise ValueError(f"expert_fraction must be in [0, 1], got {self.expert_fraction!r}")
        if self.online_task_balance not in TASK_BALANCE:
            raise ValueError(f"online_task_balance must be one of {TASK_BALANCE}, got {self.online_task_balance!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("max_expert_episodes", "max_online_episodes", "min_episodes"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.online_max_age_s < 0:
            raise ValueError(f"online_max_age_s must be >= 0, got {self.online_max_age_s!r}")


@dataclass
class Selection:
    expert: list[tuple[EpisodeStore, EpisodeInfo]]
    online: list[tuple[EpisodeStore, EpisodeInfo]]

    @property
    def all(self) -> list[tuple[str, EpisodeStore, EpisodeInfo]]:
        return [(EXPERT, s, i) for s, i in self.expert] + [(ONLINE, s, i) for s, i in self.online]


def select_episodes(stores: Sequence[EpisodeStore], config: JobConfig, *, stage: int,
                    now: float | None = None) -> Selection:
    """Expert demos (+ successful online episodes, and failed ones a person took over in, unless stage 0), newest
    first within each cap."""
    now = time.time() if now is None else now
    expert, online = [], []
    for store in stores:
        for info in store.episodes(source=config.expert_sources,
                                   success=True if config.require_expert_success else None):
            expert.append((store, info))
        if stage != 0:
            since = now - config.online_max_age_s if config.online_max_age_s > 0 else None
            for info in store.episodes(source="online", since=since):
                if info.success or (config.assisted_failures and int(info.extra.get("intervention_steps", 0)) > 0):
                    online.append((store, info))
    expert.sort(key=lambda si: si[1].created)
    online.sort(key=lambda si: si[1].created)
    if config.max_expert_episodes:
        expert = expert[-config.max_expert_episodes:]
    online = online[-config.max_online_episodes:] if config.max_online_episodes else []
    return Selection(expert, online)


def _is_val(episode_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(episode_id.encode()).digest()[:8], "big") / 2 ** 64
    return h < fraction


def split(ids: Sequence[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, val): deterministic per id; at least one of each when there are >= 2 ids and fraction > 0."""
    val = [i for i in ids if _is_val(i, fraction)]
    if fraction > 0 and len(ids) >= 2 and not val:
        val = [min(ids, key=lambda i: hashlib.sha256(i.encode()).digest())]
    if len(val) == len(ids) and ids:
        val = val[:-1]
    train = [i for i in ids if i not in val]
    return train, val


def build_job_dir(selection: Selection, out_dir: str | Path, config: JobConfig, *, job_id: str, stage: int,
                  iteration: int, version: str, base_model: Mapping | None, sft: Mapping | None = None,
                  verify: bool = True) -> dict:
    """Copy the selected episodes (sha256-checked) into `out_dir` as a dataset root; return the job body."""
    items = selection.all
    if len(items) < max(1, config.min_episodes):
        raise JobBuildError(f"an SFT job needs at least {config.min_episodes} episodes, found {len(items)} "
                            f"({len(selection.expert)} expert, {len(selection.online)} successful online)")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "meta").mkdir(parents=True)
    cameras = None
    tasks: list[str] = []
    lines, groups = [], {}
    first = 0
    for index, (group, store, info) in enumerate(items):
        if cameras is None:
            cameras = list(info.cameras)
        elif list(info.cameras) != cameras:
            raise JobBuildError(f"episode {info.episode_id} has cameras {info.cameras}, others have {cameras}")
        if info.episode_id in groups:
            raise JobBuildError(f"episode id {info.episode_id} appears twice")
        if verify:
            store.verify(info)
        rel = DATA_PATH.format(episode_chunk=0, episode_index=index)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.path_of(info), out / rel)
        entry = asdict(info)
        entry.update(episode_index=index, file=rel, first_index=first)
        entry["extra"] = {**info.extra, "origin": str(store.root), "origin_index": info.episode_index}
        first += info.length
        lines.append(json.dumps(entry, sort_keys=True))
        groups[info.episode_id] = group
        for t in info.tasks:
            if t not in tasks:
                tasks.append(t)
    (out / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (out / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    train, val = [], []
    for group in (EXPERT, ONLINE):
        ids = [e for e, g in groups.items() if g == group]
        t, v = split(ids, config.val_fraction)
        train += t
        val += v
    body = {
        "id": job_id, "stage": int(stage), "iteration": int(iteration), "version": str(version),
        "created": time.time(), "cameras": cameras or [], "base_model": dict(base_model) if base_model else None,
        "train": train, "val": val, "groups": groups,
        "mix": {"expert_fraction": config.expert_fraction if selection.online else 1.0,
                "online_task_balance": config.online_task_balance},
        "counts": {"expert": len(selection.expert), "online": len(selection.online),
                   "steps": first},
        "sft": dict(sft or {}),
    }
    atomic_write(out / "job.json", json.dumps(body, indent=1, sort_keys=True).encode())
    return body
