"""Supervised fine-tuning of the whole VLA (LoRA on the backbone + the head) on a job's episodes.

Loss: mean squared error between the head's deterministic action tanh(mean) and the demonstrated action (behaviour
cloning, as iRe-VLA's SFT stages), plus an optional small negative log-likelihood term that also fits log_std
(`nll_weight`, 0 by default). Runs on CPU, one GPU, or several processes through `accelerate launch` (DDP): the
`Accelerator` places the model and shards batches; only the main process evaluates and writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from irevla_ros.core.data.episodes import Episode, EpisodeStore, decode_image
from irevla_ros.core.sft.jobs import EXPERT, LR_SCHEDULES, SFT_MODES, TASK_BALANCE


class LeaseLost(RuntimeError):
    """Another worker took the job over (our heartbeat lapsed): stop without publishing."""


@dataclass
class SFTConfig:
    mode: str = "lora"
    """lora: LoRA adapters on the backbone + full head (stage 2). full: every weight (stage 0 on a random-init
    tiny model). head: head only (a cheap baseline)."""
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    head_lr: float = 1e-3
    lr_schedule: str = "constant"
    """constant | cosine (both learning rates decay to 0 over `steps`: the result is the average of the last
    updates' directions rather than the last minibatch's, bench/stage2_replay.py)."""
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    nll_weight: float = 0.0
    grad_clip: float = 1.0
    val_every: int = 100
    val_batch_size: int = 32
    max_val_steps: int = 2000
    """At most this many held-out steps are evaluated (spread evenly)."""
    seed: int = 0
    num_workers: int = 0
    mixed_precision: str = "no"
    """no | fp16 | bf16 (accelerate)."""

    def __post_init__(self) -> None:
        if self.mode not in SFT_MODES:
            raise ValueError(f"SFTConfig.mode must be one of {SFT_MODES}, got {self.mode!r}")
        for name in ("steps", "batch_size", "lora_r", "lora_alpha", "val_every", "val_batch_size", "max_val_steps"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"SFTConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("lr", "head_lr", "grad_clip"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"SFTConfig.{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.weight_decay < 0 or self.nll_weight < 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError("SFTConfig: weight_decay/nll_weight must be >= 0 and 0 <= lora_dropout < 1")
        if self.num_workers < 0:
            raise ValueError(f"SFTConfig.num_workers must be >= 0, got {self.num_workers!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"SFTConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"SFTConfig.mixed_precision must be no|fp16|bf16, got {self.mixed_precision!r}")

    @classmethod
    def from_overrides(cls, base: SFTConfig, overrides: Mapping) -> SFTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown SFT settings {unknown}; known: {sorted(known)}")
        return cls(**{**asdict(base), **overrides})


# --- Data. -------------------------------------------------------------------------------------------------
SKIP_BEFORE_INTERVENTION = 2
"""Steps the policy drove right before a person took over are left out of SFT: the takeover says they went wrong
(the sim's supervisor takes over after 2 periods off course, irevla_ros/sim/supervisor.py). The episode still
counts as a success and every other step, the person's included, is trained on."""


def steps_to_train(intervention: np.ndarray, success: bool = True,
                   skip_before: int = SKIP_BEFORE_INTERVENTION) -> np.ndarray:
    """Indices of the steps to imitate: of a successful episode all but the `skip_before` policy steps before each
    takeover; of a failed one (selected because a person took over, JobConfig.assisted_failures) the person's only."""
    flags = np.asarray(intervention, dtype=bool)
    if not success:
        return np.flatnonzero(flags)
    keep = np.ones(len(flags), dtype=bool)
    starts = np.flatnonzero(flags[1:] & ~flags[:-1]) + 1  # a policy step followed by a takeover
    for start in starts:
        lo = max(0, start - skip_before)
        keep[lo:start] &= flags[lo:start]  # never drop the person's own steps
    return np.flatnonzero(keep)


class StepDataset(torch.utils.data.Dataset):
    """The steps of some episodes to imitate (`steps_to_train`); frames stay PNG/JPEG-compressed in memory and are
    decoded per item."""

    def __init__(self, episodes: Sequence[Episode], cameras: Sequence[str], groups: Mapping[str, str] | None = None):
        self.cameras = list(cameras)
        self.items: list[tuple[int, int]] = []
        self.episodes = list(episodes)
        self.group_of: list[str] = []
        self.task_of: list[str] = []
        for e_idx, ep in enumerate(self.episodes):
            missing = set(self.cameras) - set(ep.images)
            if missing:
                raise ValueError(f"episode {ep.info.episode_id} lacks cameras {sorted(missing)}")
            for s in steps_to_train(ep.intervention, bool(ep.info.success)):
                self.items.append((e_idx, int(s)))
                self.group_of.append((groups or {}).get(ep.info.episode_id, EXPERT))
                self.task_of.append(ep.info.task)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        e, s = self.items[i]
        ep = self.episodes[e]
        return {
            "images": [torch.from_numpy(decode_image(ep.images[c][s])) for c in self.cameras],
            "instruction": ep.info.task,
            "action": torch.from_numpy(ep.action[s].astype(np.float32)),
            "state": torch.from_numpy(ep.state[s].astype(np.float32)),
        }


def collate(batch: Sequence[dict]) -> dict:
    return {
        "images": [torch.stack([b["images"][c] for b in batch]) for c in range(len(batch[0]["images"]))],
        "instructions": [b["instruction"] for b in batch],
        "action": torch.stack([b["action"] for b in batch]),
        "state": torch.stack([b["state"] for b in batch]),
    }


def mixing_weights(groups: Sequence[str], expert_fraction: float, tasks: Sequence[str] | None = None,
                   online_task_balance: str = "none") -> torch.Tensor:
    """Per-sample weights so a draw is expert with probability `expert_fraction`. Within the online group,
    `online_task_balance` shares the draws between instructions: "none" in proportion to their samples (the
    task the policy already solves dominates), "sqrt" to the square root of that, "equal" evenly. The rare
    successes of a new task are what stage 2 is for; uniform sampling drowned them (graph run, round 3: 76
    expert-task vs 9 new-task successes, and the new task fell 20 -> 10 %)."""
    if online_task_balance not in TASK_BALANCE:
        raise ValueError(f"online_task_balance must be one of {TASK_BALANCE}, got {online_task_balance!r}")
    g = np.asarray(groups)
    n_exp, n_on = int((g == EXPERT).sum()), int((g != EXPERT).sum())
    w = np.ones(len(g), dtype=np.float64)
    if n_on and online_task_balance != "none":
        if tasks is None or len(tasks) != len(g):
            raise ValueError("task balancing needs one task per sample")
        t = np.asarray(tasks, dtype=object)
        online = g != EXPERT
        names, counts = np.unique(t[online], return_counts=True)
        share = np.sqrt(counts) if online_task_balance == "sqrt" else np.ones(len(counts))
        per_sample = dict(zip(names, share / share.sum() / counts, strict=True))
        w[online] = [per_sample[name] * n_on for name in t[online]]  # mean 1 over the online samples
    if n_exp == 0 or n_on == 0:
        return torch.as_tensor(w / w.sum(), dtype=torch.double)
    w = np.where(g == EXPERT, expert_fraction / n_exp, (1.0 - expert_fraction) * w / n_on)
    return torch.as_tensor(w, dtype=torch.double)


def load_job_episodes(job_dir: str | Path, ids: Sequence[str]) -> list[Episode]:
    store = EpisodeStore(job_dir)
    by_id = {i.episode_id: i for i in store.infos()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"job lists episodes not in its data: {missing[:5]}")
    return [store.load(by_id[i]) for i in ids]


# --- Model pieces. --------------------------------------------------------------------------------------------
def _proprio(model, state: torch.Tensor) -> torch.Tensor | None:
    dim = model.config.head.proprio_dim
    if not dim:
        return None
    if state.shape[-1] != dim:
        raise ValueError(f"the head expects proprio of size {dim}, the episodes hold state of size {state.shape[-1]}")
    return state.to(model.device)


def prepare_trainable(model, config: SFTConfig) -> list[dict]:
    """Set requires_grad per mode and return optimizer parameter groups (backbone lr, head lr)."""
    if config.mode == "lora":
        if model.has_lora:
            model.merge_lora()
        model.add_lora(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
    elif model.has_lora:
        model.merge_lora()
    for p in model.backbone.parameters():
        p.requires_grad_(config.mode == "full")
    if config.mode == "lora":
        for name, p in model.backbone.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    if backbone:
        groups.append({"params": backbone, "lr": config.lr})
    return groups


def sft_loss(forward, base, batch: dict, nll_weight: float) -> torch.Tensor:
    """MSE of tanh(mean) to the demonstrated action (+ optional NLL). `forward` may be a DDP wrapper of `base`."""
    target = batch["action"].to(base.device)
    mean, log_std = forward(batch["images"], batch["instructions"], _proprio(base, batch["state"]))
    loss = torch.nn.functional.mse_loss(torch.tanh(mean), target)
    if nll_weight > 0:
        from irevla_ros.core.model.head import ActionHead

        pre = torch.atanh(target.clamp(-1 + 1e-4, 1 - 1e-4))
        loss = loss - nll_weight * ActionHead._log_prob(pre, mean, log_std).mean()
    return loss


@torch.no_grad()
def evaluate(model, dataset: StepDataset, config: SFTConfig) -> dict:
    """Held-out action error of the deterministic action: MSE and mean |error|, and whether all are finite."""
    if len(dataset) == 0:
        return {"val_mse": float("nan"), "val_mae": float("nan"), "val_steps": 0, "val_finite": True}
    idx = np.linspace(0, len(dataset) - 1, min(len(dataset), config.max_val_steps)).round().astype(int)
    idx = np.unique(idx)
    was_training = model.training
    model.eval()
    sq, ab, n, finite = 0.0, 0.0, 0, True
    for start in range(0, len(idx), config.val_batch_size):
        batch = collate([dataset[int(i)] for i in idx[start:start + config.val_batch_size]])
        mean, _ = model(batch["images"], batch["instructions"], _proprio(model, batch["state"]))
        pred = torch.tanh(mean).float().cpu()
        finite &= bool(torch.isfinite(pred).all())
        err = pred - batch["action"]
        sq += float((err ** 2).sum())
        ab += float(err.abs().sum())
        n += err.numel()
    model.train(was_training)
    return {"val_mse": sq / n, "val_mae": ab / n, "val_steps": int(len(idx)), "val_finite": finite}


@dataclass
class TrainResult:
    metrics: dict
    model: object


def train(model, train_set: StepDataset, val_set: StepDataset, config: SFTConfig, *, expert_fraction: float = 1.0,
          online_task_balance: str = "none", log_dir: str | Path | None = None,
          check_lease: Callable[[], bool] | None = None, accelerator=None, progress: bool = True) -> TrainResult:
    """Fine-tune `model` in place; returns metrics (pre/post held-out error, losses, throughput)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if len(train_set) == 0:
        raise ValueError("no training steps in the job")
    if accelerator is None:
        from accelerate.utils import DistributedDataParallelKwargs

        accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(config.seed)
    main = accelerator.is_main_process
    writer = None
    if main and log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    model.to(accelerator.device)
    before = evaluate(model, val_set, config) if main else {}
    groups = prepare_trainable(model, config)
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: 0.5 * (1.0 + math.cos(math.pi * min(done, config.steps) / config.steps))
        if config.lr_schedule == "cosine" else 1.0)
    sampler = torch.utils.data.WeightedRandomSampler(mixing_weights(train_set.group_of, expert_fraction,
                                                                    train_set.task_of, online_task_balance),
                                                     num_samples=config.steps * config.batch_size,
                                                     replacement=True,
                                                     generator=torch.Generator().manual_seed(config.seed))
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                                         collate_fn=collate, num_workers=config.num_workers, drop_last=True)
    # The VLA forward takes (images, instructions); DDP wraps it transparently. The loader is sharded by
    # accelerate only for multi-process runs.
    model_p, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    base = accelerator.unwrap_model(model_p)
    model_p.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    samples = 0
    bar = tqdm(total=config.steps, desc="sft", disable=not (progress and main), dynamic_ncols=True)
    val_history = []
    for step, batch in enumerate(loader, start=1):
        if check_lease is not None and not check_lease():
            raise LeaseLost("the job's lease was lost; stopping without publishing")
        with accelerator.autocast():
            loss = sft_loss(model_p, base, batch, config.nll_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT loss became {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        for group in optimizer.param_groups:  # per group: the backbone's large gradients must not starve the head
            accelerator.clip_grad_norm_(group["params"], config.grad_clip)
        optimizer.step()
        schedule.step()
        samples += len(batch["instructions"]) * accelerator.num_processes
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if writer is not None:
            writer.add_scalar("losses/train", losses[-1], step)
        if main and (step % config.val_every == 0 or step == config.steps):
            ev = evaluate(base, val_set, config)
            val_history.append({"step": step, **ev})
            if writer is not None and ev["val_steps"]:
                writer.add_scalar("val/action_mse", ev["val_mse"], step)
                writer.add_scalar("val/action_mae", ev["val_mae"], step)
        if step >= config.steps:
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    after = val_history[-1] if val_history else (evaluate(base, val_set, config) if main else {})
    metrics = {
        "steps": len(losses), "samples": samples, "seconds": elapsed, "samples_per_s": samples / max(elapsed, 1e-9),
        "train_loss_first": losses[0], "train_loss_last": float(np.mean(losses[-10:])),
        "val_mse_before": before.get("val_mse"), "val_mae_before": before.get("val_mae"),
        "val_mse_after": after.get("val_mse"), "val_mae_after": after.get("val_mae"),
        "val_steps": after.get("val_steps", 0), "val_finite": bool(after.get("val_finite", True)),
        "train_steps_available": len(train_set), "mode": config.mode, "processes": accelerator.num_processes,
        "device": str(accelerator.device), "val_history": val_history,
    }
    if writer is not None:
        writer.add_scalar("charts/samples_per_s", metrics["samples_per_s"], len(losses))
        writer.close()
    model_p.eval()
    return TrainResult(metrics=metrics, model=base)
