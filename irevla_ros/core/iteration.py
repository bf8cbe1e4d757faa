"""The iRe-VLA iteration as a persisted state machine: stage 0 -> 1 -> 2 -> 1 -> 2 ...

    stage 0  SFT on expert demos (phase need_job -> waiting)          -> result announced -> stage 1
    stage 1  online RL (phase rl): counts online episodes/successes;
             when a trigger fires (N successes, N episodes, success plateau, or a manual trigger) -> stage 2
    stage 2  SFT on expert + successful online episodes (need_job -> waiting) -> result announced -> iteration += 1,
             stage 1 ...

The state is one JSON file written atomically after every change, so a packager that crashes resumes exactly where
it was (e.g. still waiting for job X). ROS-free; the packager node drives it, `irevla status` prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from irevla_ros.core.data.episodes import atomic_write

NEED_JOB, WAITING, RL = "need_job", "waiting", "rl"
STATE_FILE = "iteration.json"


@dataclass
class IterationConfig:
    stage0: bool = True
    """Start with SFT on the expert demos (stage 0). False: start in stage 1 with the given model."""
    sft_every_n_successes: int = 20
    """Stage 1 -> 2 after this many successful online episodes in the current stage (0 = off)."""
    rl_episodes_per_iteration: int = 0
    """Stage 1 -> 2 after this many online episodes in the current stage (0 = off)."""
    plateau_window: int = 0
    """Success-rate window (episodes) for plateau detection (0 = off)."""
    plateau_patience: int = 3
    """Stage 1 -> 2 when this many consecutive windows do not beat the best rate by plateau_min_delta."""
    plateau_min_delta: float = 0.05
    min_successes_for_sft: int = 1
    """Stage 2 needs at least this many successful online episodes (else keep doing RL)."""
    max_iterations: int = 0
    """Stop after this many stage-2 rounds (0 = never)."""

    def __post_init__(self) -> None:
        for name in ("sft_every_n_successes", "rl_episodes_per_iteration", "plateau_window", "plateau_patience",
                     "min_successes_for_sft", "max_iterations"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"IterationConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.plateau_min_delta <= 1.0:
            raise ValueError(f"plateau_min_delta must be in [0, 1], got {self.plateau_min_delta!r}")


@dataclass
class IterationState:
    stage: int = 0
    phase: str = NEED_JOB
    iteration: int = 0
    """Completed stage-2 rounds."""
    job_id: str = ""
    job_stage: int = -1
    sft_count: int = 0
    policy_version: str = ""
    model_path: str = ""
    model_sha256: str = ""
    stage_episodes: int = 0
    stage_successes: int = 0
    total_episodes: int = 0
    total_successes: int = 0
    window: list[bool] = field(default_factory=list)
    best_rate: float = -1.0
    stale_windows: int = 0
    last_error: str = ""
    trigger_reason: str = ""
    history: list[dict] = field(default_factory=list)
    updated: float = 0.0


class Iteration:
    """Load-or-create the state at `path`; every mutating method saves it before returning."""

    def __init__(self, path: str | os.PathLike, config: IterationConfig | None = None):
        self.path = Path(path)
        self.config = config or IterationConfig()
        if self.path.exists():
            data = json.loads(self.path.read_text())
            known = set(IterationState.__dataclass_fields__)
            self.state = IterationState(**{k: v for k, v in data.items() if k in known})
        else:
            self.state = IterationState(stage=0 if self.config.stage0 else 1,
                                        phase=NEED_JOB if self.config.stage0 else RL)
            self.save()

    def save(self) -> None:
        self.state.updated = time.time()
        atomic_write(self.path, json.dumps(asdict(self.state), indent=1, sort_keys=True).encode())

    # ---- queries -------------------------------------------------------------------------------------------
    @property
    def stage(self) -> int:
        return self.state.stage

    def wants_job(self) -> int | None:
        """The stage (0 or 2) a job should be built for now, or None."""
        return self.state.stage if self.state.phase == NEED_JOB else None

    def finished(self) -> bool:
        return bool(self.config.max_iterations) and self.state.iteration >= self.config.max_iterations

    # ---- events --------------------------------------------------------------------------------------------
    def job_submitted(self, job_id: str) -> None:
        s = self.state
        if s.phase != NEED_JOB:
            raise RuntimeError(f"no job was wanted (stage {s.stage}, phase {s.phase})")
        s.job_id, s.job_stage, s.phase, s.last_error = job_id, s.stage, WAITING, ""
        self.save()

    def job_done(self, version: str, model_path: str, model_sha256: str, metrics: dict | None = None) -> None:
        s = self.state
        if s.phase != WAITING:
            raise RuntimeError(f"no job was running (phase {s.phase})")
        if s.stage == 2:
            s.iteration += 1
        s.sft_count += 1
        s.history.append({"iteration": s.iteration, "stage": s.stage, "job_id": s.job_id, "version": version,
                          "t": time.time(), "stage_episodes": s.stage_episodes,
                          "stage_success_rate": s.stage_successes / s.stage_episodes if s.stage_episodes else None,
                          "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}})
        s.policy_version, s.model_path, s.model_sha256 = version, model_path, model_sha256
        s.job_id, s.job_stage = "", -1
        self._enter_rl()

    def job_failed(self, reason: str) -> None:
        """A rejected/failed job: stage 0 asks for a new job (after more data), stage 2 goes back to RL."""
        s = self.state
        s.last_error = reason
        s.job_id, s.job_stage = "", -1
        if s.stage == 0:
            s.phase = NEED_JOB
            self.save()
        else:
            self._enter_rl(reset_counts=False)

    def job_build_failed(self, reason: str) -> None:
        self.state.last_error = reason
        self.save()

    def on_episode(self, source: str, success: bool) -> bool:
        """Count a finished episode; returns True if it moved stage 1 -> 2."""
        s = self.state
        if source != "online":
            return False
        s.total_episodes += 1
        s.total_successes += int(success)
        if s.stage != 1 or s.phase != RL:
            self.save()
            return False
        s.stage_episodes += 1
        s.stage_successes += int(success)
        reason = self._trigger_reason(success)
        if reason and s.stage_successes >= self.config.min_successes_for_sft and not self.finished():
            self._enter_stage2(reason)
            return True
        self.save()
        return False

    def trigger(self, reason: str = "manual") -> tuple[bool, str]:
        s = self.state
        if s.phase != RL:
            return False, f"not in RL (stage {s.stage}, phase {s.phase}{', job ' + s.job_id if s.job_id else ''})"
        self._enter_stage2(reason)
        return True, f"stage 2 requested ({reason})"

    # ---- internals -----------------------------------------------------------------------------------------
    def _trigger_reason(self, success: bool) -> str:
        c, s = self.config, self.state
        if c.sft_every_n_successes and s.stage_successes >= c.sft_every_n_successes:
            return f"{s.stage_successes} successful episodes"
        if c.rl_episodes_per_iteration and s.stage_episodes >= c.rl_episodes_per_iteration:
            return f"{s.stage_episodes} online episodes"
        if c.plateau_window:
            s.window.append(bool(success))
            if len(s.window) >= c.plateau_window:
                rate = sum(s.window) / len(s.window)
                s.window = []
                if rate > s.best_rate + c.plateau_min_delta:
                    s.best_rate, s.stale_windows = rate, 0
                else:
                    s.stale_windows += 1
                if s.stale_windows >= c.plateau_patience:
                    return f"success rate plateau at {s.best_rate:.2f}"
        return ""

    def _enter_stage2(self, reason: str) -> None:
        s = self.state
        s.stage, s.phase, s.trigger_reason = 2, NEED_JOB, reason
        self.save()

    def _enter_rl(self, reset_counts: bool = True) -> None:
        s = self.state
        s.stage, s.phase = 1, RL
        if reset_counts:
            s.stage_episodes = s.stage_successes = 0
            s.window, s.best_rate, s.stale_windows = [], -1.0, 0
        self.save()

    def status(self) -> dict:
        s = self.state
        return {"stage": s.stage, "phase": s.phase, "iteration": s.iteration, "job_id": s.job_id,
                "policy_version": s.policy_version, "model_path": s.model_path, "sft_count": s.sft_count,
                "stage_episodes": s.stage_episodes, "stage_successes": s.stage_successes,
                "stage_success_rate": round(s.stage_successes / s.stage_episodes, 4) if s.stage_episodes else None,
                "total_episodes": s.total_episodes, "total_successes": s.total_successes,
                "last_error": s.last_error, "trigger_reason": s.trigger_reason, "updated": s.updated}


def format_status(state: IterationState) -> str:
    lines = [f"stage {state.stage} ({state.phase})   iteration {state.iteration}   "
             f"policy version {state.policy_version or '-'}   SFT rounds {state.sft_count}"]
    if state.job_id:
        lines.append(f"waiting for SFT job {state.job_id}")
    rate = f"{state.stage_successes / state.stage_episodes:.0%}" if state.stage_episodes else "-"
    total = f"{state.total_successes / state.total_episodes:.0%}" if state.total_episodes else "-"
    lines.append(f"this stage: {state.stage_successes}/{state.stage_episodes} successful ({rate});   "
                 f"all online: {state.total_successes}/{state.total_episodes} ({total})")
    if state.last_error:
        lines.append(f"last error: {state.last_error}")
    if state.history:
        lines.append("history:")
        for h in state.history[-10:]:
            sr = h.get("stage_success_rate")
            mse = h.get("metrics", {}).get("val_mse_after")
            lines.append(f"  iter {h['iteration']} stage {h['stage']} -> version {h['version']}  job {h['job_id']}"
                         f"  RL success {'-' if sr is None else f'{sr:.0%}'}"
                         f"  held-out MSE {'-' if mse is None else f'{mse:.4f}'}")
    if state.model_path:
        lines.append(f"model: {state.model_path}")
    return "\n".join(lines)


# --- `irevla status` (to be registered in cli.py) ------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/default", help="the run folder the packager writes to")
    parser.add_argument("--json", action="store_true", help="print the raw state as JSON")


def run(args: argparse.Namespace) -> int:
    path = Path(args.run_dir) / STATE_FILE
    if not path.exists():
        print(f"no iteration state at {path} (has the packager run with run_dir={args.run_dir}?)")
        return 1
    it = Iteration(path)
    print(json.dumps(asdict(it.state), indent=1) if args.json else format_status(it.state))
    return 0
