"""Control-loop timing of franka_node on the real franky path (franky-sim in a subprocess).

Measures, at 10 and 20 Hz command streams:
  - command received (action callback entry) -> franky call (FrankyRobot.move_ee_async entry), p50/p99/max
  - duration of that franky call (poll + CartesianMotion preemption)
  - tick jitter: |interval between received commands - nominal period|, p50/p99
  - watchdog: stop the stream, time from the last command to the hold (node clock), in N trials,
    against the bound command_timeout_s + 1/control_rate_hz

Run:  .venv/bin/python bench/control_loop.py [--seconds 10] [--hold-trials 10]
Prints a table with side-by-side ratios (20 Hz / 10 Hz, p99 / 2 ms target). Nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np

TARGET_LATENCY_MS = 2.0  # issue 4: command-received -> franky call <= 2 ms p99


def start_franky_sim() -> tuple[subprocess.Popen, str]:
    """franky-sim (MuJoCo) as its own process on a random loopback address; returns (process, address)."""
    host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
    exe = os.path.join(os.path.dirname(sys.executable), "franky-sim")
    proc = subprocess.Popen([exe, "-s", "mujoco", "--hostname", host], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 60.0
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "Connect to the server" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
            return proc, host
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("franky-sim did not start")


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="stream length per rate (s)")
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 20.0], help="command rates (Hz)")
    parser.add_argument("--hold-trials", type=int, default=10, help="watchdog trials")
    args = parser.parse_args(argv)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import Float64MultiArray

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import COMMAND_QOS
    from irevla_ros.nodes.franka_node import FrankaNode
    from irevla_ros.robot.franky_backend import FrankyConfig, FrankyRobot

    sim, host = start_franky_sim()

    class TimedFrankyRobot(FrankyRobot):
        """The real franky backend, stamping each motion call against the node's command-received time."""

        def __init__(self, config):
            super().__init__(config)
            self.node = None
            self.calls: list[tuple[float, float, float]] = []  # (received, call entry, call return)

        def move_ee_async(self, position, quaternion):
            t0 = time.perf_counter()
            super().move_ee_async(position, quaternion)
            if self.node is not None:
                self.calls.append((self.node.command_received_t, t0, time.perf_counter()))

    rclpy.init()
    robot = TimedFrankyRobot(FrankyConfig(robot_ip=host, wait_for_robot_s=30.0))
    node = FrankaNode(robot, parameter_overrides=[Parameter("robot_ip", value=host)])
    robot.node = node
    executor = SingleThreadedExecutor()  # as deployed (spin_node)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    pub_node = rclpy.create_node("control_loop_bench")
    pub = pub_node.create_publisher(Float64MultiArray, itf.ACTION.name, COMMAND_QOS)
    deadline = time.monotonic() + 15.0
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    def send(values) -> None:
        msg = Float64MultiArray()
        msg.data = [float(v) for v in values]
        pub.publish(msg)

    def stream(rate: float, seconds: float) -> None:
        period = 1.0 / rate
        t_next = time.perf_counter()
        end = t_next + seconds
        k = 0
        while t_next < end:
            phase = 2 * np.pi * k / (4.0 * rate)  # a slow circle in x/y: stays well inside the box
            send([0.5 * np.cos(phase), 0.5 * np.sin(phase), 0, 0, 0, 0, 0])
            k += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.perf_counter()))

    print(f"franky-sim at {host}; node: command_timeout_s={node.config.command_timeout_s}, "
          f"control_rate_hz={node.config.control_rate_hz}; machine: {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    reset = node.controller.reset()
    print(f"reset to home: EE at {np.round(reset.position, 4).tolist()}")

    rows = []
    for rate in args.rates:
        robot.calls.clear()
        stream(rate, args.seconds)
        time.sleep(0.2)
        calls = list(robot.calls)
        lat = [(t_call - t_recv) * 1e3 for t_recv, t_call, _ in calls]
        dur = [(t_ret - t_call) * 1e3 for _, t_call, t_ret in calls]
        intervals = np.diff([t_recv for t_recv, _, _ in calls])
        jitter = np.abs(intervals - 1.0 / rate) * 1e3
        rows.append(dict(rate=rate, sent=int(rate * args.seconds), received=len(calls), lat=lat, dur=dur,
                         jitter=jitter))
        for _ in range(int(rate)):  # keep it fresh a moment, then let it hold before the next rate
            send([0.0] * 7)
            time.sleep(1.0 / rate)
        time.sleep(1.0)

    bound = node.config.command_timeout_s + 1.0 / node.config.control_rate_hz
    holds = []
    for _ in range(args.hold_trials):
        stream(20.0, 1.0)
        t_stop = time.perf_counter()
        while node.controller.mode == "tracking" and time.perf_counter() - t_stop < 5.0:
            time.sleep(0.005)
        holds.append(node.controller.hold_latency_s if node.controller.mode == "holding" else float("inf"))
        time.sleep(0.5)

    header = (f"{'rate Hz':>7} {'recv/sent':>9} | {'recv->franky p50 ms':>19} {'p99':>6} {'max':>6} "
              f"{'p99/2ms':>7} | {'call p50 ms':>11} {'p99':>6} | {'jitter p50 ms':>13} {'p99':>6}")
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['rate']:7.0f} {r['received']:4d}/{r['sent']:<4d} | {pct(r['lat'], 50):19.3f} "
              f"{pct(r['lat'], 99):6.3f} {max(r['lat'], default=float('nan')):6.3f} "
              f"{pct(r['lat'], 99) / TARGET_LATENCY_MS:7.2f} | {pct(r['dur'], 50):11.3f} {pct(r['dur'], 99):6.3f} | "
              f"{pct(r['jitter'], 50):13.3f} {pct(r['jitter'], 99):6.3f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"ratio {b['rate']:.0f}/{a['rate']:.0f} Hz: recv->franky p99 "
              f"{pct(b['lat'], 99) / pct(a['lat'], 99):.2f}x, call p99 {pct(b['dur'], 99) / pct(a['dur'], 99):.2f}x, "
              f"jitter p99 {pct(b['jitter'], 99) / pct(a['jitter'], 99):.2f}x")
    ok = sum(h <= bound for h in holds)
    print()
    print(f"watchdog: hold latency (last command -> hold, node clock) over {len(holds)} trials: "
          f"p50 {pct(holds, 50) * 1e3:.1f} ms, max {max(holds) * 1e3:.1f} ms; bound timeout+tick = "
          f"{bound * 1e3:.0f} ms; within bound {ok}/{len(holds)} ({max(holds) / bound:.2f}x of bound at worst)")

    executor.shutdown()
    node.close()
    node.destroy_node()
    pub_node.destroy_node()
    rclpy.try_shutdown()
    sim.terminate()
    sim.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
