"""Replay stage 2 on what an `irevla sim` run recorded: is stage 2 itself what moves (or fails to move) success?

A graph run keeps everything a stage 2 needs: the expert demos (run/demos), every online episode with its frames
(run/episodes), SFT-0 (run/models/sft0) and each stage-2 result (run/sft/results/*/model). Two modes, both ROS-free,
evaluated like `irevla sim` (sim.evaluate.evaluate_policy: the same held-out layouts, deterministic actions):

  models  re-evaluate SFT-0 and every stage-2 model of the run, each with its own head: the trajectory the chained
          stage-2 rounds took (the summary only shows the last);
  refit   one stage 2 from SFT-0 on the expert demos + the run's successful online episodes (or the first N of
          them), with the learning rate / steps / mix given here and a training seed: how much one stage 2 on the
          same data varies with its seed and settings.

    MUJOCO_GL=egl .venv/bin/python bench/stage2_replay.py models runs/sim
    MUJOCO_GL=egl .venv/bin/python bench/stage2_replay.py refit runs/sim --seeds 0 1 2 --lr 3e-4 --steps 1000

Rows are appended to --out (JSON lines) and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from irevla_ros.core.data.episodes import EpisodeStore  # noqa: E402
from irevla_ros.core.model.vla import VLAModel  # noqa: E402
from irevla_ros.core.sft.jobs import LR_SCHEDULES, TASK_BALANCE  # noqa: E402
from irevla_ros.core.sft.train import SFTConfig, StepDataset, train  # noqa: E402
from irevla_ros.sim.evaluate import evaluate_policy  # noqa: E402

CAMERAS = ("wrist", "front")


def run_settings(run: Path) -> dict:
    """The run's own task pair, evaluation count and image size (loop_config.json), so numbers compare."""
    config = json.loads((run / "loop_config.json").read_text())
    return {"tasks": [*config["expert_tasks"], *config["new_tasks"]], "episodes": int(config["eval_episodes"]),
            "image_size": int(config["image_size"])}


def evaluate(model: VLAModel, settings: dict) -> dict[str, float]:
    results = evaluate_policy(model, settings["tasks"], settings["episodes"], image_size=settings["image_size"],
                              cameras=CAMERAS)
    return {task: r.rate for task, r in results.items()}


def replay_models(run: Path, settings: dict) -> list[dict]:
    rows = []
    for path in [run / "models" / "sft0", *sorted((run / "sft" / "results").glob("*/model"))]:
        name = "sft0" if path.name == "sft0" else path.parent.name
        rows.append({"mode": "models", "run": str(run), "model": name,
                     **evaluate(VLAModel.from_pretrained(path), settings)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def refit(run: Path, settings: dict, args: argparse.Namespace) -> list[dict]:
    demos = EpisodeStore(run / "demos")
    expert = [demos.load(i) for i in demos.episodes(source="expert", success=True)]
    held_out = max(1, len(expert) // 15)  # as bench/learning.py: a few demos only judge, never train
    train_eps, val_eps = expert[held_out:], expert[:held_out]
    store = EpisodeStore(run / "episodes")
    infos = store.episodes(source="online", success=True)
    infos = infos[: args.first] if args.first else infos
    online = [store.load(i) for i in infos]
    print(f"{len(train_eps)} expert demos, {len(online)} online successes "
          f"{dict(Counter(i.tasks[0] if i.tasks else '?' for i in infos))}", flush=True)
    groups = {e.info.episode_id: "online" for e in online}
    rows = []
    for seed in args.seeds:
        started = time.monotonic()
        config = SFTConfig(mode="lora", steps=args.steps, batch_size=args.batch_size, seed=seed, val_every=args.steps,
                           lr=args.lr, head_lr=args.lr, lr_schedule=args.lr_schedule)
        model = train(VLAModel.from_pretrained(run / "models" / "sft0"),
                      StepDataset([*train_eps, *online], CAMERAS, groups), StepDataset(val_eps, CAMERAS), config,
                      expert_fraction=args.expert_fraction if online else 1.0,
                      online_task_balance=args.task_balance, progress=False).model
        rows.append({"mode": "refit", "run": str(run), "seed": seed, "lr": args.lr, "schedule": args.lr_schedule,
                     "steps": args.steps, "online": len(online), "expert_fraction": args.expert_fraction,
                     **evaluate(model, settings), "seconds": round(time.monotonic() - started)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], tasks: list[str]) -> str:
    lines = ["| model / setting | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in rows:
        label = r["model"] if r["mode"] == "models" else (
            f"refit seed {r['seed']}, lr {r['lr']:g} {r.get('schedule', 'constant')}, {r['steps']} steps, "
            f"{r['online']} online")
        lines.append(f"| {label} | " + " | ".join(f"{100 * r[t]:.0f} %" for t in tasks) + " |")
    if rows and rows[0]["mode"] == "refit":
        means = [100 * np.mean([r[t] for r in rows]) for t in tasks]
        lines.append("| mean | " + " | ".join(f"{m:.0f} %" for m in means) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("mode", choices=("models", "refit"), help="re-evaluate the run's models, or refit stage 2")
    parser.add_argument("run_dir", type=Path, help="an `irevla sim --run-dir` folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="refit: training seeds")
    parser.add_argument("--lr", type=float, default=1e-3, help="refit: LoRA and head learning rate")
    parser.add_argument("--steps", type=int, default=300, help="refit: updates")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                        help="refit: learning-rate schedule (SFTConfig.lr_schedule)")
    parser.add_argument("--batch-size", type=int, default=16, help="refit: batch (the packager's sft_batch_size)")
    parser.add_argument("--expert-fraction", type=float, default=0.5, help="refit: share of expert samples")
    parser.add_argument("--task-balance", choices=TASK_BALANCE, default="sqrt",
                        help="refit: split of the online share between instructions")
    parser.add_argument("--first", type=int, default=0, help="refit: only the first N online successes (0 = all)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/stage2_replay.jsonl"), help="rows appended here")
    args = parser.parse_args(argv)
    run = args.run_dir
    if not (run / "loop_config.json").is_file() or not (run / "models" / "sft0").is_dir():
        parser.error(f"{run} is not an `irevla sim` run folder (no loop_config.json or models/sft0)")
    torch.set_num_threads(1)  # one process per core: run several seeds side by side, not one with 2 threads
    settings = run_settings(run)
    rows = replay_models(run, settings) if args.mode == "models" else refit(run, settings, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(table(rows, settings["tasks"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
