"""Training-only networks: the critic ensemble (SAC) and the value network (PPO).

Both read the same frozen-backbone feature tokens as the actor (`ActionHead`), each through its own
TokenLearner, so no gradient of theirs ever touches the actor's pooling. None of this is deployed: the policy
node only ever receives the actor's state dict.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from irevla_ros.core.model.head import HeadConfig, TokenLearner


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: [E, B, in] -> [E, B, out]."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class LightPooling(nn.Module):
    """S attention maps from ONE linear layer per token (TokenLearner without its D x D hidden layer): ~D/S times
    cheaper per token than the actor's TokenLearner, which dominates an update's cost (D = 2560 for BLIP-2)."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.Linear(dim, num_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens)
        weights = self.attention(x).softmax(dim=1)  # [B, T, S]
        return torch.einsum("bts,btd->bsd", weights, x)


POOLINGS = ("light", "token_learner")


class FeatureEncoder(nn.Module):
    """Feature tokens [B, T, D] (+ proprio) -> a flat embedding: `light` pooling (default for critics and the value
    net) or the same TokenLearner the actor uses."""

    def __init__(self, config: HeadConfig, pooling: str = "light"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config = config
        pool = LightPooling if pooling == "light" else TokenLearner
        self.token_learner = pool(config.feature_dim, config.num_learned_tokens)
        self.out_dim = config.feature_dim * config.num_learned_tokens + config.proprio_dim

    def forward(self, features: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.token_learner(features.float()).flatten(1)
        if self.config.proprio_dim:
            pooled = torch.cat([pooled, proprio.float()], dim=-1)
        return pooled


class CriticEnsemble(nn.Module):
    """Q_1..Q_E(s, a): a shared token-learner encoder and E MLP heads with LayerNorm (as in RLPD)."""

    def __init__(self, config: HeadConfig, num_critics: int, pooling: str = "light"):
        super().__init__()
        self.num_critics = num_critics
        self.encoder = FeatureEncoder(config, pooling)
        h = config.hidden_dim
        self.q = nn.Sequential(
            EnsembleLinear(num_critics, self.encoder.out_dim + config.action_dim, h), nn.LayerNorm(h), nn.ReLU(),
            EnsembleLinear(num_critics, h, h), nn.LayerNorm(h), nn.ReLU(),
            EnsembleLinear(num_critics, h, 1),
        )

    def q_values(self, embedding: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([embedding, action], dim=-1)
        return self.q(x.unsqueeze(0).expand(self.num_critics, -1, -1)).squeeze(-1)  # [E, B]

    def forward(self, features: torch.Tensor, action: torch.Tensor,
                proprio: torch.Tensor | None = None) -> torch.Tensor:
        return self.q_values(self.encoder(features, proprio), action)


class ValueNetwork(nn.Module):
    """V(s) for PPO's advantages."""

    def __init__(self, config: HeadConfig, pooling: str = "light"):
        super().__init__()
        self.encoder = FeatureEncoder(config, pooling)
        h = config.hidden_dim
        self.mlp = nn.Sequential(nn.Linear(self.encoder.out_dim, h), nn.LayerNorm(h), nn.Tanh(),
                                 nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))

    def forward(self, features: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.encoder(features, proprio)).squeeze(-1)
