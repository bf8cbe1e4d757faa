"""ament_python package that also installs with pip.

colcon: `colcon build --packages-select irevla_ros` installs the data files below into share/irevla_ros.
pip:    `pip install -e .` (the Makefile does this inside .venv).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "irevla_ros"

# One console script per node; `graph.py` refers to these names (a test checks they agree).
NODES = (
    "sim_world",
    "franka_node",
    "camera_node",
    "reward_node",
    "policy_node",
    "rl_node",
    "packager_node",
    "teleop_node",
    "cmd_mux",
    "bag_player",
    "bag_recorder",
    "foxglove_bridge",
)


def data(folder: str, pattern: str = "*") -> tuple[str, list[str]]:
    return (f"share/{PACKAGE}/{folder}", sorted(p for p in glob(f"{folder}/{pattern}")))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        data("launch", "*.launch.py"),
        data("config", "*.yaml"),
        data("config", "*.rviz"),
        data("config", "*.xml"),
        data("urdf", "*.urdf"),
        data("calibration", "*.yaml"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="irevla_ros developers",
    maintainer_email="irevla-ros@example.org",
    description="ROS 2 stack for iRe-VLA: online RL of a VLA's action head on a Franka Panda, with LoRA SFT",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{name} = {PACKAGE}.nodes.{name}:main" for name in NODES]
        + [f"irevla = {PACKAGE}.cli:main"],
    },
)
