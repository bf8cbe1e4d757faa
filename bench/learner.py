"""Learner benchmark: what freezing the VLM saves, and what replay costs in bytes.

  .venv/bin/python bench/learner.py                       # tiny model on CPU, 1 and 2 threads (~4 min)
  .venv/bin/python bench/learner.py --device cuda --preset blip2-2.7b-shape --batch 64   # on a GPU
  MUJOCO_GL=egl .venv/bin/python bench/learner.py --sim 200   # 3. learning curve on the fast sim (~5 min)

1. Replay memory per transition (bytes) for the model presets, 1 and 2 cameras: our layout (fp16 features stored
   once, next observation by index) next to storing obs + next_obs (what a generic replay storage does) and next
   to keeping the raw 224x224 images a re-encoding learner would need.
2. SAC updates/s with cached features (our learner: sample from the memory-mapped replay + one SAC update of head
   and critics) vs the same update when the learner re-encodes the sampled observations and next observations
   with the frozen backbone (what a learner that does not cache features pays). Same batch, same networks.
   Also the same update written with plain module calls (the first-round code, test/rl_tasks.py), which the
   optimised one reproduces (test_rl_update.py): what the optimisations bring. Per thread count (--threads 1,2).
3. (--sim N) RLPD on the fast simulator's `reach` task (SimEnv: the franka node's controller + MuJoCo), features a
   fixed random projection of (TCP position, goal position), sparse success reward, 10 expert demos (the sim's
   scripted expert, stored as interventions), N online episodes of <= 25 steps; deterministic-policy success on 10
   held-out layouts every 10 episodes.
Targets (issue 7): >= 10x updates/s vs re-encoding; >= 40 updates/s at batch 256 on 2 CPU cores (tiny features).
Nothing here asserts; numbers depend on the machine's load (printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def memory_table() -> None:
    from irevla_ros.core.model.presets import PRESETS
    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.core.rl import bytes_per_transition

    rows = []
    for name in ("tiny", "blip2-2.7b-shape"):
        preset = PRESETS[name]
        for cams in (1, 2):
            cfg = VLAModel._make_config(preset.family, preset.hf_config(), cams, preset.max_text_tokens, None,
                                        preset.image_mean, preset.image_std, preset=name)
            t, d = cfg.feature_shape
            ours = bytes_per_transition((t, d), 0)
            generic = 2 * t * d * 2 + 69  # obs + next_obs fp16
            images = cams * 224 * 224 * 3 * 2  # uint8 obs + next_obs images for a re-encoding learner
            rows.append([name, cams, f"{t} x {d}", human(ours), human(generic), human(images),
                         f"{(1 << 30) // ours:,}"])
    table("1. Replay memory per transition (features fp16, stored once; next observation by index)",
          ["preset", "cams", "features T x D", "ours", "obs+next_obs", "raw images 224^2", "transitions / GiB"],
          rows)


def throughput(args) -> None:
    import torch

    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.core.rl import RLConfig, SACLearner
    from irevla_ros.core.rl.replay import Batch, ReplayBuffer, gather_batch
    from irevla_ros.core.rl.sac import Prefetcher, pinned_empty, stage_batch

    sys.path.insert(0, str(REPO / "test"))
    from rl_tasks import reference_sac_update  # the same update written with plain module calls (first round)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" and args.preset != "tiny" else None
    model = VLAModel.from_preset(args.preset, device=device, dtype=dtype)
    cfg = model.config
    size = cfg.image_size
    rng = np.random.default_rng(0)
    n_steps = args.steps
    images = rng.integers(0, 255, (n_steps, size, size, 3), dtype=np.uint8)
    instruction = "pick up the red cube"
    feats = []
    with model.frozen(), torch.no_grad():
        for i in range(0, n_steps, 64):
            feats.append(model.encode([images[i:i + 64]], [instruction] * len(images[i:i + 64])).float().cpu())
    features = torch.cat(feats).to(torch.float16).numpy()
    shape = tuple(features.shape[1:])

    rl = RLConfig(feature_tokens=shape[0], feature_dim=shape[1], batch_size=args.batch)
    learner = SACLearner(cfg.head, rl, device)
    plain = SACLearner(cfg.head, rl, device)
    heavy = SACLearner(cfg.head, RLConfig(feature_tokens=shape[0], feature_dim=shape[1], batch_size=args.batch,
                                          critic_pooling="token_learner"), device)
    with tempfile.TemporaryDirectory() as tmp:
        buf = ReplayBuffer(tmp, n_steps + 1, shape)
        prev = None
        for i in range(n_steps):
            slot, _ = buf.add(features[i], np.zeros(7, np.float32), reward=float(i % 16 == 15), done=i % 16 == 15,
                              terminal=i % 16 == 15)
            if prev is not None:
                buf.link(prev, slot)
            if i % 16 == 15:
                buf.link(slot, slot)
                prev = None
            else:
                prev = slot
        sample_rng = np.random.default_rng(1)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        def reencode_update() -> None:
            valid = np.flatnonzero(buf.next_idx >= 0)
            idx = np.sort(valid[sample_rng.integers(0, len(valid), args.batch)])
            nxt = buf.next_idx[idx]
            with model.frozen(), torch.no_grad():
                f = model.encode([images[idx]], [instruction] * len(idx)).float().cpu().numpy()
                nf = model.encode([images[nxt]], [instruction] * len(idx)).float().cpu().numpy()
            b = buf.gather(idx)
            learner.update(Batch(features=f, proprio=b.proprio, action=b.action, reward=b.reward, next_features=nf,
                                 next_proprio=b.next_proprio, terminal=b.terminal, log_prob=b.log_prob,
                                 intervention=b.intervention))

        cuda = device.type == "cuda"
        # What OnlineLearner does on CUDA: indices, rows gathered straight into pinned memory, in a worker thread.
        prefetcher = Prefetcher(lambda: stage_batch(gather_batch([(buf, buf.sample_indices(args.batch, sample_rng))],
                                                                 pinned_empty if cuda else None), pin=cuda))

        def tf32(on: bool, fn):
            def run():
                torch.backends.cuda.matmul.allow_tf32 = on
                try:
                    return fn()
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = False
            return run

        def prefetched_update():
            return learner.update(prefetcher.next(more=True))

        # On CUDA "cached" is the learner's path (pinned batches fetched while the GPU works); the "sequential" rows
        # take it apart: the same update on a batch sampled first and copied from pageable memory, then with TF32.
        runs = {"cached": (prefetched_update if cuda else
                           (lambda: learner.update(buf.sample(args.batch, sample_rng))), args.updates),
                "plain": (lambda: reference_sac_update(plain, buf.sample(args.batch, sample_rng)), args.updates),
                "heavy": (lambda: heavy.update(buf.sample(args.batch, sample_rng)), args.updates),
                "reencode": (reencode_update, max(3, args.updates // 10))}
        if cuda:
            runs["seq"] = (tf32(False, lambda: learner.update(buf.sample(args.batch, sample_rng))), args.updates)
            runs["seq_tf32"] = (tf32(True, lambda: learner.update(buf.sample(args.batch, sample_rng))),
                                args.updates)

        def rate(fn, n: int) -> float:
            fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            took = time.perf_counter() - t0
            prefetcher.drain()  # a fetch in flight shares sample_rng with the next row
            return n / took

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        for threads in args.threads:
            torch.set_num_threads(threads)
            # Interleaved rounds, median per learner: the machine's load hits every row alike.
            got: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for name, (fn, n) in runs.items():
                    got[name].append(rate(fn, n))
            r = {k: float(np.median(v)) for k, v in got.items()}
            t0 = time.perf_counter()
            for _ in range(20):
                buf.sample(args.batch, sample_rng)
            sample_ms = 1000 * (time.perf_counter() - t0) / 20
            if device.type == "cuda":
                card = torch.cuda.get_device_name(0)
            else:
                load = max(load, os.getloadavg()[0]) if hasattr(os, "getloadavg") else load
                card = f"CPU x{os.cpu_count()}, {threads} torch thread(s), load avg up to {load:.1f}"
            table(f"2. SAC updates/s, {args.preset} features {shape[0]} x {shape[1]}, batch {args.batch}, {card} "
                  f"(median of {args.rounds} interleaved rounds)",
                  ["learner", "updates/s", "ms/update", "vs re-encoding", "vs plain", "target"],
                  [["cached features (ours)", f"{r['cached']:.1f}", f"{1000 / r['cached']:.1f}",
                    f"{r['cached'] / r['reencode']:.1f}x", f"{r['cached'] / r['plain']:.2f}x",
                    ">= 40/s at batch 256 (2 CPU cores, tiny); >= 10x"],
                   ["  same update, plain module calls (round 1)", f"{r['plain']:.1f}", f"{1000 / r['plain']:.1f}",
                    f"{r['plain'] / r['reencode']:.1f}x", "1.00x", ""],
                   ["  ours, critic_pooling=token_learner", f"{r['heavy']:.1f}", f"{1000 / r['heavy']:.1f}",
                    f"{r['heavy'] / r['reencode']:.1f}x", f"{r['heavy'] / r['plain']:.2f}x", ""],
                   *([["  sequential: sample, then pageable copy", f"{r['seq']:.1f}", f"{1000 / r['seq']:.1f}",
                       f"{r['seq'] / r['reencode']:.1f}x", f"{r['seq'] / r['plain']:.2f}x",
                       f"prefetch gain {r['cached'] / r['seq']:.2f}x"],
                      ["  sequential, TF32 matmuls", f"{r['seq_tf32']:.1f}", f"{1000 / r['seq_tf32']:.1f}",
                       f"{r['seq_tf32'] / r['reencode']:.1f}x", f"{r['seq_tf32'] / r['plain']:.2f}x",
                       f"TF32 gain {r['seq_tf32'] / r['seq']:.2f}x"]] if cuda else []),
                   ["re-encodes obs + next_obs (+ our update)", f"{r['reencode']:.2f}", f"{1000 / r['reencode']:.1f}",
                    "1.0x", "", ""],
                   ["  of which replay sample", "", f"{sample_ms:.1f}", "", "", ""]])


def sim_learning(episodes: int, seed: int = 0, max_steps: int = 25) -> None:
    import torch

    from irevla_ros.core.data.codec import Transition
    from irevla_ros.core.rl import OnlineLearner, RLConfig
    from irevla_ros.sim.env import SimEnv
    from irevla_ros.sim.experts import expert_action

    torch.set_num_threads(1)
    tokens, dim = 4, 16
    projection = np.random.default_rng(1000 + seed).normal(0, 1.0, (6, tokens * dim)).astype(np.float32)
    env = SimEnv("reach", seed=seed, cameras=())
    tmp = tempfile.TemporaryDirectory()
    learner = OnlineLearner(RLConfig(
        run_dir=tmp.name, seed=seed, feature_tokens=tokens, feature_dim=dim, num_learned_tokens=2, hidden_dim=64,
        batch_size=64, warmup_transitions=32, utd_ratio=2.0, actor_lr=1e-3, critic_lr=1e-3, gamma=0.95,
        tensorboard=False, online_capacity_bytes=8 << 20, demo_capacity_bytes=2 << 20))
    counter = {"episode": 0, "steps": 0}

    def features() -> np.ndarray:
        state = np.concatenate([env.robot.read_state().ee_position,
                                env.world.mocap_position(env.episode.params["object"])]) * 3.0
        return (state.astype(np.float32) @ projection).reshape(tokens, dim).astype(np.float16)

    def episode(who: str, layout: int, learn: bool) -> bool:
        counter["episode"] += 1
        env.reset(seed=layout)
        f = features()
        for i in range(max_steps):
            if who == "expert":
                a, log_prob = expert_action(env).astype(np.float32), 0.0
            else:
                with torch.no_grad():
                    x = torch.from_numpy(f.astype(np.float32))[None]
                    if learn:
                        sample, lp, _ = learner.algo.actor.sample(x)
                        a, log_prob = sample[0].numpy(), float(lp[0])
                    else:
                        a, log_prob = learner.algo.actor.deterministic(x)[0].numpy(), 0.0
            _, success, _ = env.step(a)
            done = success or i == max_steps - 1
            if learn:
                counter["steps"] += 1
                learner.add_transition(Transition(f"sim-{counter['episode']}", i, f, a, log_prob=log_prob,
                                                  reward=float(success), done=done, terminal=success,
                                                  success=success, intervention=who == "expert"))
                learner.train()
            if done:
                return success
            f = features()
        return False

    def evaluate() -> float:
        return float(np.mean([episode("policy", 10_000 + k, learn=False) for k in range(10)]))

    t0 = time.perf_counter()
    rows = [["0 (initial)", 0, 0, f"{evaluate():.1f}", f"{time.perf_counter() - t0:.0f}"]]
    for k in range(10):
        episode("expert", 5000 + k, learn=True)
    for k in range(episodes):
        episode("policy", k, learn=True)
        if (k + 1) % 10 == 0:
            rows.append([k + 1, counter["steps"], learner.algo.updates, f"{evaluate():.1f}",
                         f"{time.perf_counter() - t0:.0f}"])
            print(f"  {rows[-1]}", flush=True)
    env.close()
    tmp.cleanup()
    table("3. RLPD on the fast sim `reach` (features: fixed random projection of TCP + goal positions)",
          ["online episodes", "env steps", "updates", "success (10 held-out)", "wall s"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model preset (irevla_ros.core.model.presets)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--updates", type=int, default=40, help="timed cached updates (re-encoding: a tenth)")
    parser.add_argument("--steps", type=int, default=1024, help="steps in the benchmark's replay buffer")
    parser.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                        help="torch CPU thread counts to measure, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median reported)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--sim", type=int, default=0, metavar="EPISODES",
                        help="only run the fast-sim learning curve with this many online episodes")
    args = parser.parse_args(argv)
    if args.sim:
        sim_learning(args.sim)
        return 0
    if not args.skip_memory:
        memory_table()
    throughput(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
