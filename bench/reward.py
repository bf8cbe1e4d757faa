"""Reward classifier benchmark: per-frame latency (2 threads and 1 thread) and precision/recall vs sim ground truth
on held-out episodes (generated with other seeds than the training episodes), for each architecture and seed.

    .venv/bin/python bench/reward.py --archs cnn --seeds 0 1 2     # pick task, front camera, 128x128 frames
    .venv/bin/python bench/reward.py --cameras front wrist --archs cnn
    .venv/bin/python bench/reward.py --save-frames /tmp/reward_frames   # reuse with --load-frames

Two held-out sets: "round-1 mix" (expert / noisy / quit / random episodes: the first round's test distribution,
comparable with its numbers) and "with hold" (the training mix, which adds episodes that hold the object AT the
success boundary: harder). Frames default to 128x128, what sim_world and camera_node publish (a classifier only
accepts the frame size it was trained on). Besides frame-level P/R it counts episode-level outcomes under the
node's debouncing (k consecutive frames): failed episodes that would be rewarded, successful ones that would not.

Targets (issue 8): precision >= 0.95, recall >= 0.90 on held-out sim episodes; <= 20 ms per frame on 2 cores.
Prints a table with the ratios to the targets side by side (ratio >= 1 meets the target for P/R; <= 1 for latency).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from irevla_ros.core.reward import (  # noqa: E402
    LabelledFrames,
    RewardGate,
    TrainConfig,
    evaluate,
    load_frames,
    save_frames,
)
from irevla_ros.core.reward.metrics import roc_auc  # noqa: E402
from irevla_ros.core.reward.sim_frames import SimFramesConfig, generate_sim_frames  # noqa: E402
from irevla_ros.core.reward.train import predict_frames, train_classifier  # noqa: E402

TARGET_P, TARGET_R, TARGET_MS = 0.95, 0.90, 20.0
ROUND1_MIX = (0.4, 0.25, 0.25, 0.1, 0.0)  # expert, noisy, quit, random, hold: the first round's default


def frames(args, split: str, episodes: int, seed: int, kind_weights=None) -> LabelledFrames:
    if args.load_frames:
        return load_frames(Path(args.load_frames) / f"{split}.safetensors").select_cameras(tuple(args.cameras))
    extra = {"kind_weights": kind_weights} if kind_weights is not None else {}
    f = generate_sim_frames(SimFramesConfig(episodes=episodes, task=args.task, cameras=tuple(args.cameras),
                                            height=args.frame_size[0], width=args.frame_size[1], seed=seed,
                                            post_success_steps=args.post_success_steps, **extra), progress=True)
    if args.save_frames:
        save_frames(f, Path(args.save_frames) / f"{split}.safetensors")
    return f


def episode_outcomes(probs: np.ndarray, frames: LabelledFrames, threshold: float, k: int) -> tuple[int, int, int,
                                                                                                  int]:
    """(failed episodes rewarded, failed episodes, successful episodes never rewarded, successful episodes) under
    the node's k-consecutive-frame rule."""
    fp = n_fail = fn = n_succ = 0
    for e in np.unique(frames.episodes):
        i = frames.episodes == e
        gate = RewardGate(k)
        fired = any(gate.update(float(p), threshold, "classifier").reward for p in probs[i])
        if frames.labels[i].any():
            n_succ += 1
            fn += not fired
        else:
            n_fail += 1
            fp += fired
    return fp, n_fail, fn, n_succ


def latency_ms(classifier, frame: np.ndarray, n: int) -> tuple[float, float]:
    for _ in range(5):
        classifier.predict_proba(frame)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        classifier.predict_proba(frame)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pick")
    p.add_argument("--cameras", nargs="+", default=["front"])
    p.add_argument("--frame-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                   help="rendered frame size: 128x128 is what sim_world / camera_node publish")
    p.add_argument("--train-episodes", type=int, default=100)
    p.add_argument("--test-episodes", type=int, default=30, help="per held-out set")
    p.add_argument("--consecutive-frames", type=int, default=3, help="the node's debouncing, for episode outcomes")
    p.add_argument("--post-success-steps", type=int, default=10)
    p.add_argument("--archs", nargs="+", default=["cnn", "efficientnet_lite0"])
    p.add_argument("--cnn-size", type=int, default=96, help="classifier input side for the CNN")
    p.add_argument("--effnet-size", type=int, default=128, help="classifier input side for EfficientNet-lite0")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="fraction of the training EPISODES held out to pick the threshold")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for training (1: a second thread spin-waits on a busy 2-core box, ~10x slower)")
    p.add_argument("--latency-iters", type=int, default=100, help="per thread setting (2 threads, then 1)")
    p.add_argument("--save-frames", default="")
    p.add_argument("--load-frames", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    train = frames(args, "train", args.train_episodes, seed=1000)
    tests = {"round-1 mix": frames(args, "test", args.test_episodes, seed=2000, kind_weights=ROUND1_MIX),
             "with hold": frames(args, "test_hold", args.test_episodes, seed=3000)}
    print(f"train: {train.summary()}")
    for name, t in tests.items():
        print(f"held-out ({name}, other seeds): {t.summary()}")
    print(f"[{time.perf_counter() - t0:.0f} s]")
    rows = []
    for arch in args.archs:
        for seed in args.seeds:
            size = args.cnn_size if arch == "cnn" else args.effnet_size
            t = time.perf_counter()
            result = train_classifier(train, TrainConfig(arch=arch, image_size=size, epochs=args.epochs, seed=seed,
                                                         val_fraction=args.val_fraction,
                                                         num_threads=args.train_threads), progress=True)
            torch.set_num_threads(2)
            train_s = time.perf_counter() - t
            clf = result.classifier
            t_img = next(iter(tests.values())).images[:1]
            p50, p95 = latency_ms(clf, t_img, args.latency_iters)
            # A second intra-op thread only pays when a core is free: on a busy 2-core box it spin-waits.
            torch.set_num_threads(1)
            p50_1, _ = latency_ms(clf, t_img, args.latency_iters)
            torch.set_num_threads(2)
            for name, test in tests.items():
                probs = predict_frames(clf, test)
                m = evaluate(probs, test.labels, clf.spec.threshold)
                auc = roc_auc(probs, test.labels)
                eps = episode_outcomes(probs, test, clf.spec.threshold, args.consecutive_frames)
                rows.append((arch, size, seed, name, train_s, result.val, m, auc, eps, p50, p95, p50_1))
                print(f"[{arch} seed {seed}] held-out {name}: {m.line()} auc {auc:.4f}; episodes: {eps[0]}/{eps[1]} "
                      f"failed rewarded, {eps[2]}/{eps[3]} successful missed", flush=True)
            print(f"[{arch} seed {seed}] latency 2 threads p50 {p50:.2f} ms p95 {p95:.2f} ms, 1 thread p50 "
                  f"{p50_1:.2f} ms", flush=True)

    print(f"\nreward classifier, task {args.task}, cameras {args.cameras}, frames "
          f"{args.frame_size[1]}x{args.frame_size[0]}, {args.train_episodes} training episodes, "
          f"{args.test_episodes} per held-out set; episode columns: k = {args.consecutive_frames} debouncing")
    head = (f"{'arch':<19}{'input':>6}{'seed':>5}{'held-out':>13}{'train s':>9}{'val P':>7}{'val R':>7}{'P':>7}"
            f"{'R':>7}{'AUC':>8}{'P/0.95':>8}{'R/0.90':>8}{'fail->rew':>11}{'succ miss':>11}{'ms p50':>8}"
            f"{'ms p95':>8}{'p50/20ms':>9}{'1thr p50':>9}")
    print(head)
    print("-" * len(head))
    for arch, size, seed, name, train_s, val, m, auc, eps, p50, p95, p50_1 in rows:
        print(f"{arch:<19}{size:>6}{seed:>5}{name:>13}{train_s:>9.1f}{val.precision:>7.3f}{val.recall:>7.3f}"
              f"{m.precision:>7.3f}{m.recall:>7.3f}{auc:>8.4f}{m.precision / TARGET_P:>8.2f}"
              f"{m.recall / TARGET_R:>8.2f}{f'{eps[0]}/{eps[1]}':>11}{f'{eps[2]}/{eps[3]}':>11}{p50:>8.2f}"
              f"{p95:>8.2f}{p50 / TARGET_MS:>9.2f}{p50_1:>9.2f}")
    if len({r[0] for r in rows}) > 1:
        base = rows[0]
        print(f"\nlatency ratios vs {base[0]} (p50): " + ", ".join(f"{r[0]} {r[9] / base[9]:.2f}x" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
