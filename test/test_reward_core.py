"""core/reward without ROS: metrics and threshold, debouncing and human override, frame checks, the versioned
classifier file (tampering refused, hot reload keeps the old classifier), augmentations, the episode split and
training on synthetic frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from irevla_ros.core.reward import (
    ClassifierFileError,
    ClassifierSpec,
    ClassifierWatcher,
    FrameError,
    FramesError,
    LabelledFrames,
    RewardClassifier,
    RewardGate,
    RewardNodeConfig,
    TrainConfig,
    decode_rgb8,
    evaluate,
    load_classifier,
    load_frames,
    pick_threshold,
    save_classifier,
    save_frames,
    train_classifier,
)
from irevla_ros.core.reward.augment import AugmentConfig, augment
from irevla_ros.core.reward.io import classifier_from_bytes, classifier_to_bytes
from irevla_ros.core.reward.train import balanced_indices, split_episodes


def synthetic_frames(n_eps: int = 24, steps: int = 16, size: int = 40, seed: int = 0, cameras=("front",)):
    """A red square moving right over a noisy table; success = the square is in the right 40 % of the image.
    Even episodes get there, odd ones stop half way (both classes, like expert vs failed runs)."""
    rng = np.random.default_rng(seed)
    ims, labels, eps = [], [], []
    for e in range(n_eps):
        reach = 1.0 if e % 2 == 0 else 0.5
        for t in range(steps):
            im = (rng.random((len(cameras), size, size, 3)) * 40 + 100).astype(np.uint8)
            x = int(2 + reach * t / (steps - 1) * (size - 10))
            y = int(rng.integers(2, size - 10))
            im[:, y:y + 8, x:x + 8] = (220, 40, 40)
            ims.append(im)
            labels.append(x > size * 0.6)
            eps.append(e)
    return LabelledFrames(np.stack(ims), np.array(labels), np.array(eps), tuple(cameras), "synthetic")


# --- metrics -----------------------------------------------------------------------------------------------------
def test_threshold_is_lowest_reaching_target_precision():
    probs = np.array([0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 0, 1, 1])
    t, met = pick_threshold(probs, labels, 1.0)
    assert met and 0.7 < t <= 0.8
    m = evaluate(probs, labels, t)
    assert (m.tp, m.fp, m.tn, m.fn) == (2, 0, 4, 2) and m.precision == 1.0 and m.recall == 0.5
    t2, met2 = pick_threshold(probs, labels, 0.6)
    assert met2 and t2 < t and evaluate(probs, labels, t2).precision >= 0.6
    _, met3 = pick_threshold(np.array([0.9, 0.8]), np.array([0, 0]), 0.9)
    assert not met3
    assert "true success" in m.confusion_table()


def test_roc_auc_counts_ranked_pairs():
    from irevla_ros.core.reward.metrics import roc_auc

    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0])) == 0.5
    assert roc_auc(np.array([0.9, 0.3, 0.4, 0.1]), np.array([1, 1, 0, 0])) == 0.75


# --- gate ----------------------------------------------------------------------------------------------------------
def test_gate_needs_k_consecutive_frames_and_human_wins_until_reset():
    gate = RewardGate(3)
    rewards = [gate.update(p, 0.5, "classifier").reward for p in (0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.95)]
    assert rewards == [0, 0, 0, 0, 0, 1, 1]
    gate.on_human("failure")
    d = gate.update(0.99, 0.5, "classifier")
    assert d.reward == 0.0 and d.source == "human"
    gate.on_human("success")
    assert gate.update(0.0, 0.5, "classifier").reward == 1.0
    gate.on_human(" RESET ")
    assert gate.human is None and gate.streak == 0
    assert gate.update(0.99, 0.5, "classifier").reward == 0.0  # debouncing starts over
    with pytest.raises(ValueError, match="human label"):
        gate.on_human("great")
    with pytest.raises(ValueError, match="not finite"):
        gate.update(float("nan"), 0.5, "classifier")


def test_node_config_validation():
    RewardNodeConfig()
    with pytest.raises(ValueError, match="source"):
        RewardNodeConfig(source="oracle")
    with pytest.raises(ValueError, match="consecutive_frames"):
        RewardNodeConfig(consecutive_frames=0)
    with pytest.raises(ValueError, match="threshold"):
        RewardNodeConfig(threshold=float("nan"))
    with pytest.raises(ValueError, match="classifier_path"):
        RewardNodeConfig(classifier_path="")
    RewardNodeConfig(source="ground_truth", classifier_path="")


# --- frames --------------------------------------------------------------------------------------------------------
def test_decode_rgb8_checks_encoding_size_and_buffer():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    padded = np.zeros((4, 16), np.uint8)
    padded[:, :15] = img.reshape(4, 15)
    assert np.array_equal(decode_rgb8("rgb8", 4, 5, 16, padded.tobytes()), img)
    with pytest.raises(FrameError, match="encoding 'bgr8'"):
        decode_rgb8("bgr8", 4, 5, 15, img.tobytes())
    with pytest.raises(FrameError, match="5x4 .* trained on 8x6"):
        decode_rgb8("rgb8", 4, 5, 15, img.tobytes(), expected_hw=(6, 8))
    with pytest.raises(FrameError, match="bytes, expected"):
        decode_rgb8("rgb8", 4, 5, 15, img.tobytes()[:-1])
    with pytest.raises(FrameError, match="step"):
        decode_rgb8("rgb8", 4, 5, 10, img.tobytes())


def test_labelled_frames_file_roundtrip_and_tamper(tmp_path):
    f = synthetic_frames(n_eps=4, steps=3, size=16)
    path = tmp_path / "f.safetensors"
    save_frames(f, path)
    g = load_frames(path)
    assert np.array_equal(g.images, f.images) and np.array_equal(g.labels, f.labels) and g.cameras == f.cameras
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FramesError, match="sha256"):
        load_frames(path)
    with pytest.raises(FramesError, match="labels must be 0/1"):
        LabelledFrames(f.images, np.full(len(f), 2), f.episodes, f.cameras)


# --- classifier file -----------------------------------------------------------------------------------------------
def _small(seed=0, **kw) -> RewardClassifier:
    torch.manual_seed(seed)
    spec = ClassifierSpec(**{"arch": "cnn", "cameras": ("front",), "image_size": 32, "frame_size": (40, 40),
                             "threshold": 0.6, "version": f"v{seed}", "cnn_width": 8, **kw})
    return RewardClassifier(spec).eval()


def test_classifier_file_roundtrip_is_exact(tmp_path):
    clf = _small()
    frames = synthetic_frames(n_eps=2, steps=4, size=40).images
    sha = save_classifier(clf, tmp_path / "c.safetensors")
    loaded = load_classifier(tmp_path / "c.safetensors")
    assert loaded.spec.threshold == 0.6 and loaded.spec.version == "v0" and loaded.spec.frame_size == (40, 40)
    assert np.array_equal(loaded.predict_proba(frames), clf.predict_proba(frames))
    assert len(sha) == 64


@pytest.mark.parametrize("damage", ["weights", "threshold", "truncate", "garbage", "empty"])
def test_tampered_classifier_file_is_refused(tmp_path, damage):
    data = bytearray(classifier_to_bytes(_small()))
    if damage == "weights":
        data[-3] ^= 0x40
    elif damage == "threshold":
        data = bytearray(bytes(data).replace(b'\\"threshold\\": 0.6', b'\\"threshold\\": 0.1'))
        assert b'\\"threshold\\": 0.1' in data
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "garbage":
        data = bytearray(os.urandom(300))
    else:
        data = bytearray()
    with pytest.raises(ClassifierFileError):
        classifier_from_bytes(bytes(data))


def test_watcher_keeps_old_classifier_on_bad_file_and_loads_good_one(tmp_path):
    path = tmp_path / "c.safetensors"
    frames = synthetic_frames(n_eps=2, steps=2, size=40).images
    watcher = ClassifierWatcher(path)
    assert watcher.poll() is None and watcher.classifier is None  # nothing there yet: wait, no error
    save_classifier(_small(0), path)
    assert watcher.poll().loaded
    first = watcher.classifier
    p0 = first.predict_proba(frames)
    path.write_bytes(path.read_bytes()[:-100])  # a half-copied file
    event = watcher.poll()
    assert not event.loaded and "refused" in event.message and "keeping classifier v0" in event.message
    assert watcher.classifier is first and np.array_equal(watcher.classifier.predict_proba(frames), p0)
    assert watcher.poll() is None  # not retried until it changes again
    save_classifier(_small(1), path)
    assert watcher.poll().loaded and watcher.classifier.spec.version == "v1"
    refuse = ClassifierWatcher(path, check=lambda c: (_ for _ in ()).throw(ClassifierFileError("no wrist camera")))
    ev = refuse.reload()
    assert not ev.loaded and "no wrist camera" in ev.message and refuse.classifier is None


def test_efficientnet_encoder_is_frozen_pretrained_and_file_holds_head_only(tmp_path):
    spec = ClassifierSpec(arch="efficientnet_lite0", cameras=("front", "wrist"), image_size=64, grid=2)
    clf = RewardClassifier(spec)
    assert clf.frozen_encoder and not any(p.requires_grad for p in clf.encoder.parameters())
    clf.train()
    assert not clf.encoder.net.training  # BatchNorm statistics stay ImageNet's
    # Pretrained, not random: ImageNet features differ strongly between a flat image and a textured one.
    x = torch.zeros(2, 3, 64, 64)
    x[1] = torch.rand(3, 64, 64)
    with torch.inference_mode():
        f = clf.encode(x)
    assert f.shape == (2, 1280, 2, 2) and (f[0] - f[1]).abs().mean() > 0.05
    sha = save_classifier(clf, tmp_path / "e.safetensors")
    assert len(sha) == 64
    assert (tmp_path / "e.safetensors").stat().st_size < 1_000_000  # the 4.7 M encoder params are not copied
    loaded = load_classifier(tmp_path / "e.safetensors")
    frames = np.random.default_rng(0).integers(0, 255, (3, 2, 48, 48, 3), dtype=np.uint8)
    assert np.allclose(loaded.predict_proba(frames), clf.predict_proba(frames), atol=1e-6)


# --- augmentation and training -------------------------------------------------------------------------------------
def test_augment_changes_images_within_range_and_is_seeded():
    x = torch.rand(6, 3, 32, 32)
    a = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0.0 <= a.min() and a.max() <= 1.0
    assert (a - x).abs().mean() > 0.01
    same = augment(x, AugmentConfig(min_crop=1.0, brightness=0.0, contrast=0.0, saturation=0.0))
    assert torch.allclose(same, x, atol=1e-6)


def test_split_holds_out_whole_episodes_with_both_classes():
    f = synthetic_frames(n_eps=12, steps=6, size=40)
    tr, va = split_episodes(f, 0.25, seed=3)
    assert not set(tr) & set(va) and len(tr) + len(va) == 12
    val_labels = f.labels[np.isin(f.episodes, va)]
    assert val_labels.any() and not val_labels.all()
    idx = balanced_indices(f.labels, 4000, np.random.default_rng(0))
    assert abs(f.labels[idx].mean() - 0.5) < 0.05  # balanced although only ~20 % of frames are successes


def test_training_on_synthetic_frames_reaches_precision_and_recall(tmp_path):
    f = synthetic_frames(n_eps=24, steps=16, size=40, seed=1)
    result = train_classifier(f, TrainConfig(image_size=32, epochs=6, cnn_width=8, target_precision=0.95,
                                             seed=0), progress=False)
    assert result.target_met
    assert result.val.precision >= 0.95 and result.val.recall >= 0.8, result.val.line()
    assert result.classifier.spec.metrics["val"]["precision"] == result.val.precision
    # Unseen episodes (fresh seed) at the stored threshold.
    test = synthetic_frames(n_eps=8, steps=16, size=40, seed=99)
    from irevla_ros.core.reward.train import predict_frames

    m = evaluate(predict_frames(result.classifier, test), test.labels, result.classifier.spec.threshold)
    assert m.precision >= 0.9 and m.recall >= 0.8, m.line()


def test_train_reward_cli_end_to_end(tmp_path):
    f = synthetic_frames(n_eps=12, steps=12, size=32, seed=2, cameras=("front", "wrist"))
    save_frames(f, tmp_path / "frames.safetensors")
    out = tmp_path / "clf" / "c.safetensors"
    proc = subprocess.run([sys.executable, "-m", "irevla_ros.cli", "train-reward", "--frames",
                           str(tmp_path / "frames.safetensors"), "--cameras", "wrist", "front", "--image-size", "32",
                           "--epochs", "2", "--target-precision", "0.5", "--out", str(out), "--quiet",
                           "--version", "cli-test", "--metrics-json", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "precision" in proc.stdout and "true success" in proc.stdout and "held-out validation" in proc.stdout
    clf = load_classifier(out)
    assert clf.spec.cameras == ("wrist", "front") and clf.spec.version == "cli-test"
    assert json.loads((tmp_path / "m.json").read_text())["val_episodes"] >= 2
    assert list((out.parent / "tb").glob("events.out.tfevents.*"))
    bad = subprocess.run([sys.executable, "-m", "irevla_ros.cli", "train-reward", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no labelled frames" in bad.stderr


def test_core_reward_does_not_import_rclpy():
    code = ("import sys, irevla_ros.core.reward, irevla_ros.core.reward.cli, irevla_ros.core.reward.sources; "
            "assert 'rclpy' not in sys.modules, 'rclpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_frames_from_episode_store_use_step_flags_else_episode_outcome(tmp_path):
    from irevla_ros.core.data.episodes import EpisodeWriter
    from irevla_ros.core.reward.sources import frames_from_episode_store

    writer = EpisodeWriter(tmp_path / "eps")
    rng = np.random.default_rng(0)

    def record(n: int, success: bool, step_flags: list[bool] | None, source: str):
        rec = writer.begin(task="pick up the red cube", source=source, cameras=("front", "wrist"))
        for k in range(n):
            rec.add_step(action=np.zeros(7), images={c: rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
                                                      for c in ("front", "wrist")},
                         success=bool(step_flags[k]) if step_flags else False)
        rec.finish(success=success)

    record(6, True, [False, False, False, True, True, True], "online")  # sim ground truth / teleop key per step
    record(5, True, None, "teleop")  # a demo: only its outcome is known -> its last 2 frames
    record(4, False, None, "online")
    f = frames_from_episode_store(tmp_path / "eps", ("wrist",), outcome_tail=2)
    assert f.cameras == ("wrist",) and f.images.shape == (15, 1, 12, 16, 3) and f.label_source == "episode_store"
    assert f.labels.tolist() == [0, 0, 0, 1, 1, 1] + [0, 0, 0, 1, 1] + [0, 0, 0, 0]
    assert f.episodes.tolist() == [0] * 6 + [1] * 5 + [2] * 4
    with pytest.raises(FramesError, match="cameras"):
        frames_from_episode_store(tmp_path / "eps", ("side",))


# --- second round: head with a global max-pool, rviz marker style, boundary ("hold") sim episodes ----------------
def test_global_max_head_roundtrips_and_older_specs_read_without_it(tmp_path):
    clf = _small(global_max=True)
    plain = _small(global_max=False)
    # The max-pooled features are a second input block of the MLP: one reduce_channels-wide slice per camera.
    extra = clf.spec.reduce_channels
    assert clf.head.mlp[1].in_features == plain.head.mlp[1].in_features + extra
    frames = synthetic_frames(n_eps=2, steps=4, size=40).images
    save_classifier(clf, tmp_path / "c.safetensors")
    loaded = load_classifier(tmp_path / "c.safetensors")
    assert loaded.spec.global_max and np.array_equal(loaded.predict_proba(frames), clf.predict_proba(frames))
    # A first-round file has no global_max key: it reads as the head it was trained with (no max-pool).
    d = plain.spec.to_dict()
    del d["global_max"]
    assert not ClassifierSpec(**d).global_max
    # And its tensors (saved before the field existed) still load into that head.
    RewardClassifier(ClassifierSpec(**d)).load_trainable_state_dict(plain.trainable_state_dict())


def test_marker_style_colour_follows_probability_and_names_the_decider():
    from irevla_ros.core.reward.runtime import marker_style

    low, mid, high = marker_style(0.0, 0.0, "classifier"), marker_style(0.5, 0.0, "classifier"), \
        marker_style(0.97, 1.0, "classifier")
    assert low.rgba[:2] == (1.0, 0.0) and high.rgba[1] == 1.0 and high.rgba[0] < 0.1
    assert mid.rgba[:2] == (1.0, 1.0)  # yellow at p = 0.5
    assert high.text == "SUCCESS  p=0.97  [classifier]" and low.text == "no success  p=0.00  [classifier]"
    human = marker_style(0.2, 1.0, "human")
    assert human.rgba[2] > 0.9 and human.text.startswith("SUCCESS") and human.text.endswith("[human]")
    assert marker_style(float("nan"), 0.0, "ground_truth").text == "no success  p=0.00  [ground_truth]"
    with pytest.raises(ValueError, match="marker_lifetime_s"):
        RewardNodeConfig(marker_lifetime_s=-1.0)


def test_sim_frames_kind_weights_accept_first_round_mix_and_reject_wrong_counts():
    from irevla_ros.core.reward.sim_frames import KINDS, SimFramesConfig

    assert KINDS[-1] == "hold"
    assert SimFramesConfig(kind_weights=(0.4, 0.25, 0.25, 0.1)).kind_weights == (0.4, 0.25, 0.25, 0.1, 0.0)
    assert len(SimFramesConfig().kind_weights) == len(KINDS) and SimFramesConfig().kind_weights[-1] > 0
    with pytest.raises(ValueError, match="kind_weights"):
        SimFramesConfig(kind_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="kind_weights"):
        SimFramesConfig(kind_weights=(0, 0, 0, 0, -1))
