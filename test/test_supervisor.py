"""The simulated supervisor (corrective interventions) without ROS, and what stage 2 keeps of an assisted episode.

Real MuJoCo physics (SimEnv, no cameras) for the behaviour in the cell; no mocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from irevla_ros.core.sft.train import SKIP_BEFORE_INTERVENTION, steps_to_train
from irevla_ros.sim.env import SimEnv
from irevla_ros.sim.experts import expert_action
from irevla_ros.sim.supervisor import CorrectiveSupervisor, SupervisorConfig

EAST = np.array([1.0, 0.0, 0.0])


def _drive(supervisor: CorrectiveSupervisor, motions, expert=EAST) -> list[bool]:
    """Feed a sequence of per-period arm motions (m) while the expert always wants to go +x."""
    tcp = np.zeros(3)
    out = [supervisor.tick(tcp, np.r_[expert, 0, 0, 0, 1.0])]
    for m in motions:
        tcp = tcp + np.asarray(m, dtype=float)
        out.append(supervisor.tick(tcp, np.r_[expert, 0, 0, 0, 1.0]))
    return out


def test_following_the_expert_or_standing_still_between_episodes_never_triggers_a_takeover():
    sup = CorrectiveSupervisor(SupervisorConfig(patience_ticks=2, hold_ticks=3, stuck_ticks=3))
    along = [(0.02, 0.005, -0.01)] * 10  # roughly where the expert goes
    assert not any(_drive(sup, along))
    # Homing / waiting for the next episode: nothing is judged, however long the arm stands or wherever it moves.
    tcp = np.zeros(3)
    for motion in [(0.0, 0.0, 0.0)] * 10 + [(-0.02, 0.0, 0.0)] * 5:
        tcp = tcp + np.asarray(motion)
        assert not sup.tick(tcp, np.r_[EAST, 0, 0, 0, 1.0], live=False)
    assert sup.interventions_total == 0


def test_standing_still_while_the_expert_would_move_triggers_a_takeover():
    still = [(0.0005, 0.0, 0.0)] * 6  # e.g. pressed against the workspace box
    sup = CorrectiveSupervisor(SupervisorConfig(hold_ticks=2, stuck_ticks=3, max_interventions_per_episode=0))
    # tick 0: nothing to judge; ticks 1-3 still -> takeover at tick 3, held through tick 4; judged again from 5
    assert _drive(sup, still) == [False, False, False, True, True, False, False]
    # The expert at its goal (barely moving) is content with a still arm; stuck_ticks=0 switches the rule off.
    assert not any(_drive(CorrectiveSupervisor(SupervisorConfig(stuck_ticks=3)), still * 3, expert=0.1 * EAST))
    assert not any(_drive(CorrectiveSupervisor(SupervisorConfig(stuck_ticks=0)), still * 3))


def test_a_takeover_ends_when_the_episode_does():
    sup = CorrectiveSupervisor(SupervisorConfig(patience_ticks=1, hold_ticks=10))
    assert _drive(sup, [(-0.02, 0, 0)]) == [False, True]
    assert not sup.tick(np.zeros(3), np.r_[EAST, 0, 0, 0, 1.0], live=False)  # the arm is homed: hands back
    assert not sup.tick(np.zeros(3), np.r_[EAST, 0, 0, 0, 1.0])  # live again: a fresh start, nothing to judge yet


def test_off_course_motion_triggers_a_takeover_that_holds_then_hands_back():
    cfg = SupervisorConfig(patience_ticks=2, hold_ticks=3, max_interventions_per_episode=0)
    sup = CorrectiveSupervisor(cfg)
    away = (-0.02, 0.0, 0.0)
    drives = _drive(sup, [away, away, away, away, away, (0.02, 0, 0), (0.02, 0, 0), (0.02, 0, 0)])
    # tick 0: nothing to judge; ticks 1-2 off course -> takeover at tick 2, held for ticks 2-4; back to the policy
    # at tick 5 (one more period away counts as a strike again), following at 6+
    assert drives == [False, False, True, True, True, False, False, False, False]
    assert sup.interventions == 1 and sup.ticks_driven_total == 3


def test_sideways_below_the_cosine_threshold_counts_as_off_course():
    sup = CorrectiveSupervisor(SupervisorConfig(min_cosine=0.5, patience_ticks=1, hold_ticks=1))
    assert sup.off_course(np.array([0.0, 0.02, 0.0]), EAST)  # 90 degrees off
    assert not sup.off_course(np.array([0.02, 0.01, 0.0]), EAST)  # 27 degrees off
    assert not sup.off_course(np.array([-0.02, 0.0, 0.0]), np.array([0.1, 0.0, 0.0]))  # the expert barely moves


def test_budget_per_episode_and_reset():
    sup = CorrectiveSupervisor(SupervisorConfig(patience_ticks=1, hold_ticks=1, max_interventions_per_episode=2))
    drives = _drive(sup, [(-0.02, 0, 0)] * 6)
    assert sum(drives) == 2 and sup.interventions == 2, drives
    sup.reset()
    assert sum(_drive(sup, [(-0.02, 0, 0)] * 3)) == 2 and sup.interventions_total == 4


@pytest.mark.parametrize("bad", [dict(min_cosine=1.5), dict(min_cosine=float("nan")), dict(patience_ticks=0),
                                 dict(hold_ticks=0), dict(max_interventions_per_episode=-1),
                                 dict(min_expert_speed=-0.1), dict(stuck_ticks=-1)])
def test_bad_supervisor_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SupervisorConfig(**bad)


def test_supervisor_rescues_a_policy_that_heads_away_in_the_cell():
    """A 'policy' that always moves away from the button fails alone; with the supervisor on the same layouts the
    expert takes over and presses it, and the expert itself as the policy is never interrupted."""
    away = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    with SimEnv("button", seed=300, cameras=()) as env:
        for seed in (300, 301):
            for supervised in (False, True):
                env.reset(seed=seed)
                sup = CorrectiveSupervisor()
                done = False
                for _ in range(env.max_steps):
                    expert = expert_action(env)
                    wrong = away.copy()
                    wrong[:3] = -expert[:3]  # exactly where the expert would not go
                    act = expert if supervised and sup.tick(env.world.tcp_position(), expert) else wrong
                    _, done, _ = env.step(np.clip(act, -1, 1))
                    if done:
                        break
                assert done == supervised, f"seed {seed}, supervised={supervised}"
                if supervised:
                    assert 1 <= sup.interventions <= sup.config.max_interventions_per_episode
            env.reset(seed=seed)
            sup = CorrectiveSupervisor()
            for _ in range(env.max_steps):
                expert = expert_action(env)
                assert not sup.tick(env.world.tcp_position(), expert), "took over from the expert itself"
                _, done, _ = env.step(expert)
                if done:
                    break
            assert done


def test_supervisor_rescues_a_policy_that_stands_still_in_the_cell():
    """An arm that does not move (a hesitating policy, or one pressing into the box) gives no motion to judge:
    only the stuck rule takes over. Real MuJoCo physics, no cameras."""
    still = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    with SimEnv("button", seed=300, cameras=()) as env:
        for seed in (300, 301):
            for stuck_ticks in (0, 3):
                env.reset(seed=seed)
                sup = CorrectiveSupervisor(SupervisorConfig(stuck_ticks=stuck_ticks))
                done = False
                for _ in range(env.max_steps):
                    expert = expert_action(env)
                    _, done, _ = env.step(np.clip(expert if sup.tick(env.world.tcp_position(), expert) else still,
                                                  -1, 1))
                    if done:
                        break
                assert done == (stuck_ticks > 0), f"seed {seed}, stuck_ticks={stuck_ticks}"
                assert (sup.interventions > 0) == (stuck_ticks > 0)


def test_stage2_skips_the_policy_steps_just_before_a_takeover():
    flags = np.zeros(20, dtype=bool)
    flags[8:12] = True  # a takeover at step 8
    flags[15:17] = True  # and another at 15
    keep = steps_to_train(flags)
    dropped = sorted(set(range(20)) - set(keep.tolist()))
    assert dropped == [8 - k for k in range(SKIP_BEFORE_INTERVENTION, 0, -1)] + \
        [15 - k for k in range(SKIP_BEFORE_INTERVENTION, 0, -1)]
    assert set(range(8, 12)) <= set(keep.tolist())  # the person's steps are all kept
    # demos recorded through teleop (every step an intervention) and plain policy episodes lose nothing
    assert steps_to_train(np.ones(7, dtype=bool)).tolist() == list(range(7))
    assert steps_to_train(np.zeros(7, dtype=bool)).tolist() == list(range(7))
    # two takeovers closer than the skip: the earlier takeover's steps survive
    close = np.array([0, 1, 0, 1, 1], dtype=bool)
    assert steps_to_train(close, skip_before=2).tolist() == [1, 3, 4]
    # a failed episode selected for its takeovers: only the person's steps
    assert steps_to_train(close, success=False).tolist() == [1, 3, 4]
    assert steps_to_train(flags, success=False).tolist() == [8, 9, 10, 11, 15, 16]
