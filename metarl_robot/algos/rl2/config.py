"""Configuration of RL² trained with PPO: trials of several episodes per task, the recurrent state
carried across the episodes of a trial and zeroed between trials, truncated BPTT over whole trials."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from metarl_robot.algos.common.collection import check_num_workers, resolve_sampler
from metarl_robot.algos.common.ppo import PPOConfig
from metarl_robot.algos.common.tasks import TasksConfig
from metarl_robot.algos.rl2.improve import ImproveConfig
from metarl_robot.algos.rl2.teacher import TeacherWarmStartConfig
from metarl_robot.recurrent_policy import RecurrentPolicyConfig

__all__ = ["AdaptationConfig", "ImproveConfig", "RL2PPOConfig", "TasksConfig", "TeacherWarmStartConfig", "TrainConfig"]


@dataclasses.dataclass(frozen=True)
class RL2PPOConfig(PPOConfig):
    """The shared :class:`~metarl_robot.algos.common.ppo.PPOConfig` plus what a recurrent actor-critic
    adds: sequence minibatches, GAE over whole trials, the value and entropy terms, truncated BPTT."""

    lr: float = 1e-3
    epochs: int = 4
    minibatches: int = 4
    """Minibatches per epoch, split by whole trials (or by BPTT chunks when ``bptt_steps`` > 0)."""
    gamma: float = 0.99
    """Discount over the whole trial: an episode end inside a trial does not cut the return (RL²)."""
    gae_lambda: float = 0.95
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    target_kl: float = 0.05
    """Stop the epoch loop early once the approximate KL to the data-collecting policy exceeds this."""
    bptt_steps: int = 0
    """Truncated BPTT: gradients flow back this many steps, from the state the trial had reached
    (recomputed before the update); 0 = back through the whole trial."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for the critic and the advantages (returns of order one keep the
    value loss from swamping the policy gradient under the shared gradient clip)."""
    value_through_core: bool = True
    """False: the value loss trains only the value head, not the recurrent core the actor reads."""
    critic_warmup_iterations: int = 0
    """The first iterations (after a warm start) update only the critic, so the first policy updates
    start from advantages of a fitted critic."""
    imitation_coef: float = 0.0
    """Weight of the teacher-imitation loss (on the warm start's trials) kept in every PPO update."""
    imitation_decay_iterations: int = 0
    """The imitation weight falls linearly to zero over this many iterations (0: it stays)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reward_scale > 0 or self.critic_warmup_iterations < 0 or self.imitation_coef < 0 or self.imitation_decay_iterations < 0:
            raise ValueError("reward_scale must be > 0; critic_warmup_iterations, imitation_coef and imitation_decay_iterations >= 0")
        if self.minibatches < 1 or self.bptt_steps < 0:
            raise ValueError("minibatches must be >= 1 and bptt_steps >= 0")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma must be in (0, 1] and gae_lambda in [0, 1]")
        if self.entropy_coef < 0 or self.value_coef < 0 or not self.target_kl > 0:
            raise ValueError("entropy_coef and value_coef must be >= 0 and target_kl > 0")


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    """What the exported bundle's ``adaptation`` section says about deployment."""

    cadence: Literal["step"] = "step"
    """The memory is updated at every control step (there is no separate adaptation step)."""
    reward_source: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "topic", "topic": "reward"})
    """Where the deployed policy gets the rewards it reads as input (written into the bundle manifest)."""
    sample_actions: bool = True
    """Whether the deployed controller samples commands as in training (exploration noise) by default,
    or sends the mean command."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: Literal["rl2"] = "rl2"
    env_id: str = "sim:metarl/PandaGrasp-v0"
    """Gymnasium id, optionally ``module:id`` to import the module that registers it. A discrete-action
    env is trained through ``metarl_robot.algos.rl2.discrete:metarl/DiscreteScores-v0`` (one score per action)."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: TasksConfig = TasksConfig()
    seed: int = 0
    iterations: int = 200
    """PPO iterations (each samples new tasks, collects one trial per task, updates)."""
    trials_per_iteration: int = 16
    """Tasks per iteration, one trial (sampler request) each."""
    episodes_per_trial: int = 3
    """Consecutive episodes (attempts) per trial; the memory carries across them and is zeroed between trials."""
    sampler: Literal["serial", "subprocess", "ray"] | None = None
    """Where episodes are collected (docs/sampling.md). Default: serial."""
    num_workers: int = 0
    """Workers of the subprocess and ray samplers; 0 = one per CPU core, at most ``trials_per_iteration``."""
    asynchronous: bool | None = None
    """The older spelling of ``sampler`` (true = subprocess, false = serial)."""
    torch_threads: int = 1
    checkpoint_every: int = 10
    asymmetric_critic: bool = False
    """The critic also reads the task's numeric parameters (privileged, training only, never exported)."""
    update_obs_normalizer: bool = True
    """Update the observation statistics after every iteration's update."""
    policy: RecurrentPolicyConfig = RecurrentPolicyConfig()
    ppo: RL2PPOConfig = RL2PPOConfig()
    adaptation: AdaptationConfig = AdaptationConfig()
    warm_start: TeacherWarmStartConfig = TeacherWarmStartConfig()
    """Clone a teacher controller that is never told the task before PPO (:mod:`.teacher`)."""
    improve: ImproveConfig = ImproveConfig()
    """With ``improve.samples`` > 0 every iteration keeps the best of several exploring trials (and the
    teacher's) per task and clones them, instead of a PPO update (:mod:`.improve`)."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.trials_per_iteration < 1 or self.episodes_per_trial < 1:
            raise ValueError("iterations must be >= 0, trials_per_iteration and episodes_per_trial >= 1")
        if self.policy.privileged_dim:
            raise ValueError("policy.privileged_dim is set from the tasks; use asymmetric_critic: true instead")
        check_num_workers(self.num_workers)
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.asynchronous, default="serial"))
        object.__setattr__(self, "asynchronous", None)
        if self.improve.samples and self.improve.include_teacher and not self.warm_start.teacher:
            raise ValueError("improve.include_teacher needs warm_start.teacher (or set improve.include_teacher: false)")
