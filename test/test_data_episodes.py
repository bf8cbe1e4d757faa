"""Episode store: atomic publication, sha256 manifest, filters, validation, crash recovery (real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import wait_for

from irevla_ros.core.data.episodes import (
    COL_ACTION,
    IMAGE_PREFIX,
    STATUS_INCOMPLETE,
    EpisodeError,
    EpisodeMeta,
    EpisodeStore,
    EpisodeWriter,
    decode_image,
)

CAMS = ("front", "wrist")


def _frame(rng, h=32, w=40):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _record(writer, rng, n=5, success=True, source="expert", task="pick the cube", features=False, version="3"):
    rec = writer.begin(task=task, source=source, cameras=CAMS, policy_version=version)
    frames = []
    for i in range(n):
        imgs = {c: _frame(rng) for c in CAMS}
        frames.append(imgs)
        rec.add_step(action=np.full(7, i / 10), state=np.arange(4) + i, images=imgs, reward=float(i == n - 1),
                     success=success and i == n - 1, done=i == n - 1, intervention=i == 1,
                     features=rng.normal(size=(3, 8)) if features else None)
    return rec.finish(success), frames


def test_round_trip_is_lossless_and_manifest_has_sha256(tmp_path):
    rng = np.random.default_rng(0)
    writer = EpisodeWriter(tmp_path)
    info, frames = _record(writer, rng, n=6, features=True)
    store = EpisodeStore(tmp_path)
    (only,) = store.episodes()
    assert only.episode_id == info.episode_id and only.length == 6 and only.success and only.source == "expert"
    assert only.policy_version == "3" and only.task == "pick the cube"
    ep = store.load(only)
    for c in CAMS:
        np.testing.assert_array_equal(ep.frames(c), np.stack([f[c] for f in frames]))  # PNG is lossless
    np.testing.assert_allclose(ep.action[:, 0], np.arange(6) / 10, rtol=1e-6)
    np.testing.assert_array_equal(ep.state[2], np.arange(4) + 2)
    assert ep.intervention.tolist() == [False, True, False, False, False, False]
    assert ep.features.shape == (6, 3, 8)
    # self-describing: a plain parquet reader sees LeRobot-style columns and a manifest line with the file's sha
    table = pq.read_table(store.path_of(only))
    assert {IMAGE_PREFIX + "front", COL_ACTION, "episode_index", "frame_index", "index"} <= set(table.column_names)
    assert decode_image(table.column(IMAGE_PREFIX + "wrist")[0].as_py()["bytes"]).shape == (32, 40, 3)
    line = json.loads((tmp_path / "meta/episodes.jsonl").read_text().splitlines()[0])
    import hashlib

    assert line["sha256"] == hashlib.sha256(store.path_of(only).read_bytes()).hexdigest()
    info_json = json.loads((tmp_path / "meta/info.json").read_text())
    assert info_json["total_episodes"] == 1 and info_json["total_frames"] == 6
    assert not list(tmp_path.rglob("*.tmp")) and store.in_progress() == []


def test_filters_and_global_indices(tmp_path):
    rng = np.random.default_rng(1)
    w = EpisodeWriter(tmp_path)
    _record(w, rng, n=3, source="expert")
    _record(w, rng, n=4, source="online", success=False)
    third, _ = _record(w, rng, n=2, source="online", success=True, task="open the drawer")
    s = EpisodeStore(tmp_path)
    assert [e.episode_index for e in s.episodes()] == [0, 1, 2]
    assert [e.length for e in s.episodes(source="online")] == [4, 2]
    assert [e.episode_id for e in s.episodes(source="online", success=True)] == [third.episode_id]
    assert len(s.episodes(task="open the drawer")) == 1 and s.tasks() == ["pick the cube", "open the drawer"]
    assert [e.length for e in s.episodes(last=2)] == [4, 2]
    assert s.episodes(since=third.created) == [third]
    assert s.load(third).info.first_index == 7


def test_jpeg_option_is_lossy_but_close(tmp_path):
    rng = np.random.default_rng(2)
    w = EpisodeWriter(tmp_path, image_format="jpg", jpeg_quality=90)
    rec = w.begin(task="t", cameras=("front",))
    img = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (32, 1, 3))
    rec.add_step(action=np.zeros(7), images={"front": img})
    info = rec.finish(False)
    got = EpisodeStore(tmp_path).load(info).frames("front")[0]
    assert np.abs(got.astype(int) - img).mean() < 4
    del rng


@pytest.mark.parametrize("bad", [
    {"action": np.full(7, np.nan)},
    {"action": np.zeros(6)},
    {"state": [0.0, np.inf]},
    {"reward": float("nan")},
    {"images": {"front": np.zeros((4, 4, 3), np.uint8)}},  # missing the wrist camera
    {"images": {"front": np.zeros((4, 4), np.uint8), "wrist": np.zeros((4, 4, 3), np.uint8)}},
    {"images": {c: np.zeros((4, 4, 3), np.float32) for c in CAMS}},
    {"features": np.full((2, 3), np.nan)},
])
def test_bad_steps_are_rejected_and_nothing_is_kept(tmp_path, bad):
    w = EpisodeWriter(tmp_path)
    rec = w.begin(task="t", cameras=CAMS)
    good = {"action": np.zeros(7), "state": [0.0, 1.0], "images": {c: np.zeros((4, 4, 3), np.uint8) for c in CAMS}}
    rec.add_step(**good)
    with pytest.raises(EpisodeError):
        rec.add_step(**{**good, **bad})
    assert len(rec) == 1
    info = rec.finish(True)
    assert EpisodeStore(tmp_path).load(info).action.shape == (1, 7)


def test_bad_meta_rejected(tmp_path):
    w = EpisodeWriter(tmp_path)
    with pytest.raises(EpisodeError, match="source"):
        w.begin(EpisodeMeta(task="t", source="youtube"))
    with pytest.raises(EpisodeError, match="episode_id"):
        w.begin(EpisodeMeta(task="t", episode_id="../../etc"))
    rec = w.begin(EpisodeMeta(task="t", episode_id="ep1"))
    rec.add_step(action=np.zeros(7))
    rec.finish(False)
    with pytest.raises(EpisodeError, match="already exists"):
        w.begin(EpisodeMeta(task="t", episode_id="ep1"))
    with pytest.raises(EpisodeError, match="no steps"):
        w.begin(task="t").finish(True)


def test_tampered_episode_file_is_rejected(tmp_path):
    info, _ = _record(EpisodeWriter(tmp_path), np.random.default_rng(3))
    store = EpisodeStore(tmp_path)
    path = store.path_of(info)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(EpisodeError, match="sha256"):
        store.load(info)


def test_torn_manifest_tail_is_ignored(tmp_path):
    info, _ = _record(EpisodeWriter(tmp_path), np.random.default_rng(4))
    with open(tmp_path / "meta/episodes.jsonl", "ab") as f:
        f.write(b'{"episode_index": 1, "episode_id": "x", "tas')  # a crash mid-append
    assert [e.episode_id for e in EpisodeStore(tmp_path).episodes()] == [info.episode_id]


def test_abort_keeps_steps_as_incomplete(tmp_path):
    w = EpisodeWriter(tmp_path)
    rec = w.begin(task="t")
    rec.add_step(action=np.zeros(7))
    rec.abort(reason="operator discarded")
    s = EpisodeStore(tmp_path)
    assert s.episodes() == []
    (inc,) = s.episodes(include_incomplete=True)
    assert inc.status == STATUS_INCOMPLETE and inc.extra["abort_reason"] == "operator discarded"


_CRASHER = textwrap.dedent("""
    import sys, numpy as np
    from irevla_ros.core.data.episodes import EpisodeWriter
    w = EpisodeWriter(sys.argv[1])
    rng = np.random.default_rng(0)
    for e in range(2):
        rec = w.begin(task="t", source="online", cameras=("front",), episode_id=f"done{e}")
        for i in range(3):
            rec.add_step(action=np.zeros(7), images={"front": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)})
        rec.finish(True)
    rec = w.begin(task="t", source="online", cameras=("front",), episode_id="cut")
    i = 0
    while True:
        rec.add_step(action=np.full(7, 0.5), images={"front": np.zeros((16, 16, 3), np.uint8)})
        i += 1
        if i == 4:
            print("steps", flush=True)
""")


def test_sigkill_mid_episode_keeps_finished_and_marks_cut(tmp_path):
    root = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "steps"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = EpisodeStore(root)
    assert [e.episode_id for e in store.episodes()] == ["done0", "done1"]
    for e in store.episodes():
        assert len(store.load(e)) == 3
    assert store.in_progress() == ["cut"]  # never listed as an episode before recovery
    recovered = EpisodeWriter(root).recovered
    assert [r.episode_id for r in recovered] == ["cut"]
    (cut,) = store.episodes(include_incomplete=True)[2:]
    assert cut.status == STATUS_INCOMPLETE and not cut.success and cut.extra["recovered"]
    assert len(store.load(cut)) >= 4  # every step it flushed before the kill
    assert store.in_progress() == [] and len(store.episodes()) == 2


def test_a_live_recording_is_not_recovered_by_another_writer(tmp_path):
    w1 = EpisodeWriter(tmp_path)
    rec = w1.begin(task="t", episode_id="live")
    rec.add_step(action=np.zeros(7))
    w2 = EpisodeWriter(tmp_path)
    assert w2.recovered == [] and EpisodeStore(tmp_path).in_progress() == ["live"]
    rec.finish(True)
    wait_for(lambda: EpisodeStore(tmp_path).in_progress() == [], 2.0)
    assert EpisodeStore(tmp_path).find("live").complete
