"""Gradient-based meta-RL: MAML (TRPO/PPO), ProMP, Reptile, CAVIA, Meta-SGD, multi-task PPO (see :mod:`.algo`)."""

from metarl_robot.algos.common import PPOConfig
from metarl_robot.algos.gradient.algo import GradientMetaRL, train
from metarl_robot.algos.gradient.config import (
    METHODS,
    InnerConfig,
    ProMPConfig,
    ReptileConfig,
    TrainConfig,
    TRPOConfig,
)

__all__ = [
    "METHODS",
    "GradientMetaRL",
    "InnerConfig",
    "PPOConfig",
    "ProMPConfig",
    "ReptileConfig",
    "TRPOConfig",
    "TrainConfig",
    "train",
]
