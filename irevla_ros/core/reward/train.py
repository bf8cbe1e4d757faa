"""Training the success classifier: episode-wise split, class balancing, augmentation, threshold for a target
precision on the held-out episodes.

A false positive ends an RL episode with a reward the policy did not earn (and puts a failed trajectory into
the stage-2 SFT set), a false negative only wastes an episode: so the threshold is chosen for precision first
(``target_precision``), then the highest recall that keeps it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from irevla_ros.core.reward.augment import AugmentConfig, augment
from irevla_ros.core.reward.data import FramesError, LabelledFrames
from irevla_ros.core.reward.metrics import BinaryMetrics, evaluate, pick_threshold
from irevla_ros.core.reward.model import ARCHS, ClassifierSpec, RewardClassifier

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    arch: str = "cnn"
    """'cnn' (small CNN from scratch) or 'efficientnet_lite0' (frozen ImageNet encoder + head)."""
    image_size: int = 96
    """Classifier input side (efficientnet_lite0: a multiple of 32, e.g. 128). 96 from 128x128 frames: the lifted
    cube is a few pixels in the front view, and recall at the boundary grows with input size (docs/reward.md)."""
    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.25
    """Fraction of EPISODES held out for validation and the threshold choice."""
    target_precision: float = 0.97
    seed: int = 0
    augment: bool = True
    feature_views: int = 3
    """Frozen encoder: feature maps cached per training frame (1 clean + augmented views)."""
    cnn_width: int = 16
    hidden: int = 64
    grid: int = 4
    global_max: bool = True
    """Head: coarse grid of the features + a global max-pool (see ClassifierSpec.global_max)."""
    num_threads: int = 2
    version: str = ""
    """Stored in the classifier file; empty = UTC timestamp."""
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name, lo, hi in (("epochs", 1, 10000), ("batch_size", 2, 65536), ("feature_views", 1, 64),
                             ("num_threads", 1, 256)):
            if not lo <= int(getattr(self, name)) <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)!r}")
        if not (0.0 < self.lr < 1.0 and 0.0 <= self.weight_decay < 1.0):
            raise ValueError(f"lr must be in (0, 1) and weight_decay in [0, 1), got {self.lr!r}, "
                             f"{self.weight_decay!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not 0.0 < self.target_precision <= 1.0:
            raise ValueError(f"target_precision must be in (0, 1], got {self.target_precision!r}")


@dataclass
class TrainResult:
    classifier: RewardClassifier
    val: BinaryMetrics
    target_met: bool
    train_episodes: np.ndarray
    val_episodes: np.ndarray
    history: list[dict]


def split_episodes(frames: LabelledFrames, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole episodes. Stratified on "episode has a success frame" so both classes reach validation."""
    rng = np.random.default_rng(seed)
    eps = np.unique(frames.episodes)
    if len(eps) < 2:
        raise FramesError(f"need at least 2 episodes to hold some out, got {len(eps)}")
    has_pos = np.array([frames.labels[frames.episodes == e].any() for e in eps])
    val: list[int] = []
    for group in (eps[has_pos], eps[~has_pos]):
        if len(group) == 0:
            continue
        n_val = int(round(len(group) * val_fraction))
        n_val = min(max(n_val, 1 if len(group) >= 2 else 0), len(group) - 1 if len(group) > 1 else 0)
        val += rng.choice(group, size=n_val, replace=False).tolist()
    val_eps = np.array(sorted(val), dtype=np.int64)
    train_eps = np.setdiff1d(eps, val_eps)
    if len(val_eps) == 0 or len(train_eps) == 0:
        raise FramesError(f"cannot split {len(eps)} episodes into train and validation")
    return train_eps, val_eps


def balanced_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn so that both classes are equally likely (with replacement)."""
    labels = labels.astype(bool)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if len(pos) == 0 or len(neg) == 0:
        raise FramesError(f"training data needs both classes, got {len(pos)} success / {len(neg)} failure frames")
    take_pos = rng.random(n) < 0.5
    out = np.where(take_pos, rng.choice(pos, n), rng.choice(neg, n))
    return out


def _batched(classifier: RewardClassifier, x: torch.Tensor, fn, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x[:0]


@torch.inference_mode()
def predict_frames(classifier: RewardClassifier, frames: LabelledFrames, batch: int = 128) -> np.ndarray:
    classifier.eval()
    out = [classifier.predict_proba(frames.images[i:i + batch]) for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def train_classifier(frames: LabelledFrames, config: TrainConfig, *, progress: bool = True,
                     writer=None) -> TrainResult:
    """Train on the training episodes, pick the threshold on the validation episodes, return both."""
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train_eps, val_eps = split_episodes(frames, config.val_fraction, config.seed)
    train, val = frames.subset(np.isin(frames.episodes, train_eps)), frames.subset(np.isin(frames.episodes, val_eps))
    log.info("train: %s; validation: %s", train.summary(), val.summary())
    spec = ClassifierSpec(arch=config.arch, cameras=frames.cameras, image_size=config.image_size,
                          frame_size=frames.frame_size, cnn_width=config.cnn_width, hidden=config.hidden,
                          grid=config.grid, global_max=config.global_max,
                          version=config.version or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    classifier = RewardClassifier(spec)
    n_cam = len(frames.cameras)
    aug_cfg = config.augment_config

    # Inputs: the frozen encoder's feature maps are cached (clean + augmented views); the CNN sees raw inputs.
    x_train = classifier.preprocess(train.images)  # [N * cams, 3, S, S]
    if classifier.frozen_encoder:
        views = []
        for v in range(config.feature_views):
            xv = x_train if v == 0 or not config.augment else augment(x_train, aug_cfg, gen)
            with torch.inference_mode():
                views.append(_batched(classifier, xv, classifier.encode).to(torch.float16))
        cached = torch.stack(views)  # [V, N * cams, C, h, w]
        with torch.inference_mode():
            val_features = _batched(classifier, classifier.preprocess(val.images), classifier.encode)
    params = [p for p in classifier.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train) / config.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    labels_t = torch.as_tensor(train.labels, dtype=torch.float32)
    history: list[dict] = []
    epochs = range(config.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc=f"train-reward ({config.arch})", unit="epoch")
    step = 0
    for epoch in epochs:
        classifier.train()
        idx = balanced_indices(train.labels, steps_per_epoch * config.batch_size, rng)
        losses = []
        for s in range(steps_per_epoch):
            b = torch.as_tensor(idx[s * config.batch_size:(s + 1) * config.batch_size])
            cam_idx = (b[:, None] * n_cam + torch.arange(n_cam)).reshape(-1)
            if classifier.frozen_encoder:
                view = torch.randint(0, cached.shape[0], (len(b),), generator=gen).repeat_interleave(n_cam)
                logits = classifier.head(cached[view, cam_idx].float())
            else:
                xb = x_train[cam_idx]
                if config.augment:
                    xb = augment(xb, aug_cfg, gen)
                logits = classifier(xb)
            loss = F.binary_cross_entropy_with_logits(logits, labels_t[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
        classifier.eval()
        with torch.inference_mode():
            if classifier.frozen_encoder:
                val_probs = torch.sigmoid(classifier.head(val_features)).numpy()
            else:
                val_probs = predict_frames(classifier, val)
        m = evaluate(val_probs, val.labels, 0.5)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy@0.5": m.accuracy,
               "val_precision@0.5": m.precision, "val_recall@0.5": m.recall}
        history.append(row)
        if writer is not None:
            writer.add_scalar("losses/bce", row["loss"], step)
            for k in ("val_accuracy@0.5", "val_precision@0.5", "val_recall@0.5"):
                writer.add_scalar(f"val/{k}", row[k], step)
        if progress:
            epochs.set_postfix(loss=f"{row['loss']:.3f}", val_acc=f"{m.accuracy:.3f}")  # type: ignore[union-attr]

    threshold, met = pick_threshold(val_probs, val.labels, config.target_precision)
    val_metrics = evaluate(val_probs, val.labels, threshold)
    spec.threshold = threshold
    spec.metrics = {"val": val_metrics.to_dict(), "target_precision": config.target_precision,
                    "target_met": met, "train_frames": len(train), "val_frames": len(val),
                    "train_episodes": len(train_eps), "val_episodes": len(val_eps),
                    "label_source": frames.label_source}
    if writer is not None:
        writer.add_scalar("val/threshold", threshold, step)
        writer.add_scalar("val/precision", val_metrics.precision, step)
        writer.add_scalar("val/recall", val_metrics.recall, step)
    classifier.eval()
    return TrainResult(classifier, val_metrics, met, train_eps, val_eps, history)
