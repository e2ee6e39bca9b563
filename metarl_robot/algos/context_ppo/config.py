"""Configuration of context-based meta-training with PPO."""

from __future__ import annotations

import dataclasses
from typing import Any

from metarl_robot.policies import PolicyConfig


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    lr: float = 3e-4
    """Adam learning rate for actor, critic and encoder."""
    epochs: int = 8
    """Passes over each iteration's data."""
    minibatches: int = 4
    """Minibatches per epoch (split by whole episodes, so contexts are recomputed with gradients)."""
    clip_ratio: float = 0.2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    reward_prediction_coef: float = 1.0
    """Weight of the auxiliary loss in which the context must predict the task's rewards (0 = off)."""
    target_kl: float = 0.05
    """Stop the epoch loop early once the approximate KL to the data-collecting policy exceeds this."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.minibatches < 1:
            raise ValueError("lr must be > 0, epochs and minibatches >= 1")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma must be in (0, 1] and gae_lambda in [0, 1]")


@dataclasses.dataclass(frozen=True)
class TasksConfig:
    distribution: str = "sim:default_grasp_distribution"
    """``module:function`` returning a TaskDistribution; called as ``function(seed=, num_train=, num_test=)``."""
    seed: int = 0
    num_train: int = 64
    num_test: int = 16
    num_validation: int = 0
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword arguments of the distribution function, e.g. ``{factors: {com_offset_fraction: 0.0}}``
    to switch a factor of ``sim:grasp_distribution`` off or change its range."""


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
class WarmStartConfig:
    demonstrator: str = ""
    """``module:function(obs[N, D], tasks) -> actions[N, A]`` (normalised); empty = no warm start."""
    rounds: int = 0
    """Demonstration rounds, each one episode on each of ``tasks_per_iteration`` train tasks."""
    epochs: int = 100
    """Behaviour-cloning passes over the demonstrations (actor mean, prior context)."""
    lr: float = 1e-3
    dagger_iterations: int = 0
    """DAgger rounds after the first cloning: the learner acts, the demonstrator labels its states."""


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
    """Tasks per iteration; also the number of envs stepped together."""
    episodes_per_task: int = 3
    """Consecutive episodes on each task: the first with the prior context, later ones adapted."""
    asynchronous: bool = True
    """Step envs in subprocess workers (Gymnasium AsyncVectorEnv)."""
    torch_threads: int = 1
    checkpoint_every: int = 10
    policy: PolicyConfig = PolicyConfig()
    ppo: PPOConfig = PPOConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    """Optional behaviour cloning from a demonstrator before meta-training (only on a fresh run)."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.tasks_per_iteration < 1 or self.episodes_per_task < 1:
            raise ValueError("iterations must be >= 0 (0: warm start only), tasks_per_iteration and episodes_per_task >= 1")
