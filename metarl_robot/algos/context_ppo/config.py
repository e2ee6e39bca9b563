"""Configuration of context-based meta-training with PPO."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from metarl_robot.algos.common.collection import check_num_workers, resolve_sampler
from metarl_robot.algos.common.ppo import PPOConfig
from metarl_robot.algos.common.tasks import TasksConfig
from metarl_robot.algos.common.warm_start import WarmStartConfig
from metarl_robot.policies import PolicyConfig

__all__ = ["ActorCriticPPOConfig", "AdaptationConfig", "TasksConfig", "TrainConfig", "WarmStartConfig"]


@dataclasses.dataclass(frozen=True)
class ActorCriticPPOConfig(PPOConfig):
    """The shared :class:`~metarl_robot.algos.common.ppo.PPOConfig` plus what an actor-critic with a
    context encoder adds: minibatches, GAE, the value, entropy and reward-prediction terms, early stop."""

    epochs: int = 8
    """Passes over each iteration's data."""
    minibatches: int = 4
    """Minibatches per epoch (split by whole episodes, so contexts are recomputed with gradients)."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    reward_prediction_coef: float = 1.0
    """Weight of the auxiliary loss in which the context must predict the task's rewards (0 = off)."""
    target_kl: float = 0.05
    """Stop the epoch loop early once the approximate KL to the data-collecting policy exceeds this."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.minibatches < 1:
            raise ValueError("minibatches must be >= 1")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma must be in (0, 1] and gae_lambda in [0, 1]")


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    buffer_size: int = 60
    """Transitions the context encoder sees: the most recent ones on the current task."""
    cadence: str = "episode"
    """When the robot re-infers its context: after each episode ('episode')."""
    reward_source: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "topic", "topic": "reward"})
    """Where the deployed policy gets rewards for adaptation (written into the bundle manifest)."""

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if self.cadence != "episode":
            raise ValueError(f"cadence {self.cadence!r} is not supported; use 'episode'")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    env_id: str = "sim:metarl/PandaGrasp-v0"
    """Gymnasium id, optionally ``module:id`` to import the module that registers it."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: TasksConfig = TasksConfig()
    seed: int = 0
    iterations: int = 200
    """Meta-training iterations (each samples new tasks, collects, updates); 0 = warm start only."""
    tasks_per_iteration: int = 8
    """Tasks per iteration (one sampler request, i.e. one trial of ``episodes_per_task`` episodes, each)."""
    episodes_per_task: int = 3
    """Consecutive episodes on each task: the first with the prior context, later ones adapted."""
    sampler: Literal["serial", "subprocess", "ray"] | None = None
    """Where episodes are collected (docs/sampling.md): in this process, in worker processes, or on Ray
    actors; the same seeds give the same episodes with each. Default: subprocess."""
    num_workers: int = 0
    """Workers of the subprocess and ray samplers; 0 = one per CPU core, at most ``tasks_per_iteration``."""
    asynchronous: bool | None = None
    """The older spelling of ``sampler``: true = subprocess, false = serial (kept so earlier configs load)."""
    torch_threads: int = 1
    checkpoint_every: int = 10
    policy: PolicyConfig = PolicyConfig()
    ppo: ActorCriticPPOConfig = ActorCriticPPOConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    """Optional behaviour cloning from a demonstrator before meta-training (only on a fresh run)."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.tasks_per_iteration < 1 or self.episodes_per_task < 1:
            raise ValueError("iterations must be >= 0 (0: warm start only), tasks_per_iteration and episodes_per_task >= 1")
        check_num_workers(self.num_workers)
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.asynchronous, default="subprocess"))
        object.__setattr__(self, "asynchronous", None)
