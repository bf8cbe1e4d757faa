"""urdf/panda.urdf: parses with urdfdom (through pinocchio, the parser robot_state_publisher's stack uses),
joint names equal the ones /joint_states publishes, and its kinematics equal Franka's DH table."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from irevla_ros import interfaces as itf
from irevla_ros.robot.base import FINGER_JOINT_NAMES, HOME_JOINTS, JOINT_NAMES

URDF = Path(__file__).resolve().parent.parent / "urdf" / "panda.urdf"
POS_ATOL = 1e-6  # m
READY_POS_ATOL = 1e-3  # m, against the rounded published ready pose
# Craig DH (a_{i-1}, d_i, alpha_{i-1}) from Franka's "Robot and interface specifications"; flange d = 0.107 m,
# hand rotated -45 deg about z, TCP 0.1034 m further along z.
DH = [(0.0, 0.333, 0.0), (0.0, 0.0, -math.pi / 2), (0.0, 0.316, math.pi / 2), (0.0825, 0.0, math.pi / 2),
      (-0.0825, 0.384, -math.pi / 2), (0.0, 0.0, math.pi / 2), (0.088, 0.0, math.pi / 2)]
READY_TCP = (0.307, 0.0, 0.487)
"""O_T_EE translation at the ready pose with the Franka Hand, as libfranka reports it (rounded to mm)."""


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def _trans(x: float, y: float, z: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = (x, y, z)
    return t


def dh_tcp(q) -> np.ndarray:
    """The TCP pose from the DH table alone (independent of the URDF)."""
    t = np.eye(4)
    for (a, d, alpha), qi in zip(DH, q, strict=True):
        t = t @ _rot_x(alpha) @ _trans(a, 0, 0) @ _rot_z(qi) @ _trans(0, 0, d)
    return t @ _trans(0, 0, 0.107) @ _rot_z(-math.pi / 4) @ _trans(0, 0, 0.1034)


@pytest.fixture(scope="module")
def root():
    return ET.parse(URDF).getroot()


@pytest.fixture(scope="module")
def model():
    import pinocchio as pin

    m = pin.buildModelFromUrdf(str(URDF))
    return m, m.createData()


def _tcp(model, q_arm, fingers=0.0) -> np.ndarray:
    import pinocchio as pin

    m, d = model
    q = np.concatenate([q_arm, [fingers, fingers]])
    pin.framesForwardKinematics(m, d, q)
    return d.oMf[m.getFrameId(itf.EE_FRAME)].homogeneous


def test_moving_joint_names_equal_the_published_ones(root, model):
    moving = [j.get("name") for j in root.findall("joint") if j.get("type") != "fixed"]
    assert moving == list(JOINT_NAMES + FINGER_JOINT_NAMES)
    assert list(model[0].names)[1:] == moving  # urdfdom agrees


def test_tree_is_connected_from_the_base_and_has_the_frames_the_stack_uses(root):
    links = {link.get("name") for link in root.findall("link")}
    children = {j.find("child").get("link") for j in root.findall("joint")}
    parents = {j.find("parent").get("link") for j in root.findall("joint")}
    assert parents | children <= links
    assert links - children == {itf.BASE_FRAME}  # exactly one root
    assert itf.EE_FRAME in links


def test_limits_contain_home_and_finger_mimics(root):
    joints = {j.get("name"): j for j in root.findall("joint")}
    for name, q in zip(JOINT_NAMES, HOME_JOINTS, strict=True):
        limit = joints[name].find("limit")
        assert float(limit.get("lower")) < q < float(limit.get("upper")), name
        assert float(limit.get("velocity")) > 0 and float(limit.get("effort")) > 0
    assert joints[FINGER_JOINT_NAMES[1]].find("mimic").get("joint") == FINGER_JOINT_NAMES[0]
    assert float(joints[FINGER_JOINT_NAMES[0]].find("limit").get("upper")) == pytest.approx(0.04)


def test_ready_pose_matches_the_published_end_effector_pose(model):
    tcp = _tcp(model, np.array(HOME_JOINTS))
    np.testing.assert_allclose(tcp[:3, 3], READY_TCP, atol=READY_POS_ATOL)
    np.testing.assert_allclose(tcp[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-6)  # gripper pointing down


def test_kinematics_equal_the_dh_table_everywhere(root, model):
    joints = {j.get("name"): j for j in root.findall("joint")}
    lows = [float(joints[n].find("limit").get("lower")) for n in JOINT_NAMES]
    highs = [float(joints[n].find("limit").get("upper")) for n in JOINT_NAMES]
    rng = np.random.default_rng(7)
    for _ in range(50):
        q = rng.uniform(lows, highs)
        np.testing.assert_allclose(_tcp(model, q, fingers=0.03), dh_tcp(q), atol=POS_ATOL)


def test_rviz_config_shows_the_stack_topics_in_the_base_frame():
    import yaml

    config = yaml.safe_load((URDF.parent.parent / "config" / "irevla.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == itf.BASE_FRAME
    topics = {d["Name"]: (d["Class"], d.get("Topic", d.get("Description Topic", {})).get("Value"))
              for d in manager["Displays"]}
    expected = {
        "RobotModel": ("rviz_default_plugins/RobotModel", "/robot_description"),
        "EE pose": ("rviz_default_plugins/Pose", itf.EE_POSE.name),
        "EE target": ("rviz_default_plugins/Pose", itf.EE_TARGET.name),
        "Workspace box": ("rviz_default_plugins/Marker", itf.WORKSPACE_MARKER.name),
        "Wrist camera": ("rviz_default_plugins/Image", itf.camera_image("wrist").name),
        "Front camera": ("rviz_default_plugins/Image", itf.camera_image("front").name),
    }
    for name, want in expected.items():
        assert topics[name] == want, name
    # The workspace marker is latched by franka_node: rviz must ask for transient-local to get it.
    box = next(d for d in manager["Displays"] if d["Name"] == "Workspace box")
    assert box["Topic"]["Durability Policy"] == "Transient Local"
