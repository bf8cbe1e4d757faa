"""rosbag2 MCAP: writer/reader (splits, truncation, recovery), recorder -> player timing, independent bags."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_for

from irevla_ros.bag.storage import BagError, BagReader, BagWriter

# Replay timing tolerances (s), stated for a 2-core machine shared by many test runs (load average 10-16):
MEDIAN_GAP_TOL_S = 0.005  # median |replayed gap - recorded gap|
P90_GAP_TOL_S = 0.025  # 90th percentile of the same (a starved CPU delays a message now and then)
SCHEDULE_TOL_S = 0.15  # every message's offset from the first one: no drift, no long stall


def _ser(msg) -> bytes:
    from rclpy.serialization import serialize_message

    return serialize_message(msg)


def write_sample_bag(path: Path, n: int = 120, **kwargs) -> list[tuple[str, int, bytes]]:
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    written = []
    with BagWriter(path, **kwargs) as w:
        w.add_topic("/text", "std_msgs/msg/String")
        w.add_topic("/image", "sensor_msgs/msg/Image", durability="transient_local")
        for i in range(n):
            t = 1_700_000_000_000_000_000 + i * 20_000_000
            data = _ser(String(data=f"msg {i}"))
            w.write("/text", t, data)
            written.append(("/text", t, data))
            if i % 4 == 0:
                img = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(i % 200, i % 200 + 18)))
                data = _ser(img)
                w.write("/image", t + 1, data)
                written.append(("/image", t + 1, data))
    return written


def test_roundtrip_keeps_every_message_in_order_across_split_files(tmp_path):
    written = write_sample_bag(tmp_path / "bag", split_duration_s=0.5)
    reader = BagReader(tmp_path / "bag")
    assert len(list((tmp_path / "bag").glob("*.mcap"))) == 5  # 2.4 s of data in 0.5 s files
    got = [(m.topic, m.log_time_ns, m.data) for m in reader.messages()]
    assert got == written
    assert reader.topics["/image"].durability == "transient_local"
    assert reader.topics["/text"].count == 120 and reader.message_count == len(written)
    only = list(reader.messages(["/im*"]))
    assert {m.topic for m in only} == {"/image"} and len(only) == 30


def test_our_bag_reads_in_rosbags_an_independent_reader(tmp_path):
    from rosbags.highlevel import AnyReader

    written = write_sample_bag(tmp_path / "bag", split_duration_s=1.0)
    with AnyReader([tmp_path / "bag"]) as reader:
        got = sorted((c.topic, t, bytes(d)) for c, t, d in reader.messages())
        text = [reader.deserialize(d, c.msgtype).data for c, _, d in reader.messages() if c.topic == "/text"]
    assert got == sorted(written)
    assert text[:3] == ["msg 0", "msg 1", "msg 2"]


def test_truncated_bag_is_refused_clearly_and_recover_salvages_complete_chunks(tmp_path):
    write_sample_bag(tmp_path / "bag", n=600, chunk_size=4096)
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])  # what a killed recorder leaves: no summary, cut chunk
    with pytest.raises(BagError, match="truncated or corrupt.*recover"):
        BagReader(tmp_path / "bag")
    reader = BagReader(tmp_path / "bag", recover=True)
    salvaged = list(reader.messages())
    assert 200 < len(salvaged) < 750
    assert [m.log_time_ns for m in salvaged] == sorted(m.log_time_ns for m in salvaged)
    assert any("recovered" in p for p in reader.problems)


@pytest.mark.parametrize("damage,match", [
    (lambda bag: (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [1, 2"), "not valid rosbag2"),
    (lambda bag: next(bag.glob("*.mcap")).unlink(), "missing"),
    (lambda bag: next(bag.glob("*.mcap")).write_bytes(b"not an mcap file at all" * 10), "truncated or corrupt"),
    (lambda bag: _edit_metadata(bag, "relative_file_paths", ["../../elsewhere.mcap"]), "outside the bag folder"),
    (lambda bag: _edit_metadata(bag, "compression_mode", "file"), "convert it first"),
])
def test_damaged_bags_give_clear_errors(tmp_path, damage, match):
    write_sample_bag(tmp_path / "bag", n=10)
    damage(tmp_path / "bag")
    with pytest.raises(BagError, match=match):
        BagReader(tmp_path / "bag")


def _edit_metadata(bag: Path, key: str, value) -> None:
    import yaml

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    meta["rosbag2_bagfile_information"][key] = value
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))


def test_not_a_bag(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="not a bag"):
        BagReader(tmp_path / "empty")
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "nope")
    with pytest.raises(BagError, match="not empty"):
        write_sample_bag(tmp_path / "bag", n=2)
        BagWriter(tmp_path / "bag")


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout)


def test_recorded_bag_replays_with_count_order_and_timing(procs, ros, tmp_path):
    """Live topics -> bag_recorder -> MCAP -> bag_player -> subscriber: same messages, same order, same gaps."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
    text_pub = ros.node.create_publisher(String, "/rec/text", qos)
    image_pub = ros.node.create_publisher(Image, "/rec/image", qos)
    bag = tmp_path / "recorded"
    recorder = procs.start(["bag_recorder", "--ros-args", "-p", f"output:={bag}", "-p", "topics:=['/rec/*']",
                            "-p", "discovery_period_s:=0.1"], name="bag_recorder")
    ros.wait_for_subscribers(text_pub, timeout=30)
    ros.wait_for_subscribers(image_pub, timeout=30)
    rng = np.random.default_rng(0)
    gaps = rng.uniform(0.01, 0.08, size=40)  # irregular on purpose
    for i, gap in enumerate(gaps):
        text_pub.publish(String(data=f"m{i:03d}"))
        if i % 5 == 0:
            image_pub.publish(Image(height=4, width=4, encoding="rgb8", step=12, data=bytes([i] * 48)))
        time.sleep(gap)
    time.sleep(0.3)
    assert _stop(recorder) == 0, procs.log_of(recorder)

    reader = BagReader(bag)
    recorded = list(reader.messages())
    assert reader.topics["/rec/text"].count == 40 and reader.topics["/rec/image"].count == 8

    # Timing is read from each sample's DDS source timestamp (stamped when the player publishes), so what is
    # measured is the player's schedule, not this test process's scheduling delays on a loaded machine.
    received: list[tuple[str, float, object]] = []
    for topic, cls in (("/rec/text", String), ("/rec/image", Image)):
        ros.node.create_subscription(
            cls, topic, lambda m, info, topic=topic: received.append((topic, info["source_timestamp"] * 1e-9, m)),
            qos)
    clock = ros.collect(Clock, "/clock", 100)
    player = procs.start(["bag_player", "--ros-args", "-p", f"bag:={bag}", "-p", "wait_for_subscribers_s:=30.0"],
                         name="bag_player")
    wait_for(lambda: player.poll() is not None, 60, what="the player to finish")
    assert player.returncode == 0, procs.log_of(player)
    wait_for(lambda: len(received) >= len(recorded), 5, what="every replayed message")

    assert len(received) == len(recorded)

    def key(topic: str, msg) -> object:  # message content (DDS may append CDR alignment padding to the bytes)
        return msg.data if topic == "/rec/text" else bytes(msg.data)

    decoded = [(m, deserialize_message(m.data, String if m.topic == "/rec/text" else Image)) for m in recorded]
    # Order and timing per topic: DDS orders each writer's samples; between two topics published within
    # microseconds of each other the arrival order is the executor's choice.
    gap_errors = []
    for topic in ("/rec/text", "/rec/image"):
        got = [(t, m) for name, t, m in received if name == topic]
        want = [(m, d) for m, d in decoded if m.topic == topic]
        assert [key(topic, m) for _, m in got] == [key(topic, d) for _, d in want], topic  # same content, order
        recorded_gaps = np.diff([m.log_time_ns * 1e-9 for m, _ in want])
        replayed_gaps = np.diff([t for t, _ in got])
        gap_errors += np.abs(replayed_gaps - recorded_gaps).tolist()
        offsets = np.array([t for t, _ in got]) - got[0][0]
        recorded_offsets = np.array([m.log_time_ns for m, _ in want]) * 1e-9 - want[0][0].log_time_ns * 1e-9
        assert np.abs(offsets - recorded_offsets).max() < SCHEDULE_TOL_S, (topic, offsets - recorded_offsets)
    assert np.median(gap_errors) < MEDIAN_GAP_TOL_S, gap_errors
    assert np.percentile(gap_errors, 90) < P90_GAP_TOL_S, gap_errors
    assert [m.data for t, _, m in received if t == "/rec/text"] == [f"m{i:03d}" for i in range(40)]
    # Across topics: publish order matches the bag wherever the recorded gap exceeds the schedule tolerance.
    arrival = {(name, key(name, m)): t for name, t, m in received}
    times = [(m.log_time_ns * 1e-9, arrival[(m.topic, key(m.topic, d))]) for m, d in decoded]
    for t_i, a_i in times:
        assert all(a_i < a_j for t_j, a_j in times if t_j - t_i > SCHEDULE_TOL_S)
    stamps = [c.clock.sec * 10**9 + c.clock.nanosec for c in clock]
    assert stamps and stamps == sorted(stamps)
    assert stamps[0] >= reader.start_ns and stamps[-1] == reader.end_ns


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_from_an_independent_writer_replays(procs, ros, tmp_path, storage):
    """A bag written by rosbags (not our writer) with standard types plays back message for message."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    Pose = store.types["geometry_msgs/msg/PoseStamped"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    Point = store.types["geometry_msgs/msg/Point"]
    Quat = store.types["geometry_msgs/msg/Quaternion"]
    PoseT = store.types["geometry_msgs/msg/Pose"]
    bag = tmp_path / "rosbags_bag"
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(bag, version=8, storage_plugin=plugin) as writer:
        conn = writer.add_connection("/franka/ee_pose", "geometry_msgs/msg/PoseStamped", typestore=store)
        for i in range(15):
            msg = Pose(Header(Time(i, 0), "panda_link0"), PoseT(Point(0.1 * i, 0.0, 0.5), Quat(0.0, 0.0, 0.0, 1.0)))
            writer.write(conn, 1_000_000_000 + i * 30_000_000, store.serialize_cdr(msg, conn.msgtype))

    received = ros.collect(PoseStamped, "/replay/franka/ee_pose", QoSProfile(depth=50,
                                                                             reliability=ReliabilityPolicy.RELIABLE))
    player = procs.start(["bag_player", "--ros-args", "-p", f"bag:={bag}", "-p", "topic_prefix:=/replay",
                          "-p", "rate:=2.0", "-p", "wait_for_subscribers_s:=30.0"], name="bag_player")
    wait_for(lambda: player.poll() is not None, 60, what="the player to finish")
    assert player.returncode == 0, procs.log_of(player)
    wait_for(lambda: len(received) == 15, 5, what="15 poses")
    assert [m.pose.position.x for m in received] == pytest.approx([0.1 * i for i in range(15)])
    assert all(m.header.frame_id == "panda_link0" for m in received)


def test_player_refuses_a_truncated_bag_with_a_clear_message(procs, tmp_path):
    write_sample_bag(tmp_path / "bag", n=300, chunk_size=4096)
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:5000])
    player = procs.start(["bag_player", "--ros-args", "-p", f"bag:={tmp_path / 'bag'}"], name="bag_player",
                         capture=True)
    out, _ = player.communicate(timeout=60)
    assert player.returncode == 2
    assert "truncated or corrupt" in out and "recover" in out


def test_killed_recorder_loses_at_most_the_last_second(procs, ros, tmp_path):
    """SIGKILL (no clean close, no summary, no metadata update): recover reads everything older than ~1 s."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    pub = ros.node.create_publisher(String, "/crash/text", QoSProfile(depth=100,
                                                                      reliability=ReliabilityPolicy.RELIABLE))
    bag = tmp_path / "crashed"
    recorder = procs.start(["bag_recorder", "--ros-args", "-p", f"output:={bag}", "-p", "topics:=['/crash/*']",
                            "-p", "discovery_period_s:=0.1"], name="bag_recorder")
    ros.wait_for_subscribers(pub, timeout=30)
    sent = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        pub.publish(String(data=f"{len(sent)}"))
        sent.append(time.monotonic())
        time.sleep(0.02)
    recorder.send_signal(signal.SIGKILL)
    recorder.wait(10)
    with pytest.raises(BagError, match="truncated or corrupt"):
        BagReader(bag)
    got = [m for m in BagReader(bag, recover=True).messages()]
    older = sum(1 for t in sent if t < deadline - 1.5)  # flushed at least once since (1 s period)
    assert len(got) >= older > 50, (len(got), older, len(sent))


def test_types_unknown_here_are_learned_from_the_bag(tmp_path):
    """A custom message type (not installed, not in rosbags' store) is decoded from the bag's own schema."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    msgdef = "string label\nfloat64[] values\n"
    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(msgdef, "lab_msgs/msg/Reading"))
    Reading = store.types["lab_msgs/msg/Reading"]
    with Writer(tmp_path / "custom", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/lab/reading", "lab_msgs/msg/Reading", msgdef=msgdef, rihs01="RIHS01_" + "0" * 64)
        writer.write(conn, 5, store.serialize_cdr(Reading("a", np.array([1.5, 2.5])), conn.msgtype))
    reader = BagReader(tmp_path / "custom")
    (msg,) = list(reader.messages())
    decoded = reader.registry.deserialize(msg.data, msg.msgtype)
    assert decoded.label == "a" and list(decoded.values) == [1.5, 2.5]


@pytest.mark.parametrize("cls,kwargs,match", [
    ("RecorderConfig", {"topics": ("cameras/*",)}, "absolute topic names"),
    ("RecorderConfig", {"compression": "gzip"}, "compression"),
    ("RecorderConfig", {"split_duration_s": -1.0}, "split_duration_s"),
    ("RecorderConfig", {"output_dir": ""}, "output_dir"),
    ("PlayerConfig", {"rate": 0.0}, "rate"),
    ("PlayerConfig", {"clock_hz": float("nan")}, "clock_hz"),
    ("PlayerConfig", {"topic_prefix": "replay"}, "topic_prefix"),
    ("PlayerConfig", {"start_offset_s": -2.0}, "start_offset_s"),
])
def test_bad_parameters_are_refused(cls, kwargs, match):
    from irevla_ros.bag import config

    with pytest.raises(ValueError, match=match):
        getattr(config, cls)(**kwargs)
