"""The packager's logic, ROS-free: transitions -> durable episodes; iteration -> SFT jobs; spool -> verified weights.

`packager_node` is a thin shell around `Packager`: it feeds it decoded transitions and episode events, calls
`poll()` from a background thread, and publishes what `announce` / `publish_status` hand it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from irevla_ros.core.data.codec import Transition
from irevla_ros.core.data.episodes import SOURCES, EpisodeError, EpisodeRecording, EpisodeStore, EpisodeWriter
from irevla_ros.core.data.signing import SignatureError, load_or_create_key
from irevla_ros.core.data.spool import Spool, SpoolError, new_job_id
from irevla_ros.core.iteration import STATE_FILE, Iteration, IterationConfig
from irevla_ros.core.sft.jobs import LR_SCHEDULES, SFT_MODES, JobBuildError, JobConfig, build_job_dir, select_episodes

LOG = logging.getLogger("irevla.packager")


@dataclass
class PackagerConfig:
    run_dir: str = "runs/default"
    """Episodes go to run_dir/episodes, jobs and results to run_dir/sft, state to run_dir/iteration.json."""
    dataset_dir: str = ""
    """Where this packager records episodes (empty = run_dir/episodes)."""
    expert_dataset_dirs: str = ""
    """Comma-separated extra episode stores read for expert demos (e.g. `irevla demos` output)."""
    episode_source: str = "online"
    """Source tag of the episodes recorded here: online (policy) | teleop (human demos) | expert."""
    image_format: str = "png"
    jpeg_quality: int = 95
    fsync_steps: bool = False
    """fsync every step (power-loss safe; a killed process loses nothing even without it)."""
    store_features: bool = False
    """Also store the backbone features of every step (large for big backbones)."""
    end_grace_s: float = 2.0
    """After an 'end' event, wait this long for late transitions before closing the episode."""
    sft_enabled: bool = True
    """Build SFT jobs and watch the spool (off for pure demo recording)."""
    spool_url: str = ""
    """fsspec URL of the spool (empty = file://run_dir/spool)."""
    key_file: str = "~/.config/irevla/sft_hmac.key"
    """Shared HMAC-SHA256 key (created 0600 if missing); the SFT worker needs the same file."""
    model_dir: str = ""
    """Model folder the first job fine-tunes (empty = a random-init `model_preset`)."""
    model_preset: str = "tiny"
    poll_s: float = 2.0
    lease_s: float = 120.0
    stage0: bool = True
    sft_every_n_successes: int = 20
    rl_episodes_per_iteration: int = 0
    plateau_window: int = 0
    plateau_patience: int = 3
    max_iterations: int = 0
    expert_fraction: float = 0.5
    online_task_balance: str = "sqrt"
    """Stage 2: how the online share is split between instructions (none | sqrt | equal; JobConfig)."""
    max_expert_episodes: int = 0
    max_online_episodes: int = 200
    assisted_failures: bool = True
    """Stage 2 also learns the person's steps of failed online episodes they took over in (JobConfig)."""
    online_max_age_s: float = 0.0
    val_fraction: float = 0.1
    min_episodes: int = 2
    stage0_mode: str = "lora"
    """SFT mode for stage 0: lora | full | head (docs/stage2.md: full fine-tuning of the random tiny model)."""
    stage2_mode: str = "lora"
    sft_steps: int = 300
    sft_batch_size: int = 16
    sft_lr: float = 1e-3
    sft_lr_schedule: str = "cosine"
    """constant | cosine (SFTConfig.lr_schedule). Cosine since round 6: with a constant rate one stage 2 on identical
    data gave 20-70 % on a task depending only on its training seed; cosine 50-55 % (bench/stage2_replay.py)."""
    retry_s: float = 60.0
    """After a rejected job or result, wait this long before building the next job (no tight failure loops)."""
    verify_result: bool = True
    """Load the returned model here and check its held-out actions before announcing it."""
    max_val_mse_ratio: float = 1.05
    """Reject a result whose held-out action MSE exceeds this times the pre-SFT model's (not worse)."""
    max_val_mse: float = 0.0
    """And/or an absolute bound on the held-out action MSE (0 = none)."""
    keep_sft_jobs: int = 2
    """Finished SFT jobs kept on disk: the newest this many keep their package (sft/jobs/<id>), their spool copy
    and their result folder; older ones are deleted as each job finishes, except the result the policy runs
    (-1 = keep all). Each job copies up to max_online_episodes + the demos: a 26-minute sim run left 17 jobs,
    3.6 GB. The episodes themselves stay in the episode store."""

    def __post_init__(self) -> None:
        if self.episode_source not in SOURCES:
            raise ValueError(f"episode_source must be one of {SOURCES}, got {self.episode_source!r}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be png|jpg, got {self.image_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality!r}")
        if int(self.keep_sft_jobs) < -1:
            raise ValueError(f"keep_sft_jobs must be >= -1 (-1 = all), got {self.keep_sft_jobs!r}")
        for name in ("end_grace_s", "poll_s", "lease_s", "sft_lr", "retry_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0, got {v!r}")
        for name in ("max_val_mse_ratio", "max_val_mse", "online_max_age_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        for name in ("sft_steps", "sft_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.sft_lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"sft_lr_schedule must be one of {LR_SCHEDULES}, got {self.sft_lr_schedule!r}")
        for name in ("stage0_mode", "stage2_mode"):
            if getattr(self, name) not in SFT_MODES:
                raise ValueError(f"{name} must be one of {SFT_MODES}, got {getattr(self, name)!r}")
        self.iteration_config()
        self.job_config()

    def iteration_config(self) -> IterationConfig:
        return IterationConfig(stage0=self.stage0, sft_every_n_successes=self.sft_every_n_successes,
                               rl_episodes_per_iteration=self.rl_episodes_per_iteration,
                               plateau_window=self.plateau_window, plateau_patience=self.plateau_patience,
                               max_iterations=self.max_iterations)

    def job_config(self) -> JobConfig:
        return JobConfig(expert_fraction=self.expert_fraction, online_task_balance=self.online_task_balance,
                         max_expert_episodes=self.max_expert_episodes,
                         max_online_episodes=self.max_online_episodes, assisted_failures=self.assisted_failures,
                         online_max_age_s=self.online_max_age_s,
                         val_fraction=self.val_fraction, min_episodes=self.min_episodes)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser().resolve()

    @property
    def dataset_path(self) -> Path:
        return Path(self.dataset_dir).expanduser().resolve() if self.dataset_dir else self.run_path / "episodes"

    @property
    def spool(self) -> str:
        return self.spool_url or f"file://{self.run_path / 'spool'}"


class Packager:
    def __init__(self, config: PackagerConfig, *, announce: Callable[[dict], None] | None = None,
                 publish_status: Callable[[dict], None] | None = None, log: logging.Logger | None = None):
        self.config = config
        self.log = log or LOG
        self.announce_cb = announce or (lambda d: None)
        self.status_cb = publish_status or (lambda d: None)
        self.writer = EpisodeWriter(config.dataset_path, image_format=config.image_format,
                                    jpeg_quality=config.jpeg_quality, fsync_steps=config.fsync_steps)
        for info in self.writer.recovered:
            self.log.warning(f"episode {info.episode_id} was cut by a crash: kept {info.length} steps as incomplete")
        self._lock = threading.RLock()
        self.open: dict[str, EpisodeRecording] = {}
        self.closing: dict[str, float] = {}  # episode_id -> deadline after an 'end' event
        self.ended: dict[str, float] = {}  # recently finished ids (late transitions are dropped, not re-opened)
        self.event_meta: dict[str, dict] = {}
        self.stats = {"episodes": 0, "steps": 0, "rejected": 0}
        self.iteration: Iteration | None = None
        self.spool: Spool | None = None
        self.rl_head: tuple[dict, str, str] | None = None  # (state dict, head version, base policy version)
        self._retry_at = 0.0
        if config.sft_enabled:
            self.iteration = Iteration(config.run_path / STATE_FILE, config.iteration_config())
            self.spool = Spool(config.spool, load_or_create_key(config.key_file), lease_s=config.lease_s)
            if self.iteration.state.model_path and Path(self.iteration.state.model_path).is_dir():
                self._announce_current()  # a restarted packager re-announces the newest verified weights

    # ---- recording -----------------------------------------------------------------------------------------
    def on_transition(self, t: Transition) -> None:
        with self._lock:
            if t.episode_id in self.ended:
                self.log.warning(f"dropping a late transition of finished episode {t.episode_id} (step {t.step})")
                return
            rec = self.open.get(t.episode_id)
            if rec is None:
                rec = self._begin(t)
            if t.step != len(rec):
                rec.meta.extra["step_gaps"] = rec.meta.extra.get("step_gaps", 0) + 1
            cams = rec.meta.cameras
            images = {c: t.images[i] for i, c in enumerate(cams)} if cams else None
            try:
                rec.add_step(action=t.action, state=t.proprio, images=images, reward=t.reward, success=t.success,
                             done=t.done, intervention=t.intervention,
                             features=t.features.astype(np.float32) if self.config.store_features else None)
            except EpisodeError as exc:
                self.stats["rejected"] += 1
                self.log.warning(f"rejected step {t.step} of episode {t.episode_id}: {exc}")
                return
            self.stats["steps"] += 1
            if t.done:
                self._finish(t.episode_id, t.success)

    def _begin(self, t: Transition) -> EpisodeRecording:
        ev = self.event_meta.get(t.episode_id, {})
        cams = tuple(c for c in t.cameras.split(",") if c) if t.images.size else ()
        if t.images.size and len(cams) != t.images.shape[0]:
            cams = tuple(f"camera{i}" for i in range(t.images.shape[0]))
        rec = self.writer.begin(task=t.task or str(ev.get("instruction", "")), source=self.config.episode_source,
                                policy_version=str(t.policy_version or ev.get("policy_version", "")),
                                cameras=cams, episode_id=t.episode_id)
        self.open[t.episode_id] = rec
        return rec

    def on_episode_event(self, event: dict) -> None:
        """EPISODE_EVENT JSON: 'start' records metadata, 'end' closes the episode after a grace period."""
        eid = str(event.get("episode_id", ""))
        if not eid:
            raise ValueError(f"episode event without episode_id: {event}")
        kind = event.get("event")
        with self._lock:
            if kind == "start":
                self.event_meta[eid] = event
            elif kind == "end":
                self.event_meta.setdefault(eid, {}).update(event)
                if eid in self.open:
                    rec = self.open[eid]
                    if int(event.get("steps", -1)) == len(rec):
                        self._finish(eid, bool(event.get("success", False)))
                    else:
                        self.closing[eid] = time.monotonic() + self.config.end_grace_s
            else:
                raise ValueError(f"unknown episode event {kind!r}")

    def _finish(self, eid: str, success: bool) -> None:
        rec = self.open.pop(eid)
        self.closing.pop(eid, None)
        ev = self.event_meta.pop(eid, {})
        success = bool(ev.get("success", success)) if ev.get("event") == "end" else success
        expected = ev.get("steps")
        extra = {"expected_steps": int(expected)} if expected is not None and int(expected) != len(rec) else {}
        assisted = sum(bool(step["intervention"]) for step in rec.steps)
        if assisted:
            extra["intervention_steps"] = assisted  # what stage 2 may learn from a failed episode (JobConfig)
        info = rec.finish(success, extra=extra or None)
        self.ended[eid] = time.monotonic()
        self.stats["episodes"] += 1
        self.log.info(f"episode {eid}: {info.length} steps, success={success}, saved as #{info.episode_index}")
        if self.iteration is not None and self.iteration.on_episode(info.source, success):
            self.log.info(f"stage 2 triggered: {self.iteration.state.trigger_reason}")
            self._publish_status()

    def tick(self) -> None:
        """Close episodes whose 'end' grace expired; forget old finished ids."""
        now = time.monotonic()
        with self._lock:
            for eid, deadline in list(self.closing.items()):
                if now >= deadline and eid in self.open:
                    rec = self.open[eid]
                    self.log.warning(f"episode {eid} ended with {len(rec)} steps received "
                                     f"({self.event_meta.get(eid, {}).get('steps')} announced)")
                    self._finish(eid, bool(self.event_meta.get(eid, {}).get("success", False)))
            for eid, t in list(self.ended.items()):
                if now - t > 600:
                    del self.ended[eid]

    def on_head_weights(self, payload: bytes) -> str:
        """Keep the RL learner's newest head (HEAD_WEIGHTS): stage 2 fine-tunes the model WITH it, as in the paper.
        Returns its version; raises PayloadError on a bad payload."""
        from irevla_ros.core.model.weights import decode_head_weights

        state, version, meta = decode_head_weights(payload, with_meta=True)
        with self._lock:
            self.rl_head = (state, version, str(meta.get("base_version", "")))
        return version

    # ---- stage 0/2: jobs and results ------------------------------------------------------------------------
    def trigger(self) -> tuple[bool, str]:
        if self.iteration is None:
            return False, "SFT is disabled on this packager (sft_enabled: false)"
        with self._lock:
            ok, msg = self.iteration.trigger("manual trigger")
        self._publish_status()
        return ok, msg

    def poll(self) -> None:
        """Build/submit a wanted job, or check the running one. Called periodically off the callbacks."""
        self.tick()
        if self.iteration is None:
            self._publish_status()  # recording counters only
            return
        try:
            with self._lock:
                stage = self.iteration.wants_job()
            if stage is not None and time.monotonic() >= self._retry_at:
                self._submit(stage)
            elif self.iteration.state.job_id:
                job_id = self.iteration.state.job_id
                self._check_result(job_id)
                if self.iteration.state.job_id != job_id:  # finished (accepted or refused)
                    self._prune_jobs()
        except (SpoolError, OSError) as exc:
            self.log.warning(f"spool: {exc}")
        self._publish_status()

    def _stores(self) -> list[EpisodeStore]:
        stores = [self.writer.store]
        for d in (p.strip() for p in self.config.expert_dataset_dirs.split(",")):
            if d:
                stores.append(EpisodeStore(Path(d).expanduser()))
        return stores

    def _base_model(self, cameras: list[str]) -> dict:
        path = self.iteration.state.model_path or self.config.model_dir
        if path:
            from irevla_ros.core.model.vla import folder_sha256

            sha = folder_sha256(path)
            return {"spool_path": self.spool.upload_model(path, sha), "id": sha, "local": str(path)}
        return {"preset": self.config.model_preset, "num_cameras": max(1, len(cameras)), "seed": 0}

    def _submit(self, stage: int) -> None:
        cfg = self.config
        sel = select_episodes(self._stores(), cfg.job_config(), stage=stage)
        job_id = new_job_id(f"s{stage}")
        job_dir = cfg.run_path / "sft" / "jobs" / job_id
        cameras = list(sel.all[0][2].cameras) if sel.all else []
        n = self.iteration.state.sft_count + 1
        sft = {"mode": cfg.stage0_mode if stage == 0 else cfg.stage2_mode, "steps": cfg.sft_steps,
               "batch_size": cfg.sft_batch_size, "lr": cfg.sft_lr, "head_lr": cfg.sft_lr,
               "lr_schedule": cfg.sft_lr_schedule}
        try:
            base = self._base_model(cameras)
            body = build_job_dir(sel, job_dir, cfg.job_config(), job_id=job_id, stage=stage,
                                 iteration=self.iteration.state.iteration, version=str(n), base_model=base, sft=sft)
            self._attach_rl_head(stage, job_dir, body)
        except (JobBuildError, EpisodeError) as exc:
            msg = f"cannot build a stage-{stage} job yet: {exc}"
            if self.iteration.state.last_error != msg:
                self.log.warning(msg)
                with self._lock:
                    self.iteration.job_build_failed(msg)
            shutil.rmtree(job_dir, ignore_errors=True)
            return
        self.spool.submit_job(job_dir, body)
        with self._lock:
            self.iteration.job_submitted(job_id)
        self.log.info(f"submitted stage-{stage} SFT job {job_id}: {body['counts']['expert']} expert + "
                      f"{body['counts']['online']} online episodes ({len(body['val'])} held out) -> version {n}")

    def _attach_rl_head(self, stage: int, job_dir: Path, body: dict) -> None:
        """Stage 2 starts from the head RL improved (if it was trained on the current model's features)."""
        with self._lock:
            head = self.rl_head
        current = self.iteration.state.policy_version
        if stage != 2 or head is None or not body.get("base_model") or "spool_path" not in body["base_model"]:
            return
        state, version, base_version = head
        if base_version and current and base_version != current:
            self.log.warning(f"ignoring RL head v{version}: trained on policy {base_version}, current is {current}")
            return
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(job_dir / "rl_head.safetensors"))
        body["base_model"]["rl_head"] = "rl_head.safetensors"
        body["base_model"]["rl_head_version"] = version
        from irevla_ros.core.data.episodes import atomic_write

        atomic_write(job_dir / "job.json", json.dumps(body, indent=1, sort_keys=True).encode())

    def _check_result(self, job_id: str) -> None:
        done = self.spool.status(job_id)
        if done is None:
            return
        if done.get("status") != "done":
            self._reject(job_id, f"the worker rejected job {job_id}: {done.get('reason', done)}")
            return
        cfg = self.config
        staging = cfg.run_path / "sft" / "incoming" / job_id
        try:
            body = self.spool.fetch_result(job_id, staging)
            model_dir = staging / str(body.get("model_path", "model"))
            self._check_model(job_id, body, model_dir)
        except (SignatureError, SpoolError, ValueError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._reject(job_id, f"result of {job_id} rejected: {exc}")
            return
        final = cfg.run_path / "sft" / "results" / job_id
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        from irevla_ros.core.model.vla import folder_sha256

        model_path = final / str(body.get("model_path", "model"))
        sha = folder_sha256(model_path)
        with self._lock:
            self.iteration.job_done(str(body["version"]), str(model_path), sha, body.get("metrics"))
        m = body.get("metrics", {})
        self.log.info(f"SFT result {job_id} verified: version {body['version']} "
                      f"(held-out MSE {m.get('val_mse_before')} -> {m.get('val_mse_after')})")
        self._announce_current()

    def _prune_jobs(self) -> None:
        """Delete the packages, spool copies and results of all but the newest `keep_sft_jobs` finished jobs."""
        keep = self.config.keep_sft_jobs
        if keep < 0:
            return
        sft = self.config.run_path / "sft"
        state = self.iteration.state
        running = Path(state.model_path).resolve() if state.model_path else None
        folders = {p.name: p for d in ("results", "jobs") if (sft / d).is_dir() for p in (sft / d).iterdir()}

        def submitted(job_id: str) -> tuple[str, float]:  # new_job_id's UTC second, then the folder's time
            parts = job_id.split("-")
            return (parts[1] if len(parts) > 2 else "", folders[job_id].stat().st_mtime)

        finished = [j for j in sorted(folders, key=submitted) if j != state.job_id]
        removed = 0
        for job_id in finished[:max(0, len(finished) - keep)]:
            result = sft / "results" / job_id
            if running is not None and (running == result.resolve() or result.resolve() in running.parents):
                continue
            try:
                if self.spool.status(job_id) is not None:
                    self.spool.remove_job(job_id)
            except (SpoolError, OSError) as exc:
                self.log.warning(f"could not remove job {job_id} from the spool: {exc}")
                continue
            shutil.rmtree(sft / "jobs" / job_id, ignore_errors=True)
            shutil.rmtree(result, ignore_errors=True)
            removed += 1
        if removed:
            self.log.info(f"removed {removed} finished SFT job(s) (keep_sft_jobs={keep})")

    def _check_model(self, job_id: str, body: dict, model_dir: Path) -> None:
        """Every file verified (signature + sha256 already), the folder loads, actions are finite and not worse
        than the stated bound on the job's held-out episodes."""
        from irevla_ros.core.model.vla import ModelFolderError, VLAModel, folder_sha256

        if folder_sha256(model_dir) != body.get("model_sha256"):
            raise SignatureError("model folder digest differs from the signed result")
        m = body.get("metrics", {})
        before, after = m.get("val_mse_before"), m.get("val_mse_after")
        job_dir = self.config.run_path / "sft" / "jobs" / job_id
        job = json.loads((job_dir / "job.json").read_text()) if (job_dir / "job.json").exists() else None
        if self.config.verify_result:
            try:
                model = VLAModel.from_pretrained(model_dir)
            except ModelFolderError as exc:
                raise ValueError(f"the returned model does not load: {exc}") from exc
        if self.config.verify_result and job and job.get("val"):
            from irevla_ros.core.sft.train import SFTConfig, StepDataset, evaluate, load_job_episodes

            val = StepDataset(load_job_episodes(job_dir, job["val"]), job["cameras"])
            ev = evaluate(model, val, SFTConfig(max_val_steps=256))
            if not ev["val_finite"]:
                raise ValueError("the returned model gives non-finite actions on held-out data")
            after = ev["val_mse"]
            body.setdefault("metrics", {})["val_mse_packager"] = after
        if before is not None and after is not None and self.config.max_val_mse_ratio > 0 and \
                after > self.config.max_val_mse_ratio * before + 1e-9:
            raise ValueError(f"held-out action MSE {after:.4f} is worse than {self.config.max_val_mse_ratio} x "
                             f"the pre-SFT model's {before:.4f}")
        if self.config.max_val_mse and after is not None and after > self.config.max_val_mse:
            raise ValueError(f"held-out action MSE {after:.4f} exceeds max_val_mse {self.config.max_val_mse}")

    def _reject(self, job_id: str, reason: str) -> None:
        self.log.error(reason)
        self._retry_at = time.monotonic() + self.config.retry_s
        with self._lock:
            self.iteration.job_failed(reason)

    def _announce_current(self) -> None:
        s = self.iteration.state
        self.announce_cb({"path": s.model_path, "version": s.policy_version, "sha256": s.model_sha256})

    def _publish_status(self) -> None:
        """Iteration state (with SFT enabled) plus the recording counters (always)."""
        iteration = self.iteration.status() if self.iteration is not None else {}
        self.status_cb({**iteration, "recording": sorted(self.open), **self.stats})

    def close(self) -> None:
        """Shutdown: open episodes are kept as incomplete (their steps are not lost, never taken for finished)."""
        with self._lock:
            for eid, rec in list(self.open.items()):
                info = rec.abort(keep=True, reason="packager shut down mid-episode")
                if info is not None:
                    self.log.warning(f"episode {eid} was open at shutdown: kept {info.length} steps as incomplete")
            self.open.clear()
