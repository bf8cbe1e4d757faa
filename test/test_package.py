"""colcon/ament install metadata is complete: package.xml, setup.py entry points and data files."""

from __future__ import annotations

import ast
import importlib
import runpy
import xml.etree.ElementTree as ET
from fnmatch import fnmatch
from pathlib import Path

import pytest
import setuptools

from irevla_ros import graph

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup_kwargs():
    captured: dict = {}
    original = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


def all_specs() -> list[graph.NodeSpec]:
    specs = []
    for name in graph.PROFILES:
        for sim in graph.SIM_CHOICES:
            for extra in ({}, {"teleop": "keyboard", "web": "true", "rviz": "true", "record": "true"}):
                nodes, _ = graph.build(name, {"sim": sim, **extra})
                specs += nodes
    return specs


def console_scripts(setup_kwargs) -> dict[str, str]:
    entries = setup_kwargs["entry_points"]["console_scripts"]
    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}


def test_package_xml_is_format3_ament_python():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "irevla_ros"
    assert root.find("export/build_type").text == "ament_python"


def test_every_ros_interface_package_used_is_declared():
    declared = {e.text for e in ET.parse(REPO / "package.xml").getroot().findall("exec_depend")}
    used: set[str] = set()
    for path in (REPO / "irevla_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                top = node.module.split(".")[0]
                if top.endswith(("_msgs", "_srvs", "_interfaces")) or top in ("rclpy", "launch", "launch_ros"):
                    used.add(top)
    assert used, "expected the nodes to use ROS packages"
    assert used <= declared, f"used but not in package.xml: {sorted(used - declared)}"


def test_every_graph_executable_is_a_console_script_with_main(setup_kwargs):
    scripts = console_scripts(setup_kwargs)
    for spec in all_specs():
        if spec.package != graph.PACKAGE:
            continue
        assert spec.executable in scripts, f"{spec.name}: executable {spec.executable} not in console_scripts"
    for name, target in scripts.items():
        module_name, func = target.split(":")
        assert (REPO / (module_name.replace(".", "/") + ".py")).is_file(), f"{name}: {module_name} missing"
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func, None)), f"{name}: {target} is not callable"


def test_every_data_file_is_installed(setup_kwargs):
    share = f"share/{graph.PACKAGE}"
    installed = {src for _dest, files in setup_kwargs["data_files"] for src in files}
    assert "package.xml" in installed and f"resource/{graph.PACKAGE}" in installed
    for folder in ("launch", "config", "urdf", "calibration"):
        for path in (REPO / folder).glob("*"):
            if path.is_file() and not path.name.startswith((".", "README")):
                rel = str(path.relative_to(REPO))
                assert rel in installed, f"{rel} would not be installed into {share}"
    for dest, _files in setup_kwargs["data_files"]:
        assert dest.startswith("share/")
    # the pattern list itself must cover the launch files
    assert any(fnmatch("launch/online_rl.launch.py", f"{d.split('/')[-1]}/*") for d, _ in setup_kwargs["data_files"])


def test_setup_cfg_installs_scripts_where_ros2_run_looks():
    text = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/irevla_ros" in text and "install_scripts=$base/lib/irevla_ros" in text
