"""Training the success classifier on frames rendered by the MuJoCo sim, labels = ground-truth success, and
judging it on held-out episodes generated with other seeds (several training seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from irevla_ros.core.reward import RewardGate, TrainConfig, evaluate, train_classifier
from irevla_ros.core.reward.metrics import roc_auc
from irevla_ros.core.reward.sim_frames import SimFramesConfig, generate_sim_frames
from irevla_ros.core.reward.train import predict_frames

# Bars for this small, fast setup: TRAIN_EPISODES training episodes (the default mix, incl. boundary "hold"
# episodes), front camera at 128x128 as sim_world publishes it, a narrow CNN from scratch, EPOCHS epochs, one torch
# thread. Set below what training seeds 0-4 reached on these held-out episodes (measured on the shared 2-core box:
# AUC 0.994-0.998, precision 0.934-0.981, recall 0.671-0.937, 6-7 of 8 successful episodes rewarded, no failed one;
# ~30 s CPU to render the episodes once, ~11 s CPU per seed). The targets (P >= 0.95, R >= 0.90) are
# measured by bench/reward.py with 100 training episodes, a wider CNN and a 96-pixel input (docs/reward.md).
MIN_AUC = 0.985
MIN_PRECISION = 0.90
MIN_RECALL = 0.60
MIN_EPISODE_RECALL = 0.7  # fraction of successful held-out episodes the debounced reward fires on
FRAME = 128  # rendered size (sim_world's default); the classifier input is 64, area-downsampled: the sub-pixel
INPUT = 64  # detail of the 128 render survives, which 96-pixel renders lose (docs/reward.md)
TRAIN_EPISODES, TEST_EPISODES = 60, 12
EPOCHS = 12
CNN_WIDTH = 8


def make_sim_data():
    common = dict(task="pick", cameras=("front",), height=FRAME, width=FRAME, post_success_steps=10, max_steps=40)
    train = generate_sim_frames(SimFramesConfig(episodes=TRAIN_EPISODES, seed=1, **common), progress=False)
    test = generate_sim_frames(SimFramesConfig(episodes=TEST_EPISODES, seed=2, **common), progress=False)
    return train, test


@pytest.fixture(scope="module")
def sim_data():
    return make_sim_data()  # rendered once per test session module: the slow part


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


def train_and_judge(train, test, seed: int):
    """Train with `seed`, judge on the held-out episodes: (metrics, auc, truth, fired, validation metrics)."""
    result = train_classifier(train, TrainConfig(image_size=INPUT, epochs=EPOCHS, batch_size=32, cnn_width=CNN_WIDTH,
                                                 seed=seed, target_precision=0.97, num_threads=1), progress=False)
    probs = predict_frames(result.classifier, test)
    threshold = result.classifier.spec.threshold
    truth, fired = episode_decisions(probs, test, threshold)
    return evaluate(probs, test.labels, threshold), roc_auc(probs, test.labels), truth, fired, result.val


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classifier_trained_on_sim_frames_meets_bars_on_held_out_episodes(sim_data, seed):
    train, test = sim_data
    m, auc, truth, fired, val = train_and_judge(train, test, seed)
    print(f"seed {seed}: validation {val.line()} | held-out {m.line()} auc {auc:.3f} | episodes: "
          f"truth {truth.astype(int)} fired {fired.astype(int)}")
    assert auc >= MIN_AUC, f"held-out ROC AUC {auc:.3f}"
    assert m.precision >= MIN_PRECISION, m.line()
    assert m.recall >= MIN_RECALL, m.line()
    assert not (fired & ~truth).any(), "a failed held-out episode would have been rewarded"
    # Most successful held-out episodes are recognised (k = 3 consecutive frames): the reward actually arrives.
    assert (fired & truth).sum() >= MIN_EPISODE_RECALL * truth.sum(), (truth, fired)
