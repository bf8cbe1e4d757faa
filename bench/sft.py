"""SFT step throughput: samples/s of one optimizer step (forward + backward + AdamW) per fine-tuning mode.

    .venv/bin/python bench/sft.py                                  # tiny model, CPU: head | lora | full
    .venv/bin/python bench/sft.py --preset blip2-2.7b-shape --device cuda --dtype bf16 --batch-sizes 8 \
        --modes head,lora                                          # the paper's backbone shape, random weights

Prints a table with each mode's ratio to LoRA (the stage-2 default), measured in the same process side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from irevla_ros.core.model.vla import VLAModel
from irevla_ros.core.sft.train import SFTConfig, prepare_trainable, sft_loss


def make_batch(model: VLAModel, batch: int, rng: np.random.Generator) -> dict:
    size = model.config.image_size
    return {
        "images": [torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
                   for _ in range(model.config.num_cameras)],
        "instructions": ["pick up the red cube and put it in the bowl"] * batch,
        "action": torch.from_numpy(rng.uniform(-1, 1, (batch, 7)).astype(np.float32)),
        "state": torch.zeros(batch, max(1, model.config.head.proprio_dim)),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_mode(args, mode: str, batch: int) -> dict:
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = VLAModel.from_preset(args.preset, num_cameras=args.cameras, device=args.device, dtype=dtype)
    groups = prepare_trainable(model, SFTConfig(mode=mode, lora_r=args.lora_r, lora_alpha=2 * args.lora_r))
    opt = torch.optim.AdamW(groups, lr=1e-4)
    model.train()
    rng = np.random.default_rng(0)
    data = [make_batch(model, batch, rng) for _ in range(2)]
    times = []
    for i in range(args.warmup + args.steps):
        b = data[i % 2]
        sync(args.device)
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda" if args.device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=args.dtype == "bf16" and args.device.startswith("cuda")):
            loss = sft_loss(model, model, b, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in model.parameters())
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if args.device.startswith("cuda") else float("nan")
    del model, opt
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    med = statistics.median(times)
    return {"mode": mode, "batch": batch, "step_ms": med * 1e3, "samples_per_s": batch / med,
            "trainable": trainable, "total": total, "gpu_gib": mem}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--modes", default="head,lora,full")
    p.add_argument("--batch-sizes", default="8,16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"SFT step benchmark: preset {args.preset}, {args.cameras} camera(s), {args.dtype}, {device_name}")
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for mode in args.modes.split(","):
            rows.append(bench_mode(args, mode, batch))
    print(f"{'mode':<6}{'batch':>6}{'step ms':>10}{'samples/s':>11}{'vs lora':>9}{'trainable':>13}{'of total':>10}"
          f"{'GPU GiB':>9}")
    for r in rows:
        ref = next((x for x in rows if x["batch"] == r["batch"] and x["mode"] == "lora"), None)
        ratio = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-"
        print(f"{r['mode']:<6}{r['batch']:>6}{r['step_ms']:>10.1f}{r['samples_per_s']:>11.1f}{ratio:>9}"
              f"{r['trainable']:>13,}{r['trainable'] / r['total']:>10.1%}{r['gpu_gib']:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
