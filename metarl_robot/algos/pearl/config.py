"""Configuration of PEARL (Rakelly et al., 2019): off-policy meta-RL with SAC, a probabilistic context
encoder (a Gaussian factor per transition, multiplied into a posterior over the task latent) and
posterior sampling of the latent while collecting."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from metarl_robot.algos.common.collection import check_num_workers, resolve_sampler
from metarl_robot.algos.common.tasks import TasksConfig
from metarl_robot.algos.rl2.config import AdaptationConfig
from metarl_robot.recurrent_policy import RecurrentPolicyConfig

__all__ = ["AdaptationConfig", "SACConfig", "TasksConfig", "TrainConfig"]


@dataclasses.dataclass(frozen=True)
class SACConfig:
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    """Polyak rate of the target critics."""
    batch_size: int = 256
    """Transitions per task in each gradient step's RL batch."""
    context_size: int = 64
    """Transitions per task in each gradient step's context (what the encoder infers the latent from)."""
    meta_batch: int = 8
    """Tasks per gradient step."""
    gradient_steps: int = 100
    """Gradient steps per iteration."""
    kl_weight: float = 0.1
    """Weight of KL(posterior || N(0, I)) in the encoder's loss (PEARL's information bottleneck)."""
    reward_scale: float = 5.0
    """Rewards are multiplied by this in the critic's targets (with the entropy bonus, SAC's temperature)."""
    target_entropy: float | None = None
    """The entropy the temperature is tuned for; ``None``: minus the action dimension."""
    initial_alpha: float = 1.0
    max_grad_norm: float = 10.0
    replay_size: int = 20000
    """Transitions kept per task (the oldest are dropped)."""

    def __post_init__(self) -> None:
        if min(self.lr, self.tau, self.reward_scale, self.initial_alpha, self.max_grad_norm) <= 0 or not 0 < self.gamma <= 1:
            raise ValueError("sac: lr, tau, reward_scale, initial_alpha and max_grad_norm must be > 0 and gamma in (0, 1]")
        if min(self.batch_size, self.context_size, self.meta_batch, self.replay_size) < 1 or self.gradient_steps < 0 or self.kl_weight < 0:
            raise ValueError("sac: batch_size, context_size, meta_batch and replay_size >= 1, gradient_steps and kl_weight >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: Literal["pearl"] = "pearl"
    env_id: str = "sim:metarl/SparsePointRobot-v0"
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: TasksConfig = TasksConfig()
    seed: int = 0
    iterations: int = 100
    tasks_per_iteration: int = 5
    """Train tasks whose data is collected each iteration (one trial each)."""
    episodes_per_trial: int = 2
    """Episodes per collected trial: the first acts on a latent drawn from the prior, every later one on a
    latent drawn from the posterior over what the trial has shown so far (posterior sampling)."""
    initial_trials_per_task: int = 1
    """Before the first iteration every train task gets this many trials (on prior draws)."""
    critic_reward: str = ""
    """``module:function`` ``(obs, actions, next_obs, task) -> rewards [T]``: a reward for the critic's
    targets only, computed in training from the (known) train task, e.g. a dense distance for a sparse
    task. The encoder, like the robot, always reads the env's own reward (PEARL meta-trains its sparse
    point robot this way). Empty: the critic uses the env's reward too."""
    sampler: Literal["serial", "subprocess", "ray"] | None = None
    num_workers: int = 0
    asynchronous: bool | None = None
    torch_threads: int = 1
    checkpoint_every: int = 10
    policy: RecurrentPolicyConfig = RecurrentPolicyConfig(cell="pearl", embed_sizes=(), hidden_size=128, latent_dim=5, squash="tanh",
                                                          init_log_std=-1.0, critic_sizes=(256, 256))
    """The actor: PEARL's cell (transition encoder, posterior, latent) and a tanh-squashed Gaussian head;
    ``critic_sizes`` are the twin Q networks' widths (training only, never exported)."""
    sac: SACConfig = SACConfig()
    adaptation: AdaptationConfig = AdaptationConfig()

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.tasks_per_iteration < 1 or self.episodes_per_trial < 1 or self.initial_trials_per_task < 0:
            raise ValueError("iterations and initial_trials_per_task must be >= 0, tasks_per_iteration and episodes_per_trial >= 1")
        if self.policy.cell != "pearl" or self.policy.squash != "tanh":
            raise ValueError("PEARL trains the pearl cell with a tanh-squashed actor (policy.cell: pearl, policy.squash: tanh)")
        check_num_workers(self.num_workers)
        object.__setattr__(self, "sampler", resolve_sampler(self.sampler, self.asynchronous, default="serial"))
        object.__setattr__(self, "asynchronous", None)
