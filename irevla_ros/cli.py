"""`irevla` command line: one entry point, subcommands implemented next to the code they drive.

Each subcommand lives in a module exposing `add_arguments(parser)` and `run(args) -> int`; modules are imported
only when their subcommand runs, so `irevla sft-worker` on a GPU server never imports rclpy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("irevla_ros.runner", "run a graph profile (online_rl, teleop_demos, replay, ...) without ros2 launch"),
    "sim": ("irevla_ros.loop", "the main job: the whole iRe-VLA loop in simulation, with a live status table"),
    "model": ("irevla_ros.core.model.cli", "create or inspect VLA model folders (e.g. model init --preset tiny)"),
    "sft-worker": ("irevla_ros.core.sft.worker", "offboard LoRA SFT worker: claims jobs from a spool (no ROS)"),
    "train-reward": ("irevla_ros.core.reward.cli", "train the success classifier from labelled frames"),
    "calibrate": ("irevla_ros.camera.calibrate", "hand-eye calibration (ChArUco) for wrist and fixed cameras"),
    "bag": ("irevla_ros.bag.cli", "rosbag (MCAP) record / play / eval / export"),
    "demos": ("irevla_ros.sim.demos", "record scripted expert demos in simulation into the dataset format"),
    "eval": ("irevla_ros.sim.eval_cli", "success of saved policies on many held-out sim layouts, compared layout "
             "by layout"),
    "status": ("irevla_ros.core.iteration", "print the persisted iRe-VLA stage/iteration state of a run folder"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irevla",
        description="irevla_ros: iRe-VLA on a Franka Panda. Run `irevla COMMAND --help` for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        top.error(f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"irevla {name}: not available in this build ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"irevla {name}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C / the runner's SIGINT: commands keep their state durable as they go (leases expire, episodes are
        # journalled), so stopping here loses nothing; no traceback for the expected way to stop.
        print(f"irevla {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
