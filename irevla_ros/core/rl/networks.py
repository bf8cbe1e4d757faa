"""Training-only networks: the critic ensemble (SAC) and the value network (PPO).

Both read the same frozen-backbone feature tokens as the actor (`ActionHead`), each through its own
TokenLearner, so no gradient of theirs ever touches the actor's pooling. None of this is deployed: the policy
node only ever receives the actor's state dict.

Speed (an update's cost is mostly per-token work on [B, T, D] features): every pooling starts with a LayerNorm over
D, so the parameter-free part (`normalize_tokens`) is computed once per batch and shared by the actor, the critics
and the target critics; each module's affine (gamma, beta) is folded into its first per-token layer and applied
after pooling, which is exact because the attention weights sum to one over tokens:
    sum_t w_t (gamma * xhat_t + beta) = gamma * sum_t w_t xhat_t + beta.
No gradient then flows back through the per-token normalisation (the features are data, not parameters).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from irevla_ros.core.model.head import HeadConfig, TokenLearner

LN_EPS = 1e-5  # nn.LayerNorm's default, used by every pooling's norm (checked in `pool_normalized`)


def normalize_tokens(features: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim without affine: the shared first step of every pooling (float32)."""
    return F.layer_norm(features.float(), (features.shape[-1],), eps=LN_EPS)


def pool_normalized(module: nn.Module, xhat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`module(tokens)` for a TokenLearner or LightPooling, given `xhat = normalize_tokens(tokens)`: [B, S, D].
    Same function, computed with the norm's affine folded into the first layer (see the module docstring)."""
    norm = module.norm
    if norm.eps != LN_EPS or norm.weight is None:
        raise ValueError(f"pool_normalized needs an affine LayerNorm with eps={LN_EPS}, got {norm}")
    gamma, beta = norm.weight, norm.bias
    if isinstance(module, TokenLearner):
        first, second = module.attention[0], module.attention[2]
        hidden = F.linear(xhat, first.weight * gamma, first.bias + first.weight @ beta)
        logits = F.linear(F.gelu(hidden), second.weight, second.bias)
    else:
        first = module.attention
        logits = F.linear(xhat, first.weight * gamma, first.bias + first.weight @ beta)
    if mask is not None:
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
    weights = logits.softmax(dim=1)  # [B, T, S]
    return torch.bmm(weights.transpose(1, 2), xhat) * gamma + beta


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

    def shared(self, x: torch.Tensor, rows: slice = slice(None), bias: bool = True) -> torch.Tensor:
        """The same input [B, in] for every member -> [E, B, out], as ONE wide matmul (no [E, B, in] copy).
        `rows` uses only part of the input rows of the weight (x holds just those input features)."""
        weight = self.weight[:, rows]
        ensemble, n_in, n_out = weight.shape
        out = (x @ weight.transpose(0, 1).reshape(n_in, ensemble * n_out)).view(-1, ensemble, n_out).transpose(0, 1)
        return out + self.bias if bias else out


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
        return self.from_normalized(normalize_tokens(features), proprio)

    def from_normalized(self, xhat: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` given `normalize_tokens(features)` (shared between networks within an update)."""
        pooled = pool_normalized(self.token_learner, xhat).flatten(1)
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
        """[E, B] Q values of (embedding, action) for every member."""
        return self.q[1:](self.q[0].shared(torch.cat([embedding, action], dim=-1))).squeeze(-1)

    def q_for_actions(self, embedding: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """`q_values` for the actor's loss: the embedding's share of the first layer is computed without a graph
        (only the action's path is differentiated; the critic itself is not trained by the actor's loss)."""
        n = embedding.shape[-1]
        with torch.no_grad():
            from_embedding = self.q[0].shared(embedding, slice(0, n))
        return self.q[1:](from_embedding + self.q[0].shared(action, slice(n, None), bias=False)).squeeze(-1)

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
