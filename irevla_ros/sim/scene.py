"""The simulated work cell, built ONCE for both modes: FR3 (franky-sim's model) + table + task objects + cameras.

Faithful mode hands the MJCF tree to franky-sim's `MujocoSimulator` (which then serves the libfranka protocol);
fast mode compiles the very same XML into its own MjModel. So both modes share geometry, masses, friction,
cameras and object names, and the task code (success predicates, randomisation) runs unchanged on either.

Frame: the robot base (panda_link0) is the world origin; the table top is the plane z = 0 (the arm is mounted on
the table, as on the real cell); the floor sits below at z = -TABLE_HEIGHT.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from irevla_ros.robot.base import HOME_JOINTS

ROBOT_PREFIX = "robot0_"  # franky-sim names robot i's elements "robot{i}_..."
TABLE_HEIGHT = 0.75  # m, floor below the table top
TCP_OFFSET = 0.1034  # m, flange-to-TCP distance of the Franka Hand (franky-sim RobotParameters.ee_tcp_xyz)
PHYSICS_DT = 0.001  # s, franky-sim steps MuJoCo at 1 kHz (MujocoSimulator._start)

N_TARGETS = 3
N_CUBES = 3
CUBE_HALF = 0.02  # m
CYLINDER_RADIUS = 0.02  # m
CYLINDER_HALF_HEIGHT = 0.025  # m
TARGET_RADIUS = 0.025  # m
ZONE_RADIUS = 0.06  # m
BUTTON_TRAVEL = 0.012  # m, how far the cap can be pressed down
DRAWER_TRAVEL = 0.16  # m
# Drawer handle (drawer frame): bar centre; the experts hook the closed fingers into the gap behind it.
DRAWER_HANDLE_X = -0.16
DRAWER_HANDLE_Z = 0.035
DRAWER_HOOK_X = -0.132  # middle of the gap between the bar (-0.153) and the front panel (-0.111)

# Where unused objects wait: on the floor, far outside the workspace and every camera's view.
PARK_POSITION = np.array([-1.5, 0.0, -TABLE_HEIGHT])


@dataclass(frozen=True)
class CameraSpec:
    name: str
    fovy_deg: float
    parent: str  # body name, "" = world
    pos: tuple[float, float, float]
    xyaxes: tuple[float, float, float, float, float, float]


# Front camera: across the table, looking back at the robot (image right = +y, up ~ +z).
# Wrist camera: on the hand, looking along the fingers (like a wrist-mounted RealSense D405/D435).
CAMERAS = (
    CameraSpec("front", 60.0, "", (1.05, 0.0, 0.5), (0.0, 1.0, 0.0, -0.5, 0.0, 0.857)),
    CameraSpec("wrist", 70.0, ROBOT_PREFIX + "hand", (0.07, 0.0, 0.02), (0.0, 1.0, 0.0, 1.0, 0.0, -0.25)),
)
CAMERA_BY_NAME = {c.name: c for c in CAMERAS}


def _f(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _find_body(root: ET.Element, name: str) -> ET.Element:
    for body in root.iter("body"):
        if body.get("name") == name:
            return body
    raise KeyError(f"body {name!r} not in the scene")


def add_cell(scene: ET.Element, worldbody: ET.Element) -> None:
    """Append the table, task objects, TCP site and cameras to a franky-sim scene tree (robot already added)."""
    asset = scene.find("asset")
    if asset is None:
        asset = ET.SubElement(scene, "asset")
    ET.SubElement(asset, "texture", name="table_tex", type="2d", builtin="flat", rgb1="0.62 0.52 0.40",
                  width="64", height="64")
    ET.SubElement(asset, "material", name="table_mat", texture="table_tex", rgba="0.62 0.52 0.40 1")

    # The robot's collision meshes (~2k faces) double as its fast-render look (the visual meshes have ~240k faces
    # and cost ~40 ms per frame in CPU rendering): give them the Franka's off-white.
    for default in scene.iter("default"):
        if default.get("class") == "collision":
            geom = default.find("geom")
            if geom is not None:
                geom.set("rgba", "0.88 0.88 0.86 1")

    # Floor goes under the table.
    for geom in worldbody.findall("geom"):
        if geom.get("name") == "ground":
            geom.set("pos", f"0 0 {-TABLE_HEIGHT}")

    ET.SubElement(worldbody, "geom", name="table", type="box", size="0.75 0.8 0.02", pos="0.35 0 -0.02",
                  material="table_mat", friction="0.8 0.005 0.0001")

    hand = _find_body(worldbody, ROBOT_PREFIX + "hand")
    ET.SubElement(hand, "site", name="tcp", pos=f"0 0 {TCP_OFFSET}", size="0.005", group="4")

    for cam in CAMERAS:
        parent = worldbody if not cam.parent else _find_body(worldbody, cam.parent)
        ET.SubElement(parent, "camera", name=f"{cam.name}_camera", pos=_f(cam.pos), xyaxes=_f(cam.xyaxes),
                      fovy=f"{cam.fovy_deg:g}")

    park = _f(PARK_POSITION)
    # Reach targets: visual spheres on mocap bodies (no collision), coloured per episode.
    for i in range(N_TARGETS):
        b = ET.SubElement(worldbody, "body", name=f"target{i}", mocap="true", pos=park)
        ET.SubElement(b, "geom", name=f"target{i}_geom", type="sphere", size=f"{TARGET_RADIUS}",
                      contype="0", conaffinity="0", rgba="1 0 0 1")
    # Cubes and a cylinder: free bodies.
    for i in range(N_CUBES):
        b = ET.SubElement(worldbody, "body", name=f"cube{i}", pos=_f(PARK_POSITION + [0.1 * i, 0.3, 0]))
        ET.SubElement(b, "freejoint", name=f"cube{i}_joint")
        ET.SubElement(b, "geom", name=f"cube{i}_geom", type="box", size=_f([CUBE_HALF] * 3), mass="0.08",
                      friction="1.0 0.005 0.0001", rgba="0 1 0 1")
    b = ET.SubElement(worldbody, "body", name="cylinder0", pos=_f(PARK_POSITION + [0.0, -0.3, 0]))
    ET.SubElement(b, "freejoint", name="cylinder0_joint")
    ET.SubElement(b, "geom", name="cylinder0_geom", type="cylinder", size=f"{CYLINDER_RADIUS} {CYLINDER_HALF_HEIGHT}",
                  mass="0.08", friction="1.0 0.005 0.0001", rgba="1 1 0 1")
    # Goal zone for pushing: a flat disc painted on the table.
    b = ET.SubElement(worldbody, "body", name="zone0", mocap="true", pos=park)
    ET.SubElement(b, "geom", name="zone0_geom", type="cylinder", size=f"{ZONE_RADIUS} 0.0008", contype="0",
                  conaffinity="0", rgba="0 0 1 0.6")
    # Button: a fixed base (mocap, placed per episode) and a spring-loaded cap.
    b = ET.SubElement(worldbody, "body", name="button0", mocap="true", pos=park)
    ET.SubElement(b, "geom", name="button0_base", type="box", size="0.045 0.045 0.02", pos="0 0 0.02",
                  rgba="0.25 0.25 0.25 1")
    cap = ET.SubElement(b, "body", name="button0_cap", pos="0 0 0.048")
    ET.SubElement(cap, "joint", name="button0_joint", type="slide", axis="0 0 1", range=f"{-BUTTON_TRAVEL} 0",
                  stiffness="300", damping="3", limited="true")
    ET.SubElement(cap, "geom", name="button0_geom", type="cylinder", size="0.03 0.008", mass="0.02",
                  rgba="1 0 0 1")
    # Drawer: a cabinet (mocap) whose drawer slides out toward the robot (-x) on a prismatic joint.
    cab = ET.SubElement(worldbody, "body", name="drawer0", mocap="true", pos=park)
    grey = "0.45 0.42 0.40 1"
    ET.SubElement(cab, "geom", name="drawer0_cabinet_top", type="box", size="0.11 0.13 0.005", pos="0 0 0.07",
                  rgba=grey)
    for side in (-1, 1):
        ET.SubElement(cab, "geom", name=f"drawer0_cabinet_{'rl'[side > 0]}", type="box", size="0.11 0.005 0.035",
                      pos=f"0 {0.125 * side} 0.035", rgba=grey)
    ET.SubElement(cab, "geom", name="drawer0_cabinet_back", type="box", size="0.005 0.13 0.035", pos="0.105 0 0.035",
                  rgba=grey)
    drawer = ET.SubElement(cab, "body", name="drawer0_drawer", pos="0 0 0")
    ET.SubElement(drawer, "joint", name="drawer0_joint", type="slide", axis="-1 0 0", range=f"0 {DRAWER_TRAVEL}",
                  damping="8", frictionloss="0.5", limited="true")
    ET.SubElement(drawer, "geom", name="drawer0_bottom", type="box", size="0.1 0.115 0.004", pos="0 0 0.006",
                  mass="0.2", rgba="0.7 0.6 0.45 1")
    ET.SubElement(drawer, "geom", name="drawer0_front", type="box", size="0.006 0.12 0.03", pos="-0.105 0 0.032",
                  mass="0.05", rgba="0.2 0.4 0.8 1")
    ET.SubElement(drawer, "geom", name="drawer0_handle", type="box", size="0.007 0.06 0.007",
                  pos=f"{DRAWER_HANDLE_X} 0 {DRAWER_HANDLE_Z}", mass="0.01", rgba="0.1 0.1 0.1 1")
    for side in (-1, 1):
        ET.SubElement(drawer, "geom", name=f"drawer0_post_{'rl'[side > 0]}", type="box", size="0.025 0.006 0.006",
                      pos=f"-0.135 {0.054 * side} {DRAWER_HANDLE_Z}", mass="0.005", rgba="0.1 0.1 0.1 1")




def fast_render_settings(scene: ET.Element, *, shadows: bool = False, offsamples: int = 0) -> None:
    """No MSAA, small shadow map: default settings cost 5-20x in CPU rendering (see ENVIRONMENT.md)."""
    visual = scene.find("visual")
    if visual is None:
        visual = ET.SubElement(scene, "visual")
    quality = visual.find("quality")
    if quality is None:
        quality = ET.SubElement(visual, "quality")
    quality.set("offsamples", str(int(offsamples)))
    quality.set("shadowsize", "2048" if shadows else "0")
    glob = visual.find("global")
    if glob is None:
        glob = ET.SubElement(visual, "global")
    glob.set("offwidth", "640")
    glob.set("offheight", "640")
    if not shadows:
        for light in scene.iter("light"):
            light.set("castshadow", "false")


def make_simulator(initial_q=HOME_JOINTS, *, shadows: bool = False, offsamples: int = 0):
    """A franky-sim MujocoSimulator holding our cell (not started). Faithful mode serves it; fast mode compiles
    its XML (`scene_xml`)."""
    from franky_sim.mujoco_simulator import MujocoSimulator

    sim = MujocoSimulator()
    sim.add_robot(initial_q=tuple(float(q) for q in initial_q), initial_hand_width=0.08)
    add_cell(sim.scene, sim.worldbody)
    fast_render_settings(sim.scene, shadows=shadows, offsamples=offsamples)
    return sim


def scene_xml(*, shadows: bool = False, offsamples: int = 0) -> str:
    sim = make_simulator(shadows=shadows, offsamples=offsamples)
    return ET.tostring(sim.scene, encoding="unicode")


def compile_model(xml: str | None = None):
    """MjModel exactly as franky-sim compiles it: 1 kHz, its gravity, position actuators disabled (torques are
    applied through qfrc_applied by whichever controller drives the arm)."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(xml if xml is not None else scene_xml())
    model.opt.timestep = PHYSICS_DT
    for i in range(model.nu):
        model.actuator_gainprm[i, :] = 0.0
        model.actuator_biasprm[i, :] = 0.0
    return model
