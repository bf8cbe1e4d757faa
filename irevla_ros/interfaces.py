"""The graph's wire contract: topic and service names, message types, frames, action layout.

ROS-free on purpose (plain strings), so the graph description, the launch files, the runner, the core and
the tests all read the same names. Message types are standard ROS 2 interfaces only: custom .msg packages
cannot be built from the PyPI wheels (see docs/architecture.md, "Interfaces").
"""

from __future__ import annotations

from dataclasses import dataclass

# --- The 7-D action: delta end-effector pose + gripper, in the robot base frame. -----------------------
ACTION_DIM = 7
ACTION_LABELS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
"""Each component is in [-1, 1]; the franka node multiplies translations by `max_translation_per_tick`
(metres) and rotations by `max_rotation_per_tick` (radians). gripper > threshold closes, < -threshold opens."""

# --- Frames (REP-103/105). ---------------------------------------------------------------------------
BASE_FRAME = "panda_link0"
EE_FRAME = "panda_hand_tcp"
CAMERA_NAMES = ("wrist", "front")


def camera_optical_frame(camera: str) -> str:
    return f"{camera}_camera_color_optical_frame"


@dataclass(frozen=True)
class Endpoint:
    """A topic or service: its absolute name and its ROS type as 'pkg/msg/Type' or 'pkg/srv/Type'."""

    name: str
    type: str


# --- Commands (everything that can move the arm goes through franka_node). -----------------------------
ACTION = Endpoint("/franka/action", "std_msgs/msg/Float64MultiArray")
"""The command franka_node executes: 7 floats in ACTION_LABELS order (what the mux lets through)."""
POLICY_ACTION = Endpoint("/policy/action", "std_msgs/msg/Float64MultiArray")
TELEOP_ACTION = Endpoint("/teleop/action", "std_msgs/msg/Float64MultiArray")
TARGET_POSE = Endpoint("/franka/target_pose", "geometry_msgs/msg/PoseStamped")
"""Absolute EE pose command (teleop, resets), clipped into the workspace box like every other command."""
INTERVENTION = Endpoint("/teleop/intervention", "std_msgs/msg/Bool")

# --- Robot state. -----------------------------------------------------------------------------------------
JOINT_STATES = Endpoint("/joint_states", "sensor_msgs/msg/JointState")
EE_POSE = Endpoint("/franka/ee_pose", "geometry_msgs/msg/PoseStamped")
EE_TARGET = Endpoint("/franka/ee_target", "geometry_msgs/msg/PoseStamped")
WRENCH = Endpoint("/franka/wrench", "geometry_msgs/msg/WrenchStamped")
GRIPPER = Endpoint("/franka/gripper", "sensor_msgs/msg/JointState")
"""Gripper: position = [width], effort = [1.0 if grasped else 0.0], name = ['gripper_width']."""
DIAGNOSTICS = Endpoint("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")
WORKSPACE_MARKER = Endpoint("/franka/workspace", "visualization_msgs/msg/Marker")

RESET = Endpoint("/franka/reset", "std_srvs/srv/Trigger")
ESTOP = Endpoint("/franka/stop", "std_srvs/srv/Trigger")
RECOVER = Endpoint("/franka/recover", "std_srvs/srv/Trigger")


# --- Cameras (RealSense node and sim cameras publish the same names, frames and CameraInfo). -------------
def camera_image(camera: str) -> Endpoint:
    return Endpoint(f"/cameras/{camera}/color/image_raw", "sensor_msgs/msg/Image")


def camera_info(camera: str) -> Endpoint:
    return Endpoint(f"/cameras/{camera}/color/camera_info", "sensor_msgs/msg/CameraInfo")


def camera_depth(camera: str) -> Endpoint:
    return Endpoint(f"/cameras/{camera}/aligned_depth/image_raw", "sensor_msgs/msg/Image")


# --- Task, reward, episodes. ------------------------------------------------------------------------------
INSTRUCTION = Endpoint("/task/instruction", "std_msgs/msg/String")
SIM_SUCCESS = Endpoint("/sim/success", "std_msgs/msg/Bool")
SIM_RESET = Endpoint("/sim/reset", "std_srvs/srv/Trigger")
SIM_TASK = Endpoint("/sim/task", "std_msgs/msg/String")
"""Latched: the simulator's task id of the running episode (also named in /sim/reset's reply)."""
CLOCK = Endpoint("/clock", "rosgraph_msgs/msg/Clock")
SUCCESS_PROB = Endpoint("/reward/success_prob", "std_msgs/msg/Float32")
REWARD = Endpoint("/reward/reward", "std_msgs/msg/Float32")
HUMAN_LABEL = Endpoint("/reward/human_label", "std_msgs/msg/String")
"""'success' | 'failure' | 'discard' | 'reset' from teleop keys/buttons."""

# --- Learning traffic: payloads encoded by irevla_ros.core.data.codec (safetensors bytes + metadata). ------
TRANSITION = Endpoint("/policy/transition", "std_msgs/msg/UInt8MultiArray")
HEAD_WEIGHTS = Endpoint("/rl/head_weights", "std_msgs/msg/UInt8MultiArray")
POLICY_VERSION = Endpoint("/policy/version", "std_msgs/msg/String")
EPISODE_EVENT = Endpoint("/policy/episode", "std_msgs/msg/String")
"""JSON: {"episode_id", "event": "start"|"end", "success", "steps", "instruction", "task", "policy_version"}."""
FULL_WEIGHTS_READY = Endpoint("/sft/weights_ready", "std_msgs/msg/String")
"""JSON: {"path", "version", "sha256"}: a verified SFT result on local disk for the policy to load."""
ITERATION_STATUS = Endpoint("/iteration/status", "std_msgs/msg/String")

# --- Stage 2 / iteration (packager_node). ----------------------------------------------------------------
SFT_TRIGGER = Endpoint("/packager/sft_now", "std_srvs/srv/Trigger")
"""Ask the packager to build and ship a stage-2 SFT job now (from stage 1); the reply says why not if it cannot."""

# --- rl (issue 7: the stage-1 learner, rl_node). ------------------------------------------------------------
RL_STATUS = Endpoint("/rl/status", "std_msgs/msg/String")
"""JSON, latched, about once a second: {"algorithm", "updates", "version", "online", "demo", "counters",
"rejected" (reason -> count), "success_rate", "resumed_from", "checkpoint"}."""

# --- reward (issue 8: reward_node). -------------------------------------------------------------------------
SUCCESS_MARKER = Endpoint("/reward/success_marker", "visualization_msgs/msg/Marker")
"""For rviz (config/irevla.rviz): ns "reward", id 0 = sphere at the TCP, id 1 = text above it ("SUCCESS p=0.97
[classifier]"), coloured red -> green by the success probability, blue under a human override; 1 s lifetime."""
