"""The simulated work cell: scene, tasks, scripted experts, the gym-like SimEnv (ROS-free).

MuJoCo picks its GL backend when first imported: offscreen EGL unless the user chose otherwise.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
