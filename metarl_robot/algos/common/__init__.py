"""What every training method shares, written once: the PPO config, the tasks section, collection
through the samplers, and warm start by imitation and DAgger. Advantages (GAE) are the robot's own
numpy code, :mod:`metarl_robot.runtime.advantages`."""

from metarl_robot.algos.common.collection import EnvInfo, open_sampler, resolve_sampler
from metarl_robot.algos.common.ppo import PPOConfig
from metarl_robot.algos.common.tasks import TasksConfig, build_task_distribution, resolve
from metarl_robot.algos.common.warm_start import DemonstratorLabels, WarmStartConfig, run_dagger

__all__ = [
    "DemonstratorLabels",
    "EnvInfo",
    "PPOConfig",
    "TasksConfig",
    "WarmStartConfig",
    "build_task_distribution",
    "open_sampler",
    "resolve",
    "resolve_sampler",
    "run_dagger",
]
