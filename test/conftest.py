"""Test harness: one ROS_DOMAIN_ID per test session, loopback-only DDS, node processes always cleaned up.

Fixtures:
- `ros_env`: the environment dict subprocess nodes must get (domain id, loopback discovery, MUJOCO_GL, offline).
- `ros_context`: an initialised rclpy context + a helper node for the test itself (publish, subscribe, wait).
- `procs`: start node processes (`procs.start([...])`), killed and reaped at teardown whatever happens.
Use `wait_for(predicate, timeout)` / `helper.wait_for_subscribers(...)` instead of sleeping.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Pick the domain before anything imports rclpy. Domain ids 0..101 are valid with default port mapping; keep
# clear of 0 (the default everyone else uses). PYTEST_XDIST_WORKER would shift it if xdist is ever used.
_DOMAIN = int(os.environ.get("IREVLA_TEST_DOMAIN_ID", random.Random(os.getpid() ^ time.time_ns()).randint(1, 100)))
os.environ["ROS_DOMAIN_ID"] = str(_DOMAIN)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")


@pytest.fixture(autouse=True)
def normal_scheduling():
    """libfranka (franky tests, in this process) lifts the thread it runs in to SCHED_FIFO 99 when it can (as root);
    subprocesses started afterwards would inherit it and starve the machine. Every test starts and ends with the
    test thread back on SCHED_OTHER."""
    def reset() -> None:
        if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProcessGroup:
    """Subprocesses started by a test; each in its own process group so children die with it."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: Sequence[str], *, name: str | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None, capture: bool = False) -> subprocess.Popen:
        name = name or Path(cmd[0]).name
        kwargs: dict = {}
        if capture:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        else:
            log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "w")  # noqa: SIM115 - closed by OS on exit
            kwargs.update(stdout=log, stderr=subprocess.STDOUT)
        proc = subprocess.Popen(list(cmd), env={**self.env, **(env or {})}, cwd=cwd or REPO,
                                start_new_session=True, **kwargs)
        proc.irevla_name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen) -> str:
        for path in sorted(self.log_dir.glob(f"{proc.irevla_name}-*.log")):  # type: ignore[attr-defined]
            return path.read_text(errors="replace")
        return ""

    def stop_all(self, timeout: float = 10.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)


@pytest.fixture
def procs(ros_env, tmp_path):
    group = ProcessGroup(ros_env, tmp_path)
    yield group
    group.stop_all()


class RosHelper:
    """The test's own rclpy node with a background executor."""

    def __init__(self):
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"irevla_test_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        import rclpy

        while rclpy.ok(context=self.context):
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                break

    def collect(self, msg_type, topic: str, qos=10) -> list:
        """Subscribe and return the list the messages are appended to."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 15.0) -> None:
        wait_for(lambda: publisher.get_subscription_count() >= count, timeout, what=f"{count} subscriber(s) "
                 f"on {publisher.topic_name}")

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 15.0) -> None:
        wait_for(lambda: self.node.count_publishers(topic) >= count, timeout, what=f"publisher on {topic}")

    def call(self, srv_type, name: str, request=None, timeout: float = 30.0):
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available after {timeout}s")
        future = client.call_async(request if request is not None else srv_type.Request())
        wait_for(future.done, timeout, what=f"reply from {name}")
        return future.result()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2)


@pytest.fixture
def ros():
    helper = RosHelper()
    yield helper
    helper.close()
