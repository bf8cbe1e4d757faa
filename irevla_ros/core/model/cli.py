"""`irevla model ...`: create, import and inspect VLA model folders (offline).

Examples:
  irevla model init --preset tiny --out runs/models/tiny            # random-init tiny BLIP-2 (seconds)
  irevla model init --preset tiny-llava --cameras 2 --out DIR       # second family, two cameras
  irevla model init --from-hf /models/blip2-opt-2.7b --out DIR      # wrap a VLM already on local disk
  irevla model info DIR                                             # config, feature shape, check sha256
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from irevla_ros.core.model.presets import PRESETS

    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="write a loadable model folder (random-init preset or a local HF VLM)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = init.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS),
                     help="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    src.add_argument("--from-hf", metavar="DIR", help="a local Hugging Face VLM folder (BLIP-2, Llava, PaliGemma)")
    init.add_argument("--out", required=True, help="output folder (replaced atomically if it exists)")
    init.add_argument("--cameras", type=int, default=1, help="images per observation")
    init.add_argument("--proprio-dim", type=int, default=0, help="robot-state inputs of the head (0 = images + "
                      "language only, as in the paper; 8 = EE pose + gripper width)")
    init.add_argument("--head-tokens", type=int, default=8, help="token learner outputs")
    init.add_argument("--head-hidden", type=int, default=256, help="head MLP width")
    init.add_argument("--max-text-tokens", type=int, default=None, help="instruction length (default: preset's)")
    init.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                      help="weight dtype written to disk")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--version", default="0", help="version string stored in the manifest")
    info = sub.add_parser("info", help="print a model folder's config and verify its files")
    info.add_argument("dir")
    info.add_argument("--no-verify", action="store_true", help="skip hashing the weight files")


def run(args: argparse.Namespace) -> int:
    from irevla_ros.core.model.vla import ModelFolderError, read_manifest, verify_folder

    if args.action == "info":
        try:
            manifest = read_manifest(args.dir) if args.no_verify else verify_folder(args.dir)
        except ModelFolderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        from irevla_ros.core.model.vla import VLAConfig, folder_sha256

        cfg = VLAConfig.from_dict(manifest["config"])
        print(json.dumps({"config": cfg.to_dict(), "feature_shape": list(cfg.feature_shape),
                          "version": manifest.get("version", ""), "files": len(manifest["files"]),
                          "sha256": folder_sha256(args.dir), "verified": not args.no_verify}, indent=2))
        return 0

    import torch

    from irevla_ros.core.model.head import HeadConfig
    from irevla_ros.core.model.vla import VLAModel

    try:
        head = {"num_learned_tokens": args.head_tokens, "hidden_dim": args.head_hidden,
                "proprio_dim": args.proprio_dim}  # a dict: VLAModel adds what every VLA head gets (the noise cap)
        HeadConfig(**head)  # bad flags fail here, before any model is built
        if args.cameras <= 0:
            raise ValueError(f"--cameras must be > 0, got {args.cameras}")
        dtype = getattr(torch, args.dtype)
        if args.preset:
            model = VLAModel.from_preset(args.preset, num_cameras=args.cameras, head=head, seed=args.seed,
                                         dtype=dtype)
            if args.max_text_tokens:
                model.config.max_text_tokens = int(args.max_text_tokens)
                model.config.__post_init__()
        else:
            torch.manual_seed(args.seed)
            model = VLAModel.from_hf(args.from_hf, num_cameras=args.cameras, head=head, dtype=dtype,
                                     max_text_tokens=args.max_text_tokens or 48)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    digest = model.save_pretrained(args.out, version=args.version)
    t, d = model.feature_shape
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: family {model.config.family}, {n / 1e6:.2f} M params, features [{t}, {d}], "
          f"{model.config.num_cameras} camera(s) at {model.config.image_size}px, sha256 {digest[:16]}")
    return 0
