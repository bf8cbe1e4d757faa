"""The Foxglove bridge serves live images and poses: a plain websocket client (subprotocol foxglove.sdk.v1)
subscribes and receives them."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest

from irevla_ros.nodes.foxglove_bridge import FoxgloveConfig

SUBPROTOCOL = "foxglove.sdk.v1"
MESSAGE_DATA = 0x01  # binary opcode: u8 op, u32 subscription id, u64 log time, payload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kwargs,match", [
    ({"host": "localhost:80"}, "host"),
    ({"port": 70000}, "port"),
    ({"max_image_hz": 0.0}, "max_image_hz"),
    ({"cameras": ()}, "cameras"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FoxgloveConfig(**kwargs)


async def _receive(port: int, topics: dict[str, str], timeout: float, alive=lambda: True) -> dict[str, bytes]:
    """Connect (retrying while the server starts), subscribe to `topics` (topic -> schema name), return the
    first payload per topic."""
    import websockets

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            ws = await websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=[SUBPROTOCOL], max_size=None)
            break
        except OSError:
            assert alive(), "the bridge process exited"
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    async with ws:
        assert ws.subprotocol == SUBPROTOCOL
        channels: dict[str, dict] = {}
        by_sub: dict[int, str] = {}
        got: dict[str, bytes] = {}
        while len(got) < len(topics):
            raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - asyncio.get_running_loop().time()))
            if isinstance(raw, str):
                msg = json.loads(raw)
                if msg.get("op") == "advertise":
                    new = []
                    for ch in msg["channels"]:
                        if ch["topic"] in topics and ch["topic"] not in channels:
                            channels[ch["topic"]] = ch
                            sub_id = len(by_sub) + 1
                            by_sub[sub_id] = ch["topic"]
                            new.append({"id": sub_id, "channelId": ch["id"]})
                    if new:
                        await ws.send(json.dumps({"op": "subscribe", "subscriptions": new}))
            elif raw[0] == MESSAGE_DATA:
                sub_id, _log_time = struct.unpack_from("<IQ", raw, 1)
                got.setdefault(by_sub[sub_id], bytes(raw[13:]))
        for topic, schema in topics.items():
            assert channels[topic]["schemaName"] == schema, channels[topic]
        return got


def test_websocket_client_receives_images_and_poses(procs, ros):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import STATE_QOS

    port = _free_port()
    bridge = procs.start(["foxglove_bridge", "--ros-args", "-p", f"port:={port}", "-p", "max_image_hz:=50.0"],
                name="foxglove_bridge")
    image_topic = itf.camera_image("wrist").name
    image_pub = ros.node.create_publisher(Image, image_topic, STATE_QOS)
    pose_pub = ros.node.create_publisher(PoseStamped, itf.EE_POSE.name, STATE_QOS)
    pixels = bytes((7 * i) % 251 for i in range(6 * 8 * 3))  # a recognisable pattern

    def publish() -> None:
        image_pub.publish(Image(height=6, width=8, encoding="rgb8", step=24, data=pixels))
        image_pub.publish(Image(height=6, width=8, encoding="rgb8", step=24, data=b"\x00" * 10))  # malformed
        pose = PoseStamped()
        pose.header.frame_id = itf.BASE_FRAME
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = 0.4123, -0.0567, 0.3321
        pose.pose.orientation.w = 1.0
        pose_pub.publish(pose)

    ros.node.create_timer(0.05, publish)
    got = asyncio.run(_receive(port, {image_topic: "foxglove.RawImage", itf.EE_POSE.name: "foxglove.PoseInFrame"},
                               timeout=60.0, alive=lambda: bridge.poll() is None))
    assert pixels in got[image_topic]  # protobuf RawImage carries the pixel bytes verbatim
    assert itf.BASE_FRAME.encode() in got[itf.EE_POSE.name]
    for value in (0.4123, -0.0567, 0.3321):  # protobuf doubles: little-endian fixed64
        assert struct.pack("<d", value) in got[itf.EE_POSE.name]


def test_port_in_use_gives_a_clear_error(procs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = procs.start(["foxglove_bridge", "--ros-args", "-p", f"port:={port}"], name="foxglove_busy",
                           capture=True)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert f"cannot serve on 127.0.0.1:{port}" in out
