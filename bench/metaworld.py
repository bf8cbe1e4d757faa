"""iRe-VLA on the paper's own benchmark, MetaWorld: SFT only vs iRe-VLA vs iRe-VLA without expert replay.

Runs in its OWN venv (MetaWorld 3.1.1 pins mujoco==3.3.0; the main .venv has mujoco 4.0.0 for franky-sim):
`bash scripts/setup_metaworld.sh` makes .venv-metaworld once (MetaWorld + the main venv's torch/transformers/peft pins
+ irevla_ros installed --no-deps; only the ROS-free irevla_ros.core is imported here). One process, no ROS.

Task split (docs/metaworld.md says why):
  expert task  button-press-v3       scripted-expert demos (metaworld.policies) -> stage-0 SFT; "press the button"
  new task     button-press-wall-v3  NO demos ever; "press the button behind the wall": the same skill towards a button
                                     behind a low wall, so the SFT policy succeeds sometimes and a sparse reward can
                                     find it (the button-press expert itself succeeds 7/10 there, button-press-topdown
                                     0/10 -> no learning signal; coffee-button 10/10 -> nothing to learn)
Layouts: MetaWorld's MT1 draws from 50 fixed layouts; here every reset samples a fresh button position from the task's
own random range with the reset seed (demos: seeds 0.., online: 100..9000, evaluation: 10000..), so evaluation
layouts are never seen in training.

Model: a tiny random-init BLIP-2 preset (`tiny-sim`, 8-px patches) on ONE 64x64 RGB image from MetaWorld's `corner`
camera (flipped upright) + the instruction; proprio = hand xyz + gripper opening (obs[0:4] of the 39-D state; the
object/goal entries are NOT given, so the button must be found in the image). Actions: MetaWorld's 4-D
(dx, dy, dz, grip) are placed in our 7-D layout (dx, dy, dz, droll, dpitch, dyaw, gripper); the rotation entries are
0 in the demos and ignored by the environment. Reward: sparse, 1 at info["success"], which ends the episode.

Arms (the same pieces as bench/learning.py, imported: VLAModel, core.sft.train, OnlineLearner via learning.Stage1):
  sft       stage-0 SFT (whole model) on the expert demos;
  irevla    SFT-0, then K x [stage 1: SAC-from-demos (RLPD) on the action head with the VLM frozen, features cached,
            half the online episodes on each task; stage 2: LoRA SFT on expert demos + the online successes, 50/50];
  noreplay  iRe-VLA whose stage 2 sees only the online successes (the paper's forgetting ablation).
Success: deterministic actions on held-out layouts, per task; mean ± std over --seeds; wall minutes.

    bash scripts/setup_metaworld.sh
    MUJOCO_GL=egl .venv-metaworld/bin/python bench/metaworld.py --help
    MUJOCO_GL=egl .venv-metaworld/bin/python bench/metaworld.py --seeds 0 --work /tmp/mw --json /tmp/mw/results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# This file is named like the `metaworld` package: with bench/ on sys.path (python puts a script's folder first),
# `import metaworld` would import this file again. Drop bench/ and load bench/learning.py by path instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def _load_learning():
    """bench/learning.py (the Panda comparison): its Stage1 loop, split and table are reused, not copied."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("irevla_bench_learning", ROOT / "bench" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


learning = _load_learning()

from irevla_ros.core.data.codec import Transition  # noqa: E402
from irevla_ros.core.data.episodes import EpisodeMeta, EpisodeStore, EpisodeWriter  # noqa: E402
from irevla_ros.core.model.vla import VLAModel  # noqa: E402
from irevla_ros.core.rl.demos import encode_demo_features  # noqa: E402
from irevla_ros.core.sft.train import SFTConfig, StepDataset, train  # noqa: E402
from irevla_ros.interfaces import ACTION_DIM  # noqa: E402

CAMERA = "corner"
CAMERAS = (CAMERA,)
ARMS = ("sft", "irevla", "noreplay")
PROPRIO_DIM = 4
"""hand x, y, z (m, MetaWorld world frame) + gripper opening (obs[3], 0 closed .. 1 open)."""
MW_TO_OURS = (0, 1, 2, 6)
"""Where MetaWorld's (dx, dy, dz, grip) go in our 7-D layout (irevla_ros.interfaces.ACTION_LABELS); MetaWorld's grip
> 0 closes, like ours."""
INSTRUCTIONS = {
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "coffee-button-v3": "press the coffee machine button",
}
EXPERTS = {
    "button-press-v3": "SawyerButtonPressV3Policy",
    "button-press-wall-v3": "SawyerButtonPressWallV3Policy",
    "button-press-topdown-v3": "SawyerButtonPressTopdownV3Policy",
    "button-press-topdown-wall-v3": "SawyerButtonPressTopdownWallV3Policy",
    "coffee-button-v3": "SawyerCoffeeButtonV3Policy",
}
EVAL_SEED_BASE = 10_000


def to_ours(action4: np.ndarray) -> np.ndarray:
    """MetaWorld 4-D action -> our 7-D layout (rotations 0), clipped to [-1, 1]."""
    a = np.asarray(action4, dtype=np.float64).reshape(-1)
    if a.shape != (4,) or not np.isfinite(a).all():
        raise ValueError(f"a MetaWorld action must be 4 finite numbers, got {action4!r}")
    out = np.zeros(ACTION_DIM, np.float32)
    out[list(MW_TO_OURS)] = np.clip(a, -1.0, 1.0)
    return out


def to_metaworld(action7: np.ndarray) -> np.ndarray:
    """Our 7-D action -> MetaWorld's 4-D (the rotation entries are dropped: the Sawyer gripper keeps its pose)."""
    a = np.asarray(action7, dtype=np.float64).reshape(-1)
    if a.shape != (ACTION_DIM,) or not np.isfinite(a).all():
        raise ValueError(f"an action must be {ACTION_DIM} finite numbers, got {action7!r}")
    return np.clip(a[list(MW_TO_OURS)], -1.0, 1.0)


class MetaWorldEnv:
    """One MetaWorld task behind the small reset/step contract our loops use: observations are
    {"images": {camera: uint8 HxWx3}, "proprio": float32[4], "instruction": str, "state": the 39-D vector};
    step(7-D action) -> (obs, success, {"timeout": bool}). Layouts are sampled per reset seed (not MT1's 50)."""

    def __init__(self, task: str, *, image_size: int = 64, max_steps: int = 150):
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers Meta-World/*)
        import mujoco

        if task not in INSTRUCTIONS:
            raise ValueError(f"unknown task {task!r}; known: {sorted(INSTRUCTIONS)}")
        if image_size < 16 or max_steps < 1:
            raise ValueError(f"image_size must be >= 16 and max_steps >= 1, got {image_size}, {max_steps}")
        self.task, self.max_steps, self.instruction = task, int(max_steps), INSTRUCTIONS[task]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's passive checker warns about MetaWorld's obs bounds
            self._wrapped = gym.make("Meta-World/MT1", env_name=task)
            self._wrapped.reset(seed=0)  # sets one of MT1's tasks so the env is fully initialised
        self.env = self._wrapped.unwrapped
        self.env._freeze_rand_vec = False  # sample the layout from the task's random range at every reset ...
        self.env.seeded_rand_vec = True  # ... with the env's seeded generator (reset(seed) -> same layout)
        model = self.env.model
        model.vis.quality.offsamples = 0  # no MSAA: ~6 ms per 64x64 frame on a CPU instead of tens of ms
        self.renderer = mujoco.Renderer(model, image_size, image_size)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            self.renderer.scene.flags[flag] = 0
        self.steps = 0
        self._state: np.ndarray | None = None
        from metaworld import policies

        self.expert = getattr(policies, EXPERTS[task])()

    def _obs(self, state: np.ndarray) -> dict:
        self._state = np.asarray(state, dtype=np.float64)
        self.renderer.update_scene(self.env.data, camera=CAMERA)
        image = np.ascontiguousarray(self.renderer.render()[::-1, ::-1])  # MetaWorld's corner camera is upside down
        return {"images": {CAMERA: image}, "proprio": self._state[:PROPRIO_DIM].astype(np.float32),
                "instruction": self.instruction, "state": self._state}

    def reset(self, seed: int) -> dict:
        self.steps = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _ = self.env.reset(seed=int(seed))
        return self._obs(state)

    def step(self, action7: np.ndarray) -> tuple[dict, bool, dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _, _, _, info = self.env.step(to_metaworld(action7))
        self.steps += 1
        success = bool(info["success"])
        return self._obs(state), success, {"timeout": self.steps >= self.max_steps and not success}

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, in our 7-D layout."""
        return to_ours(self.expert.get_action(self._state))

    def close(self) -> None:
        self.renderer.close()
        self._wrapped.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class Budget:
    expert_task: str = "button-press-v3"
    new_task: str = "button-press-wall-v3"
    preset: str = "tiny-sim"
    demos: int = 60
    demo_noise: float = 0.1
    """DART-style noise: demos execute expert + N(0, noise) but record the clean expert action (0 = off)."""
    sft0_steps: int = 1500
    iterations: int = 2
    online_episodes: int = 40
    """Online episodes per stage-1 phase (half on the expert task, half on the new one)."""
    sft2_steps: int = 300
    sft2_mode: str = "lora"
    utd: float = 1.0
    actor_warmup: int = 500
    bc_coef: float = 1.0
    batch: int = 128
    warmup: int = 128
    eval_episodes: int = 20
    image_size: int = 64
    max_steps: int = 150
    """Episode length cap (MetaWorld's own is 500). The expert presses the button in ~60 steps, the SFT policy in
    ~120 (its regressed actions are smaller than the expert's saturated ones), so 100 steps cut its successes off."""

    def __post_init__(self) -> None:
        for name in ("expert_task", "new_task"):
            if getattr(self, name) not in INSTRUCTIONS:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {sorted(INSTRUCTIONS)}, got "
                                 f"{getattr(self, name)!r}")
        if self.expert_task == self.new_task:
            raise ValueError("the new task must differ from the expert task")
        for name in ("demos", "sft0_steps", "online_episodes", "sft2_steps", "batch", "eval_episodes", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps > 500:
            raise ValueError(f"--max-steps must be <= 500 (MetaWorld's own episode cap), got {self.max_steps}")
        if self.demos < 6:
            raise ValueError(f"--demos must be >= 6 (4 are held out for validation), got {self.demos}")
        if self.iterations < 0 or not 0 <= self.demo_noise < 1 or self.utd <= 0:
            raise ValueError("--iterations >= 0, 0 <= --demo-noise < 1 and --utd > 0 are required")
        if self.sft2_mode not in ("lora", "full", "head"):
            raise ValueError(f"--sft2-mode must be lora|full|head, got {self.sft2_mode!r}")


def record_demos(root: Path, budget: Budget, log) -> Path:
    """Scripted-expert demos of the expert task, ended at the first success (cached per settings)."""
    out = root / f"demos-{budget.expert_task}-{budget.demos}-{budget.image_size}px-noise{budget.demo_noise}"
    store = EpisodeStore(out)
    if store.manifest_path.exists() and len(store.episodes(source="expert", success=True)) >= budget.demos:
        return out
    writer = EpisodeWriter(out)
    have = len(store.episodes(source="expert", success=True)) if store.manifest_path.exists() else 0
    rng = np.random.default_rng(1234)
    seed, failures = have, 0
    with MetaWorldEnv(budget.expert_task, image_size=budget.image_size, max_steps=budget.max_steps) as env:
        while have < budget.demos:
            if failures > budget.demos:
                raise RuntimeError(f"the scripted expert failed {failures} times on {budget.expert_task} within "
                                   f"--max-steps {budget.max_steps} (it needs ~60 steps per press)")
            obs = env.reset(seed=seed)
            rec = writer.begin(EpisodeMeta(task=obs["instruction"], source="expert", cameras=CAMERAS, fps=12.5,
                                           extra={"metaworld_task": budget.expert_task, "seed": seed}))
            success = False
            for _ in range(env.max_steps):
                action = env.expert_action()
                executed = action.copy()
                if budget.demo_noise:
                    executed[list(MW_TO_OURS)] += rng.normal(0.0, budget.demo_noise, 4).astype(np.float32)
                next_obs, success, info = env.step(np.clip(executed, -1, 1))
                rec.add_step(action=action, state=obs["proprio"], images=obs["images"], reward=float(success),
                             success=success, done=success or info["timeout"])
                obs = next_obs
                if success or info["timeout"]:
                    break
            if success:
                rec.finish(success=True)
                have += 1
            else:
                rec.abort(keep=False, reason="expert failed")
                failures += 1
            seed += 1
    log(f"recorded {have} expert demos of {budget.expert_task} ({failures} expert failures) in {out}")
    return out


def sft(model: VLAModel, episodes: list, val: list, steps: int, mode: str, seed: int, online: list = (),
        expert_fraction: float = 0.5) -> VLAModel:
    """core.sft.train on expert `episodes` + `online` successes mixed `expert_fraction`/rest (the packager's mix)."""
    config = SFTConfig(mode=mode, steps=steps, batch_size=32, seed=seed, val_every=steps)
    groups = {e.info.episode_id: "online" for e in online}
    data = StepDataset([*episodes, *online], CAMERAS, groups)
    return train(model, data, StepDataset(val, CAMERAS), config, expert_fraction=expert_fraction if episodes else 1.0,
                 progress=False).model


class Stage1(learning.Stage1):
    """bench/learning.py's in-process stage 1 (OnlineLearner, head-only SAC, features cached, head reloaded after
    every update) with MetaWorld episodes instead of SimEnv ones."""

    def episode(self, env: MetaWorldEnv, seed: int, index: int, writer: EpisodeWriter | None) -> bool:
        obs = env.reset(seed=seed)
        episode_id = f"{env.task}-{index}"
        rec = writer.begin(EpisodeMeta(task=obs["instruction"], source="online", cameras=CAMERAS, fps=12.5,
                                       extra={"metaworld_task": env.task, "seed": seed})) if writer else None
        success = False
        for step in range(env.max_steps):
            images = [torch.from_numpy(obs["images"][CAMERA])[None]]
            with torch.inference_mode():
                out = self.model.act(images, [obs["instruction"]], obs["proprio"][None], stochastic=True)
            action = np.clip(out.action[0], -1.0, 1.0).astype(np.float32)
            next_obs, success, info = env.step(action)
            done = success or info["timeout"]
            if rec is not None:
                rec.add_step(action=action, state=obs["proprio"], images=obs["images"], reward=float(success),
                             success=success, done=done)
            self.learner.add_transition(Transition(
                episode_id=episode_id, step=step, features=out.features[0], action=action,
                log_prob=float(out.log_prob[0]), reward=float(success), done=done, terminal=success,
                success=success, intervention=False, policy_version=str(self.learner.version), task=env.task,
                proprio=obs["proprio"]))
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


def evaluate(model: VLAModel, envs: dict[str, MetaWorldEnv], budget: Budget) -> dict[str, float]:
    """Success rate per task with deterministic actions on held-out layouts (seeds from EVAL_SEED_BASE)."""
    model.eval()
    rates = {}
    for task in (budget.expert_task, budget.new_task):
        env, ok = envs[task], 0
        for i in range(budget.eval_episodes):
            obs, success = env.reset(seed=EVAL_SEED_BASE + i), False
            for _ in range(env.max_steps):
                images = [torch.from_numpy(obs["images"][CAMERA])[None]]
                with torch.inference_mode():
                    out = model.act(images, [obs["instruction"]], obs["proprio"][None], stochastic=False)
                obs, success, info = env.step(out.action[0])
                if success or info["timeout"]:
                    break
            ok += int(success)
        rates[task] = ok / budget.eval_episodes
    return rates


def run_arm(arm: str, seed: int, budget: Budget, work: Path, demos_dir: Path, envs: dict, log) -> dict:
    torch.manual_seed(seed)
    store = EpisodeStore(demos_dir)
    expert = [store.load(i) for i in store.episodes(source="expert", success=True)[: budget.demos]]
    train_eps, val_eps = learning.split(expert)
    sft0 = work / f"sft0-seed{seed}"
    if not sft0.is_dir():
        model = VLAModel.from_preset(budget.preset, num_cameras=len(CAMERAS), seed=seed,
                                     head={"proprio_dim": PROPRIO_DIM})
        t0 = time.monotonic()
        model = sft(model, train_eps, val_eps, budget.sft0_steps, "full", seed)
        model.save_pretrained(sft0, version="sft0")
        log(f"seed {seed}: stage-0 SFT ({budget.sft0_steps} steps) in {time.monotonic() - t0:.0f} s")
    started = time.monotonic()
    model = VLAModel.from_pretrained(sft0)
    cached = sft0.with_name(sft0.name + f"-eval{budget.eval_episodes}.json")  # every arm starts from the same SFT-0
    if not cached.exists():
        cached.write_text(json.dumps(evaluate(model, envs, budget)))
    history = [{"iteration": 0, **json.loads(cached.read_text()), "minutes": 0.0}]
    log(f"{arm} seed {seed}: SFT only {history[0]}")
    if arm == "sft":
        return {"arm": arm, "seed": seed, "history": history}
    rng = np.random.default_rng(seed)
    model_dir = sft0
    for it in range(1, budget.iterations + 1):
        stage = work / f"{arm}-seed{seed}-it{it}"
        demos = stage / "demo_features"
        encode_demo_features(model, [demos_dir], demos, list(CAMERAS),
                             episode_ids=[e.info.episode_id for e in train_eps])
        stage1 = Stage1(model, model_dir, demos, stage / "rl", budget, seed)
        writer = EpisodeWriter(stage / "online")
        ok = {budget.expert_task: 0, budget.new_task: 0}
        for i in range(budget.online_episodes):
            task = budget.expert_task if i % 2 == 0 else budget.new_task
            ok[task] += int(stage1.episode(envs[task], int(rng.integers(100, 9000)), i, writer))
        log(f"{arm} seed {seed} it {it}: online successes {ok} of {budget.online_episodes // 2} each, "
            f"{stage1.learner.algo.updates} head updates")
        stage1.learner.close(checkpoint=False)
        online = EpisodeStore(stage / "online")
        successes = [online.load(i) for i in online.episodes(success=True)] if online.manifest_path.exists() else []
        expert_replay = train_eps if arm == "irevla" else []
        if successes or expert_replay:
            model = sft(model, expert_replay, val_eps, budget.sft2_steps, budget.sft2_mode, seed + it,
                        online=successes)
        model_dir = stage / "model"
        model.save_pretrained(model_dir, version=f"it{it}")
        model = VLAModel.from_pretrained(model_dir)
        history.append({"iteration": it, **evaluate(model, envs, budget),
                        "minutes": round((time.monotonic() - started) / 60, 1), "online_successes": ok})
        log(f"{arm} seed {seed} it {it}: {history[-1]}")
    return {"arm": arm, "seed": seed, "history": history}


def report(paths: list[str]) -> int:
    """Print one table from several --json files of the same budget."""
    budget, results = None, []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            b = Budget(**data["budget"])
            runs = list(data["results"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {path} is not a results file of this benchmark: {exc}", file=sys.stderr)
            return 2
        if budget is not None and b != budget:
            print(f"error: {path} was run with another budget than {paths[0]}", file=sys.stderr)
            return 2
        budget = b
        results += runs
    seeds = sorted({r["seed"] for r in results})
    print(f"iRe-VLA on MetaWorld, {budget.preset}, seeds {seeds}, {budget.eval_episodes} eval episodes per task, "
          f"{budget.online_episodes} online episodes per iteration\n")
    print(learning.table(results, budget))
    walls = {arm: np.mean([r["wall_s"] for r in results if r["arm"] == arm]) / 60
             for arm in sorted({r["arm"] for r in results}, key=ARMS.index)}
    print("\nmean wall minutes per arm and seed (evaluations included; the first arm of a seed also trains and "
          "evaluates SFT-0): "
          + ", ".join(f"{a} {m:.1f}" for a, m in walls.items()))
    return 0


def main(argv=None) -> int:
    defaults = Budget()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--work", default="", help="cache folder (demos, SFT-0 models, stage folders); default: a temp "
                   "folder. Reusing it skips the demos and SFT-0 of seeds already done")
    p.add_argument("--json", default="", help="also write the raw results here (rewritten after every arm)")
    p.add_argument("--report", nargs="+", default=[], metavar="JSON",
                   help="run nothing: print the table of earlier --json files together (e.g. seeds run separately); "
                        "their budgets must match")
    p.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads (default 1: a shared 2-core "
                   "machine is much slower with more)")
    for f in dataclasses.fields(Budget):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help="default: %(default)s")
    args = p.parse_args(argv)
    try:
        budget = Budget(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Budget)})
    except ValueError as exc:
        p.error(str(exc))
    if args.report:
        return report(args.report)
    torch.set_num_threads(max(1, args.torch_threads))
    work = Path(args.work or tempfile.mkdtemp(prefix="irevla-metaworld-"))
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    log(f"work folder {work}; budget {dataclasses.asdict(budget)}")
    demos_dir = record_demos(work, budget, log)
    envs = {t: MetaWorldEnv(t, image_size=budget.image_size, max_steps=budget.max_steps)
            for t in (budget.expert_task, budget.new_task)}
    results = []
    try:
        for seed in args.seeds:
            for arm in args.arms:
                t0 = time.monotonic()
                result = run_arm(arm, seed, budget, work, demos_dir, envs, log)
                result["wall_s"] = round(time.monotonic() - t0)
                results.append(result)
                if args.json:
                    Path(args.json).write_text(json.dumps({"budget": dataclasses.asdict(budget),
                                                           "results": results}, indent=2))
    finally:
        for env in envs.values():
            env.close()
    print(f"\niRe-VLA on MetaWorld, tiny VLA ({budget.preset}, {budget.image_size}px {CAMERA} camera), "
          f"{len(args.seeds)} seed(s), {budget.eval_episodes} eval episodes per task, {budget.online_episodes} "
          f"online episodes per iteration, torch threads {torch.get_num_threads()}\n")
    print(learning.table(results, budget))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
