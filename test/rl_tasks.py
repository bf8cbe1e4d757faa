"""Synthetic tasks with known answers for the learner tests (and bench/learner.py).

Features are a fixed random projection of the true state into [T, D] tokens (+ noise), standing in for the
frozen backbone's output: the learner must find the answer from features alone.
- `Bandit`: one-step episodes; 4 contexts, each with a target point for action dims 0-1; success when the
  action lands within `tol` of it. A random head succeeds a few % of the time; the answer is known exactly.
- `Reach`: a point moved by 0.25 * action[:2] per step toward a per-episode goal; success within `tol`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from irevla_ros.core.data.codec import Transition
from irevla_ros.core.model.head import ActionHead
from irevla_ros.core.rl import decode_head_weights
from irevla_ros.interfaces import ACTION_DIM

TOKENS, DIM = 4, 16


@dataclass
class Projection:
    """A fixed random linear map from a small state vector to feature tokens [T, D]."""

    state_dim: int
    seed: int = 0
    noise: float = 0.02
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(1000 + self.seed)
        self.matrix = rng.normal(0, 1.0, (self.state_dim, TOKENS * DIM)).astype(np.float32)
        self._rng = np.random.default_rng(2000 + self.seed)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        f = state.astype(np.float32) @ self.matrix + self._rng.normal(0, self.noise, TOKENS * DIM)
        return f.reshape(TOKENS, DIM).astype(np.float16)


class Bandit:
    TARGETS = np.array([[0.6, 0.6], [-0.6, 0.6], [-0.6, -0.6], [0.6, -0.6]], np.float32)

    def __init__(self, seed: int = 0, tol: float = 0.3):
        self.rng = np.random.default_rng(seed)
        self.project = Projection(len(self.TARGETS), seed)
        self.tol = tol
        self.episode = 0

    def reset(self) -> tuple[int, np.ndarray]:
        c = int(self.rng.integers(len(self.TARGETS)))
        return c, self.project(np.eye(len(self.TARGETS), dtype=np.float32)[c])

    def success(self, c: int, action: np.ndarray) -> bool:
        return bool(np.abs(action[:2] - self.TARGETS[c]).max() < self.tol)

    def expert(self, c: int) -> np.ndarray:
        a = np.zeros(ACTION_DIM, np.float32)
        a[:2] = self.TARGETS[c]
        return a

    def transition(self, c: int, features: np.ndarray, action: np.ndarray, *, log_prob: float = 0.0,
                   intervention: bool = False, version: str = "0") -> Transition:
        ok = self.success(c, action)
        self.episode += 1
        return Transition(episode_id=f"bandit-{self.episode}", step=0, features=features,
                          action=action.astype(np.float32), log_prob=log_prob, reward=float(ok), done=True,
                          terminal=True, success=ok, intervention=intervention, policy_version=version)


class Reach:
    def __init__(self, seed: int = 0, tol: float = 0.2, max_steps: int = 8):
        self.rng = np.random.default_rng(seed)
        self.project = Projection(4, seed)
        self.tol, self.max_steps = tol, max_steps
        self.episode = 0

    def reset(self) -> None:
        self.episode += 1
        self.t = 0
        self.pos = self.rng.uniform(-0.3, 0.3, 2).astype(np.float32)
        self.goal = self.rng.choice([-0.7, 0.7], 2).astype(np.float32)
        return self.features()

    def features(self) -> np.ndarray:
        return self.project(np.concatenate([self.pos, self.goal]))

    def expert(self) -> np.ndarray:
        a = np.zeros(ACTION_DIM, np.float32)
        a[:2] = np.clip((self.goal - self.pos) / 0.25, -1, 1)
        return a

    def step(self, features: np.ndarray, action: np.ndarray, *, log_prob: float = 0.0,
             intervention: bool = False, version: str = "0") -> tuple[Transition, np.ndarray | None]:
        self.pos = np.clip(self.pos + 0.25 * action[:2], -1, 1).astype(np.float32)
        success = bool(np.linalg.norm(self.pos - self.goal) < self.tol)
        self.t += 1
        done = success or self.t >= self.max_steps
        t = Transition(episode_id=f"reach-{self.episode}", step=self.t - 1, features=features,
                       action=action.astype(np.float32), log_prob=log_prob, reward=float(success), done=done,
                       terminal=success, success=success, intervention=intervention, policy_version=version)
        return t, (None if done else self.features())


def act(head, features: np.ndarray, deterministic: bool) -> tuple[np.ndarray, float]:
    """What the policy node does with the head: sample (training) or tanh(mean) (evaluation)."""
    with torch.no_grad():
        f = torch.from_numpy(features.astype(np.float32))[None]
        if deterministic:
            return head.deterministic(f)[0].numpy(), 0.0
        a, logp, _ = head.sample(f)
        return a[0].numpy(), float(logp[0])


def bandit_success_rate(head, env: Bandit, n: int = 200) -> float:
    wins = 0
    for _ in range(n):
        c, f = env.reset()
        wins += env.success(c, act(head, f, True)[0])
    return wins / n


def reach_success_rate(head, env: Reach, n: int = 50) -> float:
    wins = 0
    for _ in range(n):
        f = env.reset()
        while f is not None:
            t, f = env.step(f, act(head, f, True)[0])
        wins += t.success
    return wins / n


class PolicyStandIn:
    """Holds the head the policy node would run: the last published weights (version + state dict)."""

    def __init__(self, learner):
        self.learner = learner
        self.head = ActionHead(learner.head_config)
        self.head.load_state_dict(learner.algo.actor.state_dict())
        self.version = "0"

    def sync(self) -> None:
        if self.learner.publish_due():
            tensors, meta = decode_head_weights(self.learner.weights_payload(), expected=self.learner.head_config)
            self.head.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
            self.version = str(meta["version"])


def reference_sac_update(learner, batch) -> dict[str, float]:
    """The SAC update written with plain module calls (the first-round code: every network pools its own tokens,
    the critics go through `baddbmm` on an expanded input, the actor reads a frozen critic): the reference that
    the optimised `SACLearner.update` must reproduce (tests) and is timed against (bench/learner.py)."""
    from irevla_ros.core.rl.sac import batch_to_torch

    cfg, hc = learner.config, learner.head_config
    b = batch_to_torch(batch, learner.device)
    proprio = b["proprio"] if hc.proprio_dim else None
    next_proprio = b["next_proprio"] if hc.proprio_dim else None
    alpha = learner.log_alpha.exp().detach()

    def critic(net, features, action, p):
        pooled = net.encoder.token_learner(features.float()).flatten(1)
        if hc.proprio_dim:
            pooled = torch.cat([pooled, p.float()], dim=-1)
        x = torch.cat([pooled, action], dim=-1)
        return net.q(x.unsqueeze(0).expand(net.num_critics, -1, -1)).squeeze(-1)

    with torch.no_grad():
        next_action, next_log_prob, _ = learner.actor.sample(b["next_features"], next_proprio)
        target_q = critic(learner.critic_target, b["next_features"], next_action, next_proprio)
        subset = torch.randperm(cfg.num_critics, device=learner.device)[:cfg.critic_subsample]
        target_q = target_q[subset].min(0).values - alpha * next_log_prob
        y = b["reward"] + cfg.gamma * (1.0 - b["terminal"]) * target_q
    q = critic(learner.critic, b["features"], b["action"], proprio)
    critic_loss = ((q - y) ** 2).mean(1).sum()
    learner.critic_optimizer.zero_grad(set_to_none=True)
    critic_loss.backward()
    learner.critic_optimizer.step()
    stats = {"losses/critic": critic_loss.item(), "charts/q_mean": q.mean().item()}
    if learner.updates % cfg.actor_update_every == 0:
        learner.critic.requires_grad_(False)
        action, log_prob, _ = learner.actor.sample(b["features"], proprio)
        q_pi = critic(learner.critic, b["features"], action, proprio).mean(0)
        actor_loss = (alpha * log_prob - q_pi).mean()
        learner.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        learner.actor_optimizer.step()
        learner.critic.requires_grad_(True)
        alpha_loss = -(learner.log_alpha * (log_prob.detach() + learner.target_entropy)).mean()
        learner.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        learner.alpha_optimizer.step()
        stats.update({"losses/actor": actor_loss.item(), "charts/entropy": -log_prob.mean().item()})
    with torch.no_grad():
        for target, source in zip(learner.critic_target.parameters(), learner.critic.parameters(), strict=True):
            target.lerp_(source, cfg.tau)
    learner.updates += 1
    return stats


def explore_from_scratch(learner, log_std: float = 0.0) -> None:
    """Make a from-scratch learning test start from a head that explores with std e^log_std for every input,
    whatever ActionHead's default init of its log_std layer is (a head meant to start from SFT explores narrowly,
    std ~0.2: PPO then needs several times more episodes on the bandit; these tests are about the learner)."""
    with torch.no_grad():
        learner.algo.actor.log_std.weight.zero_()
        learner.algo.actor.log_std.bias.fill_(log_std)
