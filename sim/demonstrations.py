"""Demonstrators for warm-starting meta-training: they know the task, the learner does not."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metarl_robot.tasks import TaskSpec
from sim.grasp import scripted_grasp_action
from sim.grasp_task import oracle_grip_force_n


def oracle_grasp_demonstrator(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Normalised actions ``[N, 4]``: the scripted grasp with each task's oracle grip force."""
    return np.stack([scripted_grasp_action(o, oracle_grip_force_n(t)) for o, t in zip(obs, tasks)])
