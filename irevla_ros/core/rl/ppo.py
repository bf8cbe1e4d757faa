"""PPO with GAE on the same action head (the paper's simulation choice), plus an optional BC term on demos.

`update(rollout)` runs one PPO iteration (epochs x minibatches) over a rollout of complete transitions that
the current head (or one `ppo_max_policy_lag` versions older) acted. Rows of a rollout are ordered by
episode and step; `cont[i] = 1` when row i+1 is row i's successor, which is what GAE chains over. An episode's
last row in the rollout bootstraps from V(next features) unless it is terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from irevla_ros.core.model.head import ActionHead, HeadConfig
from irevla_ros.core.rl.config import RLConfig
from irevla_ros.core.rl.networks import ValueNetwork
from irevla_ros.core.rl.replay import Batch
from irevla_ros.core.rl.sac import batch_to_torch
from irevla_ros.core.rl.weights import head_state_to_numpy


@dataclass
class Rollout:
    batch: Batch
    cont: np.ndarray  # float32 [N]: 1 where the next row continues this row's episode


def compute_gae(reward: torch.Tensor, value: torch.Tensor, next_value: torch.Tensor, terminal: torch.Tensor,
                cont: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over rows chained by `cont`. Returns (advantages, returns)."""
    delta = reward + gamma * (1.0 - terminal) * next_value - value
    adv = torch.zeros_like(delta)
    last = torch.zeros((), dtype=delta.dtype, device=delta.device)
    for i in range(len(delta) - 1, -1, -1):
        last = delta[i] + gamma * lam * cont[i] * last
        adv[i] = last
    return adv, adv + value


class PPOLearner:
    def __init__(self, head_config: HeadConfig, config: RLConfig, device: torch.device | str = "cpu",
                 seed: int = 0):
        self.config = config
        self.head_config = head_config
        self.device = torch.device(device)
        self.actor = ActionHead(head_config).to(self.device)
        self.value = ValueNetwork(head_config, config.critic_pooling).to(self.device)
        self.optimizer = torch.optim.Adam([*self.actor.parameters(), *self.value.parameters()], lr=config.ppo_lr,
                                          eps=1e-5)
        self.rng = np.random.default_rng(seed)
        self.updates = 0
        self.iterations = 0

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.actor.parameters(), *self.value.parameters()]

    def update(self, rollout: Rollout, demo: Batch | None = None) -> dict[str, float]:
        cfg = self.config
        b = batch_to_torch(rollout.batch, self.device)
        use_proprio = bool(self.head_config.proprio_dim)
        p = b["proprio"] if use_proprio else None
        with torch.no_grad():
            value = self.value(b["features"], p)
            next_value = self.value(b["next_features"], b["next_proprio"] if use_proprio else None)
            cont = torch.from_numpy(rollout.cont).to(self.device, torch.float32)
            adv, ret = compute_gae(b["reward"], value, next_value, b["terminal"], cont, cfg.gamma, cfg.gae_lambda)
            # Human interventions were not sampled by the head: their "old" log-prob is the current one.
            old_log_prob = b["log_prob"].clone()
            human = b["intervention"] > 0
            if human.any():
                old_log_prob[human] = self.actor.log_prob(b["features"][human], b["action"][human],
                                                          p[human] if use_proprio else None)
        d = batch_to_torch(demo, self.device) if demo is not None and len(demo) and cfg.bc_coef > 0 else None

        n = len(adv)
        mb = min(cfg.ppo_minibatch_size, n)
        sums = {"policy": 0.0, "value": 0.0, "entropy": 0.0, "kl": 0.0, "clipfrac": 0.0, "bc": 0.0}
        steps = 0
        for _ in range(cfg.ppo_epochs):
            order = self.rng.permutation(n)
            for start in range(0, n - mb + 1, mb):
                idx = torch.from_numpy(order[start:start + mb]).to(self.device)
                mp = p[idx] if use_proprio else None
                new_log_prob = self.actor.log_prob(b["features"][idx], b["action"][idx], mp)
                log_ratio = (new_log_prob - old_log_prob[idx]).clamp(-20.0, 20.0)
                ratio = log_ratio.exp()
                a = adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8) if mb > 1 else a
                policy_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                value_loss = 0.5 * ((self.value(b["features"][idx], mp) - ret[idx]) ** 2).mean()
                loss = policy_loss + cfg.vf_coef * value_loss
                entropy = -new_log_prob.mean()  # on-policy sample estimate of the tanh-Gaussian's entropy
                if cfg.ent_coef > 0:
                    _, sampled_log_prob, _ = self.actor.sample(b["features"][idx], mp)
                    loss = loss + cfg.ent_coef * sampled_log_prob.mean()
                if d is not None:
                    j = torch.from_numpy(self.rng.integers(0, len(d["action"]), size=mb)).to(self.device)
                    bc = -self.actor.log_prob(d["features"][j], d["action"][j],
                                              d["proprio"][j] if use_proprio else None).mean()
                    loss = loss + cfg.bc_coef * bc
                    sums["bc"] += float(bc)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.trainable_parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    sums["policy"] += float(policy_loss)
                    sums["value"] += float(value_loss)
                    sums["entropy"] += float(entropy)
                    sums["kl"] += float(((ratio - 1) - log_ratio).mean())
                    sums["clipfrac"] += float(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())
                steps += 1
                self.updates += 1
        self.iterations += 1
        k = max(steps, 1)
        stats = {"losses/policy": sums["policy"] / k, "losses/value": sums["value"] / k,
                 "charts/entropy": sums["entropy"] / k, "charts/approx_kl": sums["kl"] / k,
                 "charts/clipfrac": sums["clipfrac"] / k, "charts/value_mean": float(value.mean()),
                 "charts/advantage_mean": float(adv.mean())}
        if d is not None:
            stats["losses/bc"] = sums["bc"] / k
        return stats

    def get_weights(self) -> dict[str, np.ndarray]:
        return head_state_to_numpy(self.actor)

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.actor.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()})

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "value": self.value.state_dict(),
                "optimizer": self.optimizer.state_dict(), "updates": self.updates, "iterations": self.iterations}

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.value.load_state_dict(state["value"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.iterations = int(state["iterations"])
