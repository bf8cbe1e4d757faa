"""The whole loop, shortened: `irevla sim` with the tiny model through every node of the real graph.

The scripted expert intervenes through /teleop/action like a human teleoperator would (a software stand-in for
the person, not a mock of any component), so online episodes succeed quickly and stage 2 happens within the
test: demos -> stage-0 SFT -> online transitions -> head updates -> SFT job -> verified result -> reload ->
policy version bump.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

IREVLA = str(Path(sys.executable).parent / "irevla")


@pytest.mark.timeout(900)
def test_short_loop_runs_every_stage(tmp_path, ros_env):
    run_dir = tmp_path / "run"
    # No automatic stage 2 (--sft-every-n-successes 0): the only stage 2 is the one the loop asks the packager for
    # through its trigger service when the online phase ends (finish_with_stage2, the default)
    cmd = [IREVLA, "sim", "--run-dir", str(run_dir), "--minutes", "3", "--demos-per-task", "3", "--sft0-steps", "20",
           "--pretrain-steps", "20", "--pretrain-layouts", "4",
           "--eval-episodes", "2", "--eval-workers", "2", "--max-episode-steps", "40", "--expert-interventions",
           "--sft-every-n-successes", "0", "--sft2-steps", "20",
           # 20 LoRA steps need not beat the running model on held-out error: let the result through the gate
           "--sft-max-val-mse-ratio", "100"]
    # wide enough that rich does not wrap the summary's column titles
    result = subprocess.run(cmd, env={**ros_env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=850)
    log = (run_dir / "graph.log").read_text() if (run_dir / "graph.log").exists() else ""
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n--- graph ---\n{log[-6000:]}"

    from irevla_ros.core.data.episodes import EpisodeStore
    from irevla_ros.core.model.vla import verify_folder
    from irevla_ros.core.rl.demos import demo_features_dir
    from irevla_ros.loop import LoopConfig

    # stage 0: scripted demos and the SFT-0 model
    assert len(EpisodeStore(run_dir / "demos").episodes(source="expert", success=True)) >= 3
    verify_folder(run_dir / "models" / "sft0")
    assert json.loads((run_dir / "stage0_metrics.json").read_text())["steps"] == 20
    pretrain = json.loads((run_dir / "stage0a_metrics.json").read_text())  # stage 0a ran before the SFT
    assert pretrain["steps"] == 20 and pretrain["frames"] == 24
    assert pretrain["tasks"] == ["button"]  # default: the expert tasks' scenes
    # stage 1: online episodes recorded by the packager, flagged as interventions; the learner updated the head
    online = EpisodeStore(run_dir / "episodes").episodes(source="online")
    assert online, "the packager recorded no online episode"
    assert any(info.success for info in online)
    status = json.loads((run_dir / "loop_status.json").read_text())
    assert status["episodes"] >= 2 and status["rl_updates"] > 0 and status["head_versions"] > 0
    # every finished episode is counted, with its outcome, under its sim task id (the first one too: it starts
    # before any /sim/reset reply, and gets its id from the latched /sim/task)
    assert set(status["per_task"]) <= {*LoopConfig.expert_tasks, *LoopConfig.new_tasks}
    assert sum(t["episodes"] for t in status["per_task"].values()) == status["episodes"]
    assert sum(t["successes"] for t in status["per_task"].values()) >= 1
    # stage 2: a job went through the spool and the worker; the verified result was announced and the policy
    # switched to it (its version appeared on /policy/version after the announcement)
    assert len(status["full_reloads"]) == 1
    announced = status["full_reloads"][0]
    assert json.loads((run_dir / "iteration.json").read_text())["trigger_reason"] == "manual trigger"
    verify_folder(announced["path"])
    # the worker also encoded the expert demos with the new backbone, for the learner's next stage
    assert (demo_features_dir(announced["path"]) / "COMPLETE").is_file()
    # the policy node logs the swap when it applies the verified full weights between ticks
    assert f"policy now v{announced['version']} (full weights)" in (run_dir / "graph.log").read_text()
    # the loop ended the iteration with that stage 2 and evaluated its model with its own head (not the RL head)
    assert status["evaluated"] == {"final_stage2": announced["version"], "model": announced["path"], "head": "own",
                                   "policy_folder": announced["path"]}
    # both evaluations ran (in two worker processes) on the same held-out layouts, and the summary compared them
    # layout by layout
    for name in ("eval_sft0.json", "eval_final.json"):
        evaluation = json.loads((run_dir / name).read_text())
        assert set(evaluation) == {*LoopConfig.expert_tasks, *LoopConfig.new_tasks}
        for record in evaluation.values():
            assert record["episodes"] == 2 and record["seed_first"] == 10_000 and len(record["outcomes"]) == 2
            assert record["successes"] == record["outcomes"].count("1")
    assert "irevla sim summary" in result.stdout and "layouts better" in result.stdout


def test_stage0_cache_refuses_a_run_folder_pretrained_on_other_scenes(tmp_path):
    """A run folder whose SFT-0 model was pretrained on the expert scenes only is not reused for "all"."""
    from irevla_ros.loop import LoopConfig, SimLoop

    SimLoop(LoopConfig(run_dir=str(tmp_path))).check_stage0_cache()
    assert json.loads((tmp_path / "stage0_settings.json").read_text())["pretrain_tasks"] == ["button"]
    SimLoop(LoopConfig(run_dir=str(tmp_path), pretrain_scenes="expert")).check_stage0_cache()  # same: reused
    with pytest.raises(ValueError, match="pretrain_tasks"):
        SimLoop(LoopConfig(run_dir=str(tmp_path), pretrain_scenes="all")).check_stage0_cache()
    with pytest.raises(ValueError, match="pretrain_scenes must be one of"):
        LoopConfig(run_dir=str(tmp_path), pretrain_scenes="new")


def test_stage_settings_reach_the_nodes_and_bad_ones_are_refused(tmp_path):
    """--sft2-lr, --sft2-lr-schedule, --sft2-max-online-episodes, --sft2-mode and --sft2-expert-fraction go to the
    packager (sft_lr, sft_lr_schedule, max_online_episodes, stage2_mode, expert_fraction), --bc-coef and
    --actor-warmup-updates to the rl_node."""
    import argparse

    import yaml

    from irevla_ros.loop import LoopConfig, SimLoop, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(["--run-dir", str(tmp_path), "--sft2-lr", "3e-4", "--bc-coef", "2.5",
                            "--actor-warmup-updates", "800", "--sft2-lr-schedule", "constant",
                            "--sft2-max-online-episodes", "12", "--sft2-mode", "full",
                            "--sft2-expert-fraction", "0.8"])
    config = LoopConfig(run_dir=ns.run_dir, sft2_lr=ns.sft2_lr, bc_coef=ns.bc_coef,
                        actor_warmup_updates=ns.actor_warmup_updates, sft2_lr_schedule=ns.sft2_lr_schedule,
                        sft2_max_online_episodes=ns.sft2_max_online_episodes, sft2_mode=ns.sft2_mode,
                        sft2_expert_fraction=ns.sft2_expert_fraction)
    params = yaml.safe_load(SimLoop(config).graph_parameters().read_text())
    assert params["packager_node"]["ros__parameters"]["sft_lr"] == pytest.approx(3e-4)
    assert params["packager_node"]["ros__parameters"]["sft_lr_schedule"] == "constant"
    assert LoopConfig().sft2_lr_schedule == "cosine"
    assert params["packager_node"]["ros__parameters"]["max_online_episodes"] == 12
    assert params["packager_node"]["ros__parameters"]["stage2_mode"] == "full"
    assert LoopConfig().sft2_mode == "lora"
    assert params["packager_node"]["ros__parameters"]["expert_fraction"] == pytest.approx(0.8)
    assert params["rl_node"]["ros__parameters"]["bc_coef"] == pytest.approx(2.5)
    assert params["rl_node"]["ros__parameters"]["actor_warmup_updates"] == 800
    assert "utd_ratio" not in params["rl_node"]["ros__parameters"]  # the node's own default: stage 1 trains
    ns = parser.parse_args(["--run-dir", str(tmp_path), "--no-rl-updates"])
    params = yaml.safe_load(SimLoop(LoopConfig(run_dir=ns.run_dir, rl_updates=ns.rl_updates))
                            .graph_parameters().read_text())
    assert params["rl_node"]["ros__parameters"]["utd_ratio"] == 0.0
    for bad in ({"sft2_lr": 0.0}, {"sft2_lr": float("nan")}, {"bc_coef": -1.0}, {"actor_warmup_updates": -5},
                {"sft2_lr_schedule": "linear"}, {"sft2_max_online_episodes": -1},
                {"sft2_mode": "qlora"}, {"sft2_expert_fraction": 1.5}, {"sft2_expert_fraction": float("nan")},
                {"interventions": "sometimes"}):
        with pytest.raises(ValueError):
            LoopConfig(run_dir=str(tmp_path), **bad)


def test_interventions_reach_sim_world_and_the_mux(tmp_path):
    """--interventions corrective: sim_world's expert becomes the corrective supervisor and cmd_mux hands control
    back one period after it lets go; off (the default) starts no expert; --expert-interventions = always."""
    import argparse

    import yaml

    from irevla_ros.loop import SIM_TELEOP_TIMEOUT_S, LoopConfig, SimLoop, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv, driver, mode in ((["--interventions", "corrective"], True, "corrective"), ([], False, "always"),
                               (["--expert-interventions"], True, "always")):
        ns = parser.parse_args(["--run-dir", str(tmp_path), *argv])
        params = yaml.safe_load(SimLoop(LoopConfig(run_dir=ns.run_dir, interventions=ns.interventions))
                                .graph_parameters().read_text())
        world = params["sim_world"]["ros__parameters"]
        assert (world["expert_driver"], world["expert_mode"]) == (driver, mode), argv
        mux = params.get("cmd_mux", {}).get("ros__parameters", {})
        assert mux.get("teleop_timeout_s") == (SIM_TELEOP_TIMEOUT_S if mode == "corrective" and driver else None)
    assert 0.1 < SIM_TELEOP_TIMEOUT_S < 0.2  # just over one 10 Hz period


def test_the_disk_warning_scales_with_length_and_takeovers(tmp_path):
    from irevla_ros.loop import RUN_DISK_GB, LoopConfig, expected_run_gb

    base = expected_run_gb(LoopConfig(run_dir=str(tmp_path)))
    assert base == RUN_DISK_GB
    assert expected_run_gb(LoopConfig(run_dir=str(tmp_path), minutes=5)) == base  # short runs: the same floor
    assert expected_run_gb(LoopConfig(run_dir=str(tmp_path), minutes=30)) == 2 * base
    assisted = expected_run_gb(LoopConfig(run_dir=str(tmp_path), minutes=26, interventions="corrective"))
    assert assisted >= 0.9  # what d2 (round 12, retention on) left after 26 minutes


def test_the_online_phase_ends_only_once_the_policy_runs_the_announced_weights(tmp_path):
    from irevla_ros.loop import LiveStatus, LoopConfig, SimLoop

    loop = SimLoop(LoopConfig(run_dir=str(tmp_path), stop_after_iterations=1))
    status = LiveStatus(versions_seen=["sft0"])
    assert not loop._iterations_done(status)
    status.full_reloads.append({"path": "/m/1", "version": "1", "versions_seen_before": 1})
    assert not loop._iterations_done(status)  # announced, the policy has not switched yet
    status.versions_seen.append("sft0")  # an older version re-published does not count
    assert not loop._iterations_done(status)
    status.versions_seen.append("1")
    assert loop._iterations_done(status)
    assert not SimLoop(LoopConfig(run_dir=str(tmp_path)))._iterations_done(status)  # 0 = run for `minutes`
    with pytest.raises(ValueError, match="finish_timeout_min"):
        LoopConfig(run_dir=str(tmp_path), finish_timeout_min=0)


def test_sft0_evaluation_is_reused_only_with_per_layout_outcomes_on_the_same_layouts(tmp_path):
    """The summary compares before and after layout by layout, so a cached SFT-0 evaluation counts only if it holds
    outcomes for the same number of layouts (older runs wrote bare rates)."""
    from irevla_ros.loop import LoopConfig, SimLoop
    from irevla_ros.sim.eval_cli import outcome_record

    loop = SimLoop(LoopConfig(run_dir=str(tmp_path), eval_episodes=2))
    assert loop.cached_sft0_evaluation() is None  # nothing cached
    (tmp_path / "eval_sft0.json").write_text(json.dumps({"button": 0.5, "button_novel": 0.0}))
    assert loop.cached_sft0_evaluation() is None
    records = {t: outcome_record([True, False], 10_000) for t in ("button", "button_novel")}
    (tmp_path / "eval_sft0.json").write_text(json.dumps(records))
    assert loop.cached_sft0_evaluation() == records
    assert SimLoop(LoopConfig(run_dir=str(tmp_path), eval_episodes=3)).cached_sft0_evaluation() is None
    with pytest.raises(ValueError, match="eval_workers must be >= 1"):
        LoopConfig(run_dir=str(tmp_path), eval_workers=0)


def test_the_running_policy_is_saved_as_one_folder_for_evaluation(tmp_path, ros):
    """--no-finish-with-stage2: the loop judges SFT-0 with the learner's newest head (as /rl/head_weights carried
    it), saved as models/final_running so the evaluation workers and `irevla eval` can load it."""
    import array

    import torch
    from conftest import wait_for
    from std_msgs.msg import UInt8MultiArray

    from irevla_ros import interfaces as itf
    from irevla_ros.core.model.vla import VLAModel, verify_folder
    from irevla_ros.core.model.weights import encode_head_weights
    from irevla_ros.loop import GraphMonitor, LiveStatus, LoopConfig, SimLoop
    from irevla_ros.nodes._common import LATCHED_QOS

    loop = SimLoop(LoopConfig(run_dir=str(tmp_path), finish_with_stage2=False))
    sft0 = VLAModel.from_preset("tiny", num_cameras=2, head={"proprio_dim": 8}, seed=0)
    sft0.save_pretrained(loop.sft0_dir, version="sft0")
    learned = {k: v + 0.5 for k, v in sft0.head.state_dict().items()}  # a head the learner moved
    payload = encode_head_weights(learned, 7, sft0.config.head, base_version="sft0")

    monitor = GraphMonitor(LiveStatus())
    try:
        publisher = ros.node.create_publisher(UInt8MultiArray, itf.HEAD_WEIGHTS.name, LATCHED_QOS)
        msg = UInt8MultiArray()
        msg.data = array.array("B", payload)
        publisher.publish(msg)
        wait_for(lambda: monitor.latest_head is not None, 20.0, what="the monitor got the head")
        folder = loop.final_policy(monitor)
    finally:
        monitor.close()
    assert folder == tmp_path / "models" / "final_running"
    verify_folder(folder)
    saved = VLAModel.from_pretrained(folder).head.state_dict()
    for name, tensor in learned.items():
        torch.testing.assert_close(saved[name], tensor)
    assert monitor.status.evaluated == {"model": str(loop.sft0_dir), "head": "learner v7",
                                        "policy_folder": str(folder)}
