"""How a normalised 7-D action moves the simulated arm: through the franka node's own controller.

SimEnv (no ROS) and the sim_world node's fast mode both drive the MuJoCo backend through
`irevla_ros.core.control.franka_controller.FrankaController` (validation, scaling, per-tick caps, anti-windup,
workspace box, gripper hysteresis, watchdog), clocked by sim time. So a policy sees the same action semantics in
every mode, the real arm included; only the numbers below differ from the real-robot defaults.
"""

from __future__ import annotations

import dataclasses

from irevla_ros.core.control.franka_controller import FrankaControlConfig

# Simulation command scale: 3 cm / 0.1 rad per tick at 10 Hz (0.3 m/s) keeps every task within 40-60 steps,
# short enough for a head-only learner on a CPU. config/sim.yaml sets the franka node to the same numbers.
SIM_MAX_TRANSLATION_PER_TICK = 0.03  # m
SIM_MAX_ROTATION_PER_TICK = 0.1  # rad


def sim_control_config(**overrides) -> FrankaControlConfig:
    """The franka controller configuration the simulated cell uses (real-robot defaults + sim step scale)."""
    base = {"max_translation_per_tick": SIM_MAX_TRANSLATION_PER_TICK,
            "max_rotation_per_tick": SIM_MAX_ROTATION_PER_TICK}
    base.update(overrides)
    return dataclasses.replace(FrankaControlConfig(), **base)
