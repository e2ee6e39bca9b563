"""An RL² policy: a recurrent actor-critic whose memory is its adaptation.

:class:`RecurrentPolicy` reads, at every step, the raw observation together with what happened at the
previous step — the command sent (normalised inside), the reward it earned and whether it ended an
episode — and updates a GRU or LSTM state. Nothing else adapts: carried across the episodes (attempts)
of a trial, the state is what the policy has learned about the task; zeroed, it has forgotten it
(Duan et al., 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning").

The observation normaliser, the action clip and the action scale are inside the module, so the exported
step graph takes raw sensor values and the physical command last sent and returns the next physical
command and the next state. The recurrent state is one packed vector ``[h]`` (GRU) or ``[h, c]``
(LSTM) per batch row, so one step is ``(obs, prev_command, prev_reward, prev_done, noise, state) ->
(command, state)`` whatever the cell.

The critic (value head) may also see privileged task parameters (``privileged_dim > 0``, an
asymmetric critic): they are used in training only and are never part of an exported graph.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from metarl_robot.policies import RunningNormalizer, action_scale_tensor, mlp
from metarl_robot.skills import SKILLS, make_skill

CELLS = ("gru", "lstm")
REWARD_CLIP = 10.0
"""The previous reward enters the core as ``clip(prev_reward * reward_scale, -10, 10)``."""


@dataclasses.dataclass(frozen=True)
class RecurrentPolicyConfig:
    cell: str = "gru"
    """Recurrent core: ``gru`` or ``lstm`` (one layer)."""
    hidden_size: int = 64
    """Size of the hidden state ``h`` (and of the LSTM's cell state ``c``)."""
    embed_sizes: tuple[int, ...] = (64,)
    """Widths of the input MLP in front of the core (empty: the core reads the inputs directly)."""
    head_sizes: tuple[int, ...] = ()
    """Hidden widths of the actor head after the core (empty: one linear layer)."""
    critic_sizes: tuple[int, ...] = (64,)
    """Hidden widths of the value head (it reads the core's output and any privileged parameters)."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian head (normalised action units)."""
    activation: str = "tanh"
    """Activation of the MLPs: tanh or relu."""
    reward_scale: float = 1.0
    """The previous reward is multiplied by this (then clipped to +-10) before the core reads it."""
    privileged_dim: int = 0
    """Privileged task parameters the critic reads in training (0: a symmetric critic). Never exported."""
    skill: str = ""
    """A motion skill the actor sits on (:mod:`metarl_robot.skills`, e.g. ``grasp_force``); empty: the
    actor's action is the command."""
    skill_layout: tuple = ()
    """The observation layout the skill reads entries from, as ``[name, start, size]`` triples (filled
    from the env's robot contract by the training algorithm)."""
    skill_options: dict = dataclasses.field(default_factory=dict)
    """Keyword arguments of the skill (e.g. ``min_force_n``)."""

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not supported; use one of {list(CELLS)}")
        if self.hidden_size < 1 or self.privileged_dim < 0 or any(w < 1 for w in (*self.embed_sizes, *self.head_sizes, *self.critic_sizes)):
            raise ValueError("hidden_size and every layer width must be >= 1, privileged_dim >= 0")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be positive, got {self.reward_scale}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation {self.activation!r} is not supported; use 'tanh' or 'relu'")
        if self.skill and self.skill not in SKILLS:
            raise ValueError(f"skill {self.skill!r} is not known; use one of {sorted(SKILLS)} (or leave it empty)")
        object.__setattr__(self, "skill_layout", tuple(tuple(x) for x in self.skill_layout))


class RecurrentPolicy(nn.Module):
    """RL² actor-critic with a GRU or LSTM core (see the module docstring).

    Shapes: single steps take ``[B, *]`` tensors and a packed state ``[B, state_size]``; sequences
    (:meth:`unroll`) take ``[B, T, *]``. Actions are normalised (``[-1, 1]`` after the clip); ``command =
    clip(action, -1, 1) * action_scale``.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_scale, config: RecurrentPolicyConfig = RecurrentPolicyConfig()):
        super().__init__()
        self.obs_dim, self.act_dim, self.config = int(obs_dim), int(act_dim), config
        self.register_buffer("action_scale", action_scale_tensor(action_scale, self.act_dim))
        if config.skill and not config.skill_layout:
            raise ValueError(f"skill {config.skill!r} needs skill_layout, the observation layout it reads")
        self.skill = make_skill(config.skill, config.skill_layout, self.action_scale, config.skill_options) if config.skill else None
        learned = torch.zeros(self.act_dim)
        learned[list(self.skill.learned) if self.skill is not None else slice(None)] = 1.0
        # Which action dimensions are the policy's decisions (1) and which the skill ignores (0).
        self.register_buffer("learned_mask", learned)
        self.obs_norm = RunningNormalizer(self.obs_dim)
        in_dim = self.obs_dim + self.act_dim + 2 + (self.skill.feature_dim if self.skill is not None else 0)
        if config.embed_sizes:
            act = {"tanh": nn.Tanh, "relu": nn.ReLU}[config.activation]
            self.embed: nn.Module = nn.Sequential(mlp([in_dim, *config.embed_sizes], config.activation), act())
            core_in = config.embed_sizes[-1]
        else:
            self.embed = nn.Identity()
            core_in = in_dim
        core = nn.GRU if config.cell == "gru" else nn.LSTM
        self.core = core(core_in, config.hidden_size, batch_first=True)
        self.actor = mlp([config.hidden_size, *config.head_sizes, self.act_dim], config.activation, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), float(config.init_log_std)))
        if self.skill is not None:
            with torch.no_grad():
                for dim, value in self.skill.initial_mean.items():
                    self.actor[-1].bias[dim] = value
        self.critic = mlp([config.hidden_size + config.privileged_dim, *config.critic_sizes, 1], config.activation)
        # Training-only statistics of the privileged parameters (an empty buffer without them).
        self.privileged_norm = RunningNormalizer(max(config.privileged_dim, 1))

    # ------------------------------------------------------------------------------ state
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def state_size(self) -> int:
        """Length of the packed state: ``h`` (GRU) or ``h`` then ``c`` (LSTM)."""
        return self.config.hidden_size * (2 if self.config.cell == "lstm" else 1)

    @property
    def state_layout(self) -> list[dict[str, int | str]]:
        """Where ``h`` (and ``c``) sit in the packed state."""
        h = self.config.hidden_size
        layout: list[dict[str, int | str]] = [{"name": "h", "offset": 0, "size": h}]
        if self.config.cell == "lstm":
            layout.append({"name": "c", "offset": h, "size": h})
        return layout

    def initial_state(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The state at the start of a trial: zeros ``[batch, state_size]``."""
        return torch.zeros(batch, self.state_size, dtype=dtype)

    def _unpack(self, state: torch.Tensor):
        h = self.config.hidden_size
        if self.config.cell == "gru":
            return state.unsqueeze(0)
        return (state[:, :h].unsqueeze(0).contiguous(), state[:, h:].unsqueeze(0).contiguous())

    def _pack(self, core_state) -> torch.Tensor:
        if self.config.cell == "gru":
            return core_state[0]
        h, c = core_state
        return torch.cat([h[0], c[0]], dim=-1)

    # ------------------------------------------------------------------------------ the core
    def core_inputs(self, obs, prev_action, prev_reward, prev_done) -> torch.Tensor:
        """The core's input from raw observations, normalised previous actions (``[-1, 1]``), previous
        rewards and done flags (``[..., 1]`` each)."""
        reward = torch.clamp(prev_reward * self.config.reward_scale, -REWARD_CLIP, REWARD_CLIP)
        parts = [self.obs_norm(obs), prev_action, reward, prev_done]
        if self.skill is not None and self.skill.feature_dim:
            parts.append(self.skill.features(obs))
        return self.embed(torch.cat(parts, dim=-1))

    def unroll(self, obs, prev_action, prev_reward, prev_done, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the core over sequences ``[B, T, *]`` from ``state [B, S]``: ``(features [B, T, H], final state)``."""
        features, final = self.core(self.core_inputs(obs, prev_action, prev_reward, prev_done), self._unpack(state))
        return features, self._pack(final)

    def normalised_action(self, command: torch.Tensor) -> torch.Tensor:
        """A physical command as the normalised action the core reads: ``clip(command / scale, -1, 1)``,
        or the skill's features of it (e.g. a log-scale grip force)."""
        if self.skill is not None:
            return self.skill.prev_features(command)
        return torch.clamp(command / self.action_scale.to(command.dtype), -1.0, 1.0)

    def to_command(self, obs: torch.Tensor, action: torch.Tensor, prev_command: torch.Tensor) -> torch.Tensor:
        """The physical command for a clipped action ``[-1, 1]``: ``action * scale``, or what the skill
        makes of it on this observation after ``prev_command``."""
        if self.skill is not None:
            return self.skill(obs, action, prev_command)
        return action * self.action_scale.to(action.dtype)

    def log_prob(self, dist: torch.distributions.Normal, raw_action: torch.Tensor) -> torch.Tensor:
        """Log-probability of the learned dimensions of ``raw_action`` (the ones the skill reads)."""
        return (dist.log_prob(raw_action) * self.learned_mask.to(raw_action.dtype)).sum(-1)

    def entropy(self, dist: torch.distributions.Normal) -> torch.Tensor:
        return (dist.entropy() * self.learned_mask.to(dist.mean.dtype)).sum(-1)

    # ------------------------------------------------------------------------------ heads
    def distribution(self, features: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(features)
        return torch.distributions.Normal(mean, self.log_std.to(mean.dtype).exp().expand_as(mean))

    def value(self, features: torch.Tensor, privileged: torch.Tensor | None = None) -> torch.Tensor:
        """Value estimates ``[...]`` from core features (and the privileged parameters, if the critic has them)."""
        if self.config.privileged_dim:
            if privileged is None:
                raise ValueError(f"this critic reads {self.config.privileged_dim} privileged task parameters; pass them")
            features = torch.cat([features, self.privileged_norm(privileged)], dim=-1)
        return self.critic(features).squeeze(-1)

    # ------------------------------------------------------------------------------ one step (the exported graph)
    def step(self, obs, prev_command, prev_reward, prev_done, state) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step on ``[B, *]`` inputs (``prev_command`` in physical units): ``(features [B, H], next state)``."""
        x = self.core_inputs(obs, self.normalised_action(prev_command), prev_reward, prev_done)
        features, final = self.core(x.unsqueeze(1), self._unpack(state))
        return features[:, 0], self._pack(final)

    def command(self, obs, prev_command, prev_reward, prev_done, noise, state) -> tuple[torch.Tensor, torch.Tensor]:
        """What the exported policy graph computes: ``(clip(mean + std * noise, -1, 1) * scale, next state)``.

        ``noise`` is standard normal for a sampled command and zero for the mean command.
        """
        features, next_state = self.step(obs, prev_command, prev_reward, prev_done, state)
        mean = self.actor(features)
        action = mean + self.log_std.to(mean.dtype).exp() * noise
        return self.to_command(obs, torch.clamp(action, -1.0, 1.0), prev_command), next_state
