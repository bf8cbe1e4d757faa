"""The actor's logic, ROS-free: one `tick(now)` per control period.

Per tick: swap in staged weights; if resetting, wait; otherwise assemble the observation (stale -> no command);
close the previous step with the reward/intervention seen since its command went out (a step's reward is the
outcome of its action, so its transition is emitted one tick later, or at the episode's end); decide done
(success / time limit / abort); then run backbone + head and return the command.

The node (nodes/policy_node.py) only moves messages in and out and performs the reset service calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from irevla_ros.core.data.codec import Transition
from irevla_ros.core.model.processor import InputError
from irevla_ros.core.model.vla import VLAModel
from irevla_ros.core.policy.hotswap import Slot, WeightSlots
from irevla_ros.core.policy.observation import Observation, ObservationBuffer, Stale
from irevla_ros.core.safety import InvalidAction, validate_action
from irevla_ros.interfaces import CAMERA_NAMES

MODES = ("rl", "eval")


@dataclass
class PolicyConfig:
    model_dir: str = ""
    """Local VLA model folder (`irevla model init ...`); empty = the `model_preset`, random-init (tests, smoke)."""
    model_preset: str = "tiny"
    preset_proprio_dim: int = 0
    """Robot-state inputs of the preset model's head: 0 = images + language only (the paper; rl_node's default),
    8 = also EE pose + gripper width. Must equal rl_node's `proprio_dim`. Ignored with `model_dir`."""
    device: str = "cpu"
    """cpu | cuda | cuda:N | auto (cuda if available)."""
    dtype: str = "float32"
    """Backbone dtype: float32 | bfloat16 | float16 (the head stays float32)."""
    cuda_graphs: bool = True
    """On CUDA, replay the backbone forward as a CUDA graph (3.7 B BLIP-2 shape on an H200: 28 -> 7.6 ms per
    tick, bench/README.md); ignored on CPU."""
    run_dir: str = "runs/default"
    mode: str = "rl"
    """rl: sample from the tanh-Gaussian; eval: its mean (deterministic)."""
    control_hz: float = 10.0
    cameras: tuple[str, ...] = CAMERA_NAMES
    """Camera names in the order the model takes them (interfaces.camera_image(name) topics)."""
    instruction: str = "pick up the cube"
    """Default task instruction; a message on the instruction topic replaces it."""
    max_image_age_s: float = 0.5
    max_state_age_s: float = 0.5
    max_steps: int = 100
    """Time limit per episode (steps); reaching it ends the episode as truncated (not terminal)."""
    success_reward: float = 1.0
    """A reward >= this ends the episode as a success (terminal)."""
    stale_abort_s: float = 10.0
    """An episode whose observations stay stale this long is aborted (done, not terminal) and reset."""
    num_episodes: int = 0
    """Stop acting after this many episodes (0 = run forever)."""
    reset_timeout_s: float = 60.0
    wait_for_consumers_s: float = 10.0
    """Mode rl: before the first episode, wait up to this long (wall clock) for a subscriber to the transitions and
    one to the episode events (packager, learner). Both topics are volatile: a consumer that matched after the
    first episode began would miss its start. After the wait the node acts anyway, with a warning. 0 = no wait."""
    sim_reset_wait_s: float = 1.0
    """How long to look for the sim reset service before each reset (absent on the real robot)."""
    transition_images: bool = True
    """Put the exact frames used in each transition (the packager needs them for SFT)."""
    reliable_images: bool = False
    """Subscribe to cameras with reliable QoS (simulation: lockstep frames); default best effort, which also
    matches the RealSense node's best-effort publishers."""
    torch_threads: int = 1
    """Intra-op threads for the model on CPU; 1 keeps tick jitter low on small machines (0 = torch's default)."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not (np.isfinite(self.control_hz) and 1.0 <= self.control_hz <= 50.0):
            raise ValueError(f"control_hz must be in [1, 50] Hz, got {self.control_hz!r}")
        if not self.cameras or any(not c or not c.replace("_", "").isalnum() for c in self.cameras):
            raise ValueError(f"cameras must be non-empty names of [A-Za-z0-9_], got {list(self.cameras)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras lists a camera twice: {list(self.cameras)}")
        for name in ("max_image_age_s", "max_state_age_s", "stale_abort_s", "reset_timeout_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0.0 < value <= 3600.0):
                raise ValueError(f"{name} must be in (0, 3600] s, got {value!r}")
        if not (np.isfinite(self.wait_for_consumers_s) and 0.0 <= self.wait_for_consumers_s <= 3600.0):
            raise ValueError(f"wait_for_consumers_s must be in [0, 3600] s, got {self.wait_for_consumers_s!r}")
        if not (np.isfinite(self.sim_reset_wait_s) and 0.0 <= self.sim_reset_wait_s <= 60.0):
            raise ValueError(f"sim_reset_wait_s must be in [0, 60] s, got {self.sim_reset_wait_s!r}")
        if not 1 <= self.max_steps <= 100_000:
            raise ValueError(f"max_steps must be in [1, 100000], got {self.max_steps!r}")
        if self.preset_proprio_dim not in (0, 8):
            raise ValueError(f"preset_proprio_dim must be 0 or 8 (x y z qx qy qz qw width), got "
                             f"{self.preset_proprio_dim!r}")
        if not 0 <= self.torch_threads <= 256:
            raise ValueError(f"torch_threads must be in [0, 256], got {self.torch_threads!r}")
        if self.num_episodes < 0:
            raise ValueError(f"num_episodes must be >= 0, got {self.num_episodes!r}")
        if not np.isfinite(self.success_reward):
            raise ValueError(f"success_reward must be finite, got {self.success_reward!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not (self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu, auto or cuda[:N], got {self.device!r}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_hz

    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def load_model(config: PolicyConfig) -> tuple[VLAModel, str]:
    """The model the node runs, and its version string."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    device = config.torch_device()
    dtype = getattr(torch, config.dtype)
    if config.model_dir:
        model = VLAModel.from_pretrained(config.model_dir, device=device, dtype=dtype)
        if model.config.num_cameras != len(config.cameras):
            raise ValueError(f"model {config.model_dir} takes {model.config.num_cameras} camera(s), the `cameras` "
                             f"parameter lists {len(config.cameras)}: {list(config.cameras)}")
        version = getattr(model, "version", "") or "0"
    else:
        model = VLAModel.from_preset(config.model_preset, num_cameras=len(config.cameras),
                                     head={"proprio_dim": config.preset_proprio_dim}, device=device, dtype=dtype,
                                     seed=config.seed)
        version = "0"
    if model.config.head.proprio_dim not in (0, 8):
        raise ValueError(f"the policy feeds 8 proprio values (x y z qx qy qz qw width); the model's head takes "
                         f"{model.config.head.proprio_dim}")
    model.use_cuda_graphs(config.cuda_graphs)
    return model.eval(), version


@dataclass
class _OpenStep:
    step: int
    sent_at: float
    features: np.ndarray
    action: np.ndarray
    log_prob: float
    proprio: np.ndarray
    images: np.ndarray
    version: str


@dataclass
class TickOutput:
    command: np.ndarray | None = None
    transitions: list[Transition] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    request_reset: bool = False
    stale: str = ""
    swapped: Slot | None = None
    rolled_back: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class PolicyActor:
    """State: waiting (for a fresh observation to start) -> running -> resetting -> waiting ... -> finished."""

    def __init__(self, config: PolicyConfig, model: VLAModel, version: str, *, run_id: str | None = None):
        self.config = config
        self.slots = WeightSlots(model, version)
        self.obs = ObservationBuffer(config.cameras, max_image_age_s=config.max_image_age_s,
                                     max_state_age_s=config.max_state_age_s, instruction=config.instruction)
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.generator = torch.Generator(device=model.device).manual_seed(config.seed)
        self.state = "waiting"
        self.episode_index = 0
        self.episode_id = ""
        self.episode_steps = 0
        self.episode_interventions = 0  # steps a person drove this episode
        self.episode_instruction = ""
        self.task_name = ""
        """The simulator's task id (from /sim/reset's reply or the latched /sim/task), echoed in episode events."""
        self.episode_task = ""
        self._open: _OpenStep | None = None
        self._reset_done_at = -np.inf
        self._last_fresh = -np.inf
        self._lock = threading.Lock()
        self._rewards: list[tuple[float, float]] = []  # (received at, value)
        self._interventions: list[float] = []  # receive times of intervention=True
        self._teleop: tuple[float, np.ndarray] | None = None
        self.stats = {"ticks": 0, "stale_ticks": 0, "commands": 0, "episodes": 0, "successes": 0, "rollbacks": 0}

    # --- inputs from callbacks (any thread) ---
    def on_reward(self, value: float, now: float) -> None:
        if not np.isfinite(value):
            raise InputError(f"reward must be finite, got {value!r}")
        with self._lock:
            self._rewards.append((now, float(value)))
            del self._rewards[:-1000]

    def on_intervention(self, active: bool, now: float) -> None:
        if active:
            with self._lock:
                self._interventions.append(now)
                del self._interventions[:-1000]

    def on_teleop_action(self, values: Sequence[float], now: float) -> None:
        try:
            action = validate_action(values)
        except InvalidAction as exc:
            raise InputError(str(exc)) from exc
        with self._lock:
            self._teleop = (now, action.astype(np.float32))

    # --- resets (the node calls the services) ---
    def reset_done(self, now: float) -> None:
        if self.state == "resetting":
            self._reset_done_at = now
            finished = self.config.num_episodes and self.episode_index >= self.config.num_episodes
            self.state = "finished" if finished else "waiting"

    # --- the tick ---
    def tick(self, now: float) -> TickOutput:
        out = TickOutput()
        t0 = time.perf_counter()
        self.stats["ticks"] += 1
        out.swapped = self.slots.apply_pending()
        if self.state in ("resetting", "finished"):
            return out
        obs = self.obs.assemble(now, not_before=self._reset_done_at)
        out.timings["obs"] = time.perf_counter() - t0
        if isinstance(obs, Stale):
            self.stats["stale_ticks"] += 1
            out.stale = obs.reason
            if self.state == "running" and now - self._last_fresh > self.config.stale_abort_s:
                self._finish(out, now, success=False, terminal=False, reward=0.0, aborted=True)
            return out
        self._last_fresh = now
        if self.state == "waiting":
            self._start_episode(out, obs)
        elif self._open is not None:
            reward, intervention, teleop = self._outcome_since(self._open.sent_at, now)
            success = reward >= self.config.success_reward
            if success or self._open.step + 1 >= self.config.max_steps:
                self._finish(out, now, success=success, terminal=success, reward=reward,
                             intervention=intervention, teleop=teleop)
                return out
            out.transitions.append(self._close_step(reward, done=False, terminal=False, success=False,
                                                    intervention=intervention, teleop=teleop))
        self._act(out, obs, now, t0)
        return out

    def _act(self, out: TickOutput, obs: Observation, now: float, t0: float) -> None:
        slot = self.slots.current
        result = self._run_model(slot, obs)
        if not (np.isfinite(result.action).all() and np.isfinite(result.log_prob).all()):
            back = self.slots.rollback()
            self.stats["rollbacks"] += 1
            out.rolled_back = (f"policy v{slot.version} produced non-finite actions; rolled back to "
                               f"v{back.version}" if back else f"policy v{slot.version} produced non-finite "
                               "actions and there is no previous version: no command")
            if back is None:
                return
            slot = back
            result = self._run_model(slot, obs)
            if not np.isfinite(result.action).all():
                return
        out.timings["model"] = time.perf_counter() - t0 - out.timings.get("obs", 0.0)
        action = result.action[0]
        self._open = _OpenStep(step=self.episode_steps, sent_at=now, features=result.features[0],
                               action=action, log_prob=float(result.log_prob[0]), proprio=obs.proprio,
                               images=self._frames(obs, slot.model), version=slot.version)
        self.episode_steps += 1
        self.stats["commands"] += 1
        out.command = action.astype(np.float64)

    def _run_model(self, slot: Slot, obs: Observation):
        return slot.model.act([img[None] for img in obs.images], [obs.instruction], obs.proprio[None],
                              stochastic=self.config.mode == "rl", head=slot.head, generator=self.generator)

    def _frames(self, obs: Observation, model: VLAModel) -> np.ndarray:
        if not self.config.transition_images:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        shapes = {img.shape for img in obs.images}
        if len(shapes) == 1:
            return np.stack(obs.images)
        # cameras of different sizes cannot share one array: store them at the model's input size
        size = model.config.image_size
        resized = [torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                                                   size=(size, size), mode="bilinear", antialias=True)[0]
                   .round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy() for img in obs.images]
        return np.stack(resized)

    def _outcome_since(self, since: float, now: float) -> tuple[float, bool, np.ndarray | None]:
        with self._lock:
            rewards = [v for t, v in self._rewards if since < t <= now]
            # A person's command counts from the instant ours went out, inclusive: in simulated time (discrete, one
            # value per control period) the supervisor's command for a period carries the same stamp as ours.
            intervention = any(since <= t <= now for t in self._interventions)
            teleop = self._teleop[1] if (self._teleop is not None and since <= self._teleop[0] <= now) else None
        return (max(rewards) if rewards else 0.0), intervention, teleop

    def _close_step(self, reward: float, *, done: bool, terminal: bool, success: bool, intervention: bool,
                    teleop: np.ndarray | None) -> Transition:
        step = self._open
        self._open = None
        action, log_prob = step.action, step.log_prob
        self.episode_interventions += int(intervention)
        if intervention and teleop is not None:
            # the human's command is what the robot executed: learn from it (its log-prob under our policy)
            action = np.clip(teleop, -1.0, 1.0).astype(np.float32)
            slot = self.slots.current
            with torch.inference_mode():
                feats = torch.from_numpy(step.features[None].astype(np.float32)).to(slot.model.device)
                proprio = (torch.from_numpy(step.proprio[None]).to(slot.model.device)
                           if slot.head.config.proprio_dim else None)
                log_prob = float(slot.head.log_prob(feats, torch.from_numpy(action[None]).to(feats.device),
                                                     proprio)[0])
                if not np.isfinite(log_prob):
                    log_prob = 0.0
        return Transition(episode_id=self.episode_id, step=step.step, features=step.features, action=action,
                          log_prob=log_prob, reward=float(reward), done=done, terminal=terminal, success=success,
                          intervention=intervention, policy_version=step.version, task=self.episode_instruction,
                          proprio=step.proprio, images=step.images, cameras=",".join(self.config.cameras))

    def _start_episode(self, out: TickOutput, obs: Observation) -> None:
        self.episode_index += 1
        self.episode_id = f"{self.run_id}-{self.episode_index:05d}"
        self.episode_steps = 0
        self.episode_interventions = 0
        self.episode_instruction = obs.instruction
        self.episode_task = self.task_name
        self.state = "running"
        out.events.append({"episode_id": self.episode_id, "event": "start", "success": False, "steps": 0,
                           "instruction": obs.instruction, "task": self.episode_task,
                           "policy_version": self.slots.version,
                           "mode": self.config.mode})

    def _finish(self, out: TickOutput, now: float, *, success: bool, terminal: bool, reward: float,
                intervention: bool = False, teleop: np.ndarray | None = None, aborted: bool = False) -> None:
        if self._open is not None:
            out.transitions.append(self._close_step(reward, done=True, terminal=terminal, success=success,
                                                    intervention=intervention, teleop=teleop))
        self.stats["episodes"] += 1
        self.stats["successes"] += int(success)
        out.events.append({"episode_id": self.episode_id, "event": "end", "success": bool(success),
                           "steps": self.episode_steps, "intervention_steps": self.episode_interventions,
                           "instruction": self.episode_instruction,
                           # the graph's first episode can start before the latched task id arrives; no reset
                           # (the only thing that changes it) happens inside an episode
                           "task": self.episode_task or self.task_name,
                           "policy_version": self.slots.version, "mode": self.config.mode, "aborted": aborted})
        self.state = "resetting"
        out.request_reset = True
