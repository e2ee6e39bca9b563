"""Policies with explicit adaptation state.

:class:`ContextPolicy` is a Gaussian actor-critic conditioned on a task context ``z``. The context is
inferred by a permutation-invariant encoder from transitions the robot has seen on the current task
(``obs, action, reward, next_obs``), so adaptation is a forward pass: it exports to ONNX as a plain
graph and runs on the robot without torch. The observation normaliser and the action scaling live in
the module, so the exported graphs take raw sensor values and return commands in physical units.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of actor, critic and encoder."""
    context_dim: int = 8
    """Size of the task context ``z`` the encoder infers."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian head (in normalised action units)."""
    activation: str = "tanh"
    """Hidden activation: tanh or relu."""


def action_scale_tensor(action_scale, act_dim: int) -> torch.Tensor:
    """``action_scale`` as a float32 ``[act_dim]`` tensor; every entry must be positive (the graphs
    divide by it and clip to +-it)."""
    scale = torch.as_tensor(action_scale, dtype=torch.float32).reshape(int(act_dim))
    if not torch.all(scale > 0):
        raise ValueError(f"action_scale must be positive for every action dimension, got {scale.tolist()}")
    return scale


class RunningNormalizer(nn.Module):
    """Running mean/variance of observations, updated in training and frozen into exported graphs."""

    def __init__(self, size: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))
        self.clip = clip

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var.to(x.dtype) + 1e-8)
        return torch.clamp((x - mean) / std, -self.clip, self.clip)


def mlp(sizes: list[int], activation: str, out_gain: float = 1.0) -> nn.Sequential:
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}.get(activation)
    if act is None:
        raise ValueError(f"activation {activation!r} is not supported; use 'tanh' or 'relu'")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else 2**0.5)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(act())
    return nn.Sequential(*layers)


class PolicyOutput(NamedTuple):
    mean: torch.Tensor
    log_std: torch.Tensor
    value: torch.Tensor


class ContextPolicy(nn.Module):
    """Context-conditioned Gaussian actor-critic with a transition encoder.

    Actions are in normalised units ``[-1, 1]``; ``action_scale`` maps them to the command the robot
    receives (``command = clip(action, -1, 1) * action_scale``).
    """

    def __init__(self, obs_dim: int, act_dim: int, action_scale, config: PolicyConfig = PolicyConfig()):
        super().__init__()
        self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
        self.register_buffer("action_scale", action_scale_tensor(action_scale, act_dim))
        self.obs_norm = RunningNormalizer(obs_dim)
        h, c = list(config.hidden_sizes), config.context_dim
        transition_dim = 2 * obs_dim + act_dim + 1
        self.encoder = mlp([transition_dim, *h], config.activation)
        self.encoder_head = nn.Linear(h[-1], c)
        self.actor = mlp([obs_dim + c, *h, act_dim], config.activation, out_gain=0.01)
        self.critic = mlp([obs_dim + c, *h, 1], config.activation, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), config.init_log_std))
        # Training-only: predicts a transition's reward from the context, which teaches the encoder to
        # summarise what differs between tasks. Not part of the exported graphs.
        self.reward_decoder = mlp([transition_dim - 1 + c, *h, 1], config.activation)

    # ------------------------------------------------------------------ context (adaptation state)
    def initial_context(self, batch: int = 1) -> torch.Tensor:
        """The context before any transition of the task has been seen (the prior)."""
        empty = torch.zeros(batch, 1, 2 * self.obs_dim + self.act_dim + 1)
        return self.encode_features(empty, torch.zeros(batch, 1))

    def transition_features(self, obs, action, reward, next_obs) -> torch.Tensor:
        """Encoder input from raw transitions: observations normalised, actions in [-1, 1]."""
        return torch.cat(
            [self.obs_norm(obs), action, reward, self.obs_norm(next_obs)], dim=-1
        )

    def encode_features(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of per-transition embeddings -> context. ``features [B,N,D]``, ``mask [B,N]``."""
        emb = self.encoder(features)
        weights = mask.unsqueeze(-1)
        pooled = (emb * weights).sum(1) / torch.clamp(weights.sum(1), min=1.0)
        return torch.tanh(self.encoder_head(pooled))

    def encode(self, obs, action, reward, next_obs, mask) -> torch.Tensor:
        """Context from raw transitions ``[B,N,*]`` (``action`` normalised, ``reward [B,N,1]``)."""
        return self.encode_features(self.transition_features(obs, action, reward, next_obs), mask)

    def predict_reward(self, obs, action, next_obs, context) -> torch.Tensor:
        """Reward predicted for transitions ``[B,T,*]`` under per-episode contexts ``[B,C]``."""
        ctx = context.unsqueeze(1).expand(-1, obs.shape[1], -1)
        x = torch.cat([self.obs_norm(obs), action, self.obs_norm(next_obs), ctx], dim=-1)
        return self.reward_decoder(x).squeeze(-1)

    # ------------------------------------------------------------------------------ acting
    def forward(self, obs: torch.Tensor, context: torch.Tensor) -> PolicyOutput:
        x = torch.cat([self.obs_norm(obs), context], dim=-1)
        return PolicyOutput(self.actor(x), self.log_std.expand(obs.shape[0], -1), self.critic(x).squeeze(-1))

    def distribution(self, obs, context) -> tuple[torch.distributions.Normal, torch.Tensor]:
        out = self(obs, context)
        return torch.distributions.Normal(out.mean, out.log_std.exp()), out.value

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: torch.Tensor, deterministic: bool = False):
        """``(action, state)``: the adaptation state (context) passes through unchanged."""
        dist, _ = self.distribution(obs, state)
        action = dist.mean if deterministic else dist.sample()
        return action, state

    def command(self, obs: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Deterministic command in physical units: what the exported policy graph computes."""
        mean = self(obs, context).mean
        return torch.clamp(mean, -1.0, 1.0) * self.action_scale

    def encode_commands(self, obs, command, reward, next_obs, mask) -> torch.Tensor:
        """Context from transitions whose actions are physical commands: what the adapt graph computes."""
        return self.encode(obs, command / self.action_scale, reward, next_obs, mask)
