"""Context-based meta-RL trained with PPO (see :mod:`.algo`)."""

from metarl_robot.algos.context_ppo.algo import train
from metarl_robot.algos.context_ppo.config import AdaptationConfig, PPOConfig, TasksConfig, TrainConfig, WarmStartConfig

__all__ = ["AdaptationConfig", "PPOConfig", "TasksConfig", "TrainConfig", "train", "WarmStartConfig"]
