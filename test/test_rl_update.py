"""The optimised SAC update (shared token normalisation, folded LayerNorm affines, one wide matmul for the critic
ensemble, actor-only gradients) computes the same update as plain module calls: same losses, same parameters after
several updates, same random draws. And the folded poolings equal the modules they stand for."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import reference_sac_update  # noqa: E402

from irevla_ros.core.model.head import HeadConfig, TokenLearner  # noqa: E402
from irevla_ros.core.rl import RLConfig, SACLearner  # noqa: E402
from irevla_ros.core.rl.networks import LightPooling, normalize_tokens, pool_normalized  # noqa: E402
from irevla_ros.core.rl.replay import Batch  # noqa: E402

T, D = 12, 16
INVARIANT_BIASES = ("token_learner.attention.2.bias", "token_learner.attention.bias")
"""The last bias before the softmax over tokens adds the same value to every token: the pooling cannot depend on
it and its true gradient is 0, so Adam turns float noise (different in any two correct implementations) into
steps of +-lr. Compared as part of the functions below instead."""


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial LayerNorm affines (fresh ones are 1 and 0, which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("pool", [TokenLearner, LightPooling])
def test_folded_pooling_equals_the_module(pool):
    module = pool(D, 3)
    _perturb(module, 0)
    tokens = torch.randn(5, T, D) * 3 + 1
    mask = torch.rand(5, T) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(pool_normalized(module, normalize_tokens(tokens)), module(tokens), rtol=1e-5, atol=1e-5)
    if pool is TokenLearner:
        torch.testing.assert_close(pool_normalized(module, normalize_tokens(tokens), mask), module(tokens, mask),
                                   rtol=1e-5, atol=1e-5)


def _batch(rng: np.random.Generator, n: int, proprio_dim: int) -> Batch:
    return Batch(features=rng.normal(0, 2, (n, T, D)).astype(np.float16),
                 proprio=rng.normal(size=(n, proprio_dim)).astype(np.float32),
                 action=rng.uniform(-1, 1, (n, 7)).astype(np.float32), reward=rng.random(n).astype(np.float32),
                 next_features=rng.normal(0, 2, (n, T, D)).astype(np.float16),
                 next_proprio=rng.normal(size=(n, proprio_dim)).astype(np.float32),
                 terminal=(rng.random(n) < 0.2).astype(np.float32), log_prob=np.zeros(n, np.float32),
                 intervention=np.zeros(n, np.float32))


@pytest.mark.parametrize("proprio_dim, pooling, actor_every", [(0, "light", 1), (8, "token_learner", 2),
                                                                (3, "light", 3)])
def test_fast_update_matches_plain_module_calls(proprio_dim, pooling, actor_every):
    torch.manual_seed(0)
    head = HeadConfig(feature_dim=D, num_learned_tokens=3, hidden_dim=32, proprio_dim=proprio_dim)
    cfg = RLConfig(feature_tokens=T, feature_dim=D, critic_pooling=pooling, actor_update_every=actor_every,
                   num_critics=3, critic_subsample=2, actor_lr=3e-3, critic_lr=3e-3)
    fast = SACLearner(head, cfg)
    for net in (fast.actor, fast.critic):
        _perturb(net, 1)
    fast.critic_target.load_state_dict(fast.critic.state_dict())
    plain = SACLearner(head, cfg)
    plain.load_state_dict(copy.deepcopy(fast.state_dict()))
    rng = np.random.default_rng(0)
    for i in range(6):
        batch = _batch(rng, 32, proprio_dim)
        state = torch.get_rng_state()
        got = fast.update(batch)
        after_fast = torch.get_rng_state()
        torch.set_rng_state(state)
        want = reference_sac_update(plain, batch)
        assert torch.equal(after_fast, torch.get_rng_state())  # the same random draws, in the same order
        for key, value in want.items():
            assert float(got[key]) == pytest.approx(value, rel=1e-4, abs=1e-5), (i, key)
    for name in ("actor", "critic", "critic_target"):
        a, b = getattr(fast, name).state_dict(), getattr(plain, name).state_dict()
        for k in a:
            if k.endswith(INVARIANT_BIASES):
                continue
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    # ... and as functions (the skipped biases included): same actions and Q values.
    probe = _batch(rng, 16, proprio_dim)
    f, p, act = (torch.from_numpy(getattr(probe, k)).float() for k in ("features", "proprio", "action"))
    p = p if proprio_dim else None
    for got, want in zip(fast.actor(f, p), plain.actor(f, p), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.critic(f, act, p), plain.critic(f, act, p), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.log_alpha, plain.log_alpha)
    assert fast.updates == plain.updates == 6
