"""`irevla launch`: a 2-node profile runs over real DDS; a dead required node stops the graph non-zero."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import wait_for

REPO = Path(__file__).resolve().parent.parent
IREVLA = str(Path(sys.executable).parent / "irevla")


class RunnerProcess:
    def __init__(self, procs, *args):
        self.proc = procs.start([IREVLA, "launch", *args], name="runner", capture=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def pid_of(self, node: str) -> int:
        wait_for(lambda: re.search(rf"started {node} \(pid (\d+)\)", self.text()), 30, what=f"{node} start")
        return int(re.search(rf"started {node} \(pid (\d+)\)", self.text()).group(1))


def test_help_lists_profiles_and_arguments():
    out = subprocess.run([IREVLA, "launch", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for word in ("online_rl", "teleop_demos", "replay", "smoke", "sim:=none", "robot_ip:="):
        assert word in out.stdout


def test_unknown_argument_is_a_clear_error():
    out = subprocess.run([IREVLA, "launch", "smoke", "bogus:=1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no launch argument(s) ['bogus']" in out.stderr


@pytest.fixture
def smoke(procs, ros):
    runner = RunnerProcess(procs, "smoke")
    yield runner, ros


def _flow(ros, runner):
    from std_msgs.msg import Float64MultiArray

    from irevla_ros.nodes._common import COMMAND_QOS

    received = ros.collect(Float64MultiArray, "/smoke/out", COMMAND_QOS)
    pub = ros.node.create_publisher(Float64MultiArray, "/policy/action", COMMAND_QOS)
    ros.wait_for_subscribers(pub, 1, timeout=30)
    ros.wait_for_publishers("/smoke/out", 1, timeout=30)
    ros.wait_for_publishers("/smoke/between", 1, timeout=30)

    def send_until_received():
        pub.publish(Float64MultiArray(data=[0.1, 0.0, -0.2, 0.0, 0.0, 0.0, 1.0]))
        return len(received) > 0

    wait_for(send_until_received, 30, interval=0.2, what="a command through both muxes")
    assert list(received[-1].data) == pytest.approx([0.1, 0.0, -0.2, 0.0, 0.0, 0.0, 1.0])
    # a NaN command is stopped at the first mux
    before = len(received)
    pub.publish(Float64MultiArray(data=[float("nan")] * 7))
    pub.publish(Float64MultiArray(data=[0.3] * 7))
    wait_for(lambda: len(received) > before, 10, what="the valid command after the NaN one")
    assert all(abs(v - 0.3) < 1e-9 for v in received[-1].data)


def test_two_node_profile_flows_and_dead_node_stops_graph(smoke):
    runner, ros = smoke
    _flow(ros, runner)
    mux_a, mux_b = runner.pid_of("mux_a"), runner.pid_of("mux_b")
    os.kill(mux_b, signal.SIGKILL)
    code = runner.proc.wait(timeout=60)
    assert code != 0
    assert "required node 'mux_b' exited" in runner.text()
    wait_for(lambda: _gone(mux_a), 15, what="the other node (mux_a) to be stopped too")


def test_sigint_stops_the_graph_cleanly(smoke):
    runner, ros = smoke
    _flow(ros, runner)
    pids = [runner.pid_of("mux_a"), runner.pid_of("mux_b")]
    runner.proc.send_signal(signal.SIGINT)
    assert runner.proc.wait(timeout=60) == 0
    for pid in pids:
        wait_for(lambda p=pid: _gone(p), 15, what=f"node pid {pid} to exit")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
