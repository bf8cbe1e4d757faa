"""sim_world: the simulated cell (robot + objects + cameras + ground truth) for the graph, in two modes.

faithful  franky-sim's MujocoSimulator hosts our scene in-process and serves the libfranka protocol on
          `robot_host`, so franka_node drives it with franky exactly as it drives the real arm. Physics runs in
          its own thread at `realtime_factor` x wall time (1 kHz steps); cameras render every 1/camera_rate_hz.
fast      sim time. The franka node (FrankaNode, same code, same parameters) is composed in this process over
          the MuJoCo fast backend (one physics state for robot, cameras and success). Each control period
          (1/control_hz of sim time) starts when an action arrives on /franka/action, or after `max_wait_s` of
          wall time without one (the graph never deadlocks); after it: robot state, images, success, then /clock.

Publishes  /cameras/<cam>/color/image_raw (rgb8) + camera_info, /sim/success (Bool), /task/instruction (latched),
           /sim/task (latched: the running episode's task id),
           /clock (fast mode), /teleop/action (only with expert_driver: the scripted expert "teleoperates",
           every period or, with expert_mode corrective, only when the arm goes astray: irevla_ros/sim/supervisor.py)
Services   /sim/reset (Trigger): next task (round robin / random over `tasks`) with objects randomised from
           `seed` (incremented per reset). The arm's reset is franka_node's /franka/reset (in both modes).
See docs/sim.md.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from irevla_ros import interfaces as itf
from irevla_ros.camera.base import Intrinsics
from irevla_ros.camera.messages import camera_info_msg, image_msg
from irevla_ros.core.control.franka_controller import HOLDING, RESETTING, TRACKING
from irevla_ros.nodes._common import (
    COMMAND_QOS,
    IMAGE_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    STATE_QOS,
    declare_config,
    spin_node,
    to_float64_array,
)
from irevla_ros.sim.supervisor import CorrectiveSupervisor, SupervisorConfig
from irevla_ros.sim.tasks import TASKS, Episode, randomize

MODES = ("faithful", "fast")
EXPERT_MODES = ("always", "corrective")
TASK_ORDERS = ("round_robin", "random")


@dataclass
class SimWorldConfig:
    mode: str = "faithful"
    """faithful (franky-sim serves libfranka; franka_node connects) | fast (sim time, franka node composed)."""
    tasks: tuple[str, ...] = ("reach",)
    """Tasks cycled through by /sim/reset (irevla_ros.sim.tasks.TASKS)."""
    task_order: str = "round_robin"
    seed: int = 0
    """Seed of the first episode's object layout; +1 per reset (reproducible sequences)."""
    cameras: tuple[str, ...] = ("wrist", "front")
    image_width: int = 128
    image_height: int = 128
    camera_rate_hz: float = 10.0
    """faithful: render rate (sim time). fast: images are rendered once per control period."""
    image_qos: str = "reliable"
    """reliable (IMAGE_QOS: the learning loop needs every frame) | sensor (best effort, like a RealSense)."""
    shadows: bool = False
    render_detail: str = "fast"
    """fast: the robot drawn with its collision meshes (~2k faces, ~20x cheaper on a CPU) | full: visual meshes."""
    robot_host: str = "127.0.0.1"
    """faithful: loopback address the libfranka server binds (ports 1337 robot / 1338 gripper)."""
    realtime_factor: float = 1.0
    """faithful: sim seconds per wall second to aim for (<= 0: as fast as the CPU allows)."""
    control_hz: float = 10.0
    """fast: sim-time length of one control period is 1/control_hz."""
    max_wait_s: float = 0.5
    """fast: wall seconds to wait for an action before advancing anyway."""
    control_decimation: int = 4
    """fast: physics steps (1 ms) per impedance-controller update."""
    franka_params_files: tuple[str, ...] = ("",)
    """fast: parameter files for the composed franka node; [""] = config/{franka_node,sim,sim_fast}.yaml."""
    expert_driver: bool = False
    """Publish the scripted expert's action on /teleop/action at control_hz (demos through the teleop path)."""
    expert_mode: str = "always"
    """With expert_driver: "always" (the expert drives every period: demos) or "corrective" (a simulated human
    supervisor: the expert takes over for expert_hold_ticks periods after the arm moved astray of where it would
    go for expert_patience_ticks periods in a row; irevla_ros/sim/supervisor.py)."""
    expert_patience_ticks: int = 2
    expert_stuck_ticks: int = 3
    """Corrective mode: also take over after this many periods with the arm standing still while the expert would
    move (pressed against the box or the table; 0 = never). Fast mode only: there the composed franka controller
    says whether an episode is live, so an arm homing or waiting for the next episode is never judged."""
    expert_hold_ticks: int = 10
    expert_max_interventions: int = 3
    """Corrective mode: takeovers per episode at most (0 = no limit)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be a non-empty list of {sorted(TASKS)}; unknown: {unknown}")
        if self.task_order not in TASK_ORDERS:
            raise ValueError(f"task_order must be one of {TASK_ORDERS}, got {self.task_order!r}")
        bad_cams = [c for c in self.cameras if c not in itf.CAMERA_NAMES]
        if bad_cams:
            raise ValueError(f"cameras must be among {itf.CAMERA_NAMES}, got {bad_cams}")
        for name in ("image_width", "image_height"):
            if not 16 <= getattr(self, name) <= 640:
                raise ValueError(f"{name} must be in [16, 640] px, got {getattr(self, name)}")
        for name, lo, hi in (("camera_rate_hz", 0.5, 60.0), ("control_hz", 1.0, 100.0), ("max_wait_s", 0.001, 60.0)):
            v = getattr(self, name)
            if not (np.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}")
        if not np.isfinite(self.realtime_factor):
            raise ValueError(f"realtime_factor must be finite, got {self.realtime_factor!r}")
        if self.render_detail not in ("fast", "full"):
            raise ValueError(f"render_detail must be fast or full, got {self.render_detail!r}")
        if self.image_qos not in ("reliable", "sensor"):
            raise ValueError(f"image_qos must be reliable or sensor, got {self.image_qos!r}")
        if not 1 <= self.control_decimation <= 10:
            raise ValueError(f"control_decimation must be in [1, 10], got {self.control_decimation}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.expert_mode not in EXPERT_MODES:
            raise ValueError(f"expert_mode must be one of {EXPERT_MODES}, got {self.expert_mode!r}")
        self.supervisor_config()  # ValueError for bad patience / hold / budget

    def supervisor_config(self) -> SupervisorConfig:
        return SupervisorConfig(patience_ticks=self.expert_patience_ticks, hold_ticks=self.expert_hold_ticks,
                                stuck_ticks=self.expert_stuck_ticks if self.mode == "fast" else 0,
                                max_interventions_per_episode=self.expert_max_interventions)


def intrinsics_of(renderer, camera: str) -> Intrinsics:
    K = renderer.intrinsics(camera)
    return Intrinsics(renderer.width, renderer.height, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))


class SimWorldNode(Node):
    """The cell as a node: one simulation thread owns physics + rendering; ROS callbacks only queue/lock."""

    def __init__(self, **node_kwargs) -> None:
        super().__init__("sim_world", **node_kwargs)
        self.config = declare_config(self, SimWorldConfig)
        cfg = self.config
        self._rng = np.random.default_rng(cfg.seed)
        self._next_seed = cfg.seed
        self._task_index = 0
        self.episode: Episode | None = None
        self.lock = threading.RLock()  # guards model/data between physics, rendering, resets, the expert
        self._stop = threading.Event()
        self.franka = None  # the composed franka node (fast mode)
        self.renderer = None  # made in the simulation thread
        self.server = None

        qos = IMAGE_QOS if cfg.image_qos == "reliable" else SENSOR_QOS
        self.image_pubs = {c: self.create_publisher(Image, itf.camera_image(c).name, qos) for c in cfg.cameras}
        self.info_pubs = {c: self.create_publisher(CameraInfo, itf.camera_info(c).name, qos) for c in cfg.cameras}
        self.success_pub = self.create_publisher(Bool, itf.SIM_SUCCESS.name, STATE_QOS)
        self.instruction_pub = self.create_publisher(String, itf.INSTRUCTION.name, LATCHED_QOS)
        self.task_pub = self.create_publisher(String, itf.SIM_TASK.name, LATCHED_QOS)
        self.expert_pub = self.create_publisher(Float64MultiArray, itf.TELEOP_ACTION.name, COMMAND_QOS) \
            if cfg.expert_driver else None
        self.supervisor = CorrectiveSupervisor(cfg.supervisor_config()) \
            if cfg.expert_driver and cfg.expert_mode == "corrective" else None
        self._service_group = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, itf.SIM_RESET.name, self.reset_callback, callback_group=self._service_group)
        self.frames_published = 0
        self.crashed = ""  # set when the simulation thread dies (main() then exits non-zero)

        if cfg.mode == "faithful":
            self._start_faithful()
        else:
            self._start_fast()
        self._new_episode()
        self._thread = threading.Thread(target=self._loop, name=f"sim_world_{cfg.mode}", daemon=True)
        self._thread.start()
        if cfg.expert_driver and not (cfg.mode == "fast" and self.supervisor is not None):
            self.create_timer(1.0 / cfg.control_hz, self.expert_callback)  # fast + supervisor: in the sim loop
        self.get_logger().info(
            f"sim_world ({cfg.mode}) ready: tasks {list(cfg.tasks)}, cameras {list(cfg.cameras)} "
            f"{cfg.image_width}x{cfg.image_height}" + (f", libfranka on {self.robot_host}" if cfg.mode == "faithful"
                                                       else ""))

    # --- setup ----------------------------------------------------------------------------------------------
    def _start_faithful(self) -> None:
        from franky_sim import SimulationServer

        from irevla_ros.sim.scene import make_simulator
        from irevla_ros.sim.world import World

        cfg = self.config
        self.sim = make_simulator(shadows=cfg.shadows)
        self.sim.init()
        self.server = SimulationServer(self.sim, hostname_candidates=[cfg.robot_host])
        try:
            self.server.init()  # binds the robot and gripper ports, compiles and starts the simulation
        except Exception as exc:
            raise RuntimeError(f"cannot serve libfranka on {cfg.robot_host} (ports 1337/1338 in use?): {exc}") from exc
        self.robot_host = self.sim.robots[0].hostname
        self.world = World(self.sim.model, self.sim.data)

    def _start_fast(self) -> None:
        import mujoco

        from irevla_ros.graph import config_dir
        from irevla_ros.nodes.franka_node import FrankaNode
        from irevla_ros.robot.mujoco_fast import MujocoFastRobot
        from irevla_ros.sim import scene as sc
        from irevla_ros.sim.world import World

        cfg = self.config
        model = sc.compile_model(sc.scene_xml(shadows=cfg.shadows))
        data = mujoco.MjData(model)
        self.world = World(model, data)
        self.robot = MujocoFastRobot(self.world, control_decimation=cfg.control_decimation)
        self.robot.teleport()
        self.lock = self.robot.lock  # one lock for physics, controller calls, rendering
        files = [f for f in cfg.franka_params_files if f]
        if not files:
            files = [str(config_dir() / name) for name in ("franka_node.yaml", "sim.yaml", "sim_fast.yaml")]
        cli = ["--ros-args"]
        for f in files:
            cli += ["--params-file", f]
        cli += ["-p", "use_sim_time:=true"]
        # Own name and parameters: the runner's `-r __node:=sim_world` must not rename the franka node.
        self.franka = FrankaNode(robot=self.robot, node_name="franka_node", use_global_arguments=False, cli_args=cli)
        self._action_event = threading.Event()
        # A period starts when the arm is commanded. With a corrective supervisor it starts on the policy's command
        # instead (the supervisor's own command, sent at the frame, is already in the franka node by then, and the
        # mux drops the policy's): the sim stays in step with the policy, one policy step per period, while the
        # supervisor drives.
        pace = itf.POLICY_ACTION.name if self.supervisor is not None else itf.ACTION.name
        self.create_subscription(Float64MultiArray, pace, lambda _msg: self._action_event.set(), COMMAND_QOS)
        self.clock_pub = self.create_publisher(Clock, itf.CLOCK.name, 10)
        self.robot_host = ""

    # --- episodes -------------------------------------------------------------------------------------------
    def _choose_task(self) -> str:
        tasks = self.config.tasks
        if self.config.task_order == "random":
            return str(self._rng.choice(tasks))
        task = tasks[self._task_index % len(tasks)]
        self._task_index += 1
        return task

    def _new_episode(self) -> Episode:
        task = self._choose_task()
        seed = self._next_seed
        self._next_seed += 1
        with self.lock:
            self.episode = randomize(self.world, task, seed)
            if self.supervisor is not None:
                self.supervisor.reset()
        self.instruction_pub.publish(String(data=self.episode.instruction))
        self.task_pub.publish(String(data=self.episode.task))
        return self.episode

    def reset_callback(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            ep = self._new_episode()
        except Exception as exc:  # noqa: BLE001 - report any failure to the caller
            response.success = False
            response.message = f"reset failed: {exc}"
            return response
        response.success = True
        response.message = json.dumps({"task": ep.task, "seed": ep.seed, "instruction": ep.instruction})
        return response

    def expert_callback(self) -> None:
        from irevla_ros.sim.experts import expert_action

        with self.lock:
            if self.episode is None:
                return
            action = expert_action(self.world, self.episode)
            if self.supervisor is not None:
                before = self.supervisor.interventions_total
                # Fast mode: live only while the arm takes commands (not homing, not idle between episodes).
                live = self.franka is None or self.franka.controller.mode in (TRACKING, HOLDING)
                if not self.supervisor.tick(self.world.tcp_position(), action, live=live):
                    return
                if self.supervisor.interventions_total != before:
                    self.get_logger().info(
                        f"supervisor takes over (episode seed {self.episode.seed}, takeover "
                        f"{self.supervisor.interventions} of this episode, {self.supervisor.interventions_total} "
                        "in all)", throttle_duration_sec=5.0)
        self.expert_pub.publish(to_float64_array(action, "action"))

    # --- outputs --------------------------------------------------------------------------------------------
    def _publish_frame(self, stamp_ns: int) -> None:
        """Render and publish every camera + success (caller holds no lock; rendering takes it). Messages are built
        by irevla_ros.camera.messages, exactly as camera_node builds the RealSense ones."""
        with self.lock:
            images = self.renderer.render_all(self.world.data)
            success = bool(self.episode is not None and self.episode.success(self.world))
        for cam, img in images.items():
            frame = itf.camera_optical_frame(cam)
            self.info_pubs[cam].publish(camera_info_msg(intrinsics_of(self.renderer, cam), stamp_ns, frame))
            self.image_pubs[cam].publish(image_msg(img, "rgb8", stamp_ns, frame))
        self.success_pub.publish(Bool(data=success))
        self.frames_published += 1

    # --- loops ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        from irevla_ros.sim.render import CameraRenderer

        cfg = self.config
        try:
            # An EGL context belongs to the thread that made it: render (and close) only in this thread.
            self.renderer = CameraRenderer(self.world.model, cfg.image_width, cfg.image_height, cfg.cameras,
                                           shadows=cfg.shadows, detail=cfg.render_detail)
            if cfg.mode == "faithful":
                self._faithful_loop()
            else:
                self._fast_loop()
        except Exception as exc:  # noqa: BLE001 - a dead physics thread must be loud and end the process
            if self._stop.is_set() or not rclpy.ok(context=self.context):
                return  # shutting down (Ctrl-C / SIGTERM): publishers die under the loop; not a crash
            self.crashed = f"simulation loop crashed: {exc!r}"
            self.get_logger().fatal(self.crashed)
            if rclpy.ok(context=self.context):
                self.context.try_shutdown()
        finally:
            if self.renderer is not None:
                self.renderer.close()
                self.renderer = None

    def _faithful_loop(self) -> None:
        cfg = self.config
        steps_per_frame = max(1, int(round(1.0 / (cfg.camera_rate_hz * 0.001))))
        t0 = time.perf_counter()
        sim_t = 0.0
        k = 0
        while not self._stop.is_set():
            with self.lock:
                self.server.run_once(realtime=False)
            sim_t += 0.001
            k += 1
            if k % steps_per_frame == 0:
                self._publish_frame(self.get_clock().now().nanoseconds)
            if cfg.realtime_factor > 0:
                ahead = sim_t / cfg.realtime_factor - (time.perf_counter() - t0)
                if ahead > 0.002:
                    time.sleep(ahead)

    def _fast_loop(self) -> None:
        cfg = self.config
        period = 1.0 / cfg.control_hz
        while not self._stop.is_set():
            # A franka reset (e.g. reset_mode random: home, then a tracked move) polls the arm on the wall clock:
            # keep time moving while it runs instead of waiting for actions nobody sends.
            if self.franka.controller.mode != RESETTING:
                self._action_event.wait(cfg.max_wait_s)
            self._action_event.clear()
            if self._stop.is_set():
                break
            self.robot.advance(period)
            now = Time(nanoseconds=int(round(self.world.data.time * 1e9)))
            # Same-process nodes see the new time at once (their /clock subscription catches up later).
            for clock in (self.get_clock(), self.franka.get_clock()):
                if clock.ros_time_is_active:
                    clock.set_ros_time_override(now)
            self.franka.control_callback()  # watchdog tick at the period boundary
            self.franka.state_callback()  # robot state for this period
            if self.supervisor is not None:
                self.expert_callback()  # judged once per period, its command out before the frame
            self._publish_frame(now.nanoseconds)
            self.clock_pub.publish(Clock(clock=now.to_msg()))

    def close(self) -> None:
        self._stop.set()
        if hasattr(self, "_action_event"):
            self._action_event.set()
        if getattr(self, "_thread", None) is not None and self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if self.franka is not None:
            self.franka.close()  # stops the arm; spin_node destroys it (it is one of the spun nodes)
        if getattr(self, "server", None) is not None:
            self.server.cleanup()
            self.server = None


PARAMETERS = SimWorldConfig


def main(args=None) -> int:
    made: list[SimWorldNode] = []

    def make():
        node = SimWorldNode()
        made.append(node)
        return [node, node.franka] if node.franka is not None else [node]

    rc = spin_node(make, args, multithreaded=True)
    return 1 if made and made[0].crashed else rc


if __name__ == "__main__":
    raise SystemExit(main())
