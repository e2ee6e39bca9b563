"""Gaussian MLP policy with an explicit, flat vector of adapted parameters, for gradient-based meta-RL.

Gradient-based methods (MAML, ProMP, Reptile, CAVIA, Meta-SGD) adapt by taking policy-gradient steps
on a new task. :class:`GradientPolicy` makes the adapted quantity an explicit input, ``phi``, a single
flat float vector, so that one inner step is a pure function

    phi' = phi - inner_lr * grad_phi L(phi; obs, action, advantage, mask)

which PyTorch differentiates through (second-order meta-gradients) and which exports to ONNX as its
own graph (:func:`adaptation_step`). What ``phi`` holds depends on the method:

* all network weights and the log standard deviation (MAML, ProMP, Reptile, Meta-SGD), or
* a context vector fed to the network next to the observation, with the weights fixed (CAVIA,
  ``context_dim > 0``); with ``inner_loss: reward_model`` the step moves the context to fit a
  reward model, kept beside the policy, to the window's rewards, instead of descending the
  policy-gradient loss.

The observation normaliser and the action scaling live in the module (frozen into exported graphs),
and actions are Gaussian in normalised units: the command the robot receives is
``clip(action, -1, 1) * action_scale``. Meta-SGD learns ``inner_lr`` per adapted parameter.

A policy may sit on a motion skill (:mod:`metarl_robot.skills`, e.g. ``grasp_force``: scripted
approach, close and lift, with the grip force and lift speed learned): the command is then what the
skill makes of the clipped action, and only the action dimensions the skill reads are the policy's
decisions (the others do not enter the log-probability). A skill reads the previous command (a grip
force changes by a ratio of the last one), so such a policy's input is the observation followed by the
previous command, zeros at an episode's first step: :meth:`GradientPolicy.policy_inputs`. Without a
skill the input is the observation alone, and the previous command is ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from metarl_robot.policies import RunningNormalizer, action_scale_tensor
from metarl_robot.runtime.advantages import INNER_LOSSES
from metarl_robot.skills import SKILLS, make_skill

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GradientPolicyConfig:
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths (the MAML paper's 64x64)."""
    activation: str = "tanh"
    """Hidden activation: tanh or relu."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian (normalised action units)."""
    context_dim: int = 0
    """0: adapt every weight (MAML family). >0: adapt only a context vector of this size fed to the
    network, starting from zeros on every task (CAVIA)."""
    inner_lr: float = 0.1
    """Step size of the inner policy-gradient step."""
    learn_inner_lr: bool = False
    """Meta-learn one inner step size per adapted parameter (Meta-SGD), initialised to ``inner_lr``."""
    inner_updates: int = 1
    """Gradient updates one adaptation step takes on its window of episodes, each on the same
    policy-gradient loss of those episodes at the parameters the previous update reached (as MAML takes
    several steps on one support set in supervised learning), so the step is no longer linear in the
    window's advantages. Meta-training differentiates through all of them; the adapt graph holds them
    all. (A likelihood-ratio surrogate for the later updates was tried first: its ratio overflows as soon
    as the first update moves the mean by several standard deviations.)"""
    normalize_observations: bool = True
    """Keep running observation statistics and feed normalised observations to the network."""
    skill: str = ""
    """A motion skill the policy sits on (:mod:`metarl_robot.skills`, e.g. ``grasp_force``); empty: the
    clipped action times the action scale is the command."""
    skill_layout: tuple = ()
    """The observation layout the skill reads entries from, as ``[name, start, size]`` triples (filled
    from the env's robot contract by the training algorithm)."""
    skill_options: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of the skill (e.g. ``min_force_n``)."""
    inner_loss: str = "policy_gradient"
    """What the inner step descends. ``policy_gradient``: the policy-gradient loss of the window's
    advantages (every method). ``reward_model`` (context policies only): the squared error with which a
    reward model ``r(obs, action, context)``, meta-learned beside the policy, predicts the window's
    rewards, so the context is moved to whatever explains the rewards the robot saw (model
    identification, as in MIER, Mendonca et al., 2020). Such a step reads each reward as a value, where
    a policy-gradient step reads it only through its correlation with exploration noise; the inner step
    sizes are then learned with the model (one per context entry)."""
    model_hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the reward model (``inner_loss: reward_model``)."""

    def __post_init__(self) -> None:
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation {self.activation!r} is not supported; use 'tanh' or 'relu'")
        if self.context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {self.context_dim}")
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be positive, got {self.inner_lr}")
        if not 1 <= self.inner_updates <= 20:
            raise ValueError(f"inner_updates must be 1 to 20 gradient updates per window, got {self.inner_updates}")
        if self.skill and self.skill not in SKILLS:
            raise ValueError(f"skill {self.skill!r} is not known; use one of {sorted(SKILLS)} (or leave it empty)")
        object.__setattr__(self, "skill_layout", tuple(tuple(x) for x in self.skill_layout))
        object.__setattr__(self, "model_hidden_sizes", tuple(self.model_hidden_sizes))
        if self.inner_loss not in INNER_LOSSES:
            raise ValueError(f"inner_loss {self.inner_loss!r} is not known; use one of {list(INNER_LOSSES)}")
        if self.inner_loss == "reward_model":
            if self.context_dim < 1:
                raise ValueError("inner_loss 'reward_model' adapts a context: set context_dim > 0 (method 'cavia')")
            if self.learn_inner_lr:
                raise ValueError("inner_loss 'reward_model' always learns its step sizes with the model; "
                                 "leave learn_inner_lr false")
            if not self.model_hidden_sizes or any(h < 1 for h in self.model_hidden_sizes):
                raise ValueError(f"model_hidden_sizes must be positive widths, got {self.model_hidden_sizes}")


class GradientPolicy(nn.Module):
    """Gaussian MLP ``obs -> action`` whose adapted parameters are passed in as one flat vector.

    ``weights`` (flat: every layer's weight and bias, then ``log_std``) is the meta-learned
    initialisation. ``initial_adapted()`` is where adaptation starts on a new task: ``weights``
    itself, or the zero context for CAVIA. Every ``*(phi, ...)`` method evaluates the policy at the
    adapted vector ``phi``.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_scale, config: GradientPolicyConfig = GradientPolicyConfig()):
        super().__init__()
        self.obs_dim, self.act_dim, self.config = int(obs_dim), int(act_dim), config
        self.register_buffer("action_scale", action_scale_tensor(action_scale, self.act_dim))
        self.obs_norm = RunningNormalizer(self.obs_dim)
        if config.skill and not config.skill_layout:
            raise ValueError(f"skill {config.skill!r} needs skill_layout, the observation layout it reads")
        self.skill = make_skill(config.skill, config.skill_layout, self.action_scale, config.skill_options) if config.skill else None
        learned = torch.zeros(self.act_dim)
        learned[list(self.skill.learned) if self.skill is not None else slice(None)] = 1.0
        # Which action dimensions are the policy's decisions (1) and which the skill ignores (0); derived
        # from the config, so not stored (checkpoints written before skills existed load unchanged).
        self.register_buffer("learned_mask", learned, persistent=False)
        extra = self.skill.feature_dim + self.act_dim if self.skill is not None else 0
        sizes = [self.obs_dim + extra + config.context_dim, *config.hidden_sizes, self.act_dim]
        self.layer_shapes: list[tuple[tuple[int, int], tuple[int]]] = [
            ((sizes[i + 1], sizes[i]), (sizes[i + 1],)) for i in range(len(sizes) - 1)
        ]
        chunks = []
        for i, (w_shape, b_shape) in enumerate(self.layer_shapes):
            weight = torch.empty(w_shape)
            nn.init.orthogonal_(weight, 0.01 if i == len(self.layer_shapes) - 1 else math.sqrt(2.0))
            chunks += [weight.reshape(-1), torch.zeros(b_shape)]
        if self.skill is not None:  # the skill's initial means (e.g. "do not release") in the last bias
            for dim, value in self.skill.initial_mean.items():
                chunks[-1][dim] = value
        chunks.append(torch.full((self.act_dim,), float(config.init_log_std)))
        self.weights = nn.Parameter(torch.cat(chunks))
        self.register_buffer("initial_context", torch.zeros(config.context_dim))
        lr = torch.full((self.num_adapted,), float(config.inner_lr))
        if config.learn_inner_lr or self.reads_rewards:
            self.inner_lr = nn.Parameter(lr)
        else:
            self.register_buffer("inner_lr", lr)
        if self.reads_rewards:
            sizes = [self.obs_dim + self.act_dim + config.context_dim, *config.model_hidden_sizes, 1]
            self.model_shapes = [((sizes[i + 1], sizes[i]), (sizes[i + 1],)) for i in range(len(sizes) - 1)]
            chunks = []
            for w_shape, b_shape in self.model_shapes:
                weight = torch.empty(w_shape)
                nn.init.orthogonal_(weight, 1.0)
                chunks += [weight.reshape(-1), torch.zeros(b_shape)]
            self.model_weights = nn.Parameter(torch.cat(chunks))

    # ------------------------------------------------------------------------------ layout
    @property
    def input_dim(self) -> int:
        """Size of the policy's input: the observation, then (on a skill) the previous command."""
        return self.obs_dim + (self.act_dim if self.skill is not None else 0)

    def policy_inputs(self, obs: torch.Tensor, prev_command: torch.Tensor | None) -> torch.Tensor:
        """What every ``*(phi, inputs, ...)`` method reads: ``obs [..., obs_dim]`` followed, on a skill,
        by the previous command ``[..., act_dim]`` in physical units (zeros at an episode's start)."""
        if self.skill is None:
            return obs
        if prev_command is None:
            raise ValueError("a policy on a skill reads the previous command (zeros at an episode's start)")
        return torch.cat([obs, prev_command.to(obs.dtype)], dim=-1)

    @property
    def adapts_context(self) -> bool:
        """True for CAVIA: ``phi`` is a context vector and the weights stay fixed."""
        return self.config.context_dim > 0

    @property
    def num_adapted(self) -> int:
        """Length of ``phi``."""
        return self.config.context_dim if self.adapts_context else int(self.weights.numel())

    def initial_adapted(self) -> torch.Tensor:
        """Where adaptation starts on a new task (carries gradients to the meta-parameters)."""
        return self.initial_context if self.adapts_context else self.weights

    @property
    def reads_rewards(self) -> bool:
        """True when the inner step fits a reward model to the window's rewards (``inner_loss:
        reward_model``): its per-step signal is the reward itself, not an advantage."""
        return self.config.inner_loss == "reward_model"

    def meta_parameters(self) -> list[nn.Parameter]:
        """What the outer (reinforcement) loop learns: the weights, plus the inner step sizes for
        Meta-SGD. A reward-model policy's model and step sizes are learned apart, by
        :meth:`model_parameters`' supervised loss: they decide the context, not the actions."""
        if self.reads_rewards:
            return [self.weights]
        return [p for p in (self.weights, self.inner_lr) if isinstance(p, nn.Parameter)]

    def model_parameters(self) -> list[nn.Parameter]:
        """The reward model's weights and the inner step sizes (``inner_loss: reward_model``; else none)."""
        return [self.model_weights, self.inner_lr] if self.reads_rewards else []

    def _unflatten(self, flat: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        layers, i = _layers(flat, self.layer_shapes)
        return layers, flat[i : i + self.act_dim]

    # ------------------------------------------------------------------------------ the policy at phi
    def mean_log_std(self, phi: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log std (normalised action units) for policy inputs ``obs [..., input_dim]``: raw
        observations, followed on a skill by the previous command (:meth:`policy_inputs`)."""
        raw = obs[..., : self.obs_dim] if self.skill is not None else obs
        x = self.obs_norm(raw) if self.config.normalize_observations else raw
        if self.skill is not None:
            prev = obs[..., self.obs_dim :]
            x = torch.cat([x, self.skill.features(raw), self.skill.prev_features(prev)], dim=-1)
        if self.adapts_context:
            weights = self.weights
            x = torch.cat([x, phi.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)
        else:
            weights = phi
        layers, log_std = self._unflatten(weights.to(x.dtype))
        x = _forward(layers, x, torch.tanh if self.config.activation == "tanh" else torch.relu)
        return x, log_std.expand_as(x)

    def predicted_reward(self, phi: torch.Tensor, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The reward model's prediction ``[...]`` for policy inputs ``obs``, normalised ``action``
        (clipped here, as the robot executes it) and context ``phi`` (``inner_loss: reward_model``)."""
        raw = obs[..., : self.obs_dim]
        x = self.obs_norm(raw) if self.config.normalize_observations else raw
        x = torch.cat([x, torch.clamp(action.to(x.dtype), -1.0, 1.0), phi.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)
        layers, _ = _layers(self.model_weights.to(x.dtype), self.model_shapes)
        return _forward(layers, x, torch.tanh)[..., 0]

    def model_loss(self, phi, obs, action, reward, mask) -> torch.Tensor:
        """Mean over valid steps of the squared error of :meth:`predicted_reward` against ``reward``."""
        error = self.predicted_reward(phi, obs, action) - reward.to(phi.dtype)
        return masked_mean(error * error, mask)

    def decision_weights(self, obs: torch.Tensor) -> torch.Tensor | None:
        """``[..., act_dim]`` for policy inputs ``obs``: 1 where an action dimension is a decision the
        policy took at that step, 0 where the skill ignored it (a dimension it never reads, or one it
        does not read at that step: :meth:`Skill.used`); ``None`` without a skill (every dimension is a
        decision). Every log-probability and KL of the policy's actions is weighted by it."""
        if self.skill is None:
            return None
        raw = obs[..., : self.obs_dim]
        return self.skill.used(raw, obs[..., self.obs_dim :]) * self.learned_mask.to(raw.dtype)

    def log_prob(self, phi: torch.Tensor, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log density of normalised ``action [..., act_dim]`` (summed over the action dimensions that
        are the policy's decisions at each step: :meth:`decision_weights`)."""
        return gaussian_log_prob(*self.mean_log_std(phi, obs), action, self.decision_weights(obs))

    def sample(self, phi: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Normalised action ``mean + std * noise`` (``noise`` standard normal; zeros = the mean)."""
        mean, log_std = self.mean_log_std(phi, obs)
        return mean + torch.exp(log_std) * noise

    def command(self, phi: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Command in physical units for policy inputs ``obs``: ``clip(action, -1, 1) * action_scale``,
        or what the skill makes of the clipped action."""
        return self.to_command(obs, self.sample(phi, obs, torch.zeros(()) if noise is None else noise))

    def to_command(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The physical command for normalised ``action`` (clipped here) at policy inputs ``obs``."""
        clipped = torch.clamp(action, -1.0, 1.0)
        if self.skill is None:
            return clipped * self.action_scale.to(action.dtype)
        return self.skill(obs[..., : self.obs_dim], clipped, obs[..., self.obs_dim :])

    # ------------------------------------------------------------------------------ adaptation
    def surrogate_loss(self, phi, obs, action, advantage, mask, *, low_variance_curvature: bool = False) -> torch.Tensor:
        """The inner loss: minus the mean over valid steps of ``log pi(action | obs) * advantage``.

        With ``low_variance_curvature`` (ProMP's LVC estimator) the log-probability is replaced by the
        likelihood ratio ``pi / stop_gradient(pi)``: the same value and gradient at ``phi``, but a
        lower-variance Hessian, which is what the meta-gradient differentiates.
        """
        logp = self.log_prob(phi, obs, action)
        if low_variance_curvature:
            logp = torch.exp(logp - logp.detach())
        weight = advantage.to(logp.dtype) * mask.to(logp.dtype)
        return -(logp * weight).sum() / torch.clamp(mask.to(logp.dtype).sum(), min=1.0)

    def inner_loss(self, phi, obs, action, signal, mask, *, low_variance_curvature: bool = False) -> torch.Tensor:
        """What one inner update descends: :meth:`model_loss` of the rewards ``signal`` for a
        reward-model policy, else :meth:`surrogate_loss` of the advantages ``signal``."""
        if self.reads_rewards:
            return self.model_loss(phi, obs, action, signal, mask)
        return self.surrogate_loss(phi, obs, action, signal, mask, low_variance_curvature=low_variance_curvature)

    def inner_step(
        self, phi, obs, action, advantage, mask, *, create_graph: bool, low_variance_curvature: bool = False
    ) -> torch.Tensor:
        """One inner step from ``phi`` on a batch ``[N, T, *]`` (``mask`` marks valid steps):
        ``inner_updates`` gradient updates on the batch's :meth:`inner_loss` (``advantage`` holds the
        rewards for a reward-model policy: :attr:`reads_rewards`).

        ``create_graph=True`` keeps the step differentiable (second-order meta-gradients); otherwise the
        gradient is treated as a constant (first-order), while ``phi`` and the step sizes still carry
        gradients.
        """
        lr = self.inner_lr.to(phi.dtype)
        for _ in range(self.config.inner_updates):
            if not phi.requires_grad:  # under no_grad, or a plain tensor: differentiate from here
                phi = phi.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self.inner_loss(phi, obs, action, advantage, mask, low_variance_curvature=low_variance_curvature)
                (grad,) = torch.autograd.grad(loss, phi, create_graph=create_graph)
            phi = phi - lr * grad
        return phi


def adaptation_step(policy: GradientPolicy) -> Callable[..., torch.Tensor]:
    """The pure function ``(phi, obs, prev_command, action, advantage, mask) -> phi'`` of one inner
    step, written with ``torch.func.grad`` so it can be traced (``make_fx``) and exported as an ONNX graph.

    ``obs [N, T, obs_dim]`` raw observations, ``prev_command [N, T, act_dim]`` the command sent the step
    before each (zeros at an episode's first step; read only by a policy on a skill), ``action [N, T,
    act_dim]`` the normalised actions the policy drew (before clipping), ``advantage [N, T]`` (the
    rewards for a reward-model policy), ``mask [N, T]`` (1 = valid step).
    """

    def loss(phi, inputs, action, advantage, mask):
        return policy.inner_loss(phi, inputs, action, advantage, mask)

    grad = torch.func.grad(loss)

    def step(phi, obs, prev_command, action, advantage, mask):
        inputs = policy.policy_inputs(obs, prev_command)
        lr = policy.inner_lr.to(phi.dtype)
        for _ in range(policy.config.inner_updates):
            phi = phi - lr * grad(phi, inputs, action, advantage, mask)
        return phi

    return step


def _layers(flat: torch.Tensor, shapes) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """``(weight, bias)`` per layer of ``shapes`` read from the front of ``flat``, and how many entries they took."""
    layers, i = [], 0
    for w_shape, b_shape in shapes:
        nw, nb = w_shape[0] * w_shape[1], b_shape[0]
        layers.append((flat[i : i + nw].reshape(w_shape), flat[i + nw : i + nw + nb]))
        i += nw + nb
    return layers, i


def _forward(layers, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """An MLP: ``act`` after every layer but the last."""
    for i, (w, b) in enumerate(layers):
        x = F.linear(x, w, b)
        if i < len(layers) - 1:
            x = act(x)
    return x


def gaussian_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Log density of ``action`` under a diagonal Gaussian, summed over the last dimension (only over
    the dimensions where ``weights`` is 1, when given)."""
    z = (action - mean) * torch.exp(-log_std)
    per_dim = -0.5 * z * z - log_std - _LOG_SQRT_2PI
    return (per_dim if weights is None else per_dim * weights.to(per_dim.dtype)).sum(-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q, weights: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last dimension (only over the dimensions
    where ``weights`` is 1, when given)."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    per_dim = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5
    return (per_dim if weights is None else per_dim * weights.to(per_dim.dtype)).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / torch.clamp(mask.sum(), min=1.0)


def flat_grad(output: torch.Tensor, params: Sequence[torch.Tensor], **kwargs) -> torch.Tensor:
    grads = torch.autograd.grad(output, list(params), allow_unused=True, **kwargs)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
