"""Binary-classification metrics and the threshold choice (pure numpy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

THRESHOLD_MIN, THRESHOLD_MAX = 1e-4, 1.0 - 1e-4


@dataclass
class BinaryMetrics:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def precision(self) -> float:
        """1.0 when nothing is predicted positive (no false positive was made)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "accuracy": self.accuracy}

    def confusion_table(self) -> str:
        w = max(6, len(str(self.n)))
        return "\n".join([
            f"{'':>16}{'pred success':>{w + 8}}{'pred failure':>{w + 8}}",
            f"{'true success':>16}{self.tp:>{w + 8}}{self.fn:>{w + 8}}",
            f"{'true failure':>16}{self.fp:>{w + 8}}{self.tn:>{w + 8}}",
        ])

    def line(self) -> str:
        return (f"threshold {self.threshold:.3f}  accuracy {self.accuracy:.3f}  precision {self.precision:.3f}  "
                f"recall {self.recall:.3f}  (n={self.n})")


def evaluate(probs: np.ndarray, labels: np.ndarray, threshold: float) -> BinaryMetrics:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if probs.shape != labels.shape:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ")
    pred = probs >= threshold
    return BinaryMetrics(float(threshold), int((pred & labels).sum()), int((pred & ~labels).sum()),
                         int((~pred & ~labels).sum()), int((~pred & labels).sum()))


def pick_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float) -> tuple[float, bool]:
    """The lowest threshold (= highest recall) whose precision on (probs, labels) is >= target_precision.

    Returns (threshold, met). If no threshold reaches the target, the one with the best precision (ties: best
    recall) and met=False. Thresholds sit halfway between neighbouring distinct scores, so a score equal to a
    training-set value does not decide the outcome by float noise.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision!r}")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    if probs.size == 0 or not labels.any():
        return 0.5, False
    scores = np.unique(probs)
    cands = np.concatenate([(scores[:-1] + scores[1:]) / 2, [scores[-1]]])
    best: tuple[float, float, float] | None = None  # (precision, recall, threshold)
    for t in cands:  # ascending: the first that meets the target has the highest recall
        m = evaluate(probs, labels, t)
        if m.tp and m.precision >= target_precision:
            return float(np.clip(t, THRESHOLD_MIN, THRESHOLD_MAX)), True
        if m.tp and (best is None or (m.precision, m.recall) > best[:2]):
            best = (m.precision, m.recall, float(t))
    t = best[2] if best is not None else 0.5
    return float(np.clip(t, THRESHOLD_MIN, THRESHOLD_MAX)), False


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random success frame scores above a random failure frame (ties count half)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = probs[labels], probs[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("ROC AUC needs both classes")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allp = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(allp):
        j = i
        while j + 1 < len(allp) and allp[j + 1] == allp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
