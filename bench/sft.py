"""SFT step throughput: samples/s of one optimizer step (forward + backward + AdamW) per fine-tuning mode.

    .venv/bin/python bench/sft.py                                  # tiny model, CPU: head | lora | full
    .venv/bin/python bench/sft.py --preset blip2-2.7b-shape --device cuda --dtype bf16 --batch-sizes 8 \
        --modes head,lora --sequential                             # the paper's backbone shape, random weights

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


class Runner:
    """One mode's model, optimizer and data; `step()` times one SFT step."""

    def __init__(self, args, mode: str, batch: int):
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        self.args, self.mode, self.batch = args, mode, batch
        self.model = VLAModel.from_preset(args.preset, num_cameras=args.cameras, device=args.device, dtype=dtype)
        self.groups = prepare_trainable(self.model, SFTConfig(mode=mode, lora_r=args.lora_r,
                                                              lora_alpha=2 * args.lora_r))
        self.opt = torch.optim.AdamW(self.groups, lr=1e-4)
        self.model.train()
        rng = np.random.default_rng(0)
        self.data = [make_batch(self.model, batch, rng) for _ in range(2)]
        self.times: list[float] = []
        self.i = 0

    def step(self, record: bool) -> None:
        b = self.data[self.i % 2]
        self.i += 1
        cuda = self.args.device.startswith("cuda")
        sync(self.args.device)
        t0 = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16,
                            enabled=self.args.dtype == "bf16" and cuda):
            loss = sft_loss(self.model, self.model, b, 0.0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(self.args.device)
        if record:
            self.times.append(time.perf_counter() - t0)

    def row(self) -> dict:
        trainable = sum(p.numel() for g in self.groups for p in g["params"])
        total = sum(p.numel() for p in self.model.parameters())
        mem = torch.cuda.max_memory_allocated() / 2 ** 30 if self.args.device.startswith("cuda") else float("nan")
        med = statistics.median(self.times)
        return {"mode": self.mode, "batch": self.batch, "step_ms": med * 1e3, "samples_per_s": self.batch / med,
                "trainable": trainable, "total": total, "gpu_gib": mem}


def bench(args, modes: list[str], batch: int) -> list[dict]:
    """Interleaved (round-robin over modes, so machine load hits every mode alike) unless --sequential (big models
    that do not fit several times in memory)."""
    if args.sequential:
        rows = []
        for mode in modes:
            r = Runner(args, mode, batch)
            for i in range(args.warmup + args.steps):
                r.step(i >= args.warmup)
            rows.append(r.row())
            del r
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        return rows
    runners = [Runner(args, mode, batch) for mode in modes]
    for i in range(args.warmup + args.steps):
        for r in runners:
            r.step(i >= args.warmup)
    return [r.row() for r in runners]


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
    p.add_argument("--sequential", action="store_true", help="one mode at a time (GPU memory), not interleaved")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"SFT step benchmark: preset {args.preset}, {args.cameras} camera(s), {args.dtype}, {device_name}")
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rows += bench(args, args.modes.split(","), batch)
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
