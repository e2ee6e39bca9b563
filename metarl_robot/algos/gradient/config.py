"""Configuration of gradient-based meta-RL: MAML (TRPO or PPO outer loop), ProMP, Reptile, CAVIA,
Meta-SGD, and the multi-task PPO baseline that trains one policy on all tasks without adaptation.

Defaults are the MAML paper's 2D-navigation setup (Finn et al., 2017): 20 tasks per meta-batch,
20 trajectories per inner step, inner learning rate 0.1, one inner step, a 64x64 tanh policy,
TRPO with a KL bound of 0.01 as the outer optimiser, discount 0.99 and a linear feature baseline.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from metarl_robot.algos.common.collection import check_num_workers, resolve_sampler
from metarl_robot.algos.common.ppo import PPOConfig
from metarl_robot.algos.common.tasks import TasksConfig
from metarl_robot.algos.common.warm_start import WarmStartConfig
from metarl_robot.gradient_policy import GradientPolicyConfig
from metarl_robot.runtime.advantages import AdvantageConfig

@dataclasses.dataclass(frozen=True)
class GradientWarmStartConfig(WarmStartConfig):
    """Behaviour cloning, then DAgger, before meta-training: of a ``demonstrator`` told the task (the
    common warm start), or of a ``teacher`` controller that is never told it (a ``module:Class`` of the
    runtime Controller protocol, built as ``Class(interface, **teacher_kwargs)``, e.g. the classical
    grip-force ramp of ``sim.grasp_baselines``). A policy that imitates a demonstrator who knows each
    task learns to act as if it knew it; one cloned from a teacher acts on what it can observe."""

    teacher: str = ""
    teacher_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.epochs < 0 or self.dagger_iterations < 0 or not self.lr > 0:
            raise ValueError("rounds, epochs and dagger_iterations must be >= 0 and lr > 0")
        if self.demonstrator and self.teacher:
            raise ValueError("warm_start: give a demonstrator (told the task) or a teacher (not told it), not both")
        if self.rounds and not (self.demonstrator or self.teacher):
            raise ValueError("warm_start.rounds > 0 needs warm_start.demonstrator ('module:function') or "
                             "warm_start.teacher ('module:Class' of a controller)")


Method = Literal["maml", "promp", "reptile", "cavia", "meta_sgd", "multitask_ppo"]
METHODS: tuple[str, ...] = ("maml", "promp", "reptile", "cavia", "meta_sgd", "multitask_ppo")


@dataclasses.dataclass(frozen=True)
class InnerConfig:
    steps: int = 1
    """Inner policy-gradient steps per task; each step collects fresh episodes with the adapted policy."""
    episodes_per_step: int = 20
    """Trajectories collected per task for each inner step (and for the post-adaptation batch)."""
    first_order: bool = False
    """Treat the inner gradient as a constant in the meta-gradient (FOMAML); second order otherwise."""
    loss_every_step: bool = False
    """With several inner steps, the outer objective is the mean over every step ``k = 1..steps`` of the
    return of the policy adapted ``k`` times (on the episodes it collected), not only the last: the
    robot adapts one step at a time and acts between steps, so every step must help."""
    exploration_credit: float = 0.0
    """Weight of E-MAML's exploration term (Stadie et al., 2018) in the outer objective: the
    pre-adaptation episodes' likelihood under the initialisation, credited with how much adapting on
    them improved their task's return (standardised over the meta-batch). MAML's own meta-gradient has
    no term for how the episodes the inner step learns from depend on the initialisation, so its
    exploration noise only ever costs it. 0: MAML's objective."""

    def __post_init__(self) -> None:
        if not (self.exploration_credit >= 0 and math.isfinite(self.exploration_credit)):
            raise ValueError(f"exploration_credit must be a finite number >= 0, got {self.exploration_credit}")
        if self.steps < 0 or self.episodes_per_step < 1:
            raise ValueError(f"steps must be >= 0 and episodes_per_step >= 1, got {self.steps}, {self.episodes_per_step}")


@dataclasses.dataclass(frozen=True)
class TRPOConfig:
    max_kl: float = 0.01
    """Bound on the mean KL between the old and new post-adaptation policies."""
    cg_iters: int = 10
    """Conjugate-gradient iterations for the natural-gradient direction."""
    cg_damping: float = 1e-5
    """Added to the Fisher-vector product for numerical stability."""
    backtrack_ratio: float = 0.5
    line_search_steps: int = 15

    def __post_init__(self) -> None:
        if not self.max_kl > 0 or self.cg_iters < 1 or not 0 < self.backtrack_ratio < 1 or self.line_search_steps < 1:
            raise ValueError("max_kl > 0, cg_iters >= 1, 0 < backtrack_ratio < 1 and line_search_steps >= 1 are required")


@dataclasses.dataclass(frozen=True)
class ProMPConfig(PPOConfig):
    """The shared PPO config with ProMP's defaults, plus its adaptive KL penalty on the pre-adaptation policy."""

    lr: float = 1e-3
    """Adam learning rate (ProMP's default)."""
    clip_ratio: float = 0.3
    target_inner_kl: float = 0.01
    """Target KL between the old and new pre-adaptation policies; the penalty coefficient adapts to it."""
    init_kl_coef: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.target_inner_kl > 0:
            raise ValueError("target_inner_kl > 0 is required")


@dataclasses.dataclass(frozen=True)
class ReptileConfig:
    meta_step_size: float = 0.5
    """Outer step: ``theta += meta_step_size * (mean adapted parameters - theta)``."""
    anneal: bool = True
    """Decay the meta step size linearly to zero over training, as Reptile does."""

    def __post_init__(self) -> None:
        if not 0 < self.meta_step_size <= 1:
            raise ValueError(f"meta_step_size must be in (0, 1], got {self.meta_step_size}")


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
    """The supervised meta-update of a reward-model context step (``policy.inner_loss: reward_model``)."""

    lr: float = 1e-3
    """Adam learning rate of the reward model and the inner step sizes."""
    epochs: int = 20
    """Adam steps per meta-iteration, each over the whole iteration's batches."""
    max_grad_norm: float = 1.0
    """The model update's gradient is clipped to this norm."""
    warmup_iterations: int = 0
    """Meta-iterations at the start of a run in which only the model learns and the policy is left as
    initialised: the policy can only learn to act on a context once the context means something, and
    what it learns is lost if the model then moves the contexts under it."""

    def __post_init__(self) -> None:
        if (not (self.lr > 0 and math.isfinite(self.lr)) or self.epochs < 0 or self.warmup_iterations < 0
                or not self.max_grad_norm > 0):
            raise ValueError(f"reward_model needs lr > 0, epochs >= 0, warmup_iterations >= 0 and max_grad_norm > 0, "
                             f"got {self.lr}, {self.epochs}, {self.warmup_iterations}, {self.max_grad_norm}")


@dataclasses.dataclass(frozen=True)
class ImitationConfig:
    """The outer update ``outer: imitation`` of a reward-model context step: DAgger on the adapted
    contexts. The learner acts after adapting; a demonstrator that knows the task labels the states it
    reaches; the policy's mean learns those labels from the observation and the adapted context, which
    is all the robot has. A context that identifies the task carries what the label needs; where it does
    not, the mean learns the labels' average over the tasks the context cannot tell apart."""

    demonstrator: str = ""
    """``module:function`` mapping ``(obs [N, obs_dim], tasks)`` to normalised actions ``[N, act_dim]``
    (e.g. ``sim.navigation:navigation_oracle``); it labels the states the adapted policy reaches."""
    lr: float = 3e-3
    """Adam learning rate of the policy's weights."""
    steps: int = 150
    """Adam steps per meta-iteration, each on ``tasks_per_step`` tasks' adapted episodes."""
    tasks_per_step: int = 20
    """Tasks (one adapted context and its labelled episodes each) in one Adam step."""
    history: int = 200
    """Tasks kept from recent iterations (DAgger's aggregate; not kept across a resume)."""
    anchor_weight: float = 1.0
    """Weight of the term that holds the unadapted policy's mean action, on its windows' states, where
    it was when it collected them: the windows stay what the reward model learned to read, and the
    imitation of adapted behaviour does not leak into them."""
    start_iteration: int = 0
    """Meta-iterations before this one take the TRPO outer step (the policy learns, by reinforcement,
    how to explore for the model and to act on its contexts); DAgger from this one on, with the reward
    model and the step sizes frozen (the labels are learned on its contexts). A ``cavia_trpo``
    run of the same config up to this iteration can be continued with ``--resume``."""

    def __post_init__(self) -> None:
        if (not (self.lr > 0 and math.isfinite(self.lr)) or self.steps < 1 or self.tasks_per_step < 1
                or self.history < 1 or not self.anchor_weight >= 0 or self.start_iteration < 0):
            raise ValueError(f"imitation needs lr > 0, steps >= 1, tasks_per_step >= 1, history >= 1 and "
                             f"anchor_weight >= 0 and start_iteration >= 0, got {self.lr}, {self.steps}, "
                             f"{self.tasks_per_step}, {self.history}, {self.anchor_weight}, {self.start_iteration}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: Method = "maml"
    """maml, promp, reptile, cavia, meta_sgd, or multitask_ppo (the non-adaptive baseline)."""
    outer: Literal["trpo", "ppo", "imitation"] = "trpo"
    """Outer optimiser of maml, cavia and meta_sgd (promp, reptile and multitask_ppo have their own);
    ``imitation`` (cavia with ``policy.inner_loss: reward_model`` only): DAgger on the adapted contexts
    (:class:`ImitationConfig`)."""
    env_id: str = "sim:metarl/Navigation2D-v0"
    """Gymnasium id, optionally ``module:id`` to import the module that registers it."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: TasksConfig = TasksConfig(distribution="sim.navigation:navigation_distribution", num_train=1000, num_test=40)
    seed: int = 0
    iterations: int = 200
    """Meta-iterations (outer updates)."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    sampler: Literal["serial", "subprocess", "ray"] | None = None
    """Where episodes are collected (docs/sampling.md): in this process, in worker processes, or on Ray
    actors; the same seeds give the same episodes with each. Default: serial (worker processes pay
    off for physics envs, not for 2D navigation)."""
    num_workers: int = 0
    """Workers of the subprocess and ray samplers; 0 = one per CPU core, at most ``meta_batch_size``."""
    asynchronous: bool | None = None
    """The older spelling of ``sampler``: true = subprocess, false = serial (kept so earlier configs load)."""
    torch_threads: int = 1
    checkpoint_every: int = 10
    policy: GradientPolicyConfig = GradientPolicyConfig()
    meta_learn_log_std: bool = True
    """Let the outer update change the initial policy's log standard deviation. False keeps it at
    ``policy.init_log_std``: the exploration the first adaptation window samples with is then fixed, while
    the inner step may still change it on a task. The outer objective scores the exploration noise only
    as a cost in the post-adaptation episodes, never as the information the inner step learns from, so
    meta-training shrinks it; on 2D navigation holding it was worth 1-2 of one-step return, inside one
    seed's interval (BENCHMARKS.md, "What one step learns")."""
    update_obs_normalizer: bool = True
    """Update the observation statistics from each iteration's first batch. Set false to keep those a
    warm start measured: a cloned policy's behaviour drifts when its input scaling moves under it."""
    inner: InnerConfig = InnerConfig()
    advantages: AdvantageConfig = AdvantageConfig()
    trpo: TRPOConfig = TRPOConfig()
    ppo: PPOConfig = PPOConfig()
    promp: ProMPConfig = ProMPConfig()
    reptile: ReptileConfig = ReptileConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    """How a reward-model context step's model is learned (read only with ``policy.inner_loss: reward_model``)."""
    imitation: ImitationConfig = ImitationConfig()
    """How ``outer: imitation`` learns the policy."""
    reward_source: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "topic", "topic": "reward"})
    """Where the deployed policy gets the rewards its adaptation step needs (written into the bundle)."""
    warm_start: GradientWarmStartConfig = GradientWarmStartConfig()
    """Optional behaviour cloning (then DAgger) of a demonstrator's or a teacher's actions into the
    unadapted policy before meta-training (fresh runs only)."""

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.meta_batch_size < 1:
            raise ValueError(f"iterations must be >= 0 and meta_batch_size >= 1, got {self.iterations}, {self.meta_batch_size}")
        check_num_workers(self.num_workers)
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.asynchronous, default="serial"))
        object.__setattr__(self, "asynchronous", None)
        if self.method == "cavia" and self.policy.context_dim < 1:
            raise ValueError("method 'cavia' adapts a context vector: set policy.context_dim > 0 (e.g. 4)")
        if self.method != "cavia" and self.policy.context_dim > 0:
            raise ValueError(f"policy.context_dim={self.policy.context_dim} is CAVIA's; use method 'cavia' or set it to 0")
        if self.method == "meta_sgd" and not self.policy.learn_inner_lr:
            raise ValueError("method 'meta_sgd' learns the inner step sizes: set policy.learn_inner_lr: true")
        if self.method != "meta_sgd" and self.policy.learn_inner_lr:
            raise ValueError("policy.learn_inner_lr is Meta-SGD's; use method 'meta_sgd' or set it to false")
        if self.policy.inner_loss == "reward_model" and self.method != "cavia":
            raise ValueError("policy.inner_loss 'reward_model' adapts a context by fitting rewards: use method 'cavia'")
        if self.policy.inner_loss == "reward_model" and self.inner.steps < 1:
            raise ValueError("policy.inner_loss 'reward_model' learns its model on the inner windows: set inner.steps >= 1")
        if self.outer == "imitation" and self.policy.inner_loss != "reward_model":
            raise ValueError("outer 'imitation' learns a policy on contexts a reward model identified: use method 'cavia' "
                             "with policy.inner_loss: reward_model (a policy-gradient step needs outer 'trpo' or 'ppo')")
        if self.outer == "imitation" and not self.imitation.demonstrator:
            raise ValueError("outer 'imitation' needs imitation.demonstrator, the task-aware labeller "
                             "(e.g. sim.navigation:navigation_oracle)")
        if self.method == "reptile" and self.inner.steps < 1:
            raise ValueError("method 'reptile' needs inner.steps >= 1 (its update moves towards the adapted parameters)")

    @property
    def method_name(self) -> str:
        """The name recorded in checkpoints and bundles, e.g. ``maml_trpo``."""
        if self.method in ("maml", "cavia", "meta_sgd"):
            return f"{self.method}_{self.outer}"
        return self.method

    @property
    def inner_steps(self) -> int:
        """Inner steps actually taken: multi-task PPO trains the unadapted policy."""
        return 0 if self.method == "multitask_ppo" else self.inner.steps
