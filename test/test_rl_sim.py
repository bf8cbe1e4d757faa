"""The learner learns on the fast simulator (issue 7's done-when), cheap enough for the suite.

SimEnv `reach` (the franka node's controller over MuJoCo, no cameras); features are a fixed random projection of the
goal's position relative to the TCP (standing in for the frozen backbone: the learner sees features only). This test
keeps its own goal check, looser than the sim's 4 cm (`GOAL_TOL_M`), short episodes (`MAX_STEPS`), and a progress
reward (distance gained per step, a potential-based shaping that keeps the optimal policy, Ng et al. 1999) plus 1 on
reaching the goal. The policy acts with the learner's latest PUBLISHED head, as the policy node would.
`bench/learner.py --sim` is the long form: the sim's own tolerance and a sparse reward.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_tasks import PolicyStandIn, act  # noqa: E402

from irevla_ros.core.data.codec import Transition  # noqa: E402
from irevla_ros.core.rl import OnlineLearner, RLConfig  # noqa: E402

GOAL_TOL_M = 0.08  # m: this test's success radius around the target (the sim's reach task uses 4 cm)
MAX_STEPS = 16  # steps per episode: the scripted expert needs 9-15 from home at <= 3 cm per step
TOKENS, DIM = 4, 16
DEMOS, ONLINE_EPISODES, EVAL_LAYOUTS = 6, 40, 10


@pytest.fixture(scope="module")
def env():
    from irevla_ros.sim.env import SimEnv

    sim = SimEnv("reach", seed=0, cameras=())
    yield sim
    sim.close()


class ReachTask:
    """The test's view of SimEnv: features, its own success check, shaped reward."""

    def __init__(self, env, seed: int):
        self.env = env
        self.projection = np.random.default_rng(1000 + seed).normal(0, 1.0, (3, TOKENS * DIM)).astype(np.float32)
        self.episodes = 0

    def offset(self) -> np.ndarray:
        world = self.env.world
        return world.mocap_position(self.env.episode.params["object"]) - world.tcp_position()

    def features(self) -> np.ndarray:
        return ((4.0 * self.offset()).astype(np.float32) @ self.projection).reshape(TOKENS, DIM).astype(np.float16)

    def run(self, layout: int, policy, learner: OnlineLearner | None = None, expert: bool = False) -> bool:
        """One episode on `layout`; with a learner, every step goes to it and it trains as the node would."""
        from irevla_ros.sim.experts import expert_action

        self.episodes += 1
        self.env.reset(seed=layout)
        f = self.features()
        dist = float(np.linalg.norm(self.offset()))
        for step in range(MAX_STEPS):
            if expert:
                a, log_prob = expert_action(self.env).astype(np.float32), 0.0
            else:
                a, log_prob = act(policy.head, f, deterministic=learner is None)
            self.env.step(a)
            new_dist = float(np.linalg.norm(self.offset()))
            success = new_dist < GOAL_TOL_M
            done = success or step == MAX_STEPS - 1
            if learner is not None:
                reward = 10.0 * (dist - new_dist) + float(success)
                assert learner.add_transition(Transition(
                    f"sim-{self.episodes}", step, f, a, log_prob=log_prob, reward=reward, done=done, terminal=success,
                    success=success, intervention=expert, policy_version=policy.version))
                learner.train()
                policy.sync()
            if done:
                return success
            f, dist = self.features(), new_dist
        return False

    def success_rate(self, policy) -> float:
        return float(np.mean([self.run(10_000 + k, policy) for k in range(EVAL_LAYOUTS)]))


@pytest.mark.parametrize("seed", [0, 1])
def test_rlpd_raises_success_on_the_fast_sim(env, tmp_path, seed):
    torch.set_num_threads(1)
    learner = OnlineLearner(RLConfig(
        run_dir=str(tmp_path), seed=seed, feature_tokens=TOKENS, feature_dim=DIM, num_learned_tokens=2,
        hidden_dim=64, batch_size=64, warmup_transitions=32, utd_ratio=1.0, actor_lr=1e-3, critic_lr=1e-3,
        gamma=0.9, publish_every_updates=10, tensorboard=False, online_capacity_bytes=4 << 20,
        demo_capacity_bytes=1 << 20))
    task = ReachTask(env, seed)
    policy = PolicyStandIn(learner)
    before = task.success_rate(policy)
    for k in range(DEMOS):  # a few scripted-expert episodes, stored as interventions (the demo buffer)
        task.run(5000 + 100 * seed + k, policy, learner, expert=True)
    assert len(learner.demo) > 0
    for k in range(ONLINE_EPISODES):  # bounded: <= ONLINE_EPISODES * MAX_STEPS environment steps
        task.run(1000 * (seed + 1) + k, policy, learner)
    after = task.success_rate(policy)
    assert learner.counters["online_transitions"] <= (DEMOS + ONLINE_EPISODES) * MAX_STEPS
    assert before <= 0.25 and after >= before + 0.6, (before, after)
    assert learner.version > 0 and sum(learner.rejected.values()) == 0
