"""packager_node over real DDS: transitions -> durable episodes, stage 0 -> worker -> FULL_WEIGHTS_READY -> online
successes -> stage 2 -> version 2; SIGKILL mid-episode. Plus the core Packager's result checks (no ROS)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import VENV_BIN, wait_for

from irevla_ros.core.data.codec import Transition
from irevla_ros.core.data.episodes import STATUS_INCOMPLETE, EpisodeStore, EpisodeWriter, _decode_records
from irevla_ros.core.data.packager import Packager, PackagerConfig
from irevla_ros.core.data.spool import Spool, SpoolError
from irevla_ros.core.iteration import Iteration
from irevla_ros.core.sft.synthetic import record_synthetic, target_action

KEY = bytes(range(32))


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "sft.key"
    path.write_text(KEY.hex())
    path.chmod(0o600)
    return path


def _transitions(episode_id: str, n: int, *, success: bool, seed: int, cameras=("front",)) -> list[Transition]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n):
        color = rng.uniform(0, 1, 3).astype(np.float32)
        img = np.clip(color * 255 + rng.normal(0, 6, (32, 32, 3)), 0, 255).astype(np.uint8)
        last = s == n - 1
        out.append(Transition(episode_id=episode_id, step=s, features=np.zeros((4, 8), np.float16),
                              action=target_action(color), reward=float(success and last), done=last, terminal=last,
                              success=success and last, policy_version="1", task="reach the coloured target",
                              proprio=np.r_[color, [0.0] * 5].astype(np.float32),
                              images=np.stack([img] * len(cameras)), cameras=",".join(cameras)))
    return out


def _record_experts(root: Path, episodes: int, steps: int, seed: int) -> None:
    """record_synthetic's expert demos with fixed episode ids. The held-out split hashes the ids: with fresh uuids
    it changed every run, and with 2-4 held-out episodes of 6 steps the stage-2 result's MSE was over the
    2 x gate for some splits (1 in 22 measured: 0.0854 vs 0.0421 before) and got rejected, so stage 2 was never
    announced. Fixed ids make the run reproducible (stage 2: 0.0508 vs 0.0480 before)."""
    writer = EpisodeWriter(root)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        rec = writer.begin(task="reach the coloured target", source="expert", cameras=("front",), policy_version="0",
                           episode_id=f"expert-{i:04d}")
        for s in range(steps):
            color = rng.uniform(0, 1, 3).astype(np.float32)
            img = np.clip(color * 255 + rng.normal(0, 6, (32, 32, 3)), 0, 255).astype(np.uint8)
            last = s == steps - 1
            rec.add_step(action=target_action(color), state=np.r_[color, [0.0] * 5].astype(np.float32),
                         images={"front": img}, reward=float(last), success=last, done=last)
        rec.finish(True)


def _node_cmd(tmp_path: Path, **params) -> list[str]:
    cmd = [str(VENV_BIN / "packager_node"), "--ros-args"]
    for k, v in {"run_dir": str(tmp_path / "run"), "key_file": str(_key_file(tmp_path)), "poll_s": 0.3,
                 **params}.items():
        cmd += ["-p", f"{k}:={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"]
    return cmd


def _status_of(ros):
    """The packager's latched /iteration/status, collected from now on."""
    from std_msgs.msg import String

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import LATCHED_QOS

    return ros.collect(String, itf.ITERATION_STATUS.name, LATCHED_QOS)


def _publisher(ros, status):
    from std_msgs.msg import String, UInt8MultiArray

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import DATA_QOS

    tpub = ros.node.create_publisher(UInt8MultiArray, itf.TRANSITION.name, DATA_QOS)
    epub = ros.node.create_publisher(String, itf.EPISODE_EVENT.name, DATA_QOS)
    ros.wait_for_subscribers(tpub)
    ros.wait_for_subscribers(epub)
    # Both ends must have matched before anything is published: our writers seeing the packager's readers is not
    # enough, a volatile reader that matches a writer later skips what was sent before (stage 2 was then never
    # triggered: the first online episode was lost). The packager reports the publishers it sees in its status.
    def packager_sees_us() -> bool:
        last = json.loads(status[-1].data) if status else {}
        return last.get("transition_publishers", 0) >= 1 and last.get("event_publishers", 0) >= 1

    wait_for(packager_sees_us, 60, what="the packager matching our publishers")

    def send(transitions, *, end: bool = True):
        eid = transitions[0].episode_id
        epub.publish(String(data=json.dumps({"episode_id": eid, "event": "start", "instruction": transitions[0].task,
                                             "policy_version": "1"})))
        for t in transitions:
            msg = UInt8MultiArray()
            msg.data = t.to_bytes()
            tpub.publish(msg)
        if end:
            epub.publish(String(data=json.dumps({"episode_id": eid, "event": "end", "success": transitions[-1].success,
                                                 "steps": len(transitions)})))

    return send, tpub


def test_sigkill_mid_episode_keeps_finished_episodes_and_marks_the_cut_one(tmp_path, procs, ros):
    status = _status_of(ros)
    proc = procs.start(_node_cmd(tmp_path, sft_enabled=False), name="packager")
    send, tpub = _publisher(ros, status)
    send(_transitions("ep-a", 4, success=True, seed=1))
    send(_transitions("ep-b", 3, success=False, seed=2))
    send(_transitions("ep-cut", 5, success=True, seed=3)[:3], end=False)
    root = tmp_path / "run" / "episodes"
    journal = root / "partial" / "ep-cut" / "steps.bin"
    wait_for(lambda: len(EpisodeStore(root).episodes()) == 2 and journal.exists()
             and len(_decode_records(journal.read_bytes())) == 3, 30, what="2 episodes + 3 journaled steps")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    store = EpisodeStore(root)
    a, b = store.episodes()
    assert (a.episode_id, a.length, a.success, b.episode_id, b.length, b.success) == ("ep-a", 4, True, "ep-b", 3,
                                                                                       False)
    ep = store.load(a)  # sha256-verified, frames exactly what the policy saw
    np.testing.assert_array_equal(ep.frames("front")[2], _transitions("ep-a", 4, success=True, seed=1)[2].images[0])
    assert a.source == "online" and a.task == "reach the coloured target" and a.policy_version == "1"
    assert store.in_progress() == ["ep-cut"]
    # the next packager (or any writer) recovers the cut episode as incomplete; never listed as finished
    (cut,) = EpisodeWriter(root).recovered
    assert cut.episode_id == "ep-cut" and cut.status == STATUS_INCOMPLETE and cut.length == 3
    assert [e.episode_id for e in store.episodes()] == ["ep-a", "ep-b"]
    del tpub


@pytest.mark.slow
def test_stage0_job_worker_weights_then_online_successes_trigger_stage2(tmp_path, procs, ros):
    from std_msgs.msg import String

    from irevla_ros import interfaces as itf
    from irevla_ros.core.model.vla import VLAModel, folder_sha256
    from irevla_ros.nodes._common import LATCHED_QOS

    experts = tmp_path / "experts"
    _record_experts(experts, episodes=6, steps=6, seed=5)
    ready = ros.collect(String, itf.FULL_WEIGHTS_READY.name, LATCHED_QOS)
    status = ros.collect(String, itf.ITERATION_STATUS.name, LATCHED_QOS)
    procs.start(_node_cmd(tmp_path, expert_dataset_dirs=str(experts), sft_steps=25, sft_batch_size=8, sft_lr=0.003,
                          stage0_mode="lora", stage2_mode="lora", sft_every_n_successes=2, val_fraction=0.3,
                          max_val_mse_ratio=2.0),  # stage 2 starts from a good model: allow noise on 2 episodes
                name="packager")
    procs.start([str(VENV_BIN / "irevla"), "sft-worker", "--spool", str(tmp_path / "run" / "spool"), "--key",
                 str(_key_file(tmp_path)), "--work-dir", str(tmp_path / "work"), "--poll-s", "0.3", "--no-progress"],
                name="worker")

    def wait(predicate, timeout: float, what: str) -> None:
        """wait_for, failing with what the packager and the worker were doing (diagnosable on a loaded CI)."""
        try:
            wait_for(predicate, timeout, what=what)
        except TimeoutError as exc:
            state = tmp_path / "run" / "iteration.json"
            logs = "\n".join(f"--- {p.args[0] if isinstance(p.args, list) else p.args}\n{procs.log_of(p)[-3000:]}"
                             for p in procs.procs)
            raise AssertionError(f"{exc}; last status {status[-1].data if status else None}; iteration.json "
                                 f"{state.read_text() if state.exists() else None}\n{logs}") from exc

    wait(lambda: len(ready) >= 1, 240, what="stage-0 weights announced")
    first = json.loads(ready[-1].data)
    assert first["version"] == "1" and folder_sha256(first["path"]) == first["sha256"]
    model = VLAModel.from_pretrained(first["path"])
    assert model.version == "1" and model.has_lora
    it = Iteration(tmp_path / "run" / "iteration.json").state
    assert (it.stage, it.phase, it.sft_count) == (1, "rl", 1)
    assert it.history[0]["metrics"]["val_mse_after"] < it.history[0]["metrics"]["val_mse_before"]

    send, _ = _publisher(ros, status)
    send(_transitions("on-1", 5, success=True, seed=11))
    send(_transitions("on-2", 4, success=False, seed=12))
    send(_transitions("on-3", 5, success=True, seed=13))
    wait(lambda: any(json.loads(m.data)["version"] == "2" for m in ready), 240, what="stage-2 weights announced")
    second = json.loads(ready[-1].data)
    assert folder_sha256(second["path"]) == second["sha256"] and VLAModel.from_pretrained(second["path"]).version == "2"
    it = Iteration(tmp_path / "run" / "iteration.json").state
    assert (it.stage, it.iteration, it.sft_count, it.policy_version) == (1, 1, 2, "2")
    job = next(p for p in (tmp_path / "run" / "sft" / "jobs").iterdir() if p.name.startswith("s2"))
    body = json.loads((job / "job.json").read_text())
    assert body["counts"] == {"expert": 6, "online": 2, "steps": 6 * 6 + 10}  # only the successful online ones
    assert body["base_model"]["id"] == first["sha256"]  # stage 2 fine-tunes the stage-0 result
    assert body["sft"]["lr_schedule"] == "cosine" and body["sft"]["lr"] == pytest.approx(0.003)
    wait(lambda: status and json.loads(status[-1].data)["iteration"] == 1, 10, what="status iteration 1")


def _fake_result(tmp_path: Path, packager: Packager, *, key: bytes, mse_before: float, mse_after: float,
                 flip: bool = False):
    """A worker's reply built by hand: a real tiny model folder, signed with `key`."""
    from irevla_ros.core.model.vla import VLAModel

    job_id = packager.iteration.state.job_id
    spool = Spool(packager.config.spool, key)
    lease = spool.claim("test-worker", job_id)
    out = tmp_path / "result"
    sha = VLAModel.from_preset("tiny", num_cameras=1, seed=0).save_pretrained(out / "model", version="1")
    spool.publish_result(lease, out, {"version": "1", "model_path": "model", "model_sha256": sha,
                                      "metrics": {"val_mse_before": mse_before, "val_mse_after": mse_after}})
    if flip:
        target = next((Path(packager.config.run_dir) / "spool" / "results" / job_id).rglob("head.safetensors"))
        blob = bytearray(target.read_bytes())
        blob[-3] ^= 0x10
        target.write_bytes(bytes(blob))


@pytest.mark.parametrize("attack", ["flip_byte", "wrong_key", "worse_than_before"])
def test_bad_results_are_rejected_and_nothing_announced(tmp_path, attack):
    experts = tmp_path / "experts"
    record_synthetic(EpisodeWriter(experts), episodes=3, steps=3, seed=5)
    announced = []
    cfg = PackagerConfig(run_dir=str(tmp_path / "run"), key_file=str(_key_file(tmp_path)),
                         expert_dataset_dirs=str(experts), verify_result=False, val_fraction=0.3)
    packager = Packager(cfg, announce=announced.append)
    packager.poll()
    assert packager.iteration.state.phase == "waiting"
    _fake_result(tmp_path, packager, key=b"q" * 32 if attack == "wrong_key" else KEY, mse_before=0.2,
                 mse_after=0.5 if attack == "worse_than_before" else 0.1, flip=attack == "flip_byte")
    packager.poll()
    state = packager.iteration.state
    assert announced == [] and state.policy_version == "" and state.phase == "need_job"  # stage 0: ask again
    reason = {"flip_byte": "tampered", "wrong_key": "another key", "worse_than_before": "worse"}[attack]
    assert reason in state.last_error
    assert not (tmp_path / "run" / "sft" / "results").exists()
    assert not list((tmp_path / "run" / "sft").glob("incoming/*"))
    packager.poll()  # backoff: no tight loop of new jobs after a rejection
    assert packager.iteration.state.job_id == "" and len(list((tmp_path / "run" / "sft" / "jobs").iterdir())) == 1


def test_good_result_is_announced_and_reannounced_after_restart(tmp_path):
    experts = tmp_path / "experts"
    record_synthetic(EpisodeWriter(experts), episodes=3, steps=3, seed=5)
    announced = []
    cfg = PackagerConfig(run_dir=str(tmp_path / "run"), key_file=str(_key_file(tmp_path)),
                         expert_dataset_dirs=str(experts), verify_result=False, val_fraction=0.3)
    packager = Packager(cfg, announce=announced.append)
    packager.poll()
    _fake_result(tmp_path, packager, key=KEY, mse_before=0.2, mse_after=0.1)
    packager.poll()
    assert [a["version"] for a in announced] == ["1"] and Path(announced[0]["path"]).is_dir()
    again = []
    restarted = Packager(cfg, announce=again.append)  # resumes from iteration.json
    assert again == announced and restarted.iteration.state.stage == 1
    ok, msg = restarted.trigger()
    assert ok and restarted.iteration.wants_job() == 2
    ok, msg = restarted.trigger()
    assert not ok and "not in RL" in msg


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="episode_source"):
        PackagerConfig(episode_source="youtube")
    with pytest.raises(ValueError, match="poll_s"):
        PackagerConfig(poll_s=float("nan"))
    with pytest.raises(ValueError, match="expert_fraction"):
        PackagerConfig(expert_fraction=1.5)


def test_only_the_newest_finished_jobs_stay_on_disk_and_the_running_model_always(tmp_path):
    experts = tmp_path / "experts"
    record_synthetic(EpisodeWriter(experts), episodes=3, steps=3, seed=5)
    cfg = PackagerConfig(run_dir=str(tmp_path / "run"), key_file=str(_key_file(tmp_path)),
                         expert_dataset_dirs=str(experts), verify_result=False, val_fraction=0.3, keep_sft_jobs=1,
                         retry_s=0.01)
    announced = []
    packager = Packager(cfg, announce=announced.append)
    sft, spool = tmp_path / "run" / "sft", tmp_path / "run" / "spool"
    finished = []
    for n in range(4):  # stage 0, then three stage-2 jobs; the second stage-2 result is refused
        if n:
            assert packager.trigger()[0]
        packager.poll()
        finished.append(packager.iteration.state.job_id)
        _fake_result(tmp_path / f"r{n}", packager, key=KEY, mse_before=0.2, mse_after=0.5 if n == 2 else 0.1)
        packager.poll()
        assert packager.iteration.state.job_id == ""
        time.sleep(0.05)  # past retry_s after the refused one
    running = Path(announced[-1]["path"])
    assert running == sft / "results" / finished[3] / "model" and running.is_dir()
    assert sorted(p.name for p in (sft / "jobs").iterdir()) == [finished[3]]
    assert sorted(p.name for p in (sft / "results").iterdir()) == [finished[3]]
    assert sorted(p.name for p in (spool / "jobs").iterdir()) == [finished[3]]
    assert sorted(p.name for p in (spool / "done").iterdir()) == [f"{finished[3]}.json"]
    # The running model outlives its job's turn: a refused newer job does not take it away.
    time.sleep(0.05)
    packager.trigger()
    packager.poll()
    _fake_result(tmp_path / "r5", packager, key=KEY, mse_before=0.2, mse_after=0.5)
    packager.poll()
    assert running.is_dir() and announced[-1]["path"] == str(running)
    with pytest.raises(ValueError, match="keep_sft_jobs"):
        PackagerConfig(keep_sft_jobs=-2)
    spool_api = Spool(cfg.spool, KEY)
    time.sleep(0.05)
    packager.trigger()
    packager.poll()
    with pytest.raises(SpoolError, match="still open"):
        spool_api.remove_job(packager.iteration.state.job_id)


def test_stage2_job_carries_the_rl_head_and_the_worker_starts_from_it(tmp_path):
    import torch

    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.core.model.weights import encode_head_weights
    from irevla_ros.core.sft.worker import process_job

    experts = tmp_path / "experts"
    record_synthetic(EpisodeWriter(experts), episodes=3, steps=3, seed=5)
    cfg = PackagerConfig(run_dir=str(tmp_path / "run"), key_file=str(_key_file(tmp_path)),
                         expert_dataset_dirs=str(experts), verify_result=False, val_fraction=0.3,
                         stage2_mode="head", sft_steps=1, sft_lr=1e-9)
    packager = Packager(cfg)
    packager.poll()
    _fake_result(tmp_path, packager, key=KEY, mse_before=0.2, mse_after=0.1)
    packager.poll()
    assert packager.iteration.state.policy_version == "1"
    rl = VLAModel.from_preset("tiny", num_cameras=1, seed=3).head_state_dict()  # "improved by RL"
    assert packager.on_head_weights(encode_head_weights(rl, 7, base_version="1")) == "7"
    assert packager.trigger()[0]
    packager.poll()
    job_id = packager.iteration.state.job_id
    body = json.loads((tmp_path / "run" / "sft" / "jobs" / job_id / "job.json").read_text())
    assert body["stage"] == 2 and body["base_model"]["rl_head"] == "rl_head.safetensors"
    spool = Spool(cfg.spool, KEY)
    lease = spool.claim("w", job_id)
    result = process_job(spool, lease, tmp_path / "work", KEY, {}, heartbeat_s=5.0, progress=False)
    assert not any((tmp_path / "work" / "results").iterdir())  # published: the worker keeps no second copy
    spool.fetch_result(job_id, tmp_path / "fetched")
    tuned = VLAModel.from_pretrained(tmp_path / "fetched" / "model")
    for k, v in tuned.head_state_dict().items():  # one step at lr 1e-9: still the RL head, not the stage-0 one
        assert torch.allclose(v, rl[k], atol=1e-6), k
    assert result["version"] == "2"


def test_assisted_episodes_reach_stage2_with_only_what_to_imitate(tmp_path):
    """A person took over in two online episodes (one then succeeded, one still failed) and not in a third failed
    one: the packager notes the takeover steps in the manifest, stage 2 selects both assisted episodes but not the
    unassisted failure, and trains on all of the success except the two steps before the takeover, and on only the
    person's steps of the failure (HG-DAgger); with assisted_failures off the failure stays out."""
    from irevla_ros.core.sft.jobs import build_job_dir, select_episodes
    from irevla_ros.core.sft.train import SKIP_BEFORE_INTERVENTION, StepDataset, load_job_episodes

    cfg = PackagerConfig(run_dir=str(tmp_path / "run"), key_file=str(_key_file(tmp_path)), stage0=False,
                         val_fraction=0.0)
    packager = Packager(cfg)
    taken_over = {"ok": range(4, 7), "failed": range(2, 5), "alone": range(0)}
    for i, (name, steps) in enumerate(taken_over.items()):
        for t in _transitions(name, 8, success=name == "ok", seed=i):
            t.intervention = t.step in steps
            packager.on_transition(t)
    store = packager.writer.store
    infos = {i.episode_id: i for i in store.episodes(source="online")}
    assert {k: i.extra.get("intervention_steps", 0) for k, i in infos.items()} == {"ok": 3, "failed": 3, "alone": 0}
    sel = select_episodes([store], cfg.job_config(), stage=2)
    assert sorted(i.episode_id for _, i in sel.online) == ["failed", "ok"]
    body = build_job_dir(sel, tmp_path / "job", cfg.job_config(), job_id="j", stage=2, iteration=1, version="2",
                         base_model=None)
    episodes = load_job_episodes(tmp_path / "job", body["train"])
    data = StepDataset(episodes, ["front"])
    kept = {}
    for e, s in data.items:
        kept.setdefault(episodes[e].info.episode_id, []).append(s)
    assert kept["ok"] == [s for s in range(8) if not 4 - SKIP_BEFORE_INTERVENTION <= s < 4]
    assert kept["failed"] == [2, 3, 4]
    off = PackagerConfig(run_dir=str(tmp_path / "run"), assisted_failures=False).job_config()
    assert [i.episode_id for _, i in select_episodes([store], off, stage=2).online] == ["ok"]


def test_the_worker_keeps_only_its_most_recently_used_base_models(tmp_path):
    from irevla_ros.core.sft.worker import prune_model_cache

    models = tmp_path / "work" / "models"
    for i, name in enumerate(["old", "older", "newest"]):
        (models / name).mkdir(parents=True)
        os.utime(models / name, (1000 + i, {"old": 1500, "older": 1000, "newest": 2000}[name]))
    assert prune_model_cache(tmp_path / "work", 0) == []  # 0: keep all
    assert prune_model_cache(tmp_path / "work", 2) == ["older"]
    assert sorted(p.name for p in models.iterdir()) == ["newest", "old"]
