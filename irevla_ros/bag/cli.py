"""`irevla bag record | play | info | export | eval`: rosbag2 (MCAP) tools.

  irevla bag record -o bags/demo1                 record the default topic set (Ctrl-C to stop)
  irevla bag record -o bags/all --all             record every topic
  irevla bag play bags/demo1 --rate 0.5           replay at half speed, with /clock
  irevla bag info bags/demo1                      topics, counts, duration (and what is wrong with a bad bag)
  irevla bag export bags/demo* -o data/demos      demo bags -> episode store (the SFT dataset format)
  irevla bag eval bags/held_out --model runs/x/model   open-loop policy actions vs recorded actions

record and play need ROS (rclpy); info, export and eval do not.
"""

from __future__ import annotations

import argparse
import sys

from irevla_ros import interfaces as itf
from irevla_ros.bag.config import DEFAULT_RECORD_TOPICS
from irevla_ros.bag.storage import BagError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="bag_command", metavar="ACTION", required=True)

    rec = sub.add_parser("record", help="record topics into a rosbag2 MCAP bag (Ctrl-C stops and closes it)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rec.add_argument("topics", nargs="*", help="topic names or patterns ('/cameras/*'); default: the standard set "
                     f"{list(DEFAULT_RECORD_TOPICS)}")
    rec.add_argument("-o", "--output", default="", help="bag folder to create ('' = bags/irevla_<UTC time>)")
    rec.add_argument("-a", "--all", action="store_true", help="record every topic")
    rec.add_argument("--exclude", nargs="*", default=["/rosout", "/parameter_events"])
    rec.add_argument("--split-duration", type=float, default=300.0, help="seconds per .mcap file (0 = one file)")
    rec.add_argument("--compression", choices=("none", "zstd", "lz4"), default="none")

    play = sub.add_parser("play", help="republish a bag with its timing and /clock",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    play.add_argument("bag")
    play.add_argument("-r", "--rate", type=float, default=1.0, help="playback speed factor")
    play.add_argument("--topics", nargs="*", default=["*"], help="topic names or patterns to play")
    play.add_argument("--prefix", default="", help="publish under this prefix, e.g. /replay")
    play.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate (0 = no /clock)")
    play.add_argument("--start-offset", type=float, default=0.0, help="skip the first seconds")
    play.add_argument("--loop", action="store_true")
    play.add_argument("--wait-for-subscribers", type=float, default=0.0,
                      help="wait up to this many seconds for a subscriber on every topic before starting")
    play.add_argument("--recover", action="store_true", help="play the complete part of a truncated bag")
    play.add_argument("--no-validate", action="store_true", help="do not decode messages before publishing")

    info = sub.add_parser("info", help="what a bag holds (or why it cannot be read)")
    info.add_argument("bag")
    info.add_argument("--recover", action="store_true")

    def step_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cameras", default=",".join(itf.CAMERA_NAMES), help="comma-separated, in model order")
        p.add_argument("--action-topic", default=itf.ACTION.name,
                       help=f"{itf.ACTION.name} (executed) or {itf.TELEOP_ACTION.name} (human only)")
        p.add_argument("--instruction", default="", help="override / supply the task instruction")
        p.add_argument("--segment", choices=("auto", "events", "labels", "whole"), default="auto",
                       help="episode boundaries: episode events, human labels, or the whole bag")
        p.add_argument("--max-image-age", type=float, default=0.5, help="seconds; older frames skip the step")
        p.add_argument("--recover", action="store_true")

    exp = sub.add_parser("export", help="demo bags -> episode store (the dataset SFT reads)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    exp.add_argument("bags", nargs="+")
    exp.add_argument("-o", "--output", required=True, help="episode store root (created or appended to)")
    exp.add_argument("--source", choices=("teleop", "expert", "online"), default="teleop")
    exp.add_argument("--keep-unjudged", action="store_true",
                     help="also keep episodes ended by reset or by the bag's end without a label")
    exp.add_argument("--assume-success", action="store_true", help="with --segment whole: mark it successful")
    exp.add_argument("--image-format", choices=("png", "jpg"), default="png")
    step_options(exp)

    ev = sub.add_parser("eval", help="run a policy open-loop on a bag; predicted vs recorded actions",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("bag")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a VLA model folder (save_pretrained / SFT result)")
    src.add_argument("--preset", help="a random-init preset (e.g. tiny): a baseline / plumbing check")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all)")
    ev.add_argument("--json", default="", help="also write metrics + per-step actions to this file")
    step_options(ev)


def _spec(args):
    from irevla_ros.bag.steps import StepSpec

    return StepSpec(cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
                    action_topic=args.action_topic, instruction=args.instruction, segment=args.segment,
                    max_image_age_s=args.max_image_age, max_state_age_s=args.max_image_age)


def _spin(make_node) -> int:
    from irevla_ros.nodes._common import spin_node

    return spin_node(make_node, [])


def _record(args) -> int:
    from rclpy.parameter import Parameter

    from irevla_ros.nodes.bag_recorder import BagRecorderNode

    topics = ["*"] if args.all else (args.topics or list(DEFAULT_RECORD_TOPICS))
    params = [Parameter("output", value=args.output), Parameter("topics", value=topics),
              Parameter("exclude", value=list(args.exclude) or ["/rosout"]),
              Parameter("split_duration_s", value=float(args.split_duration)),
              Parameter("compression", value=args.compression)]
    return _spin(lambda: BagRecorderNode(parameter_overrides=params))


def _play(args) -> int:
    from rclpy.parameter import Parameter

    from irevla_ros.nodes.bag_player import BagPlayerNode

    params = [Parameter("bag", value=args.bag), Parameter("rate", value=float(args.rate)),
              Parameter("topics", value=list(args.topics)), Parameter("topic_prefix", value=args.prefix),
              Parameter("clock_hz", value=float(args.clock_hz)),
              Parameter("start_offset_s", value=float(args.start_offset)), Parameter("loop", value=args.loop),
              Parameter("wait_for_subscribers_s", value=float(args.wait_for_subscribers)),
              Parameter("recover", value=args.recover), Parameter("validate", value=not args.no_validate)]
    made: list = []
    code = _spin(lambda: made.append(BagPlayerNode(parameter_overrides=params)) or made[-1])
    return 1 if made and made[0].error else code


def _info(args) -> int:
    from irevla_ros.bag.storage import BagReader

    print(BagReader(args.bag, recover=args.recover).summary())
    return 0


def _export(args) -> int:
    from irevla_ros.bag.export import export_bags

    report = export_bags(args.bags, args.output, _spec(args), source=args.source, keep_unjudged=args.keep_unjudged,
                         assume_success=args.assume_success, recover=args.recover, image_format=args.image_format)
    print(report.summary())
    return 0 if report.written else 1


def _eval(args) -> int:
    from irevla_ros.bag.evaluate import evaluate_bag
    from irevla_ros.core.model.vla import VLAModel

    spec = _spec(args)
    if args.model:
        model = VLAModel.from_pretrained(args.model, device=args.device)
    else:
        model = VLAModel.from_preset(args.preset, num_cameras=len(spec.cameras), device=args.device)
    report = evaluate_bag(args.bag, model, spec, batch_size=args.batch_size, recover=args.recover,
                          max_steps=args.max_steps)
    print(report.table())
    if args.json:
        report.save(args.json)
    return 0


def run(args) -> int:
    handlers = {"record": _record, "play": _play, "info": _info, "export": _export, "eval": _eval}
    try:
        return handlers[args.bag_command](args)
    except (BagError, ValueError) as exc:
        print(f"irevla bag {args.bag_command}: {exc}", file=sys.stderr)
        return 2
