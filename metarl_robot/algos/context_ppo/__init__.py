"""Context-based meta-RL trained with PPO (see :mod:`.algo`)."""

from metarl_robot.algos.common import PPOConfig, TasksConfig, WarmStartConfig
from metarl_robot.algos.context_ppo.algo import train
from metarl_robot.algos.context_ppo.config import ActorCriticPPOConfig, AdaptationConfig, TrainConfig

METHODS: tuple[str, ...] = ("context_ppo",)
"""The ``method`` names this package trains (a config without ``method`` trains context_ppo)."""

__all__ = ["METHODS", "ActorCriticPPOConfig", "AdaptationConfig", "PPOConfig", "TasksConfig", "TrainConfig", "train", "WarmStartConfig"]
