"""SFT end to end without ROS: episodes -> signed job -> `irevla sft-worker` (separate process) -> signed result ->
verified -> loadable by VLAModel, and it lowers the held-out action error. Tampering, wrong keys, killed workers."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import VENV_BIN, wait_for

from irevla_ros.core.data.episodes import EpisodeStore, EpisodeWriter
from irevla_ros.core.data.signing import SignatureError
from irevla_ros.core.data.spool import Spool
from irevla_ros.core.sft.jobs import JobBuildError, JobConfig, build_job_dir, select_episodes, split
from irevla_ros.core.sft.synthetic import record_synthetic
from irevla_ros.core.sft.train import SFTConfig, StepDataset, evaluate, load_job_episodes, mixing_weights

KEY = bytes(range(32))
FAST_SFT = {"mode": "lora", "steps": 20, "batch_size": 8, "lr": 3e-3, "head_lr": 3e-3, "val_every": 20}


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "sft.key"
    path.write_text(KEY.hex())
    path.chmod(0o600)
    return path


def _make_job(tmp_path: Path, job_id: str = "job-1", sft=None, episodes: int = 8, steps: int = 8) -> dict:
    store_dir = tmp_path / "episodes"
    record_synthetic(EpisodeWriter(store_dir), episodes=episodes, steps=steps, seed=len(job_id))
    cfg = JobConfig(val_fraction=0.25)
    sel = select_episodes([EpisodeStore(store_dir)], cfg, stage=0)
    body = build_job_dir(sel, tmp_path / "jobs" / job_id, cfg, job_id=job_id, stage=0, iteration=0, version="1",
                         base_model={"preset": "tiny", "num_cameras": 1, "seed": 0}, sft=sft or FAST_SFT)
    Spool(f"file://{tmp_path / 'spool'}", KEY).submit_job(tmp_path / "jobs" / job_id, body)
    return body


def _worker(tmp_path: Path, *extra: str, work: str = "work") -> list[str]:
    return [str(VENV_BIN / "irevla"), "sft-worker", "--spool", str(tmp_path / "spool"), "--key",
            str(_key_file(tmp_path)), "--work-dir", str(tmp_path / work), "--no-progress", "--poll-s", "0.2", *extra]


def test_selection_mixing_and_split(tmp_path):
    w = EpisodeWriter(tmp_path / "ds")
    record_synthetic(w, episodes=3, steps=2, source="expert", seed=1)
    record_synthetic(w, episodes=4, steps=2, source="online", success=True, seed=2)
    record_synthetic(w, episodes=2, steps=2, source="online", success=False, seed=3)
    store = EpisodeStore(tmp_path / "ds")
    s0 = select_episodes([store], JobConfig(), stage=0)
    assert len(s0.expert) == 3 and s0.online == []  # stage 0: demos only
    s2 = select_episodes([store], JobConfig(max_online_episodes=3), stage=2)
    assert len(s2.expert) == 3 and len(s2.online) == 3  # only successful, newest 3
    assert all(i.success and i.source == "online" for _, i in s2.online)
    assert [i.episode_id for _, i in s2.online] == [e.episode_id for e in store.episodes(source="online",
                                                                                          success=True)][-3:]
    w_ = mixing_weights(["expert"] * 10 + ["online"] * 30, 0.5).numpy()
    assert np.isclose(w_[:10].sum(), w_[10:].sum())  # half the draws from the 10 expert samples
    train, val = split([f"e{i}" for i in range(10)], 0.2)
    assert val and set(train).isdisjoint(val) and len(train) + len(val) == 10
    assert split([f"e{i}" for i in range(10)], 0.2) == (train, val)  # deterministic
    with pytest.raises(JobBuildError, match="at least"):
        build_job_dir(select_episodes([EpisodeStore(tmp_path / "none")], JobConfig(), stage=0), tmp_path / "j",
                      JobConfig(), job_id="x", stage=0, iteration=0, version="1", base_model=None)


def test_online_task_balance_shares_the_online_draws_between_instructions():
    groups = ["expert"] * 10 + ["online"] * 100
    tasks = ["press the red button"] * 10 + ["press the red button"] * 81 + ["press the orange button"] * 19
    by_task = {}
    for balance, red_share in (("none", 81 / 100), ("sqrt", 9 / (9 + 19 ** 0.5)), ("equal", 0.5)):
        w = mixing_weights(groups, 0.5, tasks, balance).numpy()
        assert np.isclose(w[:10].sum(), w[10:].sum())  # the expert share is untouched
        by_task[balance] = w[10:91].sum() / w[10:].sum()
        assert np.isclose(by_task[balance], red_share), (balance, by_task[balance])
    assert by_task["none"] > by_task["sqrt"] > by_task["equal"]  # the rare task gets more with each
    only_online = mixing_weights(["online"] * 4, 0.5, ["a", "a", "a", "b"], "equal").numpy()
    assert np.isclose(only_online[3], 0.5) and np.isclose(only_online.sum(), 1.0)
    with pytest.raises(ValueError, match="online_task_balance"):
        mixing_weights(groups, 0.5, tasks, "inverse")
    with pytest.raises(ValueError, match="one task per sample"):
        mixing_weights(groups, 0.5, tasks[:5], "sqrt")
    with pytest.raises(ValueError, match="online_task_balance"):
        JobConfig(online_task_balance="inverse")


def test_bad_sft_settings_rejected():
    with pytest.raises(ValueError, match="mode"):
        SFTConfig(mode="qlora")
    with pytest.raises(ValueError, match="lr"):
        SFTConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="unknown SFT settings"):
        SFTConfig.from_overrides(SFTConfig(), {"stepz": 3})
    with pytest.raises(ValueError, match="lr_schedule"):
        SFTConfig(lr_schedule="linear-warmup")


def test_worker_process_trains_signs_and_result_is_loadable_and_better(tmp_path):
    from irevla_ros.core.model.vla import VLAModel, folder_sha256

    body = _make_job(tmp_path)
    proc = subprocess.run(_worker(tmp_path, "--once"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spool = Spool(f"file://{tmp_path / 'spool'}", KEY)
    assert spool.status("job-1")["status"] == "done"
    result = spool.fetch_result("job-1", tmp_path / "back")
    model_dir = tmp_path / "back" / "model"
    assert result["model_sha256"] == folder_sha256(model_dir) and result["version"] == "1"
    assert (tmp_path / "back" / "metrics.json").exists() and list((tmp_path / "back" / "logs").glob("events.*"))
    # independent check of the worker's claim: held-out action error before (same seed-0 init) and after
    val = StepDataset(load_job_episodes(tmp_path / "jobs" / "job-1", body["val"]), ["front"])
    cfg = SFTConfig()
    before = evaluate(VLAModel.from_preset("tiny", num_cameras=1, seed=0), val, cfg)["val_mse"]
    tuned = VLAModel.from_pretrained(model_dir)
    after = evaluate(tuned, val, cfg)["val_mse"]
    assert tuned.version == "1"
    assert after < 0.8 * before, (before, after)
    assert result["metrics"]["val_mse_before"] == pytest.approx(before, rel=1e-4)
    assert result["metrics"]["val_mse_after"] == pytest.approx(after, rel=1e-3)


def test_lora_mode_trains_adapter_and_head_only(tmp_path):
    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.core.sft.train import train

    store = tmp_path / "ds"
    record_synthetic(EpisodeWriter(store), episodes=3, steps=6)
    eps = [EpisodeStore(store).load(i) for i in EpisodeStore(store).episodes()]
    model = VLAModel.from_preset("tiny", num_cameras=1, seed=0)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    cfg = SFTConfig(mode="lora", steps=6, batch_size=4, lora_r=4, lora_alpha=8, val_every=6)
    res = train(model, StepDataset(eps[:2], ["front"]), StepDataset(eps[2:], ["front"]), cfg, progress=False)
    assert model.has_lora and res.metrics["steps"] == 6
    base = model.backbone.get_base_model().state_dict()
    for k, v in frozen.items():  # base weights untouched; only adapters (and the head) moved
        kk = k if k in base else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert kk in base and np.array_equal(base[kk].numpy(), v.numpy()), k
    lora = [v for k, v in model.backbone.state_dict().items() if "lora_B" in k]
    assert lora and any(float(v.abs().sum()) > 0 for v in lora)
    model.save_pretrained(tmp_path / "m", version="2")
    reloaded = VLAModel.from_pretrained(tmp_path / "m")
    assert reloaded.has_lora


@pytest.mark.parametrize("attack", ["flip_byte", "wrong_key"])
def test_tampered_job_is_rejected_by_the_worker(tmp_path, attack):
    _make_job(tmp_path)
    if attack == "flip_byte":
        target = next((tmp_path / "spool" / "jobs" / "job-1" / "data").rglob("*.parquet"))
        blob = bytearray(target.read_bytes())
        blob[len(blob) // 3] ^= 0x04
        target.write_bytes(bytes(blob))
    cmd = _worker(tmp_path, "--once")
    if attack == "wrong_key":
        wrong = tmp_path / "wrong.key"
        wrong.write_text(bytes(32).hex())
        wrong.chmod(0o600)
        cmd[cmd.index("--key") + 1] = str(wrong)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    status = Spool(f"file://{tmp_path / 'spool'}", KEY).status("job-1")
    assert status["status"] == "failed"
    expected = "tampered" if attack == "flip_byte" else "another key"
    assert expected in status["reason"] and "rejected" in proc.stderr
    assert not (tmp_path / "spool" / "results").exists() and not (tmp_path / "work" / "results").exists()


def test_tampered_result_is_rejected_and_nothing_kept(tmp_path):
    spool = Spool(f"file://{tmp_path / 'spool'}", KEY)
    src = tmp_path / "job"
    src.mkdir()
    (src / "x").write_text("x")
    spool.submit_job(src, {"id": "job-9"})
    lease = spool.claim("w")
    res = tmp_path / "res"
    (res / "model").mkdir(parents=True)
    (res / "model" / "head.safetensors").write_bytes(os.urandom(512))
    spool.publish_result(lease, res, {"version": "3"})
    target = tmp_path / "spool" / "results" / "job-9" / "0" / "model" / "head.safetensors"
    blob = bytearray(target.read_bytes())
    blob[0] ^= 0x01
    target.write_bytes(bytes(blob))
    with pytest.raises(SignatureError, match="tampered"):
        spool.fetch_result("job-9", tmp_path / "back")
    assert not (tmp_path / "back").exists()
    with pytest.raises(SignatureError, match="another key"):
        Spool(f"file://{tmp_path / 'spool'}", b"z" * 32).fetch_result("job-9", tmp_path / "back")


def test_worker_killed_mid_training_leaves_the_job_reclaimable(tmp_path):
    _make_job(tmp_path, sft={**FAST_SFT, "steps": 100000})
    first = subprocess.Popen(_worker(tmp_path, "--lease-s", "2", "--heartbeat-s", "0.3"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        spool = Spool(f"file://{tmp_path / 'spool'}", KEY, lease_s=2)
        beat = tmp_path / "spool" / "claims" / "job-1" / "heartbeat-000000.json"
        wait_for(lambda: beat.exists() and first.poll() is None, 120, what="the first worker training")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert spool.status("job-1") is None  # not done, not failed: open for someone else
    proc = subprocess.run(_worker(tmp_path, "--once", "--lease-s", "2", "--heartbeat-s", "0.3", "--set", "steps=3",
                                  work="work2"), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = spool.status("job-1")
    assert status["status"] == "done" and status["gen"] == 1
    assert spool.fetch_result("job-1", tmp_path / "back")["metrics"]["steps"] == 3


@pytest.mark.slow
def test_two_process_ddp_worker_trains_one_job_together(tmp_path):
    """`torchrun --nproc_per_node 2` (what `accelerate launch` does): rank 0 claims and publishes, both ranks train
    (gloo DDP on CPU here; NCCL on GPUs)."""
    _make_job(tmp_path, sft={**FAST_SFT, "steps": 8, "batch_size": 4, "val_every": 4})
    cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "-m", "irevla_ros.core.sft.worker",
           *_worker(tmp_path, "--once")[2:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert out.count("claimed job-1") == 1  # one lease for the whole process group
    result = Spool(f"file://{tmp_path / 'spool'}", KEY).fetch_result("job-1", tmp_path / "back")
    assert result["metrics"]["processes"] == 2 and result["metrics"]["samples"] == 8 * 4


def test_cosine_schedule_moves_the_weights_less_than_constant_from_the_same_start(tmp_path):
    """Cosine decays the step size to 0 over `steps` (sum of factors 3.5 of 6 here): the same data, seed and
    init end closer to the start, and the last updates barely move the weights."""
    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.core.sft.train import train

    store = tmp_path / "ds"
    record_synthetic(EpisodeWriter(store), episodes=3, steps=6)
    eps = [EpisodeStore(store).load(i) for i in EpisodeStore(store).episodes()]
    moved = {}
    for schedule in ("constant", "cosine"):
        model = VLAModel.from_preset("tiny", num_cameras=1, seed=0)
        start = {k: v.clone() for k, v in model.head.state_dict().items()}
        cfg = SFTConfig(mode="head", steps=6, batch_size=4, val_every=6, lr_schedule=schedule)
        train(model, StepDataset(eps[:2], ["front"]), StepDataset(eps[2:], ["front"]), cfg, progress=False)
        moved[schedule] = sum(float((v - start[k]).abs().sum()) for k, v in model.head.state_dict().items())
    assert 0 < moved["cosine"] < 0.8 * moved["constant"], moved
