"""The node graph, described once.

Read by the launch files in launch/ (real `launch`/`launch_ros` on a ROS 2 install) and by
`irevla launch PROFILE` (the runner used where `ros2 launch` does not exist, e.g. the PyPI wheels).
Both turn the same `NodeSpec`s into processes: same executables, parameter files, overrides and remaps.

ROS-free: plain dataclasses and strings. Launch arguments are plain strings; `LaunchArg` values inside
parameter overrides are substituted by whoever runs the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from irevla_ros import interfaces as itf

PACKAGE = "irevla_ros"


@dataclass(frozen=True)
class LaunchArg:
    """A placeholder for a launch argument's value inside parameter overrides."""

    name: str


@dataclass(frozen=True)
class ShareFile:
    """A parameter whose value is the text of a file in the package share folder (e.g. robot_description)."""

    path: str


@dataclass(frozen=True)
class LaunchArgSpec:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One process of the graph.

    kind="node": a ROS node started as `executable --ros-args -r __node:=name ...`.
    kind="process": a plain program (e.g. the offboard SFT worker) started as `executable *arguments`.
    """

    name: str
    executable: str
    parameter_files: tuple[str, ...] = ()
    """Paths relative to the package's config/ folder, applied in order."""
    parameters: Mapping[str, object] = field(default_factory=dict)
    """Overrides applied after the files; values may be LaunchArg placeholders."""
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    required: bool = True
    """If a required process exits, the whole graph is shut down (runner: non-zero exit naming it)."""
    kind: str = "node"
    package: str = PACKAGE
    """Nodes of other packages (robot_state_publisher, rviz2) run only under ros2 launch on a full install."""


SIM_CHOICES = ("none", "faithful", "fast")

COMMON_ARGS: tuple[LaunchArgSpec, ...] = (
    LaunchArgSpec("sim", "none", "Simulation: none (real robot + RealSense), faithful (franky -> franky-sim), "
                  "fast (MuJoCo backend, sim time)", SIM_CHOICES),
    LaunchArgSpec("robot_ip", "172.16.0.2", "Franka control unit address (ignored in simulation)"),
    LaunchArgSpec("config", "", "Extra parameter file applied to every node after the defaults"),
    LaunchArgSpec("run_dir", "runs/default", "Where episodes, checkpoints, spool and logs go"),
    LaunchArgSpec("model_dir", "", "Local folder of the VLA model; empty = tiny random-init model"),
    LaunchArgSpec("teleop", "none", "Teleoperation device", ("none", "keyboard", "spacemouse")),
    LaunchArgSpec("web", "false", "Start the Foxglove live view on localhost", ("true", "false")),
    LaunchArgSpec("algorithm", "sac", "Stage-1 learner", ("sac", "ppo")),
    LaunchArgSpec("record", "false", "Record a rosbag2 MCAP bag of the run under run_dir/bags", ("true", "false")),
    LaunchArgSpec("rviz", "false", "Start robot_state_publisher + rviz2 (full ROS 2 installs only)", ("true", "false")),
)


def _is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _sim_params(sim: str) -> tuple[str, ...]:
    return {"none": (), "faithful": ("sim.yaml",), "fast": ("sim.yaml", "sim_fast.yaml")}[sim]


def _robot_and_sensors(args: Mapping[str, str]) -> list[NodeSpec]:
    """The robot, its cameras and (in simulation) the world: the part that differs between real and sim."""
    sim = args["sim"]
    if sim == "fast":
        # Fast mode composes franka_node's safety/controller with the MuJoCo backend inside sim_world's
        # process (one physics state for robot, cameras and success): see docs/architecture.md.
        return [NodeSpec("sim_world", "sim_world", ("sim_world.yaml", "franka_node.yaml") + _sim_params(sim),
                         {"mode": "fast"})]
    if sim == "faithful":
        return [
            NodeSpec("sim_world", "sim_world", ("sim_world.yaml",) + _sim_params(sim), {"mode": "faithful"}),
            NodeSpec("franka_node", "franka_node", ("franka_node.yaml",) + _sim_params(sim),
                     {"robot_ip": "127.0.0.1", "wait_for_robot_s": 30.0}),
        ]
    return [
        NodeSpec("franka_node", "franka_node", ("franka_node.yaml",), {"robot_ip": LaunchArg("robot_ip")}),
        NodeSpec("camera_node", "camera_node", ("camera_node.yaml",)),
        *_camera_extrinsics(),
    ]


def _camera_extrinsics() -> list[NodeSpec]:
    """One static transform per hand-eye calibration in calibration/<camera>.yaml (tf2_ros, full installs)."""
    from irevla_ros.camera.calibration import find_calibrations

    specs = []
    for camera, calib in find_calibrations(share_dir() / "calibration").items():
        (x, y, z), (qx, qy, qz, qw) = calib.translation, calib.rotation_xyzw
        specs.append(NodeSpec(
            f"{camera}_camera_extrinsics", "static_transform_publisher", package="tf2_ros", required=False,
            arguments=("--x", repr(x), "--y", repr(y), "--z", repr(z), "--qx", repr(qx), "--qy", repr(qy),
                       "--qz", repr(qz), "--qw", repr(qw), "--frame-id", calib.parent_frame,
                       "--child-frame-id", calib.child_frame)))
    return specs


def _teleop(args: Mapping[str, str], *, required: bool) -> list[NodeSpec]:
    nodes = [NodeSpec("cmd_mux", "cmd_mux", ("cmd_mux.yaml",) + _sim_params(args["sim"]))]
    if args["teleop"] != "none":
        nodes.append(NodeSpec("teleop_node", "teleop_node", ("teleop_node.yaml",) + _sim_params(args["sim"]),
                              {"device": args["teleop"]}, required=required))
    return nodes


def _monitoring(args: Mapping[str, str]) -> list[NodeSpec]:
    """Live views: Foxglove bridge (ours, runs anywhere) and rviz2 (needs a full ROS 2 install)."""
    nodes = []
    if _is_true(args["record"]):
        nodes.append(NodeSpec("bag_recorder", "bag_recorder", ("bag_recorder.yaml",),
                              {"output": f"{args['run_dir']}/bags"}, required=False))
    if _is_true(args["web"]):
        nodes.append(NodeSpec("foxglove_bridge", "foxglove_bridge", ("foxglove_bridge.yaml",), required=False))
    if _is_true(args["rviz"]):
        nodes += [
            NodeSpec("robot_state_publisher", "robot_state_publisher", package="robot_state_publisher",
                     parameters={"robot_description": ShareFile("urdf/panda.urdf")}, required=False),
            NodeSpec("rviz2", "rviz2", package="rviz2", arguments=("-d", ShareFile("config/irevla.rviz").path),
                     required=False),
        ]
    return nodes


def online_rl(args: Mapping[str, str]) -> list[NodeSpec]:
    """The product's main graph: act, reward, learn the head online, package data, reload SFT weights."""
    simp = _sim_params(args["sim"])
    run_dir = LaunchArg("run_dir")
    nodes = _robot_and_sensors(args)
    nodes += [
        NodeSpec("reward_node", "reward_node", ("reward_node.yaml",) + simp,
                 {"classifier_path": f"{args['run_dir']}/reward/classifier.safetensors"}),
        NodeSpec("policy_node", "policy_node", ("policy_node.yaml",) + simp,
                 {"model_dir": LaunchArg("model_dir"), "run_dir": run_dir},
                 remappings=((itf.ACTION.name, itf.POLICY_ACTION.name),)),
        NodeSpec("rl_node", "rl_node", ("rl_node.yaml",) + simp,
                 {"algorithm": LaunchArg("algorithm"), "run_dir": run_dir, "init_head": LaunchArg("model_dir")}),
        NodeSpec("packager_node", "packager_node", ("packager_node.yaml",) + simp, {"run_dir": run_dir}),
    ]
    nodes += _teleop(args, required=False)
    nodes += _monitoring(args)
    if args["sim"] != "none":
        # In simulation the "offboard" SFT worker runs locally; on a real setup it runs on the GPU server.
        nodes.append(NodeSpec("sft_worker", "irevla", kind="process", required=False,
                              arguments=("sft-worker", "--spool", f"{args['run_dir']}/spool", "--torch-threads", "1")))
    return nodes


def teleop_demos(args: Mapping[str, str]) -> list[NodeSpec]:
    """Record expert demos by teleoperation: robot + cameras + teleop + packager (demo mode)."""
    simp = _sim_params(args["sim"])
    nodes = _robot_and_sensors(args)
    nodes += _teleop({**args, "teleop": args["teleop"] if args["teleop"] != "none" else "keyboard"},
                     required=True)
    nodes.append(NodeSpec("packager_node", "packager_node", ("packager_node.yaml",) + simp,
                          {"run_dir": LaunchArg("run_dir"), "episode_source": "teleop"}))
    nodes += _monitoring(args)
    return nodes


def replay(args: Mapping[str, str]) -> list[NodeSpec]:
    """Play a recorded bag into the graph (with /clock) and watch it; nodes use sim time."""
    nodes = [NodeSpec("bag_player", "bag_player", ("bag_player.yaml",), {"bag": LaunchArg("bag")})]
    nodes += _monitoring({**args, "web": "true"})
    return nodes


def smoke(args: Mapping[str, str]) -> list[NodeSpec]:
    """Two muxes in a chain: the smallest real graph, used to check the runner and launch plumbing."""
    return [
        NodeSpec("mux_a", "cmd_mux", ("cmd_mux.yaml",), remappings=((itf.ACTION.name, "/smoke/between"),)),
        NodeSpec("mux_b", "cmd_mux", ("cmd_mux.yaml",),
                 remappings=((itf.POLICY_ACTION.name, "/smoke/between"), (itf.ACTION.name, "/smoke/out"),
                             (itf.TELEOP_ACTION.name, "/smoke/teleop_b"),
                             (itf.INTERVENTION.name, "/smoke/intervention_b"))),
    ]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    build: Callable[[Mapping[str, str]], list[NodeSpec]]
    extra_args: tuple[LaunchArgSpec, ...] = ()

    @property
    def arguments(self) -> tuple[LaunchArgSpec, ...]:
        return COMMON_ARGS + self.extra_args


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("online_rl", "iRe-VLA online loop: robot, cameras, reward, policy, RL learner, packager",
                online_rl),
        Profile("teleop_demos", "Record expert demos by teleoperation", teleop_demos),
        Profile("replay", "Replay a rosbag (MCAP) into the graph with its timing",
                replay, (LaunchArgSpec("bag", "", "Path of the bag to play"),)),
        Profile("smoke", "Two chained command muxes (plumbing check)", smoke),
    )
}


def resolve_args(profile: Profile, given: Mapping[str, str]) -> dict[str, str]:
    """Defaults + given values, checked against the declared arguments and their choices."""
    known = {a.name: a for a in profile.arguments}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"profile {profile.name!r} has no launch argument(s) {unknown}; known: {sorted(known)}")
    values = {name: spec.default for name, spec in known.items()}
    values.update(given)
    for name, value in values.items():
        choices = known[name].choices
        if choices is not None and value not in choices:
            raise ValueError(f"launch argument {name}:={value!r} is not one of {list(choices)}")
    return values


def build(profile_name: str, given: Mapping[str, str] | None = None) -> tuple[list[NodeSpec], dict[str, str]]:
    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile {profile_name!r}; known: {sorted(PROFILES)}")
    profile = PROFILES[profile_name]
    args = resolve_args(profile, given or {})
    nodes = profile.build(args)
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError(f"profile {profile_name!r} names a node twice: {names}")
    return nodes, args


def substitute(value: object, args: Mapping[str, str]) -> object:
    if isinstance(value, LaunchArg):
        return args[value.name]
    if isinstance(value, ShareFile):
        return (share_dir() / value.path).read_text()
    return value


def share_dir() -> Path:
    """The package's data: the source tree when running from a checkout / editable install, else the installed
    share/irevla_ros (colcon)."""
    source = Path(__file__).resolve().parent.parent
    if (source / "config").is_dir() and (source / "package.xml").is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise FileNotFoundError(f"cannot find the {PACKAGE} share folder (not in {source}, no ament index)") from exc


def config_dir() -> Path:
    return share_dir() / "config"


def parameter_file_paths(node: NodeSpec, args: Mapping[str, str]) -> list[Path]:
    base = config_dir()
    paths = [base / f for f in node.parameter_files]
    if args.get("config"):
        paths.append(Path(args["config"]))
    return paths
