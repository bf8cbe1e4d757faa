"""`irevla train-reward`: train the success classifier and save it as a versioned file for reward_node.

Examples:
  irevla train-reward --sim-episodes 100 --task pick --cameras front --out runs/default/reward/classifier.safetensors
  irevla train-reward --frames labelled.safetensors --arch efficientnet_lite0 --image-size 128
  irevla train-reward --episodes runs/default/episodes --cameras front
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_OUT = "runs/default/reward/classifier.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Train the binary success classifier (reward) from labelled frames, hold out whole "
                          "episodes for validation, pick the threshold for a target precision and save a versioned "
                          "classifier file (safetensors + metadata) that reward_node loads and hot-reloads.")
    src = parser.add_argument_group("labelled frames (one or more sources; they are concatenated)")
    src.add_argument("--frames", nargs="+", default=[], metavar="FILE",
                     help="labelled-frames files (safetensors: images, labels, episodes) e.g. from --save-frames")
    src.add_argument("--episodes", metavar="DIR", default="",
                     help="an episode store: per-step success flags (sim ground truth / teleop keys), else the "
                          "episode outcome labels its last --outcome-tail frames")
    src.add_argument("--outcome-tail", type=int, default=3, help="frames labelled success at the end of a "
                     "successful episode without per-step flags")
    src.add_argument("--stride", type=int, default=1, help="use every N-th step of recorded episodes")
    src.add_argument("--sim-episodes", type=int, default=0, metavar="N",
                     help="generate N episodes in the MuJoCo sim (scripted expert + perturbed runs; labels = "
                          "ground truth)")
    src.add_argument("--task", default="", help="sim task name for --sim-episodes (default: the first task)")
    src.add_argument("--sim-seed", type=int, default=0, help="first episode seed for --sim-episodes")
    src.add_argument("--frame-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                     help="sim render size for --sim-episodes: your camera node's output size (sim_world and "
                          "camera_node publish 128x128; the node refuses frames of another size)")
    src.add_argument("--save-frames", default="", metavar="FILE", help="also save the labelled frames used")
    src.add_argument("--cameras", nargs="+", default=["front"], help="cameras the classifier looks at, in order")

    model = parser.add_argument_group("model and training")
    model.add_argument("--arch", choices=("cnn", "efficientnet_lite0"), default="cnn",
                       help="small CNN from scratch, or frozen ImageNet EfficientNet-lite0 (from its PyPI wheel) + "
                            "head")
    model.add_argument("--image-size", type=int, default=96,
                       help="classifier input side (frames are area-resized to it; efficientnet: a multiple of 32)")
    model.add_argument("--epochs", type=int, default=15)
    model.add_argument("--batch-size", type=int, default=64)
    model.add_argument("--lr", type=float, default=2e-3)
    model.add_argument("--val-fraction", type=float, default=0.25, help="fraction of EPISODES held out")
    model.add_argument("--target-precision", type=float, default=0.97,
                       help="the threshold is the lowest that reaches this precision on held-out episodes")
    model.add_argument("--no-augment", action="store_true", help="disable random crop + colour jitter")
    model.add_argument("--feature-views", type=int, default=3, help="frozen encoder: cached views per frame")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    model.add_argument("--version", default="", help="version string stored in the file (default: UTC time)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", default=DEFAULT_OUT, help="classifier file to write (atomically)")
    out.add_argument("--logdir", default="", help="tensorboard log folder (default: <out folder>/tb)")
    out.add_argument("--metrics-json", default="", help="also write the validation metrics as JSON here")
    out.add_argument("--require-target", action="store_true",
                     help="exit with status 3 (and save nothing) if the target precision is not reached")
    out.add_argument("--quiet", action="store_true", help="no progress bars")


def _gather(args: argparse.Namespace):
    from irevla_ros.core.reward.data import LabelledFrames, load_frames

    cameras = tuple(args.cameras)
    parts = [load_frames(p).select_cameras(cameras) for p in args.frames]
    if args.episodes:
        from irevla_ros.core.reward.sources import frames_from_episode_store

        parts.append(frames_from_episode_store(args.episodes, cameras, outcome_tail=args.outcome_tail,
                                               stride=args.stride))
    if args.sim_episodes:
        from irevla_ros.core.reward.sim_frames import SimFramesConfig, generate_sim_frames

        cfg = SimFramesConfig(episodes=args.sim_episodes, task=args.task, cameras=cameras,
                              height=args.frame_size[0], width=args.frame_size[1], seed=args.sim_seed)
        parts.append(generate_sim_frames(cfg, progress=not args.quiet))
    if not parts:
        raise ValueError("no labelled frames: give --frames, --episodes and/or --sim-episodes")
    return parts[0] if len(parts) == 1 else LabelledFrames.concatenate(parts)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from irevla_ros.core.reward.data import FramesError, save_frames
    from irevla_ros.core.reward.io import save_classifier
    from irevla_ros.core.reward.train import TrainConfig, train_classifier

    try:
        config = TrainConfig(arch=args.arch, image_size=args.image_size, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                             target_precision=args.target_precision, seed=args.seed, augment=not args.no_augment,
                             feature_views=args.feature_views, num_threads=args.threads, version=args.version)
        frames = _gather(args)
    except (ValueError, FramesError, OSError) as exc:
        print(f"irevla train-reward: {exc}", file=sys.stderr)
        return 2
    print(f"data: {frames.summary()}")
    if args.save_frames:
        save_frames(frames, args.save_frames)
        print(f"labelled frames saved to {args.save_frames}")
    out = Path(args.out)
    logdir = Path(args.logdir) if args.logdir else out.parent / "tb"
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(logdir)) as writer:
        try:
            result = train_classifier(frames, config, progress=not args.quiet, writer=writer)
        except (ValueError, FramesError) as exc:
            print(f"irevla train-reward: {exc}", file=sys.stderr)
            return 2
    m = result.val
    spec = result.classifier.spec
    print(f"\nheld-out validation: {len(result.val_episodes)} episodes, {m.n} frames "
          f"(trained on {len(result.train_episodes)} episodes)")
    print(f"  accuracy {m.accuracy:.3f}   precision {m.precision:.3f}   recall {m.recall:.3f}   "
          f"threshold {m.threshold:.4f} (target precision {config.target_precision})")
    print(m.confusion_table())
    if args.metrics_json:
        Path(args.metrics_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics_json).write_text(json.dumps(spec.metrics, indent=2))
    if not result.target_met:
        print(f"WARNING: no threshold reaches precision {config.target_precision} on the held-out episodes; "
              f"more (or more varied) data is needed", file=sys.stderr)
        if args.require_target:
            return 3
    sha = save_classifier(result.classifier, out)
    print(f"saved classifier {spec.version} ({spec.arch}, cameras {list(spec.cameras)}, "
          f"frames {spec.frame_size[1]}x{spec.frame_size[0]}) to {out}  sha256 {sha[:16]}…")
    print(f"tensorboard: tensorboard --logdir {logdir}")
    return 0
