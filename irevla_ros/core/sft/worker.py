"""`irevla sft-worker --spool URL`: the offboard SFT worker (no ROS needed).

Loop: claim a job (exclusive lease) -> download + verify it (HMAC signature, sha256 of every file) -> fetch and
verify the base model -> fine-tune (LoRA on the backbone + the head; full fine-tuning for stage 0 on a random-init
model) -> validate on the held-out episodes -> upload the signed result (model folder with adapter + head
safetensors, metrics, tensorboard logs) -> close the job. A heartbeat thread renews the lease; a worker that dies
leaves a lease that expires, and the next worker takes the job over from the start.

One GPU or CPU: `irevla sft-worker --spool URL`. Several GPUs: `accelerate launch -m irevla_ros.core.sft.worker
--spool URL ...`: rank 0 claims and downloads, every rank trains (DDP), rank 0 publishes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from irevla_ros.core.data.signing import SignatureError, load_or_create_key, verify_local_bundle
from irevla_ros.core.data.spool import Lease, Spool, worker_name

LOG = logging.getLogger("irevla.sft_worker")
DEFAULT_KEY = "~/.config/irevla/sft_hmac.key"
DEFAULT_WORK_DIR = "~/.cache/irevla/sft-worker"


class JobRejected(ValueError):
    """The job cannot be trained (bad signature, wrong model, no data): closed as failed, never retried."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Examples: `irevla sft-worker --spool runs/default/spool` (the simulation's local spool); "
                     "on a GPU server `irevla sft-worker --spool sftp://robot-pc/home/me/runs/default/spool --key "
                     "~/sft_hmac.key`; several GPUs: `accelerate launch --multi_gpu --num_processes 4 -m "
                     "irevla_ros.core.sft.worker --spool URL`. Copy the packager's key file to the server first.")
    parser.add_argument("--spool", required=True, help="spool URL (file:///path, or sftp://, s3://... with the "
                        "fsspec driver installed); a plain path means file://")
    parser.add_argument("--key", default=os.environ.get("IREVLA_SFT_KEY", DEFAULT_KEY),
                        help="shared HMAC key file (the packager's key_file; created 0600 if missing)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="local cache for jobs, base models, results")
    parser.add_argument("--keep-models", type=int, default=2,
                        help="base models kept in the work dir's cache, most recently used first (0 = all); each "
                        "stage-2 result is the next job's base model, so without a limit the cache grows by one "
                        "model per iteration")
    parser.add_argument("--once", action="store_true", help="process at most one job, then exit")
    parser.add_argument("--max-jobs", type=int, default=0, help="exit after this many jobs (0 = no limit)")
    parser.add_argument("--idle-exit-s", type=float, default=0.0,
                        help="exit after this long without a job (0 = wait forever)")
    parser.add_argument("--poll-s", type=float, default=2.0, help="how often to look for jobs")
    parser.add_argument("--lease-s", type=float, default=120.0,
                        help="a job whose worker is silent this long is taken over by another worker")
    parser.add_argument("--heartbeat-s", type=float, default=10.0, help="lease renewal period")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an SFT setting of every job (e.g. --set steps=50 --set mode=lora); "
                             "see irevla_ros/core/sft/train.py:SFTConfig")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default; 1 when the worker shares a small CPU with a "
                        "running graph: more threads than free cores slowed SFT steps ~15x there)")
    parser.add_argument("-v", "--verbose", action="store_true")


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


class _Heartbeat:
    def __init__(self, spool: Spool, lease: Lease, period: float):
        self.spool, self.lease, self.period = spool, lease, period
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sft-heartbeat")

    def __enter__(self):
        self.spool.heartbeat(self.lease)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                if not self.spool.heartbeat(self.lease):
                    self.lost = True
                    return
            except Exception as exc:  # noqa: BLE001 - a flaky network must not kill training; the lease decides
                LOG.warning("heartbeat failed: %s", exc)

    def alive(self) -> bool:
        return not self.lost

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def _load_base_model_files(spool: Spool, base: dict, work: Path, key: bytes) -> Path:
    """The base model folder in the local cache, verified against the shared key (downloaded if needed)."""
    model_id = str(base.get("id") or Path(base["spool_path"]).name)
    local = work / "models" / model_id
    try:
        if not local.exists():
            raise SignatureError("not cached")
        verify_local_bundle(local, key, kind="model")
    except SignatureError:
        if spool is None:
            raise
        spool.fetch_model(base["spool_path"], local)
    os.utime(local)  # most recently used: what --keep-models keeps
    return local


def prune_model_cache(work: Path, keep: int) -> list[str]:
    """Delete all but the `keep` most recently used base models of the work dir (0 = keep all)."""
    models = work / "models"
    if keep <= 0 or not models.is_dir():
        return []
    cached = sorted((p for p in models.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in cached[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return [p.name for p in cached[keep:]]


def _load_base_model(spool: Spool, body: dict, work: Path, key: bytes):
    from irevla_ros.core.model.vla import ModelFolderError, VLAModel

    base = body.get("base_model")
    if not isinstance(base, dict):
        raise JobRejected("the job names no base_model")
    if "spool_path" in base:
        local = _load_base_model_files(spool, base, work, key)
        try:
            return VLAModel.from_pretrained(local)
        except ModelFolderError as exc:
            raise JobRejected(f"base model {base['spool_path']}: {exc}") from exc
    if "preset" in base:
        try:
            return VLAModel.from_preset(str(base["preset"]), num_cameras=int(base.get("num_cameras", 1)),
                                        head=base.get("head"), seed=int(base.get("seed", 0)))
        except ValueError as exc:
            raise JobRejected(f"base model preset: {exc}") from exc
    raise JobRejected(f"base_model must name a spool_path or a preset, got {sorted(base)}")


def _prepare(spool: Spool, body: dict, job_dir: Path, work: Path, key: bytes, overrides: dict):
    """Model (base + RL head), datasets and settings of a downloaded, verified job. Raises JobRejected."""
    from irevla_ros.core.sft.train import SFTConfig, StepDataset, load_job_episodes

    try:
        sft_cfg = SFTConfig.from_overrides(SFTConfig(), {**body.get("sft", {}), **overrides})
    except (TypeError, ValueError) as exc:
        raise JobRejected(f"job SFT settings: {exc}") from exc
    model = _load_base_model(spool, body, work, key)
    rl_head = (body.get("base_model") or {}).get("rl_head")
    if rl_head:  # stage 2 fine-tunes the model with the head RL improved (signed and checksummed with the job)
        from safetensors.torch import load_file

        from irevla_ros.core.model.vla import ModelFolderError

        try:
            model.load_head_state_dict(load_file(str(job_dir / rl_head)))
        except (ModelFolderError, OSError, ValueError) as exc:
            raise JobRejected(f"the job's RL head {rl_head}: {exc}") from exc
        LOG.info("starting from RL head v%s", body["base_model"].get("rl_head_version"))
    cameras = list(body.get("cameras", []))
    if len(cameras) != model.config.num_cameras:
        raise JobRejected(f"the job has {len(cameras)} camera(s) {cameras}, the model takes "
                          f"{model.config.num_cameras}")
    try:
        groups = body.get("groups", {})
        train_set = StepDataset(load_job_episodes(job_dir, body["train"]), cameras, groups)
        val_set = StepDataset(load_job_episodes(job_dir, body["val"]), cameras, groups)
    except (KeyError, ValueError) as exc:
        raise JobRejected(f"job data: {exc}") from exc
    return model, train_set, val_set, sft_cfg


def _broadcast(accelerator, obj):
    if accelerator is None or accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _write_demo_features(model, body: dict, job_dir: Path, model_dir: Path, model_sha: str,
                         progress: bool) -> dict | None:
    """The job's expert demos encoded by the backbone just trained, for the stage-1 learner's demo buffer (the
    learner never runs the VLM, so the old features would not match the new backbone). Written next to the model
    folder (`<model>.demo_features/`: in the signed result bundle, outside the model's own manifest), COMPLETE
    marker naming `model_sha`. A failure is logged and the result published without them: the learner then keeps
    its previous demo features."""
    from irevla_ros.core.rl.demos import demo_features_dir, encode_demo_features
    from irevla_ros.core.sft.jobs import EXPERT

    expert = sorted(i for i, group in body.get("groups", {}).items() if group == EXPERT)
    target = demo_features_dir(model_dir)
    try:
        n = encode_demo_features(model, [job_dir], target, list(body.get("cameras", [])), sources=None,
                                 episode_ids=expert, model_sha256=model_sha, progress=progress, log=LOG.info)
    except Exception as exc:  # noqa: BLE001 - an optional output: the learner falls back to its old demo features
        LOG.warning("no demo features for the learner: %s", exc)
        return None
    return {"path": target.name, "episodes": n}


def process_job(spool: Spool, lease: Lease | None, work: Path, key: bytes, overrides: dict, *, heartbeat_s: float,
                progress: bool = True, accelerator=None) -> dict | None:
    """Train one claimed job and publish its result. Returns the result body. Raises JobRejected / LeaseLost.

    Under `accelerate launch` every rank calls this; only rank 0 holds the lease (others get lease=None and the
    job is broadcast to them), downloads, heartbeats and publishes."""
    import torch

    from irevla_ros.core.model.vla import folder_sha256
    from irevla_ros.core.sft.train import LeaseLost, train

    main = accelerator is None or accelerator.is_main_process
    body, error = None, None
    if main:
        job_dir = work / "jobs" / lease.job_id
        try:
            body = spool.fetch_job(lease, job_dir)
            if isinstance(body.get("base_model"), dict) and "spool_path" in body["base_model"]:
                _load_base_model_files(spool, body["base_model"], work, key)
        except SignatureError as exc:
            error = str(exc)
    body, error = _broadcast(accelerator, (body, error))
    if error is not None:
        raise JobRejected(error)
    job_id = body["id"]
    job_dir = work / "jobs" / job_id
    LOG.info("job %s: stage %s, %d train / %d val episodes, target version %s", job_id, body.get("stage"),
             len(body.get("train", [])), len(body.get("val", [])), body.get("version"))
    model, train_set, val_set, sft_cfg = _prepare(spool, body, job_dir, work, key, overrides)
    gen = lease.gen if lease is not None else 0
    out = work / "results" / f"{job_id}.{gen}"
    if main:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    torch.manual_seed(sft_cfg.seed)
    hb = _Heartbeat(spool, lease, heartbeat_s) if main else contextlib.nullcontext()
    with hb:
        result = train(model, train_set, val_set, sft_cfg,
                       expert_fraction=float(body.get("mix", {}).get("expert_fraction", 1.0)),
                       online_task_balance=str(body.get("mix", {}).get("online_task_balance", "none")),
                       log_dir=out / "logs" if main else None, check_lease=hb.alive if main else None,
                       progress=progress, accelerator=accelerator)
        if not main:
            return None
        metrics = result.metrics
        if not metrics["val_finite"]:
            raise JobRejected("the fine-tuned model produces non-finite actions on held-out data")
        version = str(body.get("version", ""))
        model_sha = result.model.save_pretrained(out / "model", version=version)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        demos = _write_demo_features(result.model, body, job_dir, out / "model", model_sha, progress)
        res_body = {"version": version, "stage": body.get("stage"), "iteration": body.get("iteration"),
                    "metrics": {k: v for k, v in metrics.items() if k != "val_history"},
                    "model_path": "model", "model_sha256": model_sha, "base_model": body.get("base_model"),
                    "demo_features": demos}
        if model_sha != folder_sha256(out / "model"):
            raise RuntimeError("the saved model folder changed while publishing")
        if not spool.publish_result(lease, out, res_body):
            raise LeaseLost(f"job {job_id}: lease lost before publishing")
    LOG.info("job %s done: held-out action MSE %.4f -> %.4f (%d steps, %.1f samples/s)", job_id,
             metrics["val_mse_before"] or float("nan"), metrics["val_mse_after"] or float("nan"), metrics["steps"],
             metrics["samples_per_s"])
    shutil.rmtree(job_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)  # published: the spool holds the signed copy (logs included)
    return res_body


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        stream=sys.stderr)
    if args.verbose:
        LOG.setLevel(logging.DEBUG)
    for name in ("lease_s", "heartbeat_s", "poll_s"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0")
    if args.heartbeat_s >= args.lease_s:
        raise SystemExit("--heartbeat-s must be shorter than --lease-s")
    if args.torch_threads < 0:
        raise SystemExit("--torch-threads must be >= 0")
    if args.keep_models < 0:
        raise SystemExit("--keep-models must be >= 0 (0 = keep all)")
    overrides = _parse_sets(args.set)
    from irevla_ros.core.sft.train import LeaseLost, SFTConfig

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    try:
        SFTConfig.from_overrides(SFTConfig(), overrides)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--set: {exc}") from exc
    key = load_or_create_key(args.key)
    url = args.spool if "://" in args.spool else f"file://{Path(args.spool).resolve()}"
    spool = Spool(url, key, lease_s=args.lease_s)
    work = Path(args.work_dir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    me = worker_name()
    accelerator = make_accelerator() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    main = accelerator is None or accelerator.is_main_process
    done = 0
    if main:
        LOG.info("worker %s watching %s%s", me, url,
                 f" ({accelerator.num_processes} processes)" if accelerator is not None else "")
    while True:
        lease = _wait_for_job(spool, me, args) if main else None
        go = _broadcast(accelerator, lease is not None)
        if not go:
            return 0
        if main:
            LOG.info("claimed %s (lease generation %d)", lease.job_id, lease.gen)
        try:
            process_job(spool, lease, work, key, overrides, heartbeat_s=args.heartbeat_s,
                        progress=not args.no_progress, accelerator=accelerator)
        except JobRejected as exc:
            if main:
                LOG.error("job %s rejected: %s", lease.job_id, exc)
                spool.fail(lease, str(exc))
        except LeaseLost as exc:
            LOG.warning("%s", exc)
        if main and (removed := prune_model_cache(work, args.keep_models)):
            LOG.info("removed %d older base model(s) from the cache (--keep-models %d)", len(removed),
                     args.keep_models)
        done += 1
        if args.once or (args.max_jobs and done >= args.max_jobs):
            return 0


def _wait_for_job(spool: Spool, me: str, args: argparse.Namespace) -> Lease | None:
    """Poll until a job is claimed (-> its lease) or the idle limit passes (-> None)."""
    idle_since = time.monotonic()
    while True:
        lease = spool.claim(me)
        if lease is not None:
            return lease
        if args.idle_exit_s and time.monotonic() - idle_since > args.idle_exit_s:
            LOG.info("idle for %.0f s, exiting", args.idle_exit_s)
            return None
        time.sleep(args.poll_s)


def make_accelerator():
    """Accelerator for `accelerate launch` runs: DDP tolerant of the head's unused log_std (MSE loss), and a long
    collective timeout because the other ranks wait in a broadcast while rank 0 polls the spool."""
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    accelerator = Accelerator(cpu=not torch.cuda.is_available(),  # cpu=True is how accelerate detects multi-CPU
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True),
                                               InitProcessGroupKwargs(timeout=timedelta(days=7))])
    if accelerator.num_processes != int(os.environ.get("WORLD_SIZE", "1")):
        raise SystemExit(f"launched as {os.environ.get('WORLD_SIZE')} processes but accelerate sees "
                         f"{accelerator.num_processes}: use `accelerate launch` or torchrun")
    return accelerator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="irevla sft-worker", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
