"""The stage-1 learner, ROS-free: ingest transitions, keep the buffers, train, publish weights, checkpoint.

rl_node is a thin shell around `OnlineLearner`: it hands over transition payloads (`ingest`), calls `train`
with a time budget, publishes `weights_payload()` when `publish_due()`, and calls `maybe_checkpoint()`.
Everything here is testable without ROS.

Pairing: the policy sends one transition per step without the next observation. A step becomes a
transition when the next step of its episode arrives (its features are the next observation) or when it is
the episode's last step (done): then the next observation is the step itself, bootstrapped unless terminal
(the policy sends no observation after the last step; for a time-limit end, V(s_T) ~ V(s_{T+1})).
Interventions are stored in both buffers; a non-intervention step that follows an intervention is also
written to the demo buffer, as the next observation only (never sampled itself).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from irevla_ros.core.data.codec import PayloadError, Transition
from irevla_ros.core.model.head import HeadConfig
from irevla_ros.core.rl.checkpoint import CheckpointError, CheckpointStore
from irevla_ros.core.rl.config import RLConfig
from irevla_ros.core.rl.demos import demo_features_dir, load_demo_episodes, read_features_marker
from irevla_ros.core.rl.ppo import PPOLearner, Rollout
from irevla_ros.core.rl.replay import (
    FLAG_DONE,
    Allocator,
    Batch,
    ReplayBuffer,
    ReplayError,
    bytes_per_transition,
    gather_batch,
)
from irevla_ros.core.rl.sac import Prefetcher, SACLearner, pinned_empty, stage_batch
from irevla_ros.core.rl.weights import encode_head_weights, load_head_file

MAX_PENDING_EPISODES = 1000
_VERSION_RE = re.compile(r"(\d+)$")


def parse_version(text: str) -> int:
    """The integer at the end of a policy_version string ("12", "rl-12" -> 12); 0 when there is none."""
    match = _VERSION_RE.search(str(text).strip())
    return int(match.group(1)) if match else 0


def _classify(exc: Exception) -> str:
    msg = str(exc)
    if "NaN/inf" in msg:
        return "non_finite"
    if "corrupt" in msg:
        return "corrupt"
    if "expected a" in msg:
        return "wrong_kind"
    if "shape" in msg or "must have" in msg or "must be" in msg:
        return "bad_shape"
    return "invalid"


@dataclass
class _Pending:
    """The last step of an open episode, waiting for its successor."""

    step: int
    online: tuple[int, int]  # (slot, seq) in the online buffer
    demo: tuple[int, int] | None  # (slot, seq) in the demo buffer when it was an intervention
    version: int


class OnlineLearner:
    def __init__(self, config: RLConfig, log: Callable[[str], None] | None = None, base_version: str | None = None):
        self.config = config
        self.base_version = base_version
        """The model (backbone) version this run's features come from, when known (set by `next_stage`); sent as
        `base_version` with the weights so the policy refuses a head trained on another backbone."""
        self.log = log or (lambda msg: None)
        self.root = Path(config.run_dir) / "rl"
        self.root.mkdir(parents=True, exist_ok=True)
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.checkpoints = CheckpointStore(self.root / "checkpoints", keep=config.keep_checkpoints)
        self.rejected: Counter = Counter()
        self.counters: Counter = Counter()
        """transitions (accepted steps), online_transitions (linked), demo_transitions, episodes, successes,
        interventions, gaps, published, checkpoints."""
        self.version = 0
        self.run_id = uuid.uuid4().hex[:12]
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.open_episodes: dict[str, list[float]] = {}  # id -> [return, steps, interventions]
        self.finished: deque[str] = deque(maxlen=MAX_PENDING_EPISODES)
        self.rollout: list[tuple[str, int, int, int, int]] = []  # PPO: (episode, step, slot, seq, version)
        window = config.success_window
        self.recent_returns: deque[float] = deque(maxlen=window)
        self.recent_success: deque[float] = deque(maxlen=window)
        self.recent_intervention: deque[float] = deque(maxlen=window)
        self.head_config: HeadConfig | None = None
        self.proprio_dim = config.proprio_dim
        self.algo: SACLearner | PPOLearner | None = None
        self.online: ReplayBuffer | None = None
        self.demo: ReplayBuffer | None = None
        self.resumed_from: str | None = None
        self.resumed_state: dict | None = None
        """What the run resumed with (version, updates, counters, buffer sizes), before any new training."""
        self.checkpoint_name: str | None = None
        self._updates_at_publish = 0
        self._last_publish = time.monotonic()
        self._force_publish = False
        self._updates_at_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._update_time = 0.0
        self._updates_timed = 0
        self._last_stats: dict[str, float] = {}
        self.writer = None
        self._prefetcher: Prefetcher | None = None

        self._folder = self._model_folder()
        if config.resume:
            self._try_resume()
        if self.algo is None:
            self._start_fresh()

    # --- construction ---------------------------------------------------------------------------------------
    def _model_folder(self) -> tuple[HeadConfig, tuple[int, int], Path] | None:
        """`init_head` may name the policy's VLA model folder: then its head config, feature shape and verified
        head.safetensors are used, so the learner's head always matches the policy's."""
        if not self.config.init_head or not Path(self.config.init_head).is_dir():
            return None
        from irevla_ros.core.model.vla import HEAD_FILE, file_sha256, read_config, read_manifest

        folder = Path(self.config.init_head)
        vla = read_config(folder)
        expected = read_manifest(folder)["files"].get(HEAD_FILE)
        head_file = folder / HEAD_FILE
        if not head_file.is_file() or file_sha256(head_file) != expected:
            raise ValueError(f"init_head {folder}: {HEAD_FILE} is missing or does not match the folder's manifest")
        return vla.head, tuple(vla.feature_shape), head_file

    def _head_config(self, feature_shape: tuple[int, int]) -> HeadConfig:
        c = self.config
        if self._folder is not None:
            return self._folder[0]
        return HeadConfig(feature_dim=int(feature_shape[1]), num_learned_tokens=c.num_learned_tokens,
                          hidden_dim=c.hidden_dim, proprio_dim=c.proprio_dim)

    def _build(self, feature_shape: tuple[int, int], *, fresh: bool, algorithm: str | None = None) -> None:
        c = self.config
        self.feature_shape = (int(feature_shape[0]), int(feature_shape[1]))
        self.head_config = self._head_config(self.feature_shape)
        self.proprio_dim = self.head_config.proprio_dim
        if self.head_config.feature_dim != self.feature_shape[1]:
            raise ValueError(f"head feature_dim {self.head_config.feature_dim} != features {self.feature_shape}")
        per = bytes_per_transition(self.feature_shape, self.proprio_dim)
        online_cap, demo_cap = c.online_capacity_bytes // per, c.demo_capacity_bytes // per
        if (algorithm or c.algorithm) == "ppo" and online_cap < 2 * c.ppo_rollout_steps:
            raise ValueError(f"online_capacity_bytes={c.online_capacity_bytes} holds {online_cap} steps of "
                             f"{per} bytes; PPO needs >= 2 * ppo_rollout_steps = {2 * c.ppo_rollout_steps}")
        if online_cap < 2 or demo_cap < 2:
            raise ValueError(f"buffers too small: {per} bytes per step, online_capacity_bytes="
                             f"{c.online_capacity_bytes}, demo_capacity_bytes={c.demo_capacity_bytes}")
        self.online = ReplayBuffer(self.root / "buffers" / "online", online_cap, self.feature_shape,
                                   self.proprio_dim, fresh=fresh)
        self.demo = ReplayBuffer(self.root / "buffers" / "demo", demo_cap, self.feature_shape, self.proprio_dim,
                                 fresh=fresh)
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        if c.algorithm == "sac":
            self.algo = SACLearner(self.head_config, c, self.device)
            if c.prefetch_batches and self.device.type == "cuda":
                self._prefetcher = Prefetcher(lambda: stage_batch(self.sample_batch(c.batch_size, pinned_empty),
                                                                  pin=True))
        else:
            self.algo = PPOLearner(self.head_config, c, self.device, seed=c.seed)
        if c.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.root / "tb"))
        self.log(f"learner ready: {c.algorithm}, features {self.feature_shape}, {per} bytes/transition, "
                 f"online {online_cap} / demo {demo_cap} transitions")

    def _start_fresh(self) -> None:
        c = self.config
        if any(True for _ in self.checkpoints.candidates()):
            # Never mix runs: checkpoints we did not resume from are kept aside, not pruned or fallen back to.
            aside = self.checkpoints.root.with_name(f"checkpoints.replaced-{time.time_ns()}")
            self.checkpoints.root.rename(aside)
            self.checkpoints = CheckpointStore(self.root / "checkpoints", keep=c.keep_checkpoints)
            self.log(f"starting a fresh run: previous checkpoints moved to {aside}")
        demos = load_demo_episodes(c.demo_dir, self.rejected) if c.demo_dir else []
        shape = (c.feature_tokens, c.feature_dim) if c.feature_dim else None
        if self._folder is not None:
            if shape is not None and shape != self._folder[1]:
                raise ValueError(f"feature_tokens/feature_dim {shape} contradict the model folder's features "
                                 f"{self._folder[1]} ({c.init_head})")
            shape = self._folder[1]
        if shape is None and demos:
            shape = tuple(demos[0][0].features.shape)
        if shape is not None:
            self._build(shape, fresh=True)
            self._init_head()
        self._pending_demos = demos
        if self.algo is not None:
            self._load_pending_demos()

    def _init_head(self) -> None:
        if self.config.init_head:
            path = str(self._folder[2]) if self._folder is not None else self.config.init_head
            meta = load_head_file(path, self.algo.actor)
            self.log(f"initial head from {self.config.init_head} (version {meta.get('version', '?')})")

    def _load_pending_demos(self) -> None:
        for episode in getattr(self, "_pending_demos", []):
            for t in episode:
                if not self._check(t):
                    break
                self._add_demo_step(t)
        loaded = len(getattr(self, "_pending_demos", []))
        self._pending_demos = []
        if loaded:
            self.log(f"demo buffer: {len(self.demo)} transitions from {loaded} episodes in {self.config.demo_dir}")

    # --- ingestion ------------------------------------------------------------------------------------------
    def ingest(self, payload: bytes) -> bool:
        """Decode, validate and store one transition payload; False (and a counted reason) if rejected."""
        try:
            t = Transition.from_bytes(payload)
        except PayloadError as exc:
            self.rejected[_classify(exc)] += 1
            return False
        return self.add_transition(t)

    def _reject(self, reason: str) -> bool:
        self.rejected[reason] += 1
        return False

    def _check(self, t: Transition) -> bool:
        if tuple(t.features.shape) != self.feature_shape:
            return self._reject("feature_shape")
        if self.proprio_dim and t.proprio.shape != (self.proprio_dim,):
            return self._reject("proprio_dim")
        if np.abs(t.action).max() > 1.0 + 1e-6:
            return self._reject("action_range")
        return True

    def _proprio(self, t: Transition) -> np.ndarray | None:
        return t.proprio if self.proprio_dim else None

    def add_transition(self, t: Transition) -> bool:
        try:
            t.validate()
        except PayloadError as exc:
            return self._reject(_classify(exc))
        if not t.episode_id:
            return self._reject("episode_id")
        if self.algo is None:
            self._build(t.features.shape, fresh=True)
            self._init_head()
            self._load_pending_demos()
        if not self._check(t):
            return False
        if t.episode_id in self.finished:
            return self._reject("after_done")
        prev = self.pending.get(t.episode_id)
        if prev is not None and t.step <= prev.step:
            return self._reject("duplicate_step")
        version = parse_version(t.policy_version)
        if self.config.algorithm == "ppo" and version < self.version - self.config.ppo_max_policy_lag:
            return self._reject("stale_policy")

        slot, seq = self.online.add(t.features, t.action, proprio=self._proprio(t), reward=t.reward,
                                    log_prob=t.log_prob, terminal=t.terminal, done=t.done, success=t.success,
                                    intervention=t.intervention, version=version)
        demo_ref = None
        prev_demo_alive = prev is not None and prev.demo is not None and self.demo.alive(*prev.demo)
        if t.intervention or prev_demo_alive:
            demo_ref = self.demo.add(t.features, t.action, proprio=self._proprio(t), reward=t.reward,
                                     log_prob=t.log_prob, terminal=t.terminal, done=t.done, success=t.success,
                                     intervention=t.intervention, version=version)
        self.counters["transitions"] += 1
        self.counters["interventions"] += int(t.intervention)
        ep = self.open_episodes.setdefault(t.episode_id, [0.0, 0, 0])
        ep[0] += t.reward
        ep[1] += 1
        ep[2] += int(t.intervention)

        if prev is not None:
            if prev.step + 1 == t.step and self.online.alive(*prev.online):
                self._link_online(t.episode_id, prev.step, prev.online, slot, prev.version)
                if prev_demo_alive:
                    self.demo.link(prev.demo[0], demo_ref[0])
                    self.counters["demo_transitions"] += 1
            else:
                self.counters["gaps"] += 1
        if t.done:
            self._link_online(t.episode_id, t.step, (slot, seq), slot, version)
            if t.intervention:
                self.demo.link(demo_ref[0], demo_ref[0])
                self.counters["demo_transitions"] += 1
            self.pending.pop(t.episode_id, None)
            self._end_episode(t)
        else:
            self.pending[t.episode_id] = _Pending(t.step, (slot, seq), demo_ref if t.intervention else None, version)
            self.pending.move_to_end(t.episode_id)
            while len(self.pending) > MAX_PENDING_EPISODES:
                old, _ = self.pending.popitem(last=False)
                self.open_episodes.pop(old, None)
                self.counters["evicted_episodes"] += 1
        return True

    def _link_online(self, episode: str, step: int, ref: tuple[int, int], next_slot: int, version: int) -> None:
        self.online.link(ref[0], next_slot)
        self.counters["online_transitions"] += 1
        if self.config.algorithm == "ppo":
            self.rollout.append((episode, step, ref[0], ref[1], version))

    def _end_episode(self, t: Transition) -> None:
        ret, steps, interventions = self.open_episodes.pop(t.episode_id, [t.reward, 1, int(t.intervention)])
        self.finished.append(t.episode_id)
        self.counters["episodes"] += 1
        self.counters["successes"] += int(t.success)
        self.recent_returns.append(ret)
        self.recent_success.append(float(t.success))
        self.recent_intervention.append(interventions / max(steps, 1))
        self._scalars({"charts/episode_return": ret, "charts/episode_length": steps,
                       "charts/success_rate": float(np.mean(self.recent_success)),
                       "charts/intervention_rate": float(np.mean(self.recent_intervention))},
                      self.counters["episodes"])

    def _add_demo_step(self, t: Transition) -> None:
        """Demo episodes arrive whole and in order: link each step to the next, the last to itself."""
        slot, seq = self.demo.add(t.features, t.action, proprio=self._proprio(t), reward=t.reward,
                                  log_prob=t.log_prob, terminal=t.terminal, done=t.done, success=t.success,
                                  intervention=True, version=parse_version(t.policy_version))
        prev = self._demo_prev
        if prev is not None and self.demo.alive(*prev):
            self.demo.link(prev[0], slot)
            self.counters["demo_transitions"] += 1
        if t.done:
            self.demo.link(slot, slot)
            self.counters["demo_transitions"] += 1
            self._demo_prev = None
        else:
            self._demo_prev = (slot, seq)

    _demo_prev: tuple[int, int] | None = None

    # --- training -------------------------------------------------------------------------------------------
    def updates_due(self) -> int:
        c = self.config
        if self.algo is None or c.utd_ratio == 0:  # 0: collect only
            return 0
        if c.algorithm == "ppo":
            return 1 if len(self.rollout) >= c.ppo_rollout_steps else 0
        if len(self.online) < max(c.warmup_transitions, 1):
            return 0
        target = int(c.utd_ratio * max(0, self.counters["online_transitions"] - c.warmup_transitions))
        return max(0, target - self.algo.updates)

    def sample_batch(self, batch_size: int, alloc: Allocator | None = None) -> Batch:
        """RLPD's symmetric sampling: `demo_ratio` of the batch from the demo buffer, the rest online. `alloc`:
        where the batch's arrays live (pinned memory for the GPU)."""
        n_demo = int(round(batch_size * self.config.demo_ratio)) if len(self.demo) else 0
        if not len(self.online):
            n_demo = batch_size
        demo_idx = self.demo.sample_indices(n_demo, self.rng)
        online_idx = self.online.sample_indices(batch_size - n_demo, self.rng)
        return gather_batch([(self.demo, demo_idx), (self.online, online_idx)], alloc)

    def train(self, max_seconds: float = math.inf, max_updates: int | None = None) -> int:
        """Run the updates that are due, within a time budget. Returns the number of gradient updates done.
        SAC on CUDA (`prefetch_batches`): the next batch is sampled and pinned while the GPU runs this one."""
        start = time.perf_counter()
        done = 0
        while self.algo is not None and (max_updates is None or done < max_updates):
            due = self.updates_due()
            if due <= 0 or time.perf_counter() - start >= max_seconds:
                break
            t0 = time.perf_counter()
            before = self.algo.updates
            if self.config.algorithm == "ppo":
                stats = self._ppo_iteration()
            elif self._prefetcher is not None:
                more = due > 1 and (max_updates is None or done + 1 < max_updates)
                stats = self.algo.update(self._prefetcher.next(more))
            else:
                stats = self.algo.update(self.sample_batch(self.config.batch_size))
            n = self.algo.updates - before
            done += n
            self._update_time += time.perf_counter() - t0
            self._updates_timed += n
            self._last_stats = stats
            if self.config.algorithm == "ppo" or self.algo.updates % self.config.log_every_updates == 0:
                stats = dict(stats)
                stats["charts/updates_per_s"] = self._updates_timed / max(self._update_time, 1e-9)
                stats["charts/buffer_online"] = len(self.online)
                stats["charts/buffer_demo"] = len(self.demo)
                stats["charts/rejected"] = sum(self.rejected.values())
                self._scalars(stats, self.algo.updates)
                self._update_time, self._updates_timed = 0.0, 0
        if self._prefetcher is not None:
            self._prefetcher.drain()  # the caller adds to the buffers next: no fetch may still be reading them
        return done

    def _ppo_iteration(self) -> dict[str, float]:
        lag_floor = self.version - self.config.ppo_max_policy_lag
        rows = sorted((r for r in self.rollout if self.online.alive(r[2], r[3]) and r[4] >= lag_floor),
                      key=lambda r: (r[0], r[1]))
        self.counters["ppo_dropped"] += len(self.rollout) - len(rows)
        self.rollout = []
        if not rows:
            return {}
        idx = np.array([r[2] for r in rows], np.int64)
        batch = self.online.gather(idx)
        done = (self.online.flags[idx] & FLAG_DONE) > 0
        cont = np.zeros(len(rows), np.float32)
        for i in range(len(rows) - 1):
            cont[i] = float(rows[i + 1][0] == rows[i][0] and rows[i + 1][1] == rows[i][1] + 1 and not done[i])
        demo = self.demo.sample(self.config.ppo_minibatch_size, self.rng) if self.config.bc_coef > 0 else None
        stats = self.algo.update(Rollout(batch, cont), demo)
        self._force_publish = True
        return stats

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), step)

    # --- weights --------------------------------------------------------------------------------------------
    def publish_due(self, now: float | None = None) -> bool:
        if self.algo is None:
            return False
        now = time.monotonic() if now is None else now
        new = self.algo.updates - self._updates_at_publish
        if self._force_publish:
            return True
        return new >= self.config.publish_every_updates or (new > 0 and now - self._last_publish >=
                                                              self.config.publish_every_s)

    def weights_payload(self, now: float | None = None) -> bytes:
        """The next version of the head weights (increments the version)."""
        self.version += 1
        self.counters["published"] += 1
        self._updates_at_publish = self.algo.updates
        self._last_publish = time.monotonic() if now is None else now
        self._force_publish = False
        return self.current_weights_payload()

    def current_weights_payload(self) -> bytes:
        return encode_head_weights(self.algo.get_weights(), version=self.version, head_config=self.head_config,
                                   updates=self.algo.updates, algorithm=self.config.algorithm, run_id=self.run_id,
                                   base_version=self.base_version)

    def next_stage(self, model_dir: str, version: str, sha256: str) -> OnlineLearner:
        """A new model from stage-2 SFT (FULL_WEIGHTS_READY): its backbone changed, so every stored feature is
        stale. Checkpoint this run, move its checkpoints and buffers aside (kept, never mixed), and return a fresh
        learner whose head starts from the new folder's head. Raises ValueError (nothing changed) if the folder
        does not match `sha256`."""
        from irevla_ros.core.model.vla import ModelFolderError, folder_sha256

        try:
            digest = folder_sha256(model_dir)
        except ModelFolderError as exc:
            raise ValueError(f"new model {model_dir}: {exc}") from exc
        if digest != sha256:
            raise ValueError(f"new model {model_dir}: sha256 {digest[:12]}... does not match the announced "
                             f"{str(sha256)[:12]}...")
        demo_dir = self._stage_demo_dir(model_dir, sha256)
        self.close(checkpoint=True)
        stamp = time.time_ns()
        for name in ("checkpoints", "buffers"):
            if (self.root / name).exists():
                (self.root / name).rename(self.root / f"{name}.stage-{stamp}")
        self._prune_previous_stages()
        cfg = dataclasses.replace(self.config, init_head=model_dir, resume=False, feature_tokens=0, feature_dim=0,
                                  demo_dir=demo_dir)
        successor = OnlineLearner(cfg, log=self.log, base_version=str(version))
        successor.checkpoint()  # durable at once: a restart resumes the new stage, not the old one
        self.log(f"new stage from model v{version} ({model_dir}); previous run kept in *.stage-{stamp}")
        return successor

    def _prune_previous_stages(self) -> None:
        keep = self.config.keep_previous_stages
        if keep < 0:
            return
        stamps = sorted({int(p.name.rsplit("-", 1)[1]) for p in self.root.glob("*.stage-*")
                         if p.name.rsplit("-", 1)[1].isdigit()}, reverse=True)
        for stamp in stamps[keep:]:
            for name in ("checkpoints", "buffers"):
                shutil.rmtree(self.root / f"{name}.stage-{stamp}", ignore_errors=True)
        if stamps[keep:]:
            self.log(f"removed {len(stamps[keep:])} older stage(s) from {self.root} (keep_previous_stages={keep})")

    def _stage_demo_dir(self, model_dir: str, sha256: str) -> str:
        """The demo features encoded with the new model's backbone (`demo_features_dir(model_dir)`, written by the
        stage-2 worker), if complete and made by that very model; else the current demo_dir, with a log line."""
        from irevla_ros.core.model.vla import read_config

        features = demo_features_dir(model_dir)
        marker = read_features_marker(features)
        shape = list(read_config(model_dir).feature_shape)
        if marker is None:
            why = "none there"
        elif marker.get("model_sha256") and marker["model_sha256"] != sha256:
            why = f"they were encoded by another model ({str(marker['model_sha256'])[:12]}...)"
        elif marker["feature_shape"] != shape:
            why = f"their features are {marker['feature_shape']}, the model's {shape}"
        else:
            self.log(f"demo buffer for the new stage: {marker.get('episodes')} episodes encoded with the new "
                     f"backbone in {features}")
            return str(features)
        self.log(f"no usable demo features for the new model in {features} ({why}); keeping demo_dir "
                 f"{self.config.demo_dir or '(none)'}: features of the previous backbone")
        return self.config.demo_dir

    # --- checkpoints ----------------------------------------------------------------------------------------
    def checkpoint_due(self, now: float | None = None) -> bool:
        if self.algo is None:
            return False
        now = time.monotonic() if now is None else now
        c = self.config
        by_updates = c.checkpoint_every_updates and self.algo.updates - self._updates_at_checkpoint >= \
            c.checkpoint_every_updates
        return bool(by_updates) or now - self._last_checkpoint >= c.checkpoint_every_s

    def maybe_checkpoint(self, now: float | None = None) -> str | None:
        return self.checkpoint() if self.checkpoint_due(now) else None

    def _state(self) -> dict:
        return {
            "format": 1, "run_id": self.run_id, "algorithm": self.config.algorithm, "version": self.version,
            "base_version": self.base_version,
            "feature_shape": list(self.feature_shape), "head_config": asdict(self.head_config),
            "counters": dict(self.counters), "rejected": dict(self.rejected),
            "pending": [[k, p.step, list(p.online), list(p.demo) if p.demo else None, p.version]
                        for k, p in self.pending.items()],
            "open_episodes": self.open_episodes, "finished": list(self.finished), "rollout": self.rollout,
            "recent": [list(self.recent_returns), list(self.recent_success), list(self.recent_intervention)],
            "numpy_rng": self.rng.bit_generator.state,
            "ppo_rng": self.algo.rng.bit_generator.state if isinstance(self.algo, PPOLearner) else None,
        }

    def checkpoint(self) -> str | None:
        """Write a complete checkpoint atomically (see checkpoint.py); returns its name."""
        if self.algo is None:
            return None
        self.online.flush()
        self.demo.flush()
        self.counters["checkpoints"] += 1  # counted inside the checkpoint it describes
        learner = io.BytesIO()
        torch.save({"algorithm": self.config.algorithm, "algo": self.algo.state_dict(),
                    "torch_rng": torch.get_rng_state()}, learner)
        files = {"state.json": json.dumps(self._state()).encode(), "learner.pt": learner.getvalue(),
                 "online.npz": _npz(self.online.state_dict()), "demo.npz": _npz(self.demo.state_dict())}
        name = self.checkpoints.save(self.algo.updates, files)
        self.online.begin_epoch(name)
        self.demo.begin_epoch(name)
        self.checkpoint_name = name
        self._updates_at_checkpoint = self.algo.updates
        self._last_checkpoint = time.monotonic()
        return name

    def _try_resume(self) -> None:
        for name in self.checkpoints.candidates():
            try:
                files = self.checkpoints.load(name)
                self._restore(name, files)
            except (CheckpointError, ReplayError, KeyError, ValueError, RuntimeError, OSError) as exc:
                self.log(f"cannot resume from checkpoint {name}: {exc}")
                self.rejected["checkpoint_unusable"] += 1
                if isinstance(exc, (ReplayError, ValueError)) and "does not match" in str(exc):
                    raise
                self.algo = None
                continue
            self.resumed_from = name
            self.resumed_state = {"checkpoint": name, "version": self.version, "updates": self.algo.updates,
                                  "counters": dict(self.counters), "online": len(self.online),
                                  "demo": len(self.demo)}
            lost = self.online.lost_on_resume + self.demo.lost_on_resume
            self.log(f"resumed from {name}: {self.algo.updates} updates, version {self.version}, "
                     f"{len(self.online)} online / {len(self.demo)} demo transitions" +
                     (f", {lost} steps lost since that checkpoint" if lost else ""))
            return

    def _restore(self, name: str, files: dict[str, bytes]) -> None:
        state = json.loads(files["state.json"])
        shape = tuple(state["feature_shape"])
        expected = self._head_config(shape)
        if not expected.matches(state["head_config"]):
            raise ValueError(f"checkpoint {name} head {state['head_config']} does not match the configured head "
                             f"{asdict(expected)}: use the same head parameters or a new run_dir")
        self._build(shape, fresh=False, algorithm=state["algorithm"])
        self.online.load_state_dict(_unnpz(files["online.npz"]), tag=name)
        self.demo.load_state_dict(_unnpz(files["demo.npz"]), tag=name)
        learner = torch.load(io.BytesIO(files["learner.pt"]), weights_only=True, map_location=self.device)
        if learner["algorithm"] == self.config.algorithm:
            self.algo.load_state_dict(learner["algo"])
        else:  # switching sac <-> ppo keeps the actor, the buffers and the counters; critics start anew
            self.algo.actor.load_state_dict(learner["algo"]["actor"])
            self.log(f"checkpoint {name} was trained with {learner['algorithm']}; continuing with "
                     f"{self.config.algorithm} from its actor")
        torch.set_rng_state(learner["torch_rng"])
        self.run_id = state["run_id"]
        self.version = int(state["version"])
        self.base_version = state.get("base_version")
        self.counters = Counter(state["counters"])
        self.rejected.update(state["rejected"])
        self.pending = OrderedDict((k, _Pending(step, tuple(on), tuple(de) if de else None, v))
                                   for k, step, on, de, v in state["pending"])
        self.open_episodes = {k: list(v) for k, v in state["open_episodes"].items()}
        self.finished = deque(state["finished"], maxlen=MAX_PENDING_EPISODES)
        self.rollout = [tuple(r) for r in state["rollout"]] if self.config.algorithm == "ppo" else []
        returns, success, intervention = state["recent"]
        self.recent_returns.extend(returns)
        self.recent_success.extend(success)
        self.recent_intervention.extend(intervention)
        self.rng.bit_generator.state = state["numpy_rng"]
        if isinstance(self.algo, PPOLearner) and state.get("ppo_rng"):
            self.algo.rng.bit_generator.state = state["ppo_rng"]
        self._updates_at_publish = self._updates_at_checkpoint = self.algo.updates
        self.checkpoint_name = name
        self.online.begin_epoch(name)
        self.demo.begin_epoch(name)

    # --- introspection --------------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Everything a resume must reproduce: counters, version, buffers and network digests (tests, logs)."""
        from irevla_ros.core.rl.weights import state_dict_sha256

        if self.algo is None:
            return {}
        nets = self.algo.state_dict()
        digests = {k: state_dict_sha256({n: t.detach().cpu().numpy() for n, t in v.items()})
                   for k, v in nets.items() if k in ("actor", "critic", "critic_target", "value")}
        return {"counters": dict(self.counters), "rejected": dict(self.rejected), "version": self.version,
                "updates": self.algo.updates, "online": self.online.fingerprint(), "demo": self.demo.fingerprint(),
                "pending": sorted((k, p.step) for k, p in self.pending.items()), "nets": digests,
                "alpha": self.algo.log_alpha.item() if isinstance(self.algo, SACLearner) else None}

    def summary(self) -> dict:
        return {"algorithm": self.config.algorithm, "updates": self.algo.updates if self.algo else 0,
                "version": self.version, "base_version": self.base_version, "run_id": self.run_id,
                "online": len(self.online) if self.online else 0, "demo": len(self.demo) if self.demo else 0,
                "counters": dict(self.counters), "rejected": dict(self.rejected),
                "success_rate": float(np.mean(self.recent_success)) if self.recent_success else 0.0}

    def close(self, checkpoint: bool = True) -> None:
        if checkpoint and self.algo is not None:
            self.checkpoint()
        for buf in (self.online, self.demo):
            if buf is not None:
                buf.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unnpz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
