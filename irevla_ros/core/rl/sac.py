"""SAC from demonstrations (RLPD): the update of the action head and its critic ensemble.

One `update(batch)` = one critic step on a (demo + online) batch, and every `actor_update_every` steps one
actor step and one temperature step. Target critics follow by Polyak averaging. The target is the minimum of
`critic_subsample` randomly chosen ensemble members (RLPD), minus the entropy bonus (soft backup).
Batches come in as numpy (see `replay.Batch`); the caller builds them (50/50 demo/online in `OnlineLearner`).

Speed without changing the update (a test compares it with the plain module calls): the features are normalised
once per batch and shared by actor, critics and target critics (`networks.normalize_tokens`); the actor's sample on
the batch is drawn before the critic step (the actor does not change there; the random draws keep their order);
the actor's loss reads the critic's embedding without a graph and differentiates only the action's path, and
`torch.autograd.grad` computes only the actor's gradients (no critic weight gradients to compute or discard); the
behaviour-cloning term reuses the actor's mean from that sample, masked to the demo rows. On a GPU nothing in
`update` waits for the device (statistics stay tensors until they are logged), so the host can queue the next
batch's copy and kernels while the current ones run; `stage_batch(pin=True)` + `Prefetcher` supply that batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from irevla_ros.core.model.head import LOG_STD_MIN, ActionHead, HeadConfig
from irevla_ros.core.rl.config import RLConfig
from irevla_ros.core.rl.networks import CriticEnsemble, normalize_tokens, pool_normalized
from irevla_ros.core.rl.replay import Batch
from irevla_ros.core.rl.weights import head_state_to_numpy


def pinned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A numpy array in page-locked memory (`replay.gather_batch`'s allocator for a GPU learner)."""
    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True).numpy()


def stage_batch(batch: Batch, pin: bool = False) -> dict[str, torch.Tensor]:
    """The batch as CPU tensors. Pinned ones let the copy to the GPU run asynchronously: a copy from pageable memory
    first waits for everything already queued on the GPU. Arrays already in pinned memory are not copied again."""
    out = {}
    for k in Batch.__dataclass_fields__:
        t = torch.from_numpy(np.ascontiguousarray(getattr(batch, k)))
        out[k] = t.pin_memory() if pin and not t.is_pinned() else t
    return out


def batch_to_torch(batch: Batch | dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # Move first, widen on the device: fp16 features cross the bus at half the bytes and the float32 conversion
    # runs on the GPU (converting on the CPU first was half of a BLIP-2-shape update on an H200).
    staged = batch if isinstance(batch, dict) else stage_batch(batch)
    return {k: t.to(device, non_blocking=True).float() for k, t in staged.items()}


class Prefetcher:
    """Runs `sample()` for the next batch in one worker thread while the caller's update runs on the GPU.

    `next(more)` returns a batch (the prefetched one if any) and, with `more`, starts fetching the one after;
    `drain()` waits for a fetch in flight, so nothing reads the replay buffers once the caller moves on."""

    def __init__(self, sample: Callable[[], dict[str, torch.Tensor]]):
        self._sample = sample
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rl-prefetch")
        self._pending: Future | None = None

    def next(self, more: bool) -> dict[str, torch.Tensor]:
        pending, self._pending = self._pending, None
        batch = pending.result() if pending is not None else self._sample()
        if more:
            self._pending = self._pool.submit(self._sample)
        return batch

    def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)


class SACLearner:
    """Trains `actor` (the deployable ActionHead) + a critic ensemble; nothing else."""

    def __init__(self, head_config: HeadConfig, config: RLConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.head_config = head_config
        self.device = torch.device(device)
        self.actor = ActionHead(head_config).to(self.device)
        self.critic = CriticEnsemble(head_config, config.num_critics, config.critic_pooling).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), device=self.device, requires_grad=True)
        self.target_entropy = (-float(head_config.action_dim) if math.isnan(config.target_entropy)
                               else float(config.target_entropy))
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        self.updates = 0
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())

    @property
    def alpha(self) -> float:
        return self.log_alpha.exp().item()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.actor.parameters(), *self.critic.parameters(), self.log_alpha]

    def actor_distribution(self, xhat: torch.Tensor, proprio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`self.actor(features, proprio)` (pre-tanh mean, log_std) given `normalize_tokens(features)`."""
        pooled = pool_normalized(self.actor.token_learner, xhat).flatten(1)
        if self.head_config.proprio_dim:
            pooled = torch.cat([pooled, proprio.to(pooled.dtype)], dim=-1)
        h = self.actor.trunk(pooled)
        return self.actor.mean(h), self.actor.log_std(h).clamp(LOG_STD_MIN, self.head_config.max_log_std)

    def sample_action(self, xhat: torch.Tensor, proprio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`self.actor.sample` (action, log_prob) given normalised features: the same reparameterised draw."""
        action, log_prob, _ = self._sample_with_mean(xhat, proprio)
        return action, log_prob

    def _sample_with_mean(self, xhat: torch.Tensor, proprio: torch.Tensor | None):
        mean, log_std = self.actor_distribution(xhat, proprio)
        pre = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(pre), ActionHead._log_prob(pre, mean, log_std), mean

    def update(self, batch: Batch | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update. `batch`: numpy (`replay.Batch`) or `stage_batch`'s tensors. The statistics are 0-d tensors
        (reading one waits for the GPU: log them every few updates, not every one)."""
        cfg = self.config
        b = batch_to_torch(batch, self.device)
        proprio = b["proprio"] if self.head_config.proprio_dim else None
        next_proprio = b["next_proprio"] if self.head_config.proprio_dim else None
        alpha = self.log_alpha.exp().detach()
        xhat, next_xhat = normalize_tokens(b["features"]), normalize_tokens(b["next_features"])
        actor_step = self.updates % cfg.actor_update_every == 0 and self.updates >= cfg.actor_warmup_updates

        # Critic: soft Bellman backup against the min of a random subset of the target ensemble.
        with torch.no_grad():
            next_action, next_log_prob = self.sample_action(next_xhat, next_proprio)
            target_q = self.critic_target.q_values(self.critic_target.encoder.from_normalized(next_xhat, next_proprio),
                                                   next_action)
            subset = torch.randperm(cfg.num_critics, device=self.device)[:cfg.critic_subsample]
            target_q = target_q[subset].min(0).values - alpha * next_log_prob
            y = b["reward"] + cfg.gamma * (1.0 - b["terminal"]) * target_q
        if actor_step:  # the actor is not changed by the critic step: its sample can be drawn now
            action, log_prob, mean = self._sample_with_mean(xhat, proprio)
        q = self.critic.q_values(self.critic.encoder.from_normalized(xhat, proprio), b["action"])
        critic_loss = ((q - y) ** 2).mean(1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        stats = {"losses/critic": critic_loss.detach(), "charts/q_mean": q.detach().mean(),
                 "charts/target_q": y.mean()}

        if actor_step:
            # Actor: maximise mean ensemble Q (of the updated critic) + entropy; only the actor's gradients.
            with torch.no_grad():
                embedding = self.critic.encoder.from_normalized(xhat, proprio)
            q_pi = self.critic.q_for_actions(embedding, action).mean(0)
            actor_loss = (alpha * log_prob - q_pi).mean()
            if cfg.bc_coef > 0:
                actor_loss = actor_loss + cfg.bc_coef * self._bc_loss(mean, b)
            params = self._actor_params
            grads = torch.autograd.grad(actor_loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            self.actor_optimizer.step()
            # Temperature: keep the policy's entropy near the target.
            alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            stats.update({"losses/actor": actor_loss.detach(), "losses/alpha": alpha_loss.detach(),
                          "charts/entropy": -log_prob.detach().mean(), "charts/alpha": self.log_alpha.detach().exp()})

        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)
        self.updates += 1
        return stats

    def _bc_loss(self, mean: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Squared error of the deterministic action (tanh of the actor's `mean` on the batch) to the demonstrated
        one, averaged over the batch's demo/intervention rows, 0 without any (TD3+BC-style anchor: keeps the SFT'd
        actor near the demos while the critic is still rough). Masked, not indexed: no wait for the GPU."""
        rows = (b["intervention"] > 0.5).to(mean.dtype)
        per_row = ((torch.tanh(mean) - b["action"]) ** 2).mean(1)
        return (per_row * rows).sum() / rows.sum().clamp(min=1.0)

    # --- actor <-> policy -----------------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        return head_state_to_numpy(self.actor)

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.actor.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()})

    # --- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "actor_optimizer": self.actor_optimizer.state_dict(),
                "critic_optimizer": self.critic_optimizer.state_dict(),
                "alpha_optimizer": self.alpha_optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.updates = int(state["updates"])
