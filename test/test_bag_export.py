"""Demo bags -> episode store (`irevla bag export`) -> SFT, and open-loop `irevla bag eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String

from irevla_ros import interfaces as itf
from irevla_ros.bag.export import export_bags
from irevla_ros.bag.steps import StepSpec
from irevla_ros.bag.storage import BagError, BagWriter
from irevla_ros.core.data.episodes import EpisodeStore

CAMS = ("wrist", "front")
T0 = 1_700_000_000_000_000_000
DT = 100_000_000  # 10 Hz
INSTRUCTION = "push the red button"


def frame(cam: int, k: int) -> np.ndarray:
    img = np.zeros((12, 16, 3), np.uint8)
    img[..., cam] = 20 * k % 256
    img[k % 12, :, 2] = 255
    return img


def action(k: int) -> list[float]:
    return [0.05 * (k % 10), -0.3, 0.1, 0.0, 0.0, 0.2, 1.0 if k % 10 >= 5 else -1.0]


def pose(k: int) -> tuple[list[float], list[float]]:
    return [0.3 + 0.01 * k, 0.0, 0.4], [1.0, 0.0, 0.0, 0.0]


def write_demo_bag(path: Path, n: int, *, events: list[tuple[int, dict]] = (), labels: list[tuple[int, str]] = (),
                   drop_images: tuple[int, ...] = (), instruction: str | None = INSTRUCTION) -> None:
    """A bag shaped like a teleop demo recording: per 0.1 s step both frames, EE pose, gripper, then the action."""
    with BagWriter(path) as w:
        for cam in CAMS:
            w.add_topic(itf.camera_image(cam).name, "sensor_msgs/msg/Image")
        for ep in (itf.EE_POSE, itf.GRIPPER, itf.ACTION, itf.INTERVENTION, itf.EPISODE_EVENT, itf.HUMAN_LABEL):
            w.add_topic(ep.name, ep.type)
        w.add_topic(itf.INSTRUCTION.name, itf.INSTRUCTION.type, "transient_local")
        if instruction is not None:
            w.write(itf.INSTRUCTION.name, T0 - DT, serialize_message(String(data=instruction)))
        ev = dict(events)
        lab = dict(labels)
        for k in range(n):
            t = T0 + k * DT
            if k in ev and ev[k]["event"] == "start":  # starts before the step, ends after its action
                w.write(itf.EPISODE_EVENT.name, t, serialize_message(String(data=json.dumps(ev[k]))))
            if k not in drop_images:
                for c, cam in enumerate(CAMS):
                    img = frame(c, k)
                    msg = Image(height=12, width=16, encoding="rgb8", step=48, data=img.tobytes())
                    w.write(itf.camera_image(cam).name, t + 1000, serialize_message(msg))
            p = PoseStamped()
            (p.pose.position.x, p.pose.position.y, p.pose.position.z), q = pose(k)
            p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z, p.pose.orientation.w = q
            w.write(itf.EE_POSE.name, t + 2000, serialize_message(p))
            w.write(itf.GRIPPER.name, t + 3000, serialize_message(JointState(name=["gripper_width"],
                                                                             position=[0.08 - 0.001 * k])))
            w.write(itf.ACTION.name, t + 50_000_000, serialize_message(Float64MultiArray(data=action(k))))
            w.write(itf.INTERVENTION.name, t + 50_000_001, serialize_message(Bool(data=True)))
            if k in ev and ev[k]["event"] == "end":
                w.write(itf.EPISODE_EVENT.name, t + 55_000_000, serialize_message(String(data=json.dumps(ev[k]))))
            if k in lab:
                w.write(itf.HUMAN_LABEL.name, t + 60_000_000, serialize_message(String(data=lab[k])))


def test_export_events_bag_keeps_success_drops_discard_and_stale_steps(tmp_path):
    write_demo_bag(tmp_path / "bag", 20, drop_images=(4, 5), events=[
        (0, {"event": "start", "episode_id": "demo-a"}), (9, {"event": "end", "success": True, "label": "success"}),
        (10, {"event": "start", "episode_id": "demo-b"}), (19, {"event": "end", "success": False,
                                                                 "label": "discard"})])
    # Frames are 0.05 s older than their action; with frames 4 and 5 missing, step 4 uses frame 3 (0.15 s old,
    # fresh enough) and step 5 would use it at 0.25 s old: stale, so step 5 is skipped.
    report = export_bags([tmp_path / "bag"], tmp_path / "store", StepSpec(cameras=CAMS, max_image_age_s=0.2))
    assert [(eid, n, s) for eid, n, s in report.written] == [("demo-a", 9, True)]
    assert report.dropped == [("demo-b", "label discard")]
    assert dict(report.stats[0].skipped) == {"stale: camera 'wrist' frame": 1}  # skipped, never invented
    store = EpisodeStore(tmp_path / "store")
    (info,) = store.infos()
    assert info.success and info.source == "teleop" and info.task == INSTRUCTION and info.cameras == list(CAMS)
    ep = store.load(info)
    kept = [k for k in range(10) if k != 5]
    np.testing.assert_allclose(ep.action, [action(k) for k in kept], atol=1e-6)
    expected_state = [pose(k)[0] + pose(k)[1] + [0.08 - 0.001 * k] for k in kept]
    np.testing.assert_allclose(ep.state, expected_state, atol=1e-6)
    assert ep.intervention.all()
    np.testing.assert_array_equal(ep.frames("front")[2], frame(1, kept[2]))  # lossless, right camera, right step
    np.testing.assert_array_equal(ep.frames("wrist")[-1], frame(0, kept[-1]))
    np.testing.assert_allclose(ep.timestamp, [(k * DT + 50_000_000) * 1e-9 for k in kept], atol=1e-6)


def test_export_labels_bag_keeps_failures_flagged(tmp_path):
    write_demo_bag(tmp_path / "bag", 12, labels=[(4, "success"), (8, "failure"), (11, "reset")])
    report = export_bags([tmp_path / "bag"], tmp_path / "store", StepSpec(cameras=CAMS))
    assert [(n, s) for _, n, s in report.written] == [(5, True), (4, False)]
    assert [why for _, why in report.dropped] == ["label reset"]  # nobody judged it
    assert report.stats[0].segment == "labels"
    assert [i.success for i in EpisodeStore(tmp_path / "store").infos()] == [True, False]


@pytest.mark.parametrize("kwargs,spec,match", [
    ({"instruction": None}, {}, "records no instruction"),
    ({}, {"cameras": ("wrist", "side")}, r"no images for camera\(s\) \['side'\]"),
    ({}, {"action_topic": "/teleop/action"}, "no action topic /teleop/action"),
])
def test_export_refuses_bags_it_cannot_use(tmp_path, kwargs, spec, match):
    write_demo_bag(tmp_path / "bag", 3, **kwargs)
    with pytest.raises(BagError, match=match):
        export_bags([tmp_path / "bag"], tmp_path / "store", StepSpec(**{"cameras": CAMS, **spec}))


def test_exported_demos_train_in_sft(tmp_path):
    from irevla_ros.core.model.vla import VLAModel
    from irevla_ros.core.sft.jobs import JobConfig, select_episodes
    from irevla_ros.core.sft.train import SFTConfig, StepDataset, train

    write_demo_bag(tmp_path / "bag", 20, labels=[(9, "success"), (19, "success")])
    export_bags([tmp_path / "bag"], tmp_path / "store", StepSpec(cameras=CAMS))
    selection = select_episodes([EpisodeStore(tmp_path / "store")], JobConfig(min_episodes=1), stage=0)
    assert len(selection.expert) == 2  # teleop demos count as expert demos
    episodes = [store.load(info) for store, info in selection.expert]
    model = VLAModel.from_preset("tiny", num_cameras=2)
    dataset = StepDataset(episodes, CAMS)
    result = train(model, dataset, dataset, SFTConfig(mode="full", steps=15, batch_size=8, lr=3e-3, head_lr=3e-3,
                                                      val_every=30), progress=False)
    m = result.metrics
    assert m["val_finite"] and m["val_mse_after"] < m["val_mse_before"]  # it learned from the demos


def test_eval_reports_predicted_vs_recorded_on_the_exported_observations(tmp_path):
    import torch

    from irevla_ros.bag.evaluate import evaluate_bag
    from irevla_ros.core.model.vla import VLAModel

    write_demo_bag(tmp_path / "bag", 10, labels=[(9, "success")])
    spec = StepSpec(cameras=CAMS)
    model = VLAModel.from_preset("tiny", num_cameras=2)
    report = evaluate_bag(tmp_path / "bag", model, spec, batch_size=4)
    np.testing.assert_allclose(report.recorded, [action(k) for k in range(10)], atol=1e-6)
    assert report.predicted.shape == (10, 7) and np.all(np.abs(report.predicted) <= 1.0)
    # The policy saw exactly what export stores: same frames, same proprio -> same deterministic action.
    export_bags([tmp_path / "bag"], tmp_path / "store", spec)
    ep = EpisodeStore(tmp_path / "store").load(EpisodeStore(tmp_path / "store").infos()[0])
    with torch.no_grad():
        direct = model.act([ep.frames(c) for c in CAMS], [INSTRUCTION] * len(ep), ep.state, stochastic=False)
    np.testing.assert_allclose(report.predicted, direct.mean_action, atol=1e-5)
    m = report.metrics()
    assert m["steps"] == 10 and m["mse"] == pytest.approx(float(np.mean(report.errors ** 2)))
    assert set(m["mae"]) == set(itf.ACTION_LABELS)
    assert "gripper" in report.table()


def test_cli_info_export_and_clear_errors(tmp_path, capsys):
    from irevla_ros.cli import main

    write_demo_bag(tmp_path / "bag", 6, labels=[(5, "success")])
    assert main(["bag", "info", str(tmp_path / "bag")]) == 0
    assert "/franka/action" in capsys.readouterr().out
    assert main(["bag", "export", str(tmp_path / "bag"), "-o", str(tmp_path / "store")]) == 0
    assert "stored 1 episode(s), 6 steps (1 successful)" in capsys.readouterr().out
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:300])
    assert main(["bag", "info", str(tmp_path / "bag")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_cli_eval_writes_a_report(tmp_path, capsys):
    from irevla_ros.cli import main

    write_demo_bag(tmp_path / "bag", 6, labels=[(5, "success")])
    out = tmp_path / "eval.json"
    assert main(["bag", "eval", str(tmp_path / "bag"), "--preset", "tiny", "--max-steps", "4", "--batch-size", "2",
                 "--json", str(out)]) == 0
    assert "open-loop evaluation on 4 steps" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["steps"] == 4 and len(report["predicted"]) == 4
    np.testing.assert_allclose(report["recorded"], [action(k) for k in range(4)], atol=1e-6)
    assert main(["bag", "eval", str(tmp_path / "bag"), "--preset", "tiny", "--cameras", "wrist,side"]) == 2
    assert "no images for camera(s) ['side']" in capsys.readouterr().err


ROS_FREE_EXPORT = r"""
import sys
class BlockRos:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top in ('rclpy', 'rosidl_runtime_py', 'launch', 'launch_ros') or top.endswith(('_msgs', '_srvs')):
            raise ImportError(f'ROS module {name} imported')
sys.meta_path.insert(0, BlockRos())
from irevla_ros.cli import main
sys.exit(main(['bag', 'export', sys.argv[1], '-o', sys.argv[2]]))
"""


def test_export_runs_without_ros(tmp_path):
    """`irevla bag export` on a machine without ROS (an SFT server): rosbags decodes, nothing imports rclpy."""
    import subprocess
    import sys

    write_demo_bag(tmp_path / "bag", 4, labels=[(3, "success")])
    result = subprocess.run([sys.executable, "-c", ROS_FREE_EXPORT, str(tmp_path / "bag"), str(tmp_path / "store")],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(EpisodeStore(tmp_path / "store").infos()) == 1
