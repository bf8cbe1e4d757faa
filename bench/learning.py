"""The paper's comparison on our Panda tasks, in one process (no ROS): does iRe-VLA beat its ablations?

Arms (iRe-VLA, arXiv 2501.16664, Sec. 5):
  sft       stage-0 SFT on scripted expert demos only (the starting point of every other arm);
  irevla    SFT-0, then K iterations of [stage 1: online SAC-from-demos (RLPD) on the ACTION HEAD with the VLM
            frozen, features cached; stage 2: SFT of the whole model (LoRA + head) on expert demos + the successful
            online episodes]; evaluated after every iteration;
  noreplay  iRe-VLA whose stage 2 sees only the online successes (no expert replay): the paper's forgetting test;
  whole     online RL on the whole model (backbone NOT frozen): the same SAC, but every update re-encodes the batch
            with the backbone and the actor loss also trains LoRA adapters of the backbone (what freezing avoids);
  demosonly no stage 1: each iteration's stage 2 on the expert demos alone, same steps and schedule (the control:
            what iRe-VLA's online successes add over more supervised training on the demos).

Every arm uses the product's own pieces: SimEnv (the franka node's controller + MuJoCo), VLAModel (tiny random-init
BLIP-2 by default), OnlineLearner (the rl_node's learner), core.sft.train (the sft-worker's trainer),
sim.evaluate.evaluate_policy (what `irevla sim` reports). Success is measured on held-out layouts (seeds from 10000)
with deterministic actions, on an expert task and a new task (unseen colours), for several seeds: mean ± spread.

    MUJOCO_GL=egl .venv/bin/python bench/learning.py --help
    MUJOCO_GL=egl .venv/bin/python bench/learning.py --seeds 0 1 2 --iterations 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from irevla_ros.core.data.codec import Transition  # noqa: E402
from irevla_ros.core.data.episodes import EpisodeMeta, EpisodeStore, EpisodeWriter  # noqa: E402
from irevla_ros.core.model.vla import VLAModel  # noqa: E402
from irevla_ros.core.rl.config import RLConfig  # noqa: E402
from irevla_ros.core.rl.demos import encode_demo_features  # noqa: E402
from irevla_ros.core.rl.learner import OnlineLearner  # noqa: E402
from irevla_ros.core.sft.jobs import LR_SCHEDULES, TASK_BALANCE  # noqa: E402
from irevla_ros.core.sft.train import SFTConfig, StepDataset, train  # noqa: E402
from irevla_ros.sim.evaluate import evaluate_policy, proprio_of  # noqa: E402
from irevla_ros.sim.pretrain import PretrainConfig, pretrain_backbone, pretrain_tasks, render_scenes  # noqa: E402

CAMERAS = ("wrist", "front")
ARMS = ("sft", "irevla", "noreplay", "whole", "demosonly")


@dataclasses.dataclass
class Budget:
    expert_task: str = "button"
    new_task: str = "button_novel"
    preset: str = "tiny-llava-sim"
    pretrain_steps: int = 800
    """Stage 0a before SFT-0 (irevla_ros/sim/pretrain.py; 0 = off, the round-2 numbers)."""
    pretrain_layouts: int = 400
    pretrain_scenes: str = "expert"
    """Stage-0a scenes: "expert" (as `irevla sim`) or "all" (expert and new task; LoopConfig.pretrain_scenes)."""
    demos: int = 60
    sft0_steps: int = 1500
    """As LoopConfig.sft0_steps (600 until round 5: SFT-0 was under-trained)."""
    iterations: int = 2
    online_episodes: int = 60
    """Online episodes per stage-1 phase (half on the expert task, half on the new one)."""
    sft2_steps: int = 300
    sft2_mode: str = "lora"
    sft2_lr_schedule: str = "cosine"
    """As the packager's sft_lr_schedule (constant until round 6)."""
    sft2_task_balance: str = "sqrt"
    """Stage 2: split of the online share between instructions (JobConfig.online_task_balance)."""
    utd: float = 1.0
    actor_warmup: int = 500
    """Critic-only updates before the actor moves (RLConfig.actor_warmup_updates)."""
    bc_coef: float = 1.0
    """Behaviour-cloning anchor on demo rows in the actor loss (RLConfig.bc_coef)."""
    batch: int = 128
    warmup: int = 128
    eval_episodes: int = 20
    eval_stage1: int = 1
    """1: also evaluate each iteration's stage-1 policy (RL head, before stage 2): tells which stage moved it."""
    image_size: int = 128

    def __post_init__(self) -> None:
        if self.sft2_lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"sft2_lr_schedule must be one of {LR_SCHEDULES}, got {self.sft2_lr_schedule!r}")
        if self.sft2_task_balance not in TASK_BALANCE:
            raise ValueError(f"sft2_task_balance must be one of {TASK_BALANCE}, got {self.sft2_task_balance!r}")
        pretrain_tasks([self.expert_task], [self.new_task], self.pretrain_scenes)  # ValueError if unknown


def record_demos(root: Path, task: str, n: int, image_size: int) -> Path:
    """Scripted expert demos (cached per task and count)."""
    out = root / f"demos-{task}-{n}-{image_size}"
    store = EpisodeStore(out)
    if store.manifest_path.exists() and len(store.episodes(source="expert", success=True)) >= n:
        return out
    from irevla_ros.sim import demos

    ns = argparse.Namespace(task=[task], episodes=n, out=str(out), seed=0, image_size=image_size,
                            cameras=list(CAMERAS), action_noise=0.0, keep_failures=False, max_attempts=0,
                            image_format="png")
    if demos.run(ns) != 0:
        raise RuntimeError(f"the scripted expert did not finish {n} demos of {task}")
    return out


def split(episodes: list, held_out: int = 4) -> tuple[list, list]:
    return episodes[held_out:], episodes[:held_out]


def sft(model: VLAModel, episodes: list, val: list, steps: int, mode: str, seed: int, online: list = (),
        expert_fraction: float = 0.5, online_task_balance: str = "none", lr_schedule: str = "constant") -> VLAModel:
    """Expert `episodes` + `online` successes; with both, `expert_fraction` of the samples are expert and the
    online share is split between instructions by `online_task_balance` (the packager's stage-2 mix, JobConfig)."""
    config = SFTConfig(mode=mode, steps=steps, batch_size=32, seed=seed, val_every=steps, lr_schedule=lr_schedule)
    groups = {e.info.episode_id: "online" for e in online}
    data = StepDataset([*episodes, *online], CAMERAS, groups)
    return train(model, data, StepDataset(val, CAMERAS), config, expert_fraction=expert_fraction if episodes else 1.0,
                 online_task_balance=online_task_balance, progress=False).model


class Stage1:
    """Online RL in-process: the policy acts with the current head, the learner trains the head on cached
    features (or, for the `whole` arm, re-encodes every batch and also trains backbone adapters)."""

    def __init__(self, model: VLAModel, model_dir: Path, demos: Path, work: Path, budget: Budget, seed: int,
                 whole: bool = False):
        self.model, self.budget, self.seed, self.whole = model, budget, seed, whole
        cfg = RLConfig(run_dir=str(work), demo_dir=str(demos), init_head=str(model_dir), resume=False, seed=seed,
                       proprio_dim=model.config.head.proprio_dim, batch_size=budget.batch, utd_ratio=budget.utd,
                       warmup_transitions=budget.warmup, actor_warmup_updates=budget.actor_warmup,
                       bc_coef=budget.bc_coef, tensorboard=False, checkpoint_every_s=1e9,
                       torch_threads=0, num_learned_tokens=model.config.head.num_learned_tokens,
                       hidden_dim=model.config.head.hidden_dim)
        self.learner = OnlineLearner(cfg)
        self.images: dict[tuple[str, int], tuple] = {}  # (episode, step) -> (images, instruction, proprio)
        self.updates = 0
        if whole:
            model.add_lora(r=8, alpha=16, dropout=0.0)
            self.adapters = [p for n, p in model.backbone.named_parameters() if "lora_" in n]
            self.backbone_opt = torch.optim.Adam(self.adapters, lr=1e-4)

    def episode(self, env, task: str, seed: int, index: int, writer: EpisodeWriter | None) -> bool:
        obs = env.reset(seed=seed, task=task)
        episode_id = f"{task}-{index}"
        rec = writer.begin(EpisodeMeta(task=obs["instruction"], source="online", cameras=CAMERAS, fps=10.0,
                                       extra={"sim_task": task, "seed": seed})) if writer else None
        success = False
        for step in range(env.max_steps):
            images = [torch.from_numpy(np.ascontiguousarray(obs["images"][c]))[None] for c in CAMERAS]
            proprio = proprio_of(obs)
            with torch.inference_mode():
                out = self.model.act(images, [obs["instruction"]], proprio[None], stochastic=True)
            action = np.clip(out.action[0], -1.0, 1.0)
            next_obs, success, info = env.step(action)
            done = success or info["timeout"]
            if rec is not None:
                rec.add_step(action=action, state=proprio, images=obs["images"], reward=float(success),
                             success=success, done=done)
            if self.whole:
                self.images[(episode_id, step)] = (images, obs["instruction"], proprio)
            self.learner.add_transition(Transition(
                episode_id=episode_id, step=step, features=out.features[0], action=action.astype(np.float32),
                log_prob=float(out.log_prob[0]), reward=float(success), done=done, terminal=success,
                success=success, intervention=False, policy_version=str(self.learner.version), task=task,
                proprio=proprio))
            self.train()
            obs = next_obs
            if done:
                break
        if rec is not None:
            if success:
                rec.finish(success=True)
            else:
                rec.abort(keep=False, reason="failed")
        return success

    def train(self) -> None:
        due = self.learner.updates_due()
        if due <= 0:
            return
        if not self.whole:
            self.learner.train(max_updates=due)
        else:
            for _ in range(due):
                self._whole_update()
        self.model.load_head_state_dict({k: torch.from_numpy(v) for k, v in self.learner.algo.get_weights().items()})

    def _whole_update(self) -> None:
        """One SAC step of the head and critics, then one actor step whose gradient reaches the backbone's LoRA
        adapters through freshly encoded online observations (the cost freezing the VLM avoids)."""
        learner, algo = self.learner, self.learner.algo
        learner.train(max_updates=1)
        keys = list(self.images)
        rng = np.random.default_rng(algo.updates)
        pick = [keys[i] for i in rng.integers(0, len(keys), min(32, self.budget.batch))]
        images = [torch.cat([self.images[k][0][c] for k in pick]) for c in range(len(CAMERAS))]
        proprio = torch.from_numpy(np.stack([self.images[k][2] for k in pick]))
        if not self.model.config.head.proprio_dim:
            proprio = None
        self.model.backbone.train()
        features = self.model.encode(images, [self.images[k][1] for k in pick])
        action, log_prob, _ = algo.actor.sample(features, proprio)
        loss = (algo.alpha * log_prob - algo.critic(features, action, proprio).mean(0)).mean()
        self.backbone_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.backbone_opt.step()
        for p in (*algo.actor.parameters(), *algo.critic.parameters()):
            p.grad = None  # only the adapters learn from this loss; SAC's own step trains head and critics
        self.model.backbone.eval()


def evaluate(model: VLAModel, budget: Budget) -> dict[str, float]:
    results = evaluate_policy(model, [budget.expert_task, budget.new_task], budget.eval_episodes,
                              image_size=budget.image_size, cameras=CAMERAS)
    return {t: r.rate for t, r in results.items()}


def run_arm(arm: str, seed: int, budget: Budget, work: Path, demos_dir: Path, log) -> dict:
    from irevla_ros.sim.env import SimEnv

    torch.manual_seed(seed)
    store = EpisodeStore(demos_dir)
    expert = [store.load(i) for i in store.episodes(source="expert", success=True)[: budget.demos]]
    train_eps, val_eps = split(expert)
    sft0 = work / f"sft0-seed{seed}"
    if not sft0.is_dir():
        model = VLAModel.from_preset(budget.preset, num_cameras=len(CAMERAS), seed=seed, head={"proprio_dim": 8})
        if budget.pretrain_steps:
            config = PretrainConfig(layouts=budget.pretrain_layouts, steps=budget.pretrain_steps, seed=seed)
            tasks = pretrain_tasks([budget.expert_task], [budget.new_task], budget.pretrain_scenes)
            frames = render_scenes(tasks, config, image_size=budget.image_size, cameras=CAMERAS)
            log(f"seed {seed}: stage 0a {pretrain_backbone(model, frames, config)}")
        model = sft(model, train_eps, val_eps, budget.sft0_steps, "full", seed)
        model.save_pretrained(sft0, version="sft0")
    started = time.monotonic()
    model = VLAModel.from_pretrained(sft0)
    cached = sft0.with_name(sft0.name + f"-eval{budget.eval_episodes}.json")  # every arm starts from the same SFT-0
    if not cached.exists():
        cached.write_text(json.dumps(evaluate(model, budget)))
    history = [{"iteration": 0, **json.loads(cached.read_text()), "minutes": 0.0}]
    log(f"{arm} seed {seed}: SFT only {history[0]}")
    if arm == "sft":
        return {"arm": arm, "seed": seed, "history": history}
    model_dir = sft0
    rng = np.random.default_rng(seed)
    for it in range(1, budget.iterations + 1):
        stage = work / f"{arm}-seed{seed}-it{it}"
        if arm == "demosonly":
            model = sft(model, train_eps, val_eps, budget.sft2_steps, budget.sft2_mode, seed + it,
                        lr_schedule=budget.sft2_lr_schedule)
            model_dir = stage / "model"
            model.save_pretrained(model_dir, version=f"it{it}")
            model = VLAModel.from_pretrained(model_dir)
            history.append({"iteration": it, **evaluate(model, budget),
                            "minutes": round((time.monotonic() - started) / 60, 1)})
            log(f"{arm} seed {seed} it {it}: {history[-1]}")
            continue
        demos = stage / "demo_features"
        encode_demo_features(model, [demos_dir], demos, list(CAMERAS),
                             episode_ids=[e.info.episode_id for e in train_eps])
        stage1 = Stage1(model, model_dir, demos, stage / "rl", budget, seed, whole=(arm == "whole"))
        writer = EpisodeWriter(stage / "online")
        ok = {budget.expert_task: 0, budget.new_task: 0}
        with SimEnv(budget.expert_task, seed=seed, image_size=budget.image_size, cameras=CAMERAS) as env:
            for i in range(budget.online_episodes):
                task = budget.expert_task if i % 2 == 0 else budget.new_task
                ok[task] += int(stage1.episode(env, task, int(rng.integers(100, 9000)), i,
                                               writer if arm != "whole" else None))
        log(f"{arm} seed {seed} it {it}: online successes {ok}, {stage1.learner.algo.updates} head updates")
        stage1.learner.close(checkpoint=False)
        after_stage1 = evaluate(model, budget) if budget.eval_stage1 else None
        if after_stage1 is not None:
            log(f"{arm} seed {seed} it {it}: after stage 1 {after_stage1}")
        if arm == "whole":
            model.merge_lora()
        else:
            online = EpisodeStore(stage / "online")
            successes = [online.load(i) for i in online.episodes(success=True)]
            expert_replay = train_eps if arm == "irevla" else []
            if successes or expert_replay:
                model = sft(model, expert_replay, val_eps, budget.sft2_steps, budget.sft2_mode, seed + it,
                            online=successes, online_task_balance=budget.sft2_task_balance,
                            lr_schedule=budget.sft2_lr_schedule)
        model_dir = stage / "model"
        model.save_pretrained(model_dir, version=f"it{it}")
        model = VLAModel.from_pretrained(model_dir)
        history.append({"iteration": it, **evaluate(model, budget),
                        "minutes": round((time.monotonic() - started) / 60, 1), "online_successes": ok,
                        **({"stage1": after_stage1} if after_stage1 is not None else {})})
        log(f"{arm} seed {seed} it {it}: {history[-1]}")
    return {"arm": arm, "seed": seed, "history": history}


def table(results: list[dict], budget: Budget) -> str:
    lines = [f"| arm | iteration | {budget.expert_task} (expert) | {budget.new_task} (new) | wall min | seeds |",
             "|---|---|---|---|---|---|"]
    arms = sorted({r["arm"] for r in results}, key=ARMS.index)
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm]
        for it in range(max(len(r["history"]) for r in runs)):
            rows = [r["history"][it] for r in runs if len(r["history"]) > it]

            def cell(key, rows=rows):
                v = np.array([row[key] for row in rows]) * 100
                return f"{v.mean():.0f} ± {v.std():.0f} %"
            minutes = np.mean([row["minutes"] for row in rows])
            stage1 = [row["stage1"] for row in rows if "stage1" in row]
            if len(stage1) == len(rows):  # the same iteration's RL head before its stage 2
                lines.append(f"| {arm} | {it}, stage 1 only | {cell(budget.expert_task, stage1)} | "
                             f"{cell(budget.new_task, stage1)} | | {len(rows)} |")
            lines.append(f"| {arm} | {it} | {cell(budget.expert_task)} | {cell(budget.new_task)} | {minutes:.1f} | "
                         f"{len(rows)} |")
    return "\n".join(lines)


def merge(paths: list[str]) -> int:
    """One table from several --json files of the same budget."""
    loaded = [json.loads(Path(path).read_text()) for path in paths]
    budgets = {json.dumps(d["budget"], sort_keys=True) for d in loaded}
    if len(budgets) != 1:
        print("learning.py --merge: the files were run with different budgets", file=sys.stderr)
        return 2
    budget = Budget(**loaded[0]["budget"])
    results = [r for d in loaded for r in d["results"]]
    seeds = sorted({r["seed"] for r in results})
    print(f"\niRe-VLA comparison (merged), tiny VLA, seeds {seeds}, {budget.eval_episodes} eval episodes per task, "
          f"{budget.online_episodes} online episodes per iteration\n")
    print(table(results, budget))
    return 0


def main(argv=None) -> int:
    defaults = Budget()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work", default="", help="cache folder (demos, SFT-0 models); default: a temp folder")
    p.add_argument("--json", default="", help="also write the raw results here")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="print the table of earlier --json files (e.g. one per seed, run in parallel) and exit")
    for f in dataclasses.fields(Budget):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    budget = Budget(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Budget)})
    torch.set_num_threads(1)  # 2 threads on a busy 2-core machine made SFT steps ~15x slower (docs/sim.md)
    work = Path(args.work or tempfile.mkdtemp(prefix="irevla-learning-"))
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    demos_dir = record_demos(work, budget.expert_task, budget.demos, budget.image_size)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            t0 = time.monotonic()
            result = run_arm(arm, seed, budget, work, demos_dir, log)
            result["wall_s"] = round(time.monotonic() - t0)
            results.append(result)
            if args.json:
                Path(args.json).write_text(json.dumps({"budget": dataclasses.asdict(budget), "results": results},
                                                      indent=2))
    print(f"\niRe-VLA comparison, tiny VLA, {len(args.seeds)} seed(s), {budget.eval_episodes} eval episodes per "
          f"task, {budget.online_episodes} online episodes per iteration\n")
    print(table(results, budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
