"""Simulation speed (sim-seconds per wall-second) in both modes, two cameras at 10 Hz, 128² and 224²,
and (with --experts N) the scripted experts' success rates over N randomised episodes per task.

    .venv/bin/python bench/sim_speed.py                 # speed table
    .venv/bin/python bench/sim_speed.py --experts 50    # + expert success table

Rows:
  fast / SimEnv        in-process, no ROS: FrankaController + MuJoCo backend + 2 cameras rendered per 0.1 s step
  fast / sim_world     the node over DDS in lockstep with a consumer that answers every frame with an action
  faithful / sim_world franky-sim serving libfranka to a franky client that keeps moving the arm (the
                       franka_node situation), paced at realtime_factor 1 (so at most 1x), cameras every 0.1 s
Targets from the issue (2 CPU cores): fast >= 5x real time at 128², faithful >= 0.5x.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200) % 101 or 77))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")

TARGETS = {"fast": 5.0, "faithful": 0.5}


def bench_simenv(size: int, steps: int) -> float:
    from irevla_ros.sim.env import SimEnv
    from irevla_ros.sim.experts import expert_action

    with SimEnv("reach", seed=0, image_size=size) as env:
        env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(steps):
            _, done, _ = env.step(expert_action(env))
            if done or env.steps >= env.max_steps:
                env.reset()  # included in the wall time, not in the simulated time
        wall = time.perf_counter() - t0
        return (steps * (1.0 / env.control_hz)) / wall


def _world_cmd(mode: str, size: int, extra: list[str]) -> list[str]:
    cfg = REPO / "config"
    cmd = [str(BIN / "sim_world"), "--ros-args", "-r", "__node:=sim_world",
           "--params-file", str(cfg / "sim_world.yaml"), "--params-file", str(cfg / "sim.yaml")]
    if mode == "fast":
        cmd += ["--params-file", str(cfg / "sim_fast.yaml")]
    return cmd + ["-p", f"mode:={mode}", "-p", f"image_width:={size}", "-p", f"image_height:={size}", *extra]


class _Helper:
    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"sim_speed_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        import rclpy

        while rclpy.ok(context=self.context):
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down
                break

    def close(self):
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(what)


def bench_node(mode: str, size: int, seconds: float) -> float:
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray

    from irevla_ros import interfaces as itf
    from irevla_ros.nodes._common import COMMAND_QOS, IMAGE_QOS, to_float64_array

    host = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    extra = ["-p", "max_wait_s:=1.0"] if mode == "fast" else ["-p", f"robot_host:={host}"]
    proc = subprocess.Popen(_world_cmd(mode, size, extra), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    helper = _Helper()
    stamps: list[float] = []
    pub = helper.node.create_publisher(Float64MultiArray, itf.ACTION.name, COMMAND_QOS)
    action = to_float64_array(np.zeros(7))

    def on_image(msg: Image) -> None:
        stamps.append(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)
        if mode == "fast":
            pub.publish(action)  # the consumer answers every frame at once

    helper.node.create_subscription(Image, itf.camera_image("front").name, on_image, IMAGE_QOS)
    stop = threading.Event()
    mover = None
    try:
        _wait(lambda: len(stamps) > 3, 90, f"{mode} frames")
        if mode == "faithful":
            mover = threading.Thread(target=_keep_moving, args=(host, stop), daemon=True)
            mover.start()
            time.sleep(2.0)  # connected and moving
        n0 = len(stamps)
        time.sleep(seconds)
        frames = len(stamps) - n0
        return frames * 0.1 / seconds  # one frame per 0.1 s of sim time in both modes
    finally:
        stop.set()
        if mover is not None:
            mover.join(30)
        helper.close()
        os.killpg(proc.pid, 2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def _keep_moving(host: str, stop: threading.Event) -> None:
    """A franky client moving the arm up and down 5 cm until told to stop (what franka_node does all day)."""
    import franky

    robot = franky.Robot(host, realtime_config=franky.RealtimeConfig.Ignore)
    robot.relative_dynamics_factor = 0.15
    sign = 1.0
    while not stop.is_set():
        robot.move(franky.CartesianMotion(franky.Affine([0.0, 0.0, 0.05 * sign]), franky.ReferenceType.Relative))
        sign = -sign


def bench_experts(episodes: int) -> list[tuple[str, str, int, int, float]]:
    from irevla_ros.sim.env import SimEnv
    from irevla_ros.sim.experts import expert_action
    from irevla_ros.sim.tasks import TASKS

    rows = []
    for name, task in TASKS.items():
        ok, lengths = 0, []
        with SimEnv(name, seed=1000, cameras=()) as env:
            for s in range(episodes):
                env.reset(seed=1000 + s)
                done = False
                while not done and env.steps < env.max_steps:
                    _, done, _ = env.step(expert_action(env))
                ok += done
                lengths.append(env.steps)
        rows.append((name, task.split, ok, episodes, float(np.mean(lengths))))
        print(f"  {name}: {ok}/{episodes}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--steps", type=int, default=150, help="SimEnv steps per measurement")
    parser.add_argument("--seconds", type=float, default=12.0, help="wall seconds per node measurement")
    parser.add_argument("--experts", type=int, default=0, help="episodes per task for the expert table (0: skip)")
    parser.add_argument("--skip-nodes", action="store_true", help="only the in-process SimEnv rows")
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        rows.append(("fast", "SimEnv (no ROS)", size, bench_simenv(size, args.steps)))
        print(rows[-1], flush=True)
        if not args.skip_nodes:
            for mode in ("fast", "faithful"):
                rows.append((mode, "sim_world node", size, bench_node(mode, size, args.seconds)))
                print(rows[-1], flush=True)
    print(f"\nSimulation speed, 2 cameras every 0.1 s sim time ({os.cpu_count()} CPUs)")
    print(f"{'mode':9s} {'runner':16s} {'image':>7s} {'sim s / wall s':>15s} {'target':>7s} {'ratio':>7s}")
    for mode, runner, size, speed in rows:
        target = TARGETS[mode]
        print(f"{mode:9s} {runner:16s} {size:>4d}²  {speed:>15.2f} {target:>6.1f}x {speed / target:>6.2f}x")
    by = {(m, r, s): v for m, r, s, v in rows}
    if len(args.sizes) >= 2:
        a, b = args.sizes[0], args.sizes[1]
        print(f"\n{b}² vs {a}² cost (speed ratio {a}²/{b}²):")
        for mode, runner in {(m, r) for m, r, _, _ in rows}:
            if (mode, runner, a) in by and (mode, runner, b) in by:
                print(f"  {mode:9s} {runner:16s} {by[(mode, runner, a)] / by[(mode, runner, b)]:.2f}x")
    if args.experts:
        print(f"\nScripted experts over {args.experts} randomised episodes per task (fast mode, seeds 1000+):")
        exp = bench_experts(args.experts)
        print(f"{'task':14s} {'split':7s} {'success':>9s} {'rate':>6s} {'mean steps':>11s}")
        for name, split, ok, n, mean_len in exp:
            print(f"{name:14s} {split:7s} {ok:>4d}/{n:<4d} {ok / n:>6.0%} {mean_len:>11.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
