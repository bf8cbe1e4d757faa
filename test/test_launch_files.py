"""The launch files yield exactly the graph description's nodes, parameter files, overrides and remaps.

`launch` and `launch_ros` cannot be installed here (not on PyPI, Debian ships ROS 1 only), so the test runs the
real launch files against a small RECORDING STAND-IN for those two packages: classes that keep the arguments they
are given. It checks our wiring, not launch itself.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from irevla_ros import graph

REPO = Path(__file__).resolve().parent.parent


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class LaunchConfigurationStandIn:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context["args"][self.name]


def _make_stand_in() -> dict[str, types.ModuleType]:
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    substitutions = types.ModuleType("launch.substitutions")
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    for name in ("LaunchDescription",):
        setattr(launch, name, type(name, (_Recorded,), {}))
    for name in ("DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction", "Shutdown"):
        setattr(actions, name, type(name, (_Recorded,), {}))
    substitutions.LaunchConfiguration = LaunchConfigurationStandIn
    ros_actions.Node = type("Node", (_Recorded,), {})
    launch.actions, launch.substitutions, launch_ros.actions = actions, substitutions, ros_actions
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions}


@pytest.fixture
def stand_in(monkeypatch):
    for name, module in _make_stand_in().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "irevla_ros.launch_support", raising=False)
    yield


def run_launch_file(profile: str, given: dict[str, str]):
    path = REPO / "launch" / f"{profile}.launch.py"
    spec = importlib.util.spec_from_file_location(f"launch_file_{profile}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    entities = description.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1
    args = {**declared, **given}
    return declared, opaque[0].kwargs["function"]({"args": args})


VARIANTS = [
    ("online_rl", {}),
    ("online_rl", {"sim": "faithful"}),
    ("online_rl", {"sim": "fast", "teleop": "keyboard", "web": "true", "robot_ip": "10.0.0.2"}),
    ("online_rl", {"rviz": "true", "algorithm": "ppo", "record": "true"}),
    ("teleop_demos", {"sim": "fast"}),
    ("replay", {"bag": "/tmp/x.mcap"}),
]


@pytest.mark.parametrize("profile,given", VARIANTS)
def test_launch_file_matches_graph(stand_in, profile, given):
    declared, actions = run_launch_file(profile, given)
    assert set(declared) == {a.name for a in graph.PROFILES[profile].arguments}
    expected, args = graph.build(profile, given)
    assert [a.kwargs["name"] for a in actions] == [s.name for s in expected]
    for action, spec in zip(actions, expected, strict=True):
        if spec.kind == "process":
            assert type(action).__name__ == "ExecuteProcess"
            assert action.kwargs["cmd"] == [spec.executable, *spec.arguments]
            continue
        kw = action.kwargs
        assert type(action).__name__ == "Node"
        assert (kw["package"], kw["executable"]) == (spec.package, spec.executable)
        assert kw["remappings"] == list(spec.remappings)
        files = [p for p in kw["parameters"] if isinstance(p, str)]
        assert files == [str(p) for p in graph.parameter_file_paths(spec, args)]
        for f in files:
            assert Path(f).is_file(), f"{spec.name}: parameter file {f} missing"
        overrides = [p for p in kw["parameters"] if isinstance(p, dict)]
        if spec.parameters:
            assert overrides == [{k: graph.substitute(v, args) for k, v in spec.parameters.items()}]
            assert not any(isinstance(v, graph.LaunchArg) for v in overrides[0].values())
        else:
            assert overrides == []
        assert ("on_exit" in kw and kw["on_exit"] is not None) == spec.required
    if "robot_ip" in given and given.get("sim", "none") == "none":
        franka = next(a for a in actions if a.kwargs["name"] == "franka_node")
        assert franka.kwargs["parameters"][-1]["robot_ip"] == given["robot_ip"]


def test_bad_launch_argument_is_refused(stand_in):
    with pytest.raises(ValueError, match="sim:='warp'"):
        run_launch_file("online_rl", {"sim": "warp"})


# --- parameter files: every file loads, every parameter it sets is declared by the node that reads it. ---------
def _declared_parameters(executable: str) -> set[str]:
    module = importlib.import_module(f"irevla_ros.nodes.{executable}")
    config_cls = getattr(module, "PARAMETERS", None)
    assert config_cls is not None, f"irevla_ros.nodes.{executable} must define PARAMETERS (its config dataclass)"
    from irevla_ros.nodes._common import config_parameter_names

    names = config_parameter_names(config_cls)
    names |= set(getattr(module, "EXTRA_PARAMETERS", ()))
    return names | {"use_sim_time"}


def _composed(spec: graph.NodeSpec) -> dict[str, str]:
    """Nodes a process hosts besides itself: sim_world in fast mode composes franka_node."""
    if spec.executable == "sim_world" and spec.parameters.get("mode") == "fast":
        return {"franka_node": "franka_node"}
    return {}


def test_every_parameter_file_loads_and_sets_only_declared_parameters():
    checked = 0
    for profile in graph.PROFILES:
        for sim in graph.SIM_CHOICES:
            specs, args = graph.build(profile, {"sim": sim, "teleop": "keyboard", "web": "true", "record": "true"})
            for spec in specs:
                if spec.kind != "node" or spec.package != graph.PACKAGE:
                    continue
                hosted = {spec.name: spec.executable, **_composed(spec)}
                for path in graph.parameter_file_paths(spec, args):
                    content = yaml.safe_load(path.read_text()) or {}
                    assert isinstance(content, dict), f"{path}: not a mapping"
                    for section, body in content.items():
                        params = (body or {}).get("ros__parameters")
                        assert isinstance(params, dict), f"{path}: section {section} lacks ros__parameters"
                        targets = hosted.items() if section == "/**" else [
                            (n, e) for n, e in hosted.items() if section.strip("/") == n]
                        for node_name, executable in targets:
                            undeclared = set(params) - _declared_parameters(executable)
                            assert not undeclared, f"{path} sets {sorted(undeclared)} not declared by {node_name}"
                            checked += 1
                declared = _declared_parameters(spec.executable)
                assert set(spec.parameters) <= declared, f"{spec.name}: overrides not declared: " \
                    f"{sorted(set(spec.parameters) - declared)}"
    assert checked > 5


def test_every_config_file_section_belongs_to_a_node():
    node_names = {s.name for p in graph.PROFILES for sim in graph.SIM_CHOICES
                  for s in graph.build(p, {"sim": sim, "teleop": "keyboard", "web": "true", "record": "true"})[0]}
    node_names.add("franka_node")
    for path in (REPO / "config").glob("*.yaml"):
        content = yaml.safe_load(path.read_text()) or {}
        for section in content:
            assert section == "/**" or section.strip("/") in node_names, f"{path.name}: unknown node {section}"


def test_calibrations_become_static_transforms_on_real_installs(stand_in, tmp_path, monkeypatch):
    import shutil

    share = tmp_path / "share"
    shutil.copytree(REPO / "config", share / "config")
    (share / "calibration").mkdir()
    shutil.copy(REPO / "calibration" / "examples" / "wrist.yaml", share / "calibration" / "wrist.yaml")
    (share / "package.xml").write_text("<package/>")
    monkeypatch.setattr(graph, "share_dir", lambda: share)
    _declared, actions = run_launch_file("online_rl", {})
    tf = [a for a in actions if a.kwargs["name"] == "wrist_camera_extrinsics"]
    assert len(tf) == 1 and tf[0].kwargs["package"] == "tf2_ros"
    from irevla_ros.camera.calibration import load_calibration

    calib = load_calibration(share / "calibration" / "wrist.yaml")
    args = tf[0].kwargs["arguments"]
    assert args[args.index("--frame-id") + 1] == calib.parent_frame
    assert float(args[args.index("--x") + 1]) == calib.translation[0]
    sim_specs, _ = graph.build("online_rl", {"sim": "fast"})
    assert not any(s.package == "tf2_ros" for s in sim_specs)
