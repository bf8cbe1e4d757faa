"""Validation of 7-D actions arriving from outside (policy, teleop, bags)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from irevla_ros.interfaces import ACTION_DIM, ACTION_LABELS


class InvalidAction(ValueError):
    """An action that must not reach the robot; the message says why."""


def validate_action(values: Sequence[float] | np.ndarray, *, limit: float = 1.0) -> np.ndarray:
    """Return the action as float64[7] or raise InvalidAction naming the problem.

    Components must be finite and within [-limit, limit] (actions are normalised; scaling to metres and
    radians happens in the franka node).
    """
    try:
        action = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidAction(f"action is not numeric: {exc}") from exc
    if action.shape != (ACTION_DIM,):
        raise InvalidAction(f"action must have {ACTION_DIM} components {ACTION_LABELS}, got shape {action.shape}")
    bad = ~np.isfinite(action)
    if bad.any():
        names = [ACTION_LABELS[i] for i in np.flatnonzero(bad)]
        raise InvalidAction(f"action has non-finite components {names}: {action.tolist()}")
    out_of_range = np.abs(action) > limit
    if out_of_range.any():
        names = [f"{ACTION_LABELS[i]}={action[i]:.4g}" for i in np.flatnonzero(out_of_range)]
        raise InvalidAction(f"action components outside [-{limit}, {limit}]: {names}")
    return action
