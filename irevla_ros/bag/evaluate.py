"""`irevla bag eval`: run a VLA policy open-loop on a bag and compare its actions with the recorded ones.

Open-loop: the policy sees the recorded observations (steps built exactly as for export) and its deterministic
action (the tanh of the Gaussian mean, what the policy node sends in eval mode) is compared with what was
executed. Nothing is sent to a robot. Useful to check an SFT result on held-out demos before deploying it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from irevla_ros.bag.steps import Step, StepSpec, StepStats, iter_steps
from irevla_ros.bag.storage import BagError, BagReader
from irevla_ros.interfaces import ACTION_LABELS


@dataclass
class EvalReport:
    predicted: np.ndarray  # float32 [N, 7]
    recorded: np.ndarray  # float32 [N, 7]
    times: np.ndarray  # float64 [N] bag time (s)
    stats: StepStats = field(default_factory=StepStats)

    @property
    def errors(self) -> np.ndarray:
        return self.predicted - self.recorded

    def metrics(self) -> dict:
        err = self.errors
        rec_t, pred_t = self.recorded[:, :3], self.predicted[:, :3]
        moving = np.linalg.norm(rec_t, axis=1) > 1e-3
        cos = (np.sum(rec_t * pred_t, axis=1) / (np.linalg.norm(rec_t, axis=1) * np.linalg.norm(pred_t, axis=1)
                                                  + 1e-9))[moving]
        return {
            "steps": int(len(err)),
            "mse": float(np.mean(err ** 2)),
            "mae": {k: float(v) for k, v in zip(ACTION_LABELS, np.mean(np.abs(err), axis=0), strict=True)},
            "rmse": {k: float(v) for k, v in zip(ACTION_LABELS, np.sqrt(np.mean(err ** 2, axis=0)), strict=True)},
            "translation_cosine": float(np.mean(cos)) if cos.size else None,
            "gripper_agreement": float(np.mean(np.sign(self.predicted[:, 6]) == np.sign(self.recorded[:, 6]))),
            "skipped": dict(self.stats.skipped),
        }

    def table(self) -> str:
        m = self.metrics()
        lines = [f"open-loop evaluation on {m['steps']} steps: MSE {m['mse']:.4f}",
                 f"{'component':<10} {'MAE':>8} {'RMSE':>8} {'recorded mean':>14} {'predicted mean':>15}"]
        for i, label in enumerate(ACTION_LABELS):
            lines.append(f"{label:<10} {m['mae'][label]:>8.4f} {m['rmse'][label]:>8.4f} "
                         f"{self.recorded[:, i].mean():>14.4f} {self.predicted[:, i].mean():>15.4f}")
        if m["translation_cosine"] is not None:
            lines.append(f"translation direction cosine (moving steps): {m['translation_cosine']:.3f}")
        lines.append(f"gripper open/close agreement: {m['gripper_agreement']:.3f}")
        lines += [f"skipped {n}: {reason}" for reason, n in sorted(self.stats.skipped.items())]
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({**self.metrics(), "times": self.times.tolist(),
                                          "predicted": self.predicted.tolist(),
                                          "recorded": self.recorded.tolist()}, indent=1))


def evaluate_bag(bag: str | Path, model, spec: StepSpec, *, batch_size: int = 16, recover: bool = False,
                 max_steps: int = 0) -> EvalReport:
    """`model` is a irevla_ros.core.model.vla.VLAModel whose camera count matches `spec.cameras`."""
    if model.config.num_cameras != len(spec.cameras):
        raise BagError(f"the model takes {model.config.num_cameras} camera(s), {len(spec.cameras)} given "
                       f"{list(spec.cameras)}")
    reader = BagReader(bag, recover=recover)
    stats = StepStats()
    predicted, recorded, times = [], [], []
    pending: list[Step] = []

    def flush() -> None:
        if not pending:
            return
        images = [np.stack([s.observation.images[c] for s in pending]) for c in range(len(spec.cameras))]
        proprio = np.stack([s.observation.proprio for s in pending])
        out = model.act(images, [s.observation.instruction for s in pending], proprio, stochastic=False)
        predicted.extend(out.mean_action)
        recorded.extend(s.action for s in pending)
        times.extend(s.t for s in pending)
        pending.clear()

    for item in iter_steps(reader, spec, stats):
        if isinstance(item, Step):
            pending.append(item)
            if len(pending) >= batch_size:
                flush()
            if max_steps and len(recorded) + len(pending) >= max_steps:
                break
    flush()
    if not recorded:
        raise BagError(f"no step of {bag} had a complete observation: {dict(stats.skipped)}")
    return EvalReport(np.asarray(predicted, np.float32), np.asarray(recorded, np.float32), np.asarray(times), stats)
