"""Every knob of the stage-1 learner, in one flat dataclass (it is also rl_node's ROS parameter set).

Flat on purpose: `declare_config` turns each field into a ROS parameter and config/rl_node.yaml sets them by
name. Fields are grouped by comments: general, head, buffers, SAC (RLPD), PPO, publishing, checkpoints, loop.
Defaults work out of the box on a CPU with the tiny model; `__post_init__` raises ValueError naming bad values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALGORITHMS = ("sac", "ppo")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class RLConfig:
    # --- general ------------------------------------------------------------------------------------------
    algorithm: str = "sac"
    """sac: SAC from demonstrations / RLPD (real-robot default). ppo: on-policy PPO with GAE (simulation)."""
    run_dir: str = "runs/default"
    """The learner keeps its buffers, checkpoints and tensorboard logs under RUN_DIR/rl/."""
    demo_dir: str = ""
    """Expert data for the demo buffer, loaded once at stage start: an episode store root (meta/episodes.jsonl,
    episodes recorded with features) or a folder of transition payload files (*.transition). Empty = none."""
    init_head: str = ""
    """Head weights to start from (the SFT'd head): a head_weights payload or a plain safetensors state dict.
    Empty = random init. Ignored when resuming from a checkpoint."""
    resume: bool = True
    """Resume from RUN_DIR/rl/checkpoints when one exists (else start fresh)."""
    seed: int = 0
    device: str = "cpu"
    """cpu | cuda | auto (cuda when available). The head is small: cpu is fine for tiny features."""
    torch_threads: int = 0
    """CPU threads for torch (0 = torch's default). 1 is faster for tiny heads on a busy machine."""
    prefetch_batches: bool = True
    """CUDA only: sample the next batch and copy it into pinned memory in a worker thread while the GPU runs the
    current update, and send it with an asynchronous copy (bench/learner.py measures it; on CPU the node shares
    its cores with the sim and the policy, so it stays off there)."""

    # --- head (must match the policy node's head) -----------------------------------------------------------
    feature_tokens: int = 0
    """Tokens T per step's features [T, D]; 0 = take it from the first transition (or the demos)."""
    feature_dim: int = 0
    """Width D of the features; 0 = take it from the first transition (or the demos)."""
    num_learned_tokens: int = 8
    hidden_dim: int = 256
    proprio_dim: int = 0

    # --- replay storage ------------------------------------------------------------------------------------
    online_capacity_bytes: int = 1 << 30
    """Online buffer size in bytes (features fp16 memory-mapped on disk + small per-step fields)."""
    demo_capacity_bytes: int = 256 << 20
    """Demo buffer size in bytes (expert demos + human interventions)."""

    # --- SAC from demonstrations (RLPD) ---------------------------------------------------------------------
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak factor of the target critics."""
    batch_size: int = 256
    demo_ratio: float = 0.5
    """Share of each batch drawn from the demo buffer (RLPD's symmetric sampling: 0.5)."""
    utd_ratio: float = 4.0
    """Critic updates per new online transition (update-to-data ratio). 0: collect only, never update (a control
    arm: the head changes by stage 2 alone)."""
    warmup_transitions: int = 256
    """No update before the online buffer holds this many complete transitions."""
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 0.01
    target_entropy: float = float("nan")
    """Entropy target of the automatic temperature; NaN = -action_dim (the usual choice)."""
    num_critics: int = 2
    """Critic ensemble size (RLPD uses 10 on GPUs; 2 is SAC's clipped double-Q)."""
    critic_subsample: int = 2
    """Critics whose minimum forms the target (RLPD: 2 random members of the ensemble)."""
    critic_pooling: str = "light"
    """How critics / the value net pool the feature tokens: light (one linear attention layer, ~D/S x cheaper per
    token) or token_learner (the actor's architecture). Training-only: the deployed actor is unaffected."""
    actor_update_every: int = 1
    """Actor + temperature step every N critic steps (delayed policy updates)."""
    actor_warmup_updates: int = 0
    """Critic-only updates before the first actor step. From an SFT'd head, a critic trained from scratch pulls the
    actor off the demonstrated behaviour while its Q values are still noise (seen in `irevla sim`: online success
    fell from the SFT policy's ~20 % to ~1 %); a warm-up lets the critic learn first."""

    # --- PPO (simulation option) ----------------------------------------------------------------------------
    ppo_rollout_steps: int = 512
    """Complete transitions collected per PPO iteration."""
    ppo_epochs: int = 4
    ppo_minibatch_size: int = 128
    ppo_lr: float = 3e-4
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    ppo_max_policy_lag: int = 1
    """Drop transitions acted by a head older than (published version - lag); counted as 'stale_policy'."""
    bc_coef: float = 0.0
    """Weight of a behaviour-cloning term in the actor loss (0 = off). PPO: on demo-buffer batches. SAC: squared
    action error on the batch's demo/intervention rows (TD3+BC-style anchor to the demonstrations)."""

    # --- publishing weights ---------------------------------------------------------------------------------
    publish_every_updates: int = 50
    publish_every_s: float = 5.0
    """Publish head weights after N updates or T seconds with at least one new update, whichever comes first."""

    # --- checkpoints ----------------------------------------------------------------------------------------
    checkpoint_every_s: float = 60.0
    checkpoint_every_updates: int = 0
    """Also checkpoint every N updates (0 = only by time, at episode ends when due, and at shutdown)."""
    keep_checkpoints: int = 3
    keep_previous_stages: int = 2
    """A new stage-2 model makes every stored feature stale: the previous stage's buffers and checkpoints are moved
    aside (rl/*.stage-<ns>), and only the newest this many such stages are kept (-1 = all; a 26-minute sim run left
    17 of them, 1.7 GB). Episodes themselves live in the packager's store, never here."""

    # --- loop and logging -----------------------------------------------------------------------------------
    tick_period_s: float = 0.01
    """How often the node's learning loop runs (ingest queued transitions, update, publish, checkpoint)."""
    max_tick_s: float = 0.25
    """Time budget of one tick for updates (keeps the node responsive)."""
    queue_limit: int = 5000
    """Transitions waiting to be ingested (the queue drains every tick); beyond it they are dropped and counted
    ('queue_full'). 5000 BLIP-2-sized payloads are ~1.6 GB."""
    tensorboard: bool = True
    log_every_updates: int = 20
    success_window: int = 20
    """Episodes in the rolling success rate / return."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.critic_pooling not in ("light", "token_learner"):
            raise ValueError(f"critic_pooling must be light or token_learner, got {self.critic_pooling!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if not self.run_dir:
            raise ValueError("run_dir must not be empty")
        ints_pos = ("num_learned_tokens", "hidden_dim", "batch_size", "num_critics", "critic_subsample",
                    "actor_update_every", "ppo_rollout_steps", "ppo_epochs", "ppo_minibatch_size",
                    "publish_every_updates", "keep_checkpoints", "log_every_updates", "success_window",
                    "queue_limit", "online_capacity_bytes", "demo_capacity_bytes")
        for name in ints_pos:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if int(self.keep_previous_stages) < -1:
            raise ValueError(f"keep_previous_stages must be >= -1 (-1 = all), got {self.keep_previous_stages!r}")
        for name in ("feature_tokens", "feature_dim", "proprio_dim", "torch_threads", "warmup_transitions",
                     "checkpoint_every_updates", "ppo_max_policy_lag", "actor_warmup_updates"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.critic_subsample > self.num_critics:
            raise ValueError(f"critic_subsample ({self.critic_subsample}) must be <= num_critics "
                             f"({self.num_critics})")
        unit = ("gamma", "tau", "gae_lambda", "clip_coef")
        for name in unit:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if not (math.isfinite(self.demo_ratio) and 0.0 <= self.demo_ratio <= 1.0):
            raise ValueError(f"demo_ratio must be in [0, 1], got {self.demo_ratio!r}")
        if not (math.isfinite(self.utd_ratio) and self.utd_ratio >= 0.0):
            raise ValueError(f"utd_ratio must be a finite number >= 0 (0 = collect only), got {self.utd_ratio!r}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "ppo_lr", "init_alpha", "publish_every_s",
                     "checkpoint_every_s", "tick_period_s", "max_tick_s", "max_grad_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("ent_coef", "vf_coef", "bc_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if math.isinf(self.target_entropy):
            raise ValueError(f"target_entropy must be finite or NaN (= -action_dim), got {self.target_entropy!r}")
        if (self.feature_tokens == 0) != (self.feature_dim == 0):
            raise ValueError("feature_tokens and feature_dim must both be set or both be 0 (infer), got "
                             f"{self.feature_tokens} and {self.feature_dim}")
