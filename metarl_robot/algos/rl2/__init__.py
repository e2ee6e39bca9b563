"""RL² trained with PPO: a recurrent policy whose memory, carried across the episodes of a trial, is
its adaptation (see :mod:`.algo`). Policies are :class:`~metarl_robot.recurrent_policy.RecurrentPolicy`
and export as bundles of the ``recurrent`` family."""

from metarl_robot.algos.common import PPOConfig, TasksConfig
from metarl_robot.algos.rl2.algo import RL2, train
from metarl_robot.algos.rl2.config import AdaptationConfig, RL2PPOConfig, TrainConfig

METHODS: tuple[str, ...] = ("rl2",)
"""The ``method`` names this package trains."""

__all__ = ["METHODS", "RL2", "AdaptationConfig", "PPOConfig", "RL2PPOConfig", "TasksConfig", "TrainConfig", "train"]
