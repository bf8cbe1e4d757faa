"""`irevla eval`: success of saved policies on many held-out layouts, in parallel, compared layout by layout.

    irevla eval runs/sim/models/sft0 runs/sim/sft/results/s2-.../model --episodes 100 --workers 2
    irevla eval runs/sim --tasks button --episodes 200 --json eval.json   # a run folder: its SFT-0 and final model

Why: `irevla sim` judges with 20 layouts per task, where one run's rate is uncertain by about ±20 points (95 %).
Evaluating every model on the SAME layouts and counting the layouts where they differ (a paired sign test) tells
two policies apart with far fewer episodes than comparing two rates. Layouts are the loop's (seeds from 10000,
disjoint from the demo seeds), actions deterministic, one torch thread per worker process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from irevla_ros.sim.evaluate import EVAL_SEED_BASE


@dataclass(frozen=True)
class Candidate:
    label: str
    path: Path


class EvaluationInterrupted(RuntimeError):
    """The caller asked to stop (Ctrl-C in `irevla sim`) before every layout was played."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % score interval of a success rate: sound at 0 % and 100 %, where the normal approximation is not."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test on the layouts where two policies disagree (ties, both right or both wrong, carry
    no information about which is better)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def resolve_candidates(paths: Sequence[str]) -> list[Candidate]:
    """Model folders as given; a run folder of `irevla sim` expands to its SFT-0 model and the final model the loop
    evaluated (when that was a stage-2 model with its own head, i.e. a folder that holds the whole policy). Runs that
    share one stage 0 (copied SFT-0 folders, identical by sha256) get that SFT-0 evaluated once."""
    from irevla_ros.core.model.vla import MANIFEST, folder_sha256

    out: list[Candidate] = []
    sft0_seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if (path / MANIFEST).is_file():
            out.append(Candidate(label=_short_label(path), path=path))
            continue
        status_file = path / "loop_status.json"
        if not status_file.is_file():
            raise SystemExit(f"irevla eval: {path} is neither a model folder (no {MANIFEST}) nor an `irevla sim` run "
                             "folder (no loop_status.json)")
        try:
            evaluated = json.loads(status_file.read_text()).get("evaluated") or {}
        except (OSError, ValueError) as exc:
            raise SystemExit(f"irevla eval: cannot read {status_file}: {exc}") from exc
        sft0 = path / "models" / "sft0"
        sft0_digest = folder_sha256(sft0) if (sft0 / MANIFEST).is_file() else None
        if sft0_digest is not None and sft0_digest not in sft0_seen:
            sft0_seen.add(sft0_digest)
            out.append(Candidate(label=f"{path.name}:sft0", path=sft0))
        final = evaluated.get("model")
        policy_folder = evaluated.get("policy_folder")  # the evaluated policy as one folder (written since round 10)
        if policy_folder and Path(policy_folder) == sft0:
            print(f"irevla eval: {path.name}: the loop's final policy was its SFT-0 (no stage-2 result, no head)")
        elif policy_folder and (Path(policy_folder) / MANIFEST).is_file():
            out.append(Candidate(label=f"{path.name}:final", path=Path(policy_folder)))
        elif final and evaluated.get("head") == "own" and Path(final) != sft0:
            out.append(Candidate(label=f"{path.name}:final", path=Path(final)))
        elif final:
            print(f"irevla eval: {path.name}: its final policy used the learner's head ({evaluated.get('head')}), "
                  "which no model folder holds; evaluating SFT-0 only")
    if not out:
        raise SystemExit("irevla eval: no model to evaluate")
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):  # two folders with the same name: fall back to the full paths
        out = [Candidate(label=str(c.path), path=c.path) for c in out]
    return out


def _short_label(path: Path) -> str:
    # .../sim24/sft/results/s2-.../model -> sim24/s2-...; .../sim24/models/sft0 -> sim24/sft0
    parts = path.resolve().parts
    if path.name == "model" and len(parts) >= 5 and parts[-3] == "results":
        return f"{parts[-5]}/{parts[-2]}"
    if len(parts) >= 3 and parts[-2] == "models":
        return f"{parts[-3]}/{parts[-1]}"
    return path.name


# --- worker processes ------------------------------------------------------------------------------------------
_MODELS: dict[str, object] = {}


def _init_worker() -> None:
    import signal

    import torch

    torch.set_num_threads(1)
    # Ctrl-C is the parent's to handle: a worker killed by it mid-task would leave the pool waiting for a result
    # that never comes
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_chunk(job: tuple[str, str, list[int], int]) -> tuple[str, str, list[int], list[bool]]:
    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.sim.evaluate import evaluate_layouts

    path, task, seeds, image_size = job
    model = _MODELS.get(path)
    if model is None:
        model = _MODELS[path] = VLAModel.from_pretrained(path)
    return path, task, seeds, evaluate_layouts(model, task, seeds, image_size=image_size)


def evaluate_candidates(candidates: Sequence[Candidate], tasks: Sequence[str], seeds: Sequence[int], *,
                        workers: int = 1, image_size: int = 128, chunk: int = 10,
                        should_stop: Callable[[], bool] | None = None) -> dict[tuple[str, str], list[bool]]:
    """Per-layout outcomes of every candidate on every task; chunks of layouts go to `workers` processes (spawned,
    so neither torch's threads nor a rendering context are forked; workers=1 plays them in this process). Polls
    `should_stop` after every chunk: when it says so the workers stop and EvaluationInterrupted is raised."""
    from tqdm import tqdm

    jobs = [(str(c.path), task, list(seeds[i:i + chunk]), image_size)
            for c in candidates for task in tasks for i in range(0, len(seeds), chunk)]
    found: dict[tuple[str, str, int], bool] = {}
    total = len(candidates) * len(tasks) * len(seeds)
    with tqdm(total=total, desc="eval", unit="ep") as bar:
        if workers <= 1:
            import torch

            torch.set_num_threads(1)
            results = map(_run_chunk, jobs)
            pool = None
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)
            results = pool.imap_unordered(_run_chunk, jobs)
        try:
            for path, task, chunk_seeds, outcomes in results:
                found.update({(path, task, s): ok for s, ok in zip(chunk_seeds, outcomes, strict=True)})
                bar.update(len(chunk_seeds))
                if should_stop is not None and should_stop() and len(found) < total:
                    raise EvaluationInterrupted(f"stopped after {len(found)} of {total} episodes")
        finally:
            if pool is not None:
                pool.terminate()
            _MODELS.clear()  # in-process runs: a folder rewritten later must be read again
    return {(str(c.path), task): [found[(str(c.path), task, s)] for s in seeds] for c in candidates for task in tasks}


def outcome_record(outcomes: Sequence[bool], seed_first: int) -> dict:
    """One task's result as `irevla sim` stores it (eval_sft0.json, eval_final.json): the rate, its 95 % interval
    and the per-layout outcomes, so two evaluations on the same layouts can be compared layout by layout."""
    n, k = len(outcomes), sum(bool(o) for o in outcomes)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else 0.0, "successes": k, "episodes": n, "seed_first": int(seed_first),
            "ci95": [lo, hi], "outcomes": "".join("1" if o else "0" for o in outcomes)}


def paired_counts(outcomes: str, reference: str) -> tuple[int, int, float]:
    """Layouts where `outcomes` succeeds and `reference` fails, the reverse, and the sign test's p (strings of
    0/1 as `outcome_record` writes them, same layouts in the same order)."""
    if len(outcomes) != len(reference):
        raise ValueError(f"paired comparison needs the same layouts ({len(outcomes)} != {len(reference)})")
    wins = sum(1 for a, b in zip(outcomes, reference, strict=True) if a == "1" and b == "0")
    losses = sum(1 for a, b in zip(outcomes, reference, strict=True) if a == "0" and b == "1")
    return wins, losses, sign_test_p(wins, losses)


def summarize(candidates: Sequence[Candidate], tasks: Sequence[str], seeds: Sequence[int],
              outcomes: dict[tuple[str, str], list[bool]]) -> dict:
    """Rates with 95 % intervals, and each candidate against the first one on the same layouts."""
    rows, paired = [], []
    for task in tasks:
        base = outcome_record(outcomes[(str(candidates[0].path), task)], seeds[0])
        for cand in candidates:
            record = outcome_record(outcomes[(str(cand.path), task)], seeds[0])
            rows.append({"model": cand.label, "path": str(cand.path), "task": task,
                         **{k: record[k] for k in ("episodes", "successes", "rate", "ci95", "outcomes")}})
            if cand is not candidates[0]:
                wins, losses, p = paired_counts(record["outcomes"], base["outcomes"])
                paired.append({"model": cand.label, "against": candidates[0].label, "task": task,
                               "better_on": wins, "worse_on": losses, "sign_test_p": p})
    return {"seed_first": int(seeds[0]), "episodes": len(seeds), "rows": rows, "paired": paired}


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"success on {summary['episodes']} held-out layouts per task "
                        f"(seeds {summary['seed_first']}..{summary['seed_first'] + summary['episodes'] - 1})")
    table.add_column("model", overflow="fold")
    for col in ("task", "success", "95 % interval"):
        table.add_column(col, no_wrap=True)
    for row in summary["rows"]:
        lo, hi = row["ci95"]
        table.add_row(row["model"], row["task"], f"{row['successes']}/{row['episodes']} = {100 * row['rate']:.1f} %",
                      f"{100 * lo:.0f}–{100 * hi:.0f} %")
    console = Console()
    console.print(table)
    if summary["paired"]:
        pairs = Table(title="the same layouts, against the first model (sign test on the layouts where they differ)")
        pairs.add_column("model", overflow="fold")
        for col in ("task", "better on", "worse on", "p (two-sided)"):
            pairs.add_column(col, no_wrap=True)
        for p in summary["paired"]:
            pairs.add_row(p["model"], p["task"], str(p["better_on"]), str(p["worse_on"]), f"{p['sign_test_p']:.3g}")
        console.print(pairs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from irevla_ros.sim.tasks import TASKS

    parser.add_argument("models", nargs="+", help="model folders, or `irevla sim` run folders (each expands to "
                        "its SFT-0 and final model); the first is the reference of the paired comparison")
    parser.add_argument("--tasks", nargs="+", default=["button", "button_novel"], choices=sorted(TASKS),
                        help="sim tasks to evaluate on")
    parser.add_argument("--episodes", type=int, default=100, help="held-out layouts per task")
    parser.add_argument("--seed", type=int, default=EVAL_SEED_BASE,
                        help="first layout seed (the loop's evaluation starts at 10000; demos use 0..)")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="processes, one torch thread each")
    parser.add_argument("--image-size", type=int, default=128, help="camera image side the models were trained on")
    parser.add_argument("--json", help="write rates, intervals, per-layout outcomes and the paired table here")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.episodes <= 100_000:
        raise SystemExit("irevla eval: --episodes must be in 1..100000")
    if args.workers < 1:
        raise SystemExit("irevla eval: --workers must be >= 1")
    if args.seed < 0:
        raise SystemExit("irevla eval: --seed must be >= 0")
    candidates = resolve_candidates(args.models)
    from irevla_ros.core.model.vla import ModelFolderError, verify_folder

    for cand in candidates:  # a tampered or half-copied folder fails here, before any worker starts
        try:
            verify_folder(cand.path)
        except ModelFolderError as exc:
            raise SystemExit(f"irevla eval: {exc}") from exc
    seeds = list(range(args.seed, args.seed + args.episodes))
    outcomes = evaluate_candidates(candidates, args.tasks, seeds, workers=args.workers, image_size=args.image_size)
    summary = summarize(candidates, args.tasks, seeds, outcomes)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
        print(f"irevla eval: written {args.json}")
    return 0
