"""The light action head iRe-VLA puts on the VLM: a token learner + MLP producing continuous 7-D actions.

TokenLearner (Ryoo et al., 2021) pools the backbone's variable token set into a few learned tokens with
spatial attention maps; an MLP maps them to a tanh-squashed Gaussian (SAC/PPO) whose tanh(mean) is the
deterministic evaluation action. The head is the only part stage-1 RL trains, so it must be small, cheap and
self-contained: it takes feature tokens [B, T, D] and nothing else from the backbone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from irevla_ros.interfaces import ACTION_DIM

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
INIT_LOG_STD = -1.5
"""Exploration noise of a new head: std 0.22 before tanh, the same for every input. SFT fits only the mean (MSE),
so this is the noise stage-1 RL starts from; a default init (log_std ~ 0, std ~ 1) made online actions nearly
uniform in [-1, 1] and a SFT'd policy almost never succeeded while exploring."""
FINE_TUNE_MAX_LOG_STD = INIT_LOG_STD
"""The cap a VLA's head gets (HeadConfig.max_log_std): stage 1 fine-tunes an SFT'd head and may narrow its noise but
never widen it past the new head's 0.22. Without it, SAC with the SFT'd mean anchored by behaviour cloning widened
the noise instead (entropy -3 -> +2.4 nats within 100 actor updates) and online success on a task the deterministic
policy solved fell from 65 % to ~25 % (docs/architecture.md, "Stage 1 may not widen the exploration noise")."""


@dataclass
class HeadConfig:
    feature_dim: int = 64
    """Width D of the backbone's output tokens."""
    num_learned_tokens: int = 8
    hidden_dim: int = 256
    proprio_dim: int = 0
    """Robot state appended after pooling (0 = images + language only, as in the paper)."""
    action_dim: int = ACTION_DIM
    max_log_std: float = LOG_STD_MAX
    """Upper bound of the exploration noise's log std, for the policy's sampling and the learner alike. The
    unbounded SAC convention by default (a head learning from scratch needs wide noise); VLA heads get
    FINE_TUNE_MAX_LOG_STD (VLAModel)."""

    def __post_init__(self) -> None:
        for name in ("feature_dim", "num_learned_tokens", "hidden_dim", "action_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"HeadConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.proprio_dim < 0:
            raise ValueError(f"HeadConfig.proprio_dim must be >= 0, got {self.proprio_dim!r}")
        if not LOG_STD_MIN < float(self.max_log_std) <= LOG_STD_MAX:
            raise ValueError(f"HeadConfig.max_log_std must be in ({LOG_STD_MIN}, {LOG_STD_MAX}], got "
                             f"{self.max_log_std!r}")

    def matches(self, given: object) -> bool:
        """Whether a payload's head-config dict describes this head (fields it lacks take their defaults, so
        weights from before a field existed still load)."""
        if not isinstance(given, dict):
            return False
        try:
            return asdict(HeadConfig(**given)) == asdict(self)
        except (TypeError, ValueError):
            return False


class TokenLearner(nn.Module):
    """S learned attention maps over the T input tokens -> S output tokens."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_tokens))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(tokens)
        logits = self.attention(x)  # [B, T, S]
        if mask is not None:
            logits = logits.masked_fill(~mask[..., None], float("-inf"))
        weights = logits.softmax(dim=1)
        return torch.einsum("bts,btd->bsd", weights, x)


class ActionHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.token_learner = TokenLearner(config.feature_dim, config.num_learned_tokens)
        in_dim = config.feature_dim * config.num_learned_tokens + config.proprio_dim
        self.trunk = nn.Sequential(
            nn.Linear(in_dim, config.hidden_dim), nn.LayerNorm(config.hidden_dim), nn.GELU(),
            nn.Linear(config.hidden_dim, config.hidden_dim), nn.GELU(),
        )
        self.mean = nn.Linear(config.hidden_dim, config.action_dim)
        self.log_std = nn.Linear(config.hidden_dim, config.action_dim)
        nn.init.zeros_(self.log_std.weight)
        nn.init.constant_(self.log_std.bias, INIT_LOG_STD)

    def embed(self, features: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.token_learner(features.to(self.mean.weight.dtype)).flatten(1)
        if self.config.proprio_dim:
            if proprio is None:
                raise ValueError(f"this head expects proprio of size {self.config.proprio_dim}")
            pooled = torch.cat([pooled, proprio.to(pooled.dtype)], dim=-1)
        return self.trunk(pooled)

    def forward(self, features: torch.Tensor, proprio: torch.Tensor | None = None):
        """Pre-tanh Gaussian parameters (mean, log_std)."""
        h = self.embed(features, proprio)
        log_std = self.log_std(h).clamp(LOG_STD_MIN, self.config.max_log_std)
        return self.mean(h), log_std

    def deterministic(self, features: torch.Tensor, proprio: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation action in [-1, 1]."""
        mean, _ = self(features, proprio)
        return torch.tanh(mean)

    def sample(self, features: torch.Tensor, proprio: torch.Tensor | None = None):
        """Reparameterised sample: (action in [-1, 1], log_prob [B], tanh(mean))."""
        mean, log_std = self(features, proprio)
        std = log_std.exp()
        pre = mean + std * torch.randn_like(mean)
        action = torch.tanh(pre)
        return action, self._log_prob(pre, mean, log_std), torch.tanh(mean)

    def log_prob(self, features: torch.Tensor, action: torch.Tensor,
                 proprio: torch.Tensor | None = None) -> torch.Tensor:
        """log pi(action | features) for actions in (-1, 1) (PPO ratios, behaviour cloning)."""
        mean, log_std = self(features, proprio)
        clipped = action.clamp(-1 + 1e-6, 1 - 1e-6)
        return self._log_prob(torch.atanh(clipped), mean, log_std)

    @staticmethod
    def _log_prob(pre: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        gauss = -0.5 * (((pre - mean) / log_std.exp()) ** 2) - log_std - 0.5 * math.log(2 * math.pi)
        # tanh change of variables, numerically stable form of log(1 - tanh(x)^2)
        squash = 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))
        return (gauss - squash).sum(-1)
