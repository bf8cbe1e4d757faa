"""Training the success classifier on frames rendered by the MuJoCo sim, labels = ground-truth success, and
judging it on held-out episodes generated with other seeds (several training seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from irevla_ros.core.reward import RewardGate, TrainConfig, evaluate, train_classifier
from irevla_ros.core.reward.metrics import roc_auc
from irevla_ros.core.reward.sim_frames import SimFramesConfig, generate_sim_frames
from irevla_ros.core.reward.train import predict_frames

# Bars for this small, fast setup (20 training episodes, front camera, CNN from scratch, 15 epochs): what it
# reaches reliably, NOT the targets (P >= 0.95, R >= 0.90), which bench/reward.py measures with more data.
# Recall at the chosen threshold is the weak point: the threshold is picked for precision 0.97 on 5 validation
# episodes, and a hovering gripper in front of the cube (single front view, no depth) looks like a lift.
MIN_AUC = 0.90
MIN_PRECISION = 0.85
MIN_RECALL = 0.05
FRAME = 96  # rendered size; the classifier input is 64 (area-downsampled: sub-pixel detail survives)
INPUT = 64


@pytest.fixture(scope="module")
def sim_data():
    common = dict(task="pick", cameras=("front",), height=FRAME, width=FRAME, post_success_steps=10, max_steps=40)
    train = generate_sim_frames(SimFramesConfig(episodes=20, seed=1, **common), progress=False)
    test = generate_sim_frames(SimFramesConfig(episodes=8, seed=2, **common), progress=False)
    return train, test


def test_sim_frames_have_both_classes_and_ground_truth_labels(sim_data):
    train, test = sim_data
    for f in (train, test):
        assert f.label_source == "sim_ground_truth:pick" and f.images.shape[1:] == (1, FRAME, FRAME, 3)
        assert 0.05 < f.labels.mean() < 0.6
        # Episodes from the expert end in success; the first frame of every episode (objects on the table) never is.
        firsts = [np.flatnonzero(f.episodes == e)[0] for e in np.unique(f.episodes)]
        assert not f.labels[firsts].any()


def episode_decisions(probs, frames, threshold: float, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out episode: (ground truth ever succeeded, the node's k-consecutive-frame rule ever fired)."""
    truth, fired = [], []
    for e in np.unique(frames.episodes):
        i = frames.episodes == e
        gate = RewardGate(k)
        truth.append(bool(frames.labels[i].any()))
        fired.append(any(gate.update(float(p), threshold, "classifier").reward for p in probs[i]))
    return np.array(truth), np.array(fired)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classifier_trained_on_sim_frames_meets_bars_on_held_out_episodes(sim_data, seed):
    train, test = sim_data
    result = train_classifier(train, TrainConfig(image_size=INPUT, epochs=15, batch_size=32, cnn_width=8,
                                                 seed=seed, target_precision=0.97, num_threads=2), progress=False)
    probs = predict_frames(result.classifier, test)
    threshold = result.classifier.spec.threshold
    m = evaluate(probs, test.labels, threshold)
    auc = roc_auc(probs, test.labels)
    truth, fired = episode_decisions(probs, test, threshold)
    print(f"seed {seed}: validation {result.val.line()} | held-out {m.line()} auc {auc:.3f} | episodes: "
          f"truth {truth.astype(int)} fired {fired.astype(int)}")
    assert auc >= MIN_AUC, f"held-out ROC AUC {auc:.3f}"
    assert m.precision >= MIN_PRECISION, m.line()
    assert m.recall >= MIN_RECALL, m.line()
    assert not (fired & ~truth).any(), "a failed held-out episode would have been rewarded"
