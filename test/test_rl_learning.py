"""The learner learns: on tasks with a known answer, success rises well above the initial policy within a
bounded number of environment steps, for SAC (with and without demos) and PPO, over several seeds.

The environment loop here plays the policy node's part: it acts with the learner's latest PUBLISHED head
(decoded from the weights payload, as the policy node does), so the weights path is exercised too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import (  # noqa: E402
    DIM,
    TOKENS,
    Bandit,
    PolicyStandIn,
    Reach,
    act,
    bandit_success_rate,
    explore_from_scratch,
    reach_success_rate,
)

from irevla_ros.core.rl import OnlineLearner, RLConfig  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_learner(tmp_path, algorithm: str, seed: int, **overrides) -> OnlineLearner:
    cfg = dict(algorithm=algorithm, run_dir=str(tmp_path / f"{algorithm}-{seed}"), seed=seed,
               feature_tokens=TOKENS, feature_dim=DIM, num_learned_tokens=2, hidden_dim=64, batch_size=64,
               warmup_transitions=32, utd_ratio=2.0, actor_lr=1e-3, critic_lr=1e-3, ppo_lr=1e-3,
               ppo_rollout_steps=128, ppo_minibatch_size=32, online_capacity_bytes=8 << 20,
               demo_capacity_bytes=1 << 20, publish_every_updates=10, tensorboard=False)
    cfg.update(overrides)
    return OnlineLearner(RLConfig(**cfg))


@pytest.mark.parametrize("algorithm, episodes", [("sac", 250), ("ppo", 1200)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contextual_bandit_success_rises(tmp_path, algorithm, episodes, seed):
    learner = make_learner(tmp_path, algorithm, seed)
    explore_from_scratch(learner)
    env, evaluation = Bandit(seed), Bandit(seed + 100)
    evaluation.project = env.project
    policy = PolicyStandIn(learner)
    before = bandit_success_rate(policy.head, evaluation)
    for _ in range(episodes):
        c, f = env.reset()
        a, log_prob = act(policy.head, f, deterministic=False)
        assert learner.add_transition(env.transition(c, f, a, log_prob=log_prob, version=policy.version))
        learner.train()
        policy.sync()
    after = bandit_success_rate(policy.head, evaluation)
    assert before <= 0.15, before
    assert after >= before + 0.6, (before, after)
    assert learner.version > 0 and sum(learner.rejected.values()) == 0


def run_reach(learner: OnlineLearner, env: Reach, episodes: int, policy: PolicyStandIn) -> None:
    for _ in range(episodes):
        f = env.reset()
        while f is not None:
            a, log_prob = act(policy.head, f, deterministic=False)
            t, f = env.step(f, a, log_prob=log_prob, version=policy.version)
            assert learner.add_transition(t)
            learner.train()
            policy.sync()


@pytest.mark.parametrize("seed", [0, 1])
def test_goal_reaching_sac_from_demonstrations(tmp_path, seed):
    """Multi-step, sparse reward: RLPD with a handful of expert episodes in the demo buffer."""
    learner = make_learner(tmp_path, "sac", seed, utd_ratio=1.0, gamma=0.9, warmup_transitions=64)
    env, evaluation = Reach(seed), Reach(seed + 100)
    evaluation.project = env.project
    for _ in range(10):  # expert episodes, as a teleoperator would give them (interventions)
        f = env.reset()
        while f is not None:
            t, f = env.step(f, env.expert(), intervention=True)
            learner.add_transition(t)
    assert len(learner.demo) > 0
    policy = PolicyStandIn(learner)
    before = reach_success_rate(policy.head, evaluation)
    run_reach(learner, env, 80, policy)
    after = reach_success_rate(policy.head, evaluation)
    assert before <= 0.2 and after >= before + 0.5, (before, after)


def test_goal_reaching_ppo(tmp_path):
    learner = make_learner(tmp_path, "ppo", 0, gamma=0.9, ppo_rollout_steps=256, ppo_minibatch_size=64)
    explore_from_scratch(learner)
    env, evaluation = Reach(0), Reach(100)
    evaluation.project = env.project
    policy = PolicyStandIn(learner)
    before = reach_success_rate(policy.head, evaluation)
    run_reach(learner, env, 300, policy)
    after = reach_success_rate(policy.head, evaluation)
    assert before <= 0.2 and after >= before + 0.4, (before, after)
    assert learner.algo.iterations >= 5


def test_only_the_head_and_critics_train_the_backbone_is_untouched(tmp_path):
    """Features come from a frozen backbone (here the model engineer's tiny BLIP-2): the learner never sees
    it, its optimizers hold only head/critic parameters, and the backbone stays bit-identical."""
    from irevla_ros.core.model.vla import VLAModel

    model = VLAModel.from_preset("tiny")
    fingerprint = model.backbone_fingerprint()
    images = [np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)]
    with model.frozen():
        out = model.act(images, ["reach the red ball"])
    learner = make_learner(tmp_path, "sac", 0, feature_tokens=0, feature_dim=0, warmup_transitions=2,
                           batch_size=8, num_learned_tokens=8, hidden_dim=32)
    from irevla_ros.core.data.codec import Transition

    for i in range(6):
        learner.add_transition(Transition("e", i, out.features[0], out.action[0], log_prob=float(out.log_prob[0]),
                                          done=i == 5))
    assert learner.train() > 0
    assert learner.feature_shape == model.feature_shape
    trained = {id(p) for opt in (learner.algo.actor_optimizer, learner.algo.critic_optimizer)
               for group in opt.param_groups for p in group["params"]}
    assert trained == {id(p) for p in [*learner.algo.actor.parameters(), *learner.algo.critic.parameters()]}
    assert not trained & {id(p) for p in model.parameters()}
    assert model.backbone_fingerprint() == fingerprint
