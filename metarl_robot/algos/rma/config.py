"""Configuration of RMA (Rapid Motor Adaptation): phase 1 trains a base policy that reads a latent of the
privileged task parameters (imitation of a task-aware demonstrator, then PPO); phase 2 trains an
adaptation module that estimates the same latent from the last ``window_steps`` control steps."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from metarl_robot.algos.common.collection import check_num_workers, resolve_sampler
from metarl_robot.algos.common.tasks import TasksConfig
from metarl_robot.algos.rl2.config import AdaptationConfig, RL2PPOConfig
from metarl_robot.recurrent_policy import RecurrentPolicyConfig

__all__ = ["AdaptationConfig", "AdaptationModuleConfig", "BaseTeacherConfig", "RL2PPOConfig", "TasksConfig", "TrainConfig"]


@dataclasses.dataclass(frozen=True)
class BaseTeacherConfig:
    """Phase 1's warm start: the base policy, reading the latent of the *true* task parameters, clones a
    demonstrator that is told the task. To learn to correct a command that is off target (which it must
    do on the robot, where the latent is an estimate that changes), the commands executed while
    collecting are perturbed by multiplicative noise on ``noise_dims``; the labels stay the
    demonstrator's own commands."""

    demonstrator: str = ""
    """``module:function`` with ``(obs [N, D], tasks) -> normalised actions [N, A]`` (told the task).
    Empty: no warm start."""
    rounds: int = 0
    """Batches of demonstrator trials (``trials_per_iteration`` each); 0 = no warm start."""
    epochs: int = 100
    lr: float = 2e-3
    minibatches: int = 8
    noise_dims: tuple[int, ...] = ()
    """Command dimensions perturbed while collecting (e.g. the grip force)."""
    noise_log_std: float = 0.0
    """Standard deviation of ``log`` of the multiplicative perturbation (an AR(1) process per trial,
    correlation 0.8 between steps), applied where the command is positive."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_dims", tuple(int(d) for d in self.noise_dims))
        if self.rounds < 0 or self.epochs < 0 or self.minibatches < 1 or not self.lr > 0 or self.noise_log_std < 0:
            raise ValueError("warm_start: rounds and epochs must be >= 0, minibatches >= 1, lr > 0 and noise_log_std >= 0")
        if self.rounds and not self.demonstrator:
            raise ValueError("warm_start.rounds > 0 needs warm_start.demonstrator ('module:function', told the task)")


@dataclasses.dataclass(frozen=True)
class AdaptationModuleConfig:
    """Phase 2: the adaptation module regresses the frozen encoder's latent from the history window, on
    trials in which the policy acts with its own estimate (on-policy, as the robot will run it)."""

    iterations: int = 20
    """Rounds of ``trials_per_iteration`` trials, each followed by a fit on the gathered trials."""
    epochs: int = 10
    """Passes over the gathered trials after each round."""
    lr: float = 1e-3
    minibatches: int = 4
    buffer_rounds: int = 8
    """Rounds of trials kept for the fit (the oldest are dropped)."""
    task_loss_coef: float = 1.0
    """``prototypical``: weight of the prototypical loss (cross-entropy of the support set's task logits
    against the task it came from), beside the latent regression."""
    first_round_privileged: bool = True
    """The first round acts with the encoder's latent (the phase-1 policy), so the first fit sees what
    good behaviour looks like before the module's own estimates drive the robot."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.epochs < 0 or self.minibatches < 1 or not self.lr > 0 or self.buffer_rounds < 1 or self.task_loss_coef < 0:
            raise ValueError("adaptation_module: iterations and epochs >= 0, minibatches and buffer_rounds >= 1, lr > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: Literal["rma", "prototypical"] = "rma"
    """``rma``: the ``window`` cell (the last steps); ``prototypical``: the ``prototype`` cell (the whole
    trial's support set compared with one prototype per training task). Both train in the same two phases."""
    env_id: str = "sim:metarl/PandaGrasp-v0"
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: TasksConfig = TasksConfig()
    seed: int = 0
    ppo_iterations: int = 0
    """Phase 1: PPO iterations of the base policy with the privileged latent (after the warm start)."""
    trials_per_iteration: int = 16
    episodes_per_trial: int = 3
    """Consecutive episodes (attempts) per trial; the history window runs on across them."""
    sampler: Literal["serial", "subprocess", "ray"] | None = None
    num_workers: int = 0
    asynchronous: bool | None = None
    torch_threads: int = 1
    checkpoint_every: int = 10
    update_obs_normalizer: bool = True
    privileged: tuple[str, ...] = ()
    """Task parameters the encoder (and the critic) read; empty: every numeric one."""
    log_privileged: tuple[str, ...] = ()
    """Of those, the ones read as their logarithm (positive quantities spanning decades, e.g. a mass)."""
    policy: RecurrentPolicyConfig = RecurrentPolicyConfig(cell="window", window_steps=20, embed_sizes=())
    ppo: RL2PPOConfig = RL2PPOConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    warm_start: BaseTeacherConfig = BaseTeacherConfig()
    adaptation_module: AdaptationModuleConfig = AdaptationModuleConfig()

    def __post_init__(self) -> None:
        if self.ppo_iterations < 0 or self.trials_per_iteration < 1 or self.episodes_per_trial < 1:
            raise ValueError("ppo_iterations must be >= 0, trials_per_iteration and episodes_per_trial >= 1")
        cell = {"rma": "window", "prototypical": "prototype"}[self.method]
        if self.policy.cell != cell:
            raise ValueError(f"method {self.method} trains the {cell} cell, not {self.policy.cell!r} (set policy.cell: {cell})")
        if self.policy.privileged_dim:
            raise ValueError("policy.privileged_dim is set from the tasks; list the parameters under privileged instead")
        unknown = sorted(set(self.log_privileged) - set(self.privileged)) if self.privileged else []
        if unknown:
            raise ValueError(f"log_privileged names {unknown}, which are not in privileged")
        object.__setattr__(self, "privileged", tuple(self.privileged))
        object.__setattr__(self, "log_privileged", tuple(self.log_privileged))
        check_num_workers(self.num_workers)
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.asynchronous, default="serial"))
        object.__setattr__(self, "asynchronous", None)

    @property
    def iterations(self) -> int:
        """Iterations of the shared training loop: phase 1's PPO, then phase 2's rounds."""
        return self.ppo_iterations + self.adaptation_module.iterations
