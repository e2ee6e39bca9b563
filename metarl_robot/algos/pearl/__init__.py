"""PEARL: SAC with a probabilistic context encoder and posterior sampling of the task latent (see
:mod:`.algo`). Policies are :class:`~metarl_robot.recurrent_policy.RecurrentPolicy` with the ``pearl`` cell
and export as bundles of the ``recurrent`` family (the posterior and the latent are the state the robot
carries; the latent's draw is part of the ``noise`` input)."""

from metarl_robot.algos.common import TasksConfig
from metarl_robot.algos.pearl.algo import PEARL, train
from metarl_robot.algos.pearl.config import AdaptationConfig, SACConfig, TrainConfig

METHODS: tuple[str, ...] = ("pearl",)
"""The ``method`` names this package trains."""

__all__ = ["METHODS", "PEARL", "AdaptationConfig", "SACConfig", "TasksConfig", "TrainConfig", "train"]
