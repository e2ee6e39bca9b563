"""Demonstrators for warm-starting meta-training: they know the task, the learner does not."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metarl_robot.tasks import TaskSpec
from sim.grasp import oracle_grasp_action


def oracle_grasp_demonstrator(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Normalised actions ``[N, 4]``: the scripted grasp with each task's oracle grip force and grasp point."""
    return np.stack([oracle_grasp_action(o, t) for o, t in zip(obs, tasks)])
