"""An RL² policy: a recurrent actor-critic whose memory is its adaptation.

:class:`RecurrentPolicy` reads, at every step, the raw observation together with what happened at the
previous step — the command sent (normalised inside), the reward it earned and whether it ended an
episode — and updates a GRU or LSTM state. Nothing else adapts: carried across the episodes (attempts)
of a trial, the state is what the policy has learned about the task; zeroed, it has forgotten it
(Duan et al., 2016, "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning").

The ``window`` cell is RMA's (Kumar et al., 2021, "RMA: Rapid Motor Adaptation for Legged Robots") on the
same interface: the state is the last ``window_steps`` core inputs (observation, previous command, reward
and done flag), an adaptation module maps that history to a task latent ``z`` at every step, and the
base policy reads the current input and ``z``. In training, the latent can instead come from an encoder
of the privileged task parameters (RMA's phase 1); the exported graph always estimates it from the
history (phase 2's adaptation module), so on the robot the window is the state the runtime carries.

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

CELLS = ("gru", "lstm", "window", "prototype", "pearl")
SQUASHES = ("clip", "tanh")
COMPARISONS = ("euclidean", "cosine")
COSINE_EPS = 1e-3
"""Smallest norm the cosine comparison divides by (see ``PrototypeCore.task_logits``)."""
REWARD_CLIP = 10.0
"""The previous reward enters the core as ``clip(prev_reward * reward_scale, -10, 10)``."""


@dataclasses.dataclass(frozen=True)
class RecurrentPolicyConfig:
    cell: str = "gru"
    """Recurrent core: ``gru`` or ``lstm`` (one layer), or ``window`` (RMA: a history window and an
    adaptation module, see the module docstring)."""
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
    window_steps: int = 0
    """``window`` cell: how many past control steps the adaptation module reads (required, >= 2)."""
    latent_dim: int = 8
    """``window`` cell: size of the task latent ``z`` (tanh-bounded)."""
    adaptation_sizes: tuple[int, ...] = (128, 64)
    """``window`` cell: hidden widths of the adaptation module (history window -> ``z``)."""
    encoder_sizes: tuple[int, ...] = (64,)
    """``window`` and ``prototype`` cells: hidden widths of the privileged encoder (task parameters -> ``z``;
    training only)."""
    embedding_dim: int = 16
    """``prototype`` cell: size of a step's embedding (and of each prototype)."""
    embedding_sizes: tuple[int, ...] = (64,)
    """``prototype`` cell: hidden widths of the step embedding."""
    num_prototypes: int = 0
    """``prototype`` cell: one prototype per training task (set from the tasks by the training algorithm)."""
    comparison: str = "euclidean"
    """``prototype`` cell: ``euclidean`` (prototypical networks) or ``cosine`` (matching networks)."""
    context_sizes: tuple[int, ...] = (200, 200, 200)
    """``pearl`` cell: hidden widths of the transition encoder (one Gaussian factor per transition)."""
    squash: str = "clip"
    """How the Gaussian action becomes the command: ``clip`` to [-1, 1] (PPO) or ``tanh`` (SAC)."""

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
        for key in ("adaptation_sizes", "encoder_sizes", "embedding_sizes", "context_sizes"):
            object.__setattr__(self, key, tuple(int(w) for w in getattr(self, key)))
        if self.squash not in SQUASHES:
            raise ValueError(f"squash {self.squash!r} is not supported; use one of {list(SQUASHES)}")
        if self.cell == "pearl" and (self.embed_sizes or self.latent_dim < 1 or any(w < 1 for w in self.context_sizes)):
            raise ValueError("the pearl cell needs embed_sizes: [] (the encoder reads raw transitions), latent_dim >= 1 and positive context_sizes")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison {self.comparison!r} is not supported; use one of {list(COMPARISONS)}")
        if self.cell == "prototype":
            if self.num_prototypes < 0 or self.embedding_dim < 1 or self.latent_dim < 1 or any(w < 1 for w in (*self.embedding_sizes, *self.encoder_sizes)):
                raise ValueError("the prototype cell needs embedding_dim, latent_dim and layer widths >= 1 (num_prototypes is set from the tasks)")
        if self.cell == "window":
            if self.window_steps < 2 or self.latent_dim < 1 or any(w < 1 for w in (*self.adaptation_sizes, *self.encoder_sizes)):
                raise ValueError("the window cell needs window_steps >= 2, latent_dim >= 1 and positive layer widths")


class PrototypeCore(nn.Module):
    """Metric-based task inference with the calling convention of ``nn.GRU(batch_first=True)``:
    ``(x [B, T, I], state [B, E + 1]) -> (features [B, T, H], state)``. The state is ``[m, log(1 + W)]``: the
    relevance-weighted mean ``m`` of the step embeddings ``e_t`` in (-1, 1) and the summed relevance ``W``
    (``a_t`` > 0) over the trial so far; the support embedding ``s = m W / (W + 1)`` is compared with the prototypes (negative squared distance or cosine,
    over a learned temperature) and ``z`` is the softmax mix of ``prototype_latents`` (the privileged
    encoder's latents of the training tasks, set before the module is trained).
    """

    def __init__(self, input_size: int, embedding_dim: int, embedding_sizes: tuple[int, ...], num_prototypes: int,
                 latent_dim: int, hidden_size: int, activation: str, comparison: str) -> None:
        super().__init__()
        self.embedding_dim, self.comparison = int(embedding_dim), comparison
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.embedding = mlp([input_size, *embedding_sizes, self.embedding_dim + 1], activation)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, self.embedding_dim) * 0.3)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.register_buffer("prototype_latents", torch.zeros(num_prototypes, latent_dim))
        self.base = nn.Sequential(mlp([input_size + latent_dim, hidden_size], activation), act())

    def statistics(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(running state [B, T, E + 1] after each step, final state [B, E + 1])``.

        The state is kept bounded, so float32 rounding does not grow with the trial: the relevance-weighted
        *mean* embedding ``m`` and ``log(1 + W)`` of the summed relevance ``W``."""
        out = self.embedding(x)
        relevance = nn.functional.softplus(out[..., -1:])
        embedded = torch.tanh(out[..., :-1])
        mean0, weight0 = state[:, None, :-1], torch.expm1(state[:, None, -1:])
        if x.shape[1] == 1:
            added, weight = relevance * embedded, weight0 + relevance
        else:
            added, weight = torch.cumsum(relevance * embedded, dim=1), weight0 + torch.cumsum(relevance, dim=1)
        running = torch.cat([(mean0 * weight0 + added) / weight, torch.log1p(weight)], dim=-1)
        return running, running[:, -1]

    def task_logits(self, running: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, K]`` of the support set against each prototype (training task)."""
        weight = torch.expm1(running[..., -1:])
        support = running[..., :-1] * weight / (weight + 1.0)  # shrunk towards 0 while there is little evidence
        if self.comparison == "cosine":
            # eps 1e-3: a support set with almost no evidence (|s| ~ 0) scores near 0 against every
            # prototype instead of having its direction (float32 noise) blown up to unit length, which
            # made the exported graph and PyTorch disagree by more than 1e-5 on such states.
            score = (nn.functional.normalize(support, dim=-1, eps=COSINE_EPS)
                     @ nn.functional.normalize(self.prototypes, dim=-1, eps=COSINE_EPS).T)
        else:
            # -|s - p|^2 expanded (one matmul rather than a [.., K, E] difference: K is the number of
            # training tasks, and training evaluates this at every step of every trial)
            score = 2.0 * support @ self.prototypes.T - (support**2).sum(-1, keepdim=True) - (self.prototypes**2).sum(-1)
        return score * torch.exp(-self.log_temperature)

    def estimate(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        running, _ = self.statistics(x, state)
        return torch.softmax(self.task_logits(running), dim=-1) @ self.prototype_latents

    def forward(self, x: torch.Tensor, state: torch.Tensor, latent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        running, final = self.statistics(x, state)
        if latent is None:
            z = torch.softmax(self.task_logits(running), dim=-1) @ self.prototype_latents
        else:
            z = latent.unsqueeze(1).expand(-1, x.shape[1], -1) if latent.dim() == 2 else latent
        return self.base(torch.cat([x, z], dim=-1)), final


class PearlCore(nn.Module):
    """PEARL's probabilistic context with the calling convention of ``nn.GRU(batch_first=True)``, plus the
    latent's noise: ``(x [B, T, I], state [B, 3k + 1], latent_noise [B, T, k]) -> (features [B, T, H], state)``.

    ``x`` is the raw core input ``[obs_norm(obs), prev_action, prev_reward, prev_done]``: at step ``t`` the
    transition just completed is ``(obs_t, a_{t-1}, r_{t-1})``. It adds a factor ``N(m, 1/l)`` unless the
    trial has just started or the previous step ended an episode (its reset observation is not where the
    action led). The state is ``[posterior mean (k), log posterior precision (k), latent z (k), started]``;
    zeros are the prior N(0, I) before the first step. ``z`` is drawn from the posterior (mean + std x
    noise) on the first step of every episode and held through it. The base reads only the observation
    and ``z``, as PEARL's policy ``pi(a | s, z)`` does.
    """

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, hidden_size: int, context_sizes: tuple[int, ...],
                 activation: str) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.latent_dim = int(obs_dim), int(act_dim), int(latent_dim)
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.context_encoder = mlp([self.obs_dim + self.act_dim + 1, *context_sizes, 2 * self.latent_dim], activation)
        self.base = nn.Sequential(mlp([self.obs_dim + self.latent_dim, hidden_size], activation), act())

    def factors(self, transitions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, precision)`` ``[..., k]`` of each transition's factor from ``[obs, action, reward]`` rows."""
        out = self.context_encoder(transitions)
        variance = nn.functional.softplus(out[..., self.latent_dim :]) + 1e-4
        return out[..., : self.latent_dim], 1.0 / variance

    @staticmethod
    def posterior(mean: torch.Tensor, precision: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Product of the prior N(0, I) and the factors ``[..., N, k]`` weighted by ``weight [..., N, 1]``
        (0 leaves a factor out): ``(mean, precision)`` ``[..., k]``."""
        total = 1.0 + (weight * precision).sum(-2)
        return (weight * precision * mean).sum(-2) / total, total

    def features(self, obs_part: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.base(torch.cat([obs_part, z], dim=-1))

    def forward(self, x: torch.Tensor, state: torch.Tensor, latent_noise: torch.Tensor | None = None):
        b, t, _ = x.shape
        k, o, a = self.latent_dim, self.obs_dim, self.act_dim
        if latent_noise is None:
            latent_noise = x.new_zeros(b, t, k)
        mean, log_precision, z = state[:, :k], state[:, k : 2 * k], state[:, 2 * k : 3 * k]
        # A state the graph wrote has started in {0, 1} and a precision >= 1; clamping keeps any other
        # state (a corrupted one, a probe's) finite instead of taking the log or root of a negative.
        started = torch.clamp(state[:, 3 * k :], 0.0, 1.0)
        m, l = self.factors(x[..., : o + a + 1])
        done = x[..., o + a + 1 : o + a + 2]
        out = []
        for i in range(t):
            weight = torch.clamp(started * (1.0 - done[:, i]), 0.0, 1.0)
            # The new factor's precision relative to the posterior's: the update adds log1p of it to the
            # log precision and moves the mean by its share, so rounding stays relative to the (small)
            # update and does not build up over a long trial (no exp/log round trip of the precision).
            ratio = weight * l[:, i] * torch.exp(-log_precision)
            log_precision = log_precision + torch.log1p(ratio)
            mean = mean + ratio / (1.0 + ratio) * (m[:, i] - mean)
            resample = torch.clamp(torch.maximum(1.0 - started, done[:, i]), 0.0, 1.0)
            z = resample * (mean + torch.exp(-0.5 * log_precision) * latent_noise[:, i]) + (1.0 - resample) * z
            started = torch.ones_like(started)
            out.append(self.features(x[:, i, :o], z))
        return torch.stack(out, dim=1), torch.cat([mean, log_precision, z, started], dim=-1)


class HistoryWindowCore(nn.Module):
    """RMA's core with the calling convention of ``nn.GRU(batch_first=True)``: ``(x [B, T, I], state [B, N*I])
    -> (features [B, T, H], state [B, N*I])``, the state being the last ``N`` inputs (oldest first).

    At every step the newest input is appended to the window, the adaptation module estimates the task
    latent ``z`` from the whole window, and the base layer reads ``[x, z]``. :meth:`forward` takes an
    optional ``latent`` ``[B, k]`` that replaces the estimate (RMA's phase 1: ``z`` from the privileged
    encoder); :meth:`estimate` returns the estimates alone (phase 2 regresses them on the encoder's).
    """

    def __init__(self, input_size: int, window_steps: int, latent_dim: int, hidden_size: int,
                 adaptation_sizes: tuple[int, ...], activation: str) -> None:
        super().__init__()
        self.input_size, self.window_steps, self.latent_dim = int(input_size), int(window_steps), int(latent_dim)
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        self.adaptation = nn.Sequential(mlp([self.window_steps * self.input_size, *adaptation_sizes, self.latent_dim], activation), nn.Tanh())
        self.base = nn.Sequential(mlp([self.input_size + self.latent_dim, hidden_size], activation), act())

    def windows(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(windows [B, T, N*I], final state [B, N*I])``: the window after each step's input is appended."""
        b, t, i = x.shape
        n = self.window_steps
        seq = torch.cat([state.reshape(b, n, i), x], dim=1)
        if t == 1:  # one control step (the exported graph): a slice, no unfold
            windows = seq[:, 1:].reshape(b, 1, n * i)
        else:
            windows = seq.unfold(1, n, 1)[:, 1:].transpose(-1, -2).reshape(b, t, n * i)
        return windows, seq[:, -n:].reshape(b, n * i)

    def estimate(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The adaptation module's latents ``[B, T, k]`` over the sequence ``x`` from ``state``."""
        windows, _ = self.windows(x, state)
        return self.adaptation(windows)

    def forward(self, x: torch.Tensor, state: torch.Tensor, latent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        windows, final = self.windows(x, state)
        if latent is None:
            z = self.adaptation(windows)
        else:
            z = latent.unsqueeze(1).expand(-1, x.shape[1], -1) if latent.dim() == 2 else latent
        return self.base(torch.cat([x, z], dim=-1)), final


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
        self.core_input_size = core_in
        if config.cell == "pearl":
            if self.skill is not None:
                raise ValueError("the pearl cell reads raw transitions; it does not sit on a skill")
            self.core = PearlCore(self.obs_dim, self.act_dim, config.latent_dim, config.hidden_size, config.context_sizes, config.activation)
            # SAC's twin critics Q(s, a, z), their targets and the temperature (training only, never exported).
            q_in = self.obs_dim + self.act_dim + config.latent_dim
            self.q_networks = nn.ModuleList([mlp([q_in, *config.critic_sizes, 1], config.activation) for _ in range(2)])
            self.q_targets = nn.ModuleList([mlp([q_in, *config.critic_sizes, 1], config.activation) for _ in range(2)])
            self.q_targets.load_state_dict(self.q_networks.state_dict())
            self.q_targets.requires_grad_(False)
            self.log_alpha = nn.Parameter(torch.zeros(()))
        elif config.cell in ("window", "prototype"):
            if config.cell == "window":
                self.core: nn.Module = HistoryWindowCore(core_in, config.window_steps, config.latent_dim, config.hidden_size,
                                                         config.adaptation_sizes, config.activation)
            else:
                if config.num_prototypes < 1:
                    raise ValueError("the prototype cell needs num_prototypes >= 1 (one per training task; the training algorithm sets it)")
                self.core = PrototypeCore(core_in, config.embedding_dim, config.embedding_sizes, config.num_prototypes,
                                          config.latent_dim, config.hidden_size, config.activation, config.comparison)
            # RMA phase 1: the task latent from the privileged parameters (training only, never exported).
            self.encoder = nn.Sequential(mlp([max(config.privileged_dim, 1), *config.encoder_sizes, config.latent_dim], config.activation), nn.Tanh())
        else:
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
        """Length of the packed state: ``h`` (GRU), ``h`` then ``c`` (LSTM), or the history window."""
        if self.config.cell == "window":
            return self.config.window_steps * self.core_input_size
        if self.config.cell == "prototype":
            return self.config.embedding_dim + 1
        if self.config.cell == "pearl":
            return 3 * self.config.latent_dim + 1
        return self.config.hidden_size * (2 if self.config.cell == "lstm" else 1)

    @property
    def state_layout(self) -> list[dict[str, int | str]]:
        """Where ``h`` (and ``c``), or the history window, sit in the packed state."""
        if self.config.cell == "window":
            return [{"name": "history", "offset": 0, "size": self.state_size}]
        if self.config.cell == "pearl":
            k = self.config.latent_dim
            return [{"name": "posterior_mean", "offset": 0, "size": k}, {"name": "posterior_log_precision", "offset": k, "size": k},
                    {"name": "latent", "offset": 2 * k, "size": k}, {"name": "started", "offset": 3 * k, "size": 1}]
        if self.config.cell == "prototype":
            e = self.config.embedding_dim
            return [{"name": "support_mean", "offset": 0, "size": e}, {"name": "support_log_weight", "offset": e, "size": 1}]
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
        if self.config.cell in ("window", "prototype", "pearl"):
            return state
        if self.config.cell == "gru":
            return state.unsqueeze(0)
        return (state[:, :h].unsqueeze(0).contiguous(), state[:, h:].unsqueeze(0).contiguous())

    def _pack(self, core_state) -> torch.Tensor:
        if self.config.cell in ("window", "prototype", "pearl"):
            return core_state
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

    def privileged_latent(self, privileged: torch.Tensor) -> torch.Tensor:
        """Phase 1: the task latent ``[B, k]`` from raw privileged parameters ``[B, P]`` (window and prototype cells)."""
        if self.config.cell not in ("window", "prototype"):
            raise ValueError(f"a {self.config.cell} core has no privileged encoder")
        return self.encoder(self.privileged_norm(privileged))

    def _core(self, x: torch.Tensor, state: torch.Tensor, privileged: torch.Tensor | None, latent_noise: torch.Tensor | None = None):
        if self.config.cell == "pearl":
            return self.core(x, self._unpack(state), latent_noise)
        if privileged is None:
            return self.core(x, self._unpack(state))
        return self.core(x, self._unpack(state), self.privileged_latent(privileged))

    def unroll(self, obs, prev_action, prev_reward, prev_done, state: torch.Tensor,
               privileged: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the core over sequences ``[B, T, *]`` from ``state [B, S]``: ``(features [B, T, H], final state)``.
        ``privileged [B, P]`` (window cell, training only) replaces the estimated latent with the encoder's."""
        features, final = self._core(self.core_inputs(obs, prev_action, prev_reward, prev_done), state, privileged)
        return features, self._pack(final)

    def inference_parameters(self) -> list[nn.Parameter]:
        """What infers the task latent on the robot (trained in the second phase): the window cell's
        adaptation module, or the prototype cell's embedding, prototypes and temperature."""
        if self.config.cell == "window":
            return list(self.core.adaptation.parameters())
        if self.config.cell == "prototype":
            return [*self.core.embedding.parameters(), self.core.prototypes, self.core.log_temperature]
        raise ValueError(f"a {self.config.cell} core has no separate latent inference")

    def task_logits(self, obs, prev_action, prev_reward, prev_done, state: torch.Tensor) -> torch.Tensor:
        """Prototype cell: logits ``[B, T, K]`` of the support set so far against each training task."""
        running, _ = self.core.statistics(self.core_inputs(obs, prev_action, prev_reward, prev_done), self._unpack(state))
        return self.core.task_logits(running)

    def estimated_latent(self, obs, prev_action, prev_reward, prev_done, state: torch.Tensor) -> torch.Tensor:
        """Window and prototype cells: the estimated latents ``[B, T, k]`` over the sequences (phase 2's prediction)."""
        return self.core.estimate(self.core_inputs(obs, prev_action, prev_reward, prev_done), self._unpack(state))

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
    @property
    def noise_size(self) -> int:
        """Length of the graph's ``noise`` input: the action's, then (pearl cell) the latent's."""
        return self.act_dim + (self.config.latent_dim if self.config.cell == "pearl" else 0)

    def squashed(self, action: torch.Tensor) -> torch.Tensor:
        """A Gaussian action in ``[-1, 1]``: clipped (PPO) or ``tanh`` (SAC)."""
        return torch.tanh(action) if self.config.squash == "tanh" else torch.clamp(action, -1.0, 1.0)

    def step(self, obs, prev_command, prev_reward, prev_done, state, privileged: torch.Tensor | None = None,
             latent_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One control step on ``[B, *]`` inputs (``prev_command`` in physical units): ``(features [B, H], next state)``.
        ``latent_noise [B, k]`` (pearl cell): the draw used if this step starts an episode (None: the mean)."""
        x = self.core_inputs(obs, self.normalised_action(prev_command), prev_reward, prev_done)
        noise = latent_noise.unsqueeze(1) if latent_noise is not None else None
        features, final = self._core(x.unsqueeze(1), state, privileged, noise)
        return features[:, 0], self._pack(final)

    def command(self, obs, prev_command, prev_reward, prev_done, noise, state) -> tuple[torch.Tensor, torch.Tensor]:
        """What the exported policy graph computes: ``(squash(mean + std * noise) * scale, next state)``.

        ``noise`` is standard normal for a sampled command and zero for the mean command; for the pearl
        cell its last ``latent_dim`` entries draw the latent from the posterior at an episode's start.
        """
        act_noise, latent_noise = noise[..., : self.act_dim], (noise[..., self.act_dim :] if self.config.cell == "pearl" else None)
        features, next_state = self.step(obs, prev_command, prev_reward, prev_done, state, latent_noise=latent_noise)
        mean = self.actor(features)
        action = mean + self.log_std.to(mean.dtype).exp() * act_noise
        return self.to_command(obs, self.squashed(action), prev_command), next_state
