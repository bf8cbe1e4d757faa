"""reward_node as a real process over DDS: live images in, success probability and debounced reward out; the rviz
success marker at the TCP; human override; bad images rejected with a reason; a corrupted classifier file refused
while the old one keeps running; hot reload; ground-truth mode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import wait_for

from irevla_ros import interfaces as itf
from irevla_ros.core.reward import ClassifierSpec, RewardClassifier, save_classifier

H, W = 48, 64  # camera frame size the test classifiers are "trained" on
TIMEOUT = 30.0  # s, node start (torch import + DDS discovery) on a loaded 2-core machine


def make_classifier(bias: float, version: str, seed: int = 0) -> RewardClassifier:
    """A random-init CNN classifier whose output logit is shifted by `bias` (so its probabilities are clearly
    high or low, yet still depend on the image: the node must reproduce them exactly)."""
    torch.manual_seed(seed)
    clf = RewardClassifier(ClassifierSpec(arch="cnn", cameras=("front",), image_size=32, frame_size=(H, W),
                                          threshold=0.5, version=version, cnn_width=8)).eval()
    with torch.no_grad():
        clf.head.mlp[-1].bias += bias
    return clf


def live_frames(n: int) -> list[np.ndarray]:
    """Frames rendered by the MuJoCo cell (front camera), different object layouts."""
    import mujoco

    from irevla_ros.sim.render import CameraRenderer
    from irevla_ros.sim.scene import compile_model
    from irevla_ros.sim.tasks import randomize
    from irevla_ros.sim.world import World

    model = compile_model()
    data = mujoco.MjData(model)
    world = World(model, data)
    out = []
    with CameraRenderer(model, W, H, cameras=("front",)) as r:
        for seed in range(n):
            randomize(world, "pick", seed)
            out.append(r.render(data, "front"))
    return out


def image_msg(frame: np.ndarray, encoding: str = "rgb8", stamp_ns: int = 0):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.frame_id = itf.camera_optical_frame("front")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.height, msg.width = frame.shape[:2]
    msg.encoding = encoding
    msg.step = frame.shape[1] * 3
    msg.data = frame.tobytes()
    return msg


@pytest.fixture(scope="module")
def frames():
    return live_frames(6)


def start_node(procs, *params: str):
    args = []
    for p in params:
        args += ["-p", p]
    return procs.start(["reward_node", "--ros-args", *args], name="reward_node")


def check_markers(markers: list, prob: float, reward: float, xyz, source: str) -> None:
    """The newest sphere (id 0) and text (id 1) of /reward/success_marker describe this decision."""
    from visualization_msgs.msg import Marker

    sphere = next(m for m in reversed(markers) if m.id == 0)
    text = next(m for m in reversed(markers) if m.id == 1)
    assert sphere.type == Marker.SPHERE and text.type == Marker.TEXT_VIEW_FACING
    assert sphere.ns == text.ns == "reward" and sphere.header.frame_id == itf.BASE_FRAME
    assert [sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z] == pytest.approx(xyz)
    assert text.pose.position.z > sphere.pose.position.z
    verdict = "SUCCESS" if reward else "no success"
    assert text.text == f"{verdict}  p={prob:.2f}  [{source}]"
    rgba = (sphere.color.r, sphere.color.g, sphere.color.b)
    if source == "human":
        assert rgba[2] > 0.9 and rgba[0] < 0.5  # blue: a person decided
    elif prob > 0.5:
        assert rgba[1] == pytest.approx(1.0) and rgba[0] < 1.0  # green side
    else:
        assert rgba[0] == pytest.approx(1.0) and rgba[1] < 1.0  # red side
    assert sphere.lifetime.sec == 1 and text.color.a > 0.5


def test_node_rewards_live_images_debounces_overrides_and_survives_bad_files(procs, ros, tmp_path, frames):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32, String
    from std_srvs.srv import Trigger
    from visualization_msgs.msg import Marker

    from irevla_ros.nodes._common import IMAGE_QOS, STATE_QOS

    path = tmp_path / "reward" / "classifier.safetensors"
    high = make_classifier(+6.0, "A")
    save_classifier(high, path)
    proc = start_node(procs, f"classifier_path:={path}", "cameras:=[front]", "consecutive_frames:=3",
                      "image_qos:=reliable", "reload_period_s:=0.2")
    probs = ros.collect(Float32, itf.SUCCESS_PROB.name, STATE_QOS)
    rewards = ros.collect(Float32, itf.REWARD.name, STATE_QOS)
    images = ros.node.create_publisher(Image, itf.camera_image("front").name, IMAGE_QOS)
    labels = ros.node.create_publisher(String, itf.HUMAN_LABEL.name, STATE_QOS)
    markers = ros.collect(Marker, itf.SUCCESS_MARKER.name, STATE_QOS)
    ee = ros.node.create_publisher(PoseStamped, itf.EE_POSE.name, STATE_QOS)
    ros.wait_for_subscribers(images, timeout=TIMEOUT)
    ros.wait_for_subscribers(labels, timeout=TIMEOUT)
    ros.wait_for_subscribers(ee, timeout=TIMEOUT)
    ros.wait_for_publishers(itf.REWARD.name, timeout=TIMEOUT)
    ros.wait_for_publishers(itf.SUCCESS_MARKER.name, timeout=TIMEOUT)

    def send(frame, encoding="rgb8") -> tuple[float, float]:
        n = len(rewards)
        images.publish(image_msg(frame, encoding))
        wait_for(lambda: len(rewards) > n and len(probs) > n, 20, what="reward for a frame")
        return probs[-1].data, rewards[-1].data

    # The very first frame may race the node's subscription matching on the publisher side: retry it once.
    wait_for(lambda: (images.publish(image_msg(frames[0])), len(rewards) > 0)[1], TIMEOUT, interval=0.5,
             what="first reward")
    probs.clear()
    rewards.clear()

    # 1. Live images: probabilities are the classifier's on exactly these frames; after >= 3 frames the streak
    #    gives reward 1.
    expected = high.predict_proba(np.stack(frames)[:, None])
    assert (expected > 0.5).all()
    got = [send(f) for f in frames[:4]]
    assert np.allclose([p for p, _ in got], expected[:4], atol=1e-5)
    assert got[-1][1] == 1.0
    # The rviz marker follows each decision: at the TCP once an EE pose arrived, green for a high probability.
    # (Marker and reward travel on different topics: wait for the marker of the same frame.)
    tcp = PoseStamped()
    tcp.header.frame_id = itf.BASE_FRAME
    tcp.pose.position.x, tcp.pose.position.y, tcp.pose.position.z = 0.5, -0.1, 0.3
    ee.publish(tcp)
    wait_for(lambda: (send(frames[0]), markers and markers[-1].pose.position.y == pytest.approx(-0.1))[1], 10,
             interval=0.2, what="marker at the published TCP")
    p_last = float(expected[0])
    check_markers(markers, p_last, 1.0, (0.5, -0.1, 0.3), "classifier")
    # An episode start resets the debouncer: the next frames need 3 in a row again. Events and frames travel on
    # different topics, so resend a frame until the reset shows (reward back to 0), then count.
    ev = ros.node.create_publisher(String, itf.EPISODE_EVENT.name, 500)
    ros.wait_for_subscribers(ev, timeout=TIMEOUT)
    ev.publish(String(data=json.dumps({"episode_id": "e1", "event": "start"})))
    wait_for(lambda: send(frames[0])[1] == 0.0, 10, interval=0.2, what="episode start resets the debouncer")
    assert [send(f)[1] for f in frames[1:4]] == [0.0, 1.0, 1.0]

    # 2. Human override: failure forces 0 at once and on following frames, reset hands back to the classifier.
    n = len(rewards)
    labels.publish(String(data="failure"))
    wait_for(lambda: len(rewards) > n, 10, what="reward published on the human label")
    assert rewards[-1].data == 0.0
    wait_for(lambda: any(m.id == 1 and m.text.endswith("[human]") for m in markers[-2:]), 10,
             what="human override shown on the marker")
    check_markers(markers, probs[-1].data, 0.0, (0.5, -0.1, 0.3), "human")
    assert send(frames[4])[1] == 0.0
    labels.publish(String(data="reset"))
    wait_for(lambda: send(frames[5])[1] == 0.0 and send(frames[0])[1] == 0.0 and send(frames[1])[1] == 1.0, 10,
             interval=0.2, what="classifier back in charge after reset")

    # 3. Wrong encoding and wrong size are rejected with a reason; nothing is published for them. (One at a
    #    time: the node's image queue is shallow by design, a burst would drop the oldest frame.)
    n = len(probs)
    images.publish(image_msg(frames[0][..., ::-1].copy(), "bgr8"))
    wait_for(lambda: "encoding 'bgr8' is not supported (only 'rgb8')" in procs.log_of(proc), 10,
             what="encoding rejection in the node log")
    images.publish(image_msg(np.ascontiguousarray(frames[0][: H // 2, : W // 2])))
    wait_for(lambda: "image is 32x24 (WxH) but the classifier was trained on 64x48 frames" in procs.log_of(proc),
             10, what="size rejection in the node log")
    send(frames[2])
    assert len(probs) == n + 1

    # 4. A corrupted file is refused (reload service says why) and the old classifier keeps running.
    path.write_bytes(path.read_bytes()[:-64])
    reply = ros.call(Trigger, "/reward_node/reload")
    assert not reply.success and "refused" in reply.message and "keeping classifier A" in reply.message
    p, _ = send(frames[3])
    assert p == pytest.approx(float(expected[3]), abs=1e-5)

    # 5. A good new file is hot-reloaded on change (no service call) and used at once.
    low = make_classifier(-6.0, "B", seed=1)
    save_classifier(low, path)
    expected_low = low.predict_proba(np.stack(frames)[:, None])
    wait_for(lambda: abs(send(frames[3])[0] - float(expected_low[3])) < 1e-5, 15, interval=0.3,
             what="hot-reloaded classifier B")
    assert rewards[-1].data == 0.0
    assert "loaded classifier B" in procs.log_of(proc)
    assert proc.poll() is None, procs.log_of(proc)


def test_ground_truth_mode_debounces_sim_success(procs, ros):
    from std_msgs.msg import Bool, Float32

    from irevla_ros.nodes._common import STATE_QOS

    start_node(procs, "source:=ground_truth", "consecutive_frames:=2")
    rewards = ros.collect(Float32, itf.REWARD.name, STATE_QOS)
    truth = ros.node.create_publisher(Bool, itf.SIM_SUCCESS.name, STATE_QOS)
    ros.wait_for_subscribers(truth, timeout=TIMEOUT)
    ros.wait_for_publishers(itf.REWARD.name, timeout=TIMEOUT)
    wait_for(lambda: (truth.publish(Bool(data=False)), len(rewards) > 0)[1], TIMEOUT, interval=0.3,
             what="first reward")

    def send(value: bool) -> float:
        n = len(rewards)
        truth.publish(Bool(data=value))
        wait_for(lambda: len(rewards) > n, 10, what="reward")
        return rewards[-1].data

    assert [send(v) for v in (True, False, True, True, True, False)] == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
