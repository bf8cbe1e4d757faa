"""Demo data for the demo buffer: expert episodes whose features the frozen backbone computed once.

Two layouts are read from `demo_dir`:
1. an episode store root (irevla_ros.core.data.episodes: meta/episodes.jsonl + parquet), episodes of source
   "expert" or "teleop" recorded WITH features (column observation.features); rows become steps in order;
   the last row of a successful episode is terminal;
2. a folder of transition payload files `*.transition` (the exact bytes of `Transition.to_bytes()`, i.e. what
   the policy node publishes), grouped by episode_id and ordered by step.
Bad files are skipped with a counted reason (`rejected`), never loaded half-way.

The learner never runs the VLM, so a new backbone (stage-2 SFT) needs its own demo features:
`encode_demo_features(model, dataset_dirs, out_dir, cameras)` encodes the expert episodes of episode stores with
a `VLAModel` into layout 2 (with proprio from the episodes' state column), atomically, with a COMPLETE marker that
names the model; `demo_features_dir(model_dir)` is where the features of a model folder live (a sibling folder
`<model>.demo_features/`: outside the model folder, so its manifest and its uploads as a base model stay as they are).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from irevla_ros.core.data.codec import PayloadError, Transition
from irevla_ros.core.data.episodes import fsync_dir

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


# --- encoding demo features with a backbone -------------------------------------------------------------------
COMPLETE = "COMPLETE"
"""Marker file written last into a features folder: JSON {"episodes", "transitions", "feature_shape",
"model_sha256", "model_version", "cameras", "episode_ids", "created"}."""
FEATURES_SUFFIX = ".demo_features"


def demo_features_dir(model_dir: str | os.PathLike) -> Path:
    """Where the demo features encoded with a model folder's backbone live: `<model_dir>.demo_features/`."""
    path = Path(model_dir)
    return path.with_name(path.name + FEATURES_SUFFIX)


def read_features_marker(features_dir: str | os.PathLike) -> dict | None:
    """The COMPLETE marker of a features folder, or None if the folder is absent, incomplete or unreadable."""
    marker = Path(features_dir) / COMPLETE
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("feature_shape"), list) else None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _remove_leftovers(out: Path) -> None:
    """Temporary siblings of `out` left by a killed run (`.name.tmp-<pid>-<ns>` of a dead process, `.name.old-*`)."""
    for path in out.parent.glob(f".{out.name}.*-*"):
        kind, _, rest = path.name[len(out.name) + 2:].partition("-")
        if kind == "tmp":
            try:
                os.kill(int(rest.split("-")[0]), 0)
                continue  # a live process is writing it
            except PermissionError:
                continue
            except (ProcessLookupError, OverflowError, ValueError):
                pass
        elif kind != "old":
            continue
        shutil.rmtree(path, ignore_errors=True)


def encode_demo_features(model, dataset_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                         cameras: Sequence[str], *, sources: Sequence[str] | None = DEMO_SOURCES,
                         success_only: bool = True, episode_ids: Sequence[str] | None = None,
                         model_sha256: str = "", batch_size: int = 32, rejected: Counter | None = None,
                         progress: bool = False, log: Callable[[str], None] | None = None) -> int:
    """Encode expert episodes with `model` (a VLAModel: `model.encode(images, [instruction])`) into `out_dir` as
    `*.transition` files (what `load_demo_episodes` reads); returns the number of episodes encoded.

    Each step keeps the episode's action (clipped to [-1, 1]), reward, success and its state row as `proprio`
    (the policy's PROPRIO layout; checked against the head's proprio_dim); the last step of a successful episode
    is terminal. Steps are interventions (a demo buffer entry), `policy_version` the model's version.
    Episodes: from every store in `dataset_dirs`, of `sources` (None = any), successful unless `success_only` is
    False, restricted to `episode_ids` if given. Corrupt episodes or episodes without one of `cameras` are skipped
    and counted in `rejected`.
    Atomic: written into a hidden temporary sibling, COMPLETE last, then renamed over `out_dir`. Idempotent: if
    `out_dir` is already complete for the same model (`model_sha256`, feature shape, cameras, episodes) nothing is
    redone. Raises ValueError when the model and the data cannot fit (cameras, proprio size)."""
    import torch

    from irevla_ros.core.data.codec import Transition
    from irevla_ros.core.data.episodes import EpisodeError, EpisodeStore, decode_image

    out = Path(out_dir)
    cameras = list(cameras)
    rejected = rejected if rejected is not None else Counter()
    log = log or (lambda msg: None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(cameras) != model.config.num_cameras:
        raise ValueError(f"the model takes {model.config.num_cameras} camera(s), got cameras {cameras}")
    proprio_dim = model.config.head.proprio_dim
    shape = [int(v) for v in model.feature_shape]
    wanted = set(episode_ids) if episode_ids is not None else None
    selected = []
    seen: set[str] = set()
    for root in dataset_dirs:
        store = EpisodeStore(root)
        if not store.manifest_path.is_file():
            raise ValueError(f"{root} is not an episode store (no {store.manifest_path.relative_to(store.root)})")
        for info in store.episodes(source=sources, success=True if success_only else None):
            if (wanted is not None and info.episode_id not in wanted) or info.episode_id in seen:
                continue
            seen.add(info.episode_id)
            selected.append((store, info))
    ids = sorted(info.episode_id for _, info in selected)
    done = read_features_marker(out)
    if done is not None and done.get("model_sha256") == model_sha256 and done.get("feature_shape") == shape \
            and done.get("cameras") == cameras and done.get("episode_ids") == ids:
        log(f"demo features already complete in {out} ({done.get('episodes')} episodes)")
        return int(done.get("episodes", 0))

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
    version = str(getattr(model, "version", "") or "")
    fp16_max = float(np.finfo(np.float16).max)
    episodes = transitions = 0
    items = selected
    if progress:
        from tqdm import tqdm

        items = tqdm(selected, desc="demo features", unit="episode")
    try:
        with model.frozen(), torch.inference_mode():
            for store, info in items:
                try:
                    ep = store.load(info)
                except EpisodeError:
                    rejected["demo: corrupt episode"] += 1
                    continue
                if any(c not in ep.images for c in cameras):
                    rejected["demo: missing camera"] += 1
                    continue
                if proprio_dim and ep.state.shape[1] != proprio_dim:
                    raise ValueError(f"the head expects proprio of size {proprio_dim}, episode {info.episode_id} "
                                     f"in {store.root} has state of size {ep.state.shape[1]}")
                n = len(ep)
                for start in range(0, n, batch_size):
                    stop = min(n, start + batch_size)
                    images = [np.stack([decode_image(b) for b in ep.images[c][start:stop]]) for c in cameras]
                    feats = model.encode(images, [info.task] * (stop - start)).float()
                    feats = feats.clamp(-fp16_max, fp16_max).to(torch.float16).cpu().numpy()
                    for k, i in enumerate(range(start, stop)):
                        last = i == n - 1
                        t = Transition(
                            episode_id=f"demo-{info.episode_id}", step=i, features=feats[k],
                            action=np.clip(ep.action[i], -1.0, 1.0).astype(np.float32), reward=float(ep.reward[i]),
                            done=last, terminal=last and bool(info.success), success=bool(ep.success[i]),
                            intervention=True, policy_version=version, task=info.task,
                            proprio=ep.state[i].astype(np.float32))
                        _write_synced(tmp / f"{info.episode_id}-{i:05d}.transition", t.to_bytes())
                        transitions += 1
                episodes += 1
        marker = {"episodes": episodes, "transitions": transitions, "feature_shape": shape,
                  "model_sha256": model_sha256, "model_version": version, "cameras": cameras, "episode_ids": ids,
                  "proprio_dim": proprio_dim, "created": time.time()}
        _write_synced(tmp / COMPLETE, json.dumps(marker, indent=1).encode())
        fsync_dir(tmp)
        if out.exists():  # stale (another model) or incomplete: moved aside first, so `out` is never half
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"demo features: {episodes} episodes, {transitions} steps, features {tuple(shape)} -> {out}")
    return episodes
