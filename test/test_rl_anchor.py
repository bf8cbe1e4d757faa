"""Fine-tuning an SFT'd head with SAC: the actor waits for the critic (actor_warmup_updates) and a behaviour-cloning
anchor on demo rows (bc_coef) pulls its deterministic action toward the demonstrated one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irevla_ros.core.model.head import HeadConfig
from irevla_ros.core.rl import RLConfig, SACLearner
from irevla_ros.core.rl.replay import Batch

T, D = 6, 16


def _batch(rng: np.random.Generator, n: int, action: np.ndarray, demo: bool) -> Batch:
    features = rng.normal(0, 1, (n, T, D)).astype(np.float16)
    return Batch(features=features, proprio=np.zeros((n, 0), np.float32), action=np.tile(action, (n, 1)),
                 reward=np.zeros(n, np.float32), next_features=features, next_proprio=np.zeros((n, 0), np.float32),
                 terminal=np.zeros(n, np.float32), log_prob=np.zeros(n, np.float32),
                 intervention=np.full(n, float(demo), np.float32))


def _actor_state(learner: SACLearner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.actor.state_dict().items()}


def test_the_actor_waits_for_the_critic_warmup(tmp_path):
    head = HeadConfig(feature_dim=D, num_learned_tokens=2, hidden_dim=32)
    learner = SACLearner(head, RLConfig(run_dir=str(tmp_path), actor_warmup_updates=5, batch_size=16))
    rng = np.random.default_rng(0)
    before = _actor_state(learner)
    critic_params = [p.clone() for p in learner.critic.parameters()]
    for _ in range(5):
        stats = learner.update(_batch(rng, 16, np.zeros(7, np.float32), demo=False))
        assert "losses/actor" not in stats
    assert all(torch.equal(before[k], v) for k, v in learner.actor.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(critic_params, learner.critic.parameters(), strict=True))
    stats = learner.update(_batch(rng, 16, np.zeros(7, np.float32), demo=False))
    assert "losses/actor" in stats
    assert any(not torch.equal(before[k], v) for k, v in learner.actor.state_dict().items())


def _distance_to_demo_action(bc_coef: float, tmp_path, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    head = HeadConfig(feature_dim=D, num_learned_tokens=2, hidden_dim=32)
    learner = SACLearner(head, RLConfig(run_dir=str(tmp_path), bc_coef=bc_coef, batch_size=16, actor_lr=3e-3))
    rng = np.random.default_rng(seed)
    target = np.array([0.6, -0.5, 0.4, 0.0, 0.2, -0.3, 0.8], np.float32)
    probe = _batch(np.random.default_rng(99), 64, target, demo=True)

    def distance() -> float:
        with torch.no_grad():
            action = learner.actor.deterministic(torch.from_numpy(probe.features).float())
        return float(((action - torch.from_numpy(target)) ** 2).mean())

    start = distance()
    for _ in range(60):
        learner.update(_batch(rng, 16, target, demo=True))
    return start, distance()


def test_the_bc_anchor_pulls_the_actor_to_the_demonstrated_action(tmp_path):
    for seed in (0, 1):
        start, anchored = _distance_to_demo_action(2.0, tmp_path / f"bc{seed}", seed)
        _, free = _distance_to_demo_action(0.0, tmp_path / f"free{seed}", seed)
        assert anchored < 0.25 * start, (seed, start, anchored)
        assert anchored < 0.5 * free, (seed, anchored, free)


def test_the_anchor_ignores_online_rows(tmp_path):
    head = HeadConfig(feature_dim=D, num_learned_tokens=2, hidden_dim=32)
    learner = SACLearner(head, RLConfig(run_dir=str(tmp_path), bc_coef=1.0))
    batch = _batch(np.random.default_rng(0), 8, np.ones(7, np.float32), demo=False)
    from irevla_ros.core.rl.networks import normalize_tokens
    from irevla_ros.core.rl.sac import batch_to_torch

    b = batch_to_torch(batch, learner.device)
    with torch.no_grad():
        mean, _ = learner.actor_distribution(normalize_tokens(b["features"]), None)
        assert float(learner._bc_loss(mean, b)) == 0.0
        b["intervention"][:4] = 1.0
        only_demo_rows = ((torch.tanh(mean[:4]) - b["action"][:4]) ** 2).mean()
        assert float(learner._bc_loss(mean, b)) == pytest.approx(float(only_demo_rows), rel=1e-6)
        assert float(only_demo_rows) > 0.0


def _log_std_after_entropy_pressure(max_log_std: float, tmp_path) -> float:
    """Mean log std of the actor after 40 updates whose loss rewards entropy above all (large alpha, high target)."""
    torch.manual_seed(0)
    head = HeadConfig(feature_dim=D, num_learned_tokens=2, hidden_dim=32, max_log_std=max_log_std)
    learner = SACLearner(head, RLConfig(run_dir=str(tmp_path), batch_size=16, actor_lr=3e-3, init_alpha=1.0,
                                        target_entropy=10.0, actor_warmup_updates=0, bc_coef=0.0))
    rng = np.random.default_rng(0)
    for _ in range(40):
        learner.update(_batch(rng, 16, np.zeros(7, np.float32), demo=False))
    probe = torch.from_numpy(_batch(np.random.default_rng(1), 32, np.zeros(7, np.float32), demo=False).features)
    with torch.no_grad():
        _, log_std = learner.actor(probe.float())  # what the policy samples with
    return float(log_std.mean())


def test_stage1_never_widens_the_exploration_noise_beyond_the_heads_cap(tmp_path):
    from irevla_ros.core.model.head import INIT_LOG_STD, LOG_STD_MAX

    uncapped = _log_std_after_entropy_pressure(LOG_STD_MAX, tmp_path / "a")
    assert uncapped > INIT_LOG_STD + 0.1  # the pressure is real: without the cap the noise widens
    capped = _log_std_after_entropy_pressure(INIT_LOG_STD, tmp_path / "b")
    assert capped <= INIT_LOG_STD + 1e-6


def test_head_config_matching_fills_fields_an_older_payload_lacks():
    from dataclasses import asdict

    from irevla_ros.core.model.head import FINE_TUNE_MAX_LOG_STD

    head = HeadConfig(feature_dim=D, num_learned_tokens=2, hidden_dim=32)
    older = {k: v for k, v in asdict(head).items() if k != "max_log_std"}
    assert head.matches(older) and head.matches(asdict(head))
    assert not head.matches({**asdict(head), "max_log_std": FINE_TUNE_MAX_LOG_STD})
    assert not head.matches({**asdict(head), "hidden_dim": 64}) and not head.matches(None)
    assert not head.matches({**asdict(head), "unknown": 1})
    for bad in (-6.0, 2.5, float("nan")):
        try:
            HeadConfig(feature_dim=D, max_log_std=bad)
        except ValueError:
            continue
        raise AssertionError(f"max_log_std={bad} was accepted")


def test_a_vla_head_is_capped_and_a_head_learning_from_scratch_is_not():
    from irevla_ros.core.model.head import FINE_TUNE_MAX_LOG_STD, LOG_STD_MAX
    from irevla_ros.core.model.vla import VLAModel

    assert HeadConfig(feature_dim=D).max_log_std == LOG_STD_MAX  # e.g. the RL tests' bandits: wide noise allowed
    model = VLAModel.from_preset("tiny", num_cameras=1, seed=0, head={"proprio_dim": 8})
    assert model.config.head.max_log_std == FINE_TUNE_MAX_LOG_STD
    explicit = VLAModel.from_preset("tiny", num_cameras=1, seed=0, head={"max_log_std": -1.0})
    assert explicit.config.head.max_log_std == -1.0
