"""How a gradient method acts in a trial: independent episodes of the Gaussian policy at adapted parameters.

A trial is one task: ``episodes`` episodes with the adapted parameters ``phi`` the request carries in
``options["params"]`` (the initial parameters when absent). Sampling runs in numpy, with the trial's
generator: a step of a 64x64 MLP costs microseconds here against about a hundred in PyTorch, which
matters when 20 tasks x 20 episodes x 100 steps are collected twice per iteration. The learner
recomputes log-probabilities in PyTorch from the recorded actions, so nothing in the update depends
on this copy of the forward pass beyond the actions it drew; ``tests/test_gradient_meta.py`` holds
its means equal to :meth:`GradientPolicy.mean_log_std`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metarl_robot.gradient_policy import GradientPolicy
from metarl_robot.sampling import BasePolicy
from metarl_robot.tasks import TaskSpec


class GaussianActor:
    """The forward pass of a :class:`GradientPolicy` in numpy (float32), frozen at its current
    observation statistics and, for CAVIA, its current weights."""

    def __init__(self, policy: GradientPolicy) -> None:
        norm = policy.obs_norm
        self.normalize = bool(policy.config.normalize_observations)
        self.obs_mean = norm.mean.to(torch.float32).numpy().copy()
        self.obs_std = torch.sqrt(norm.var.to(torch.float32) + 1e-8).numpy().copy()
        self.obs_clip = np.float32(norm.clip)
        self.layer_shapes = [tuple(w) for w, _ in policy.layer_shapes]
        self.act_dim = policy.act_dim
        self.relu = policy.config.activation == "relu"
        self.weights = policy.weights.detach().numpy().copy() if policy.adapts_context else None
        self.initial_params = policy.initial_adapted().detach().numpy().copy()

    def layers(self, params: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """``([(W^T, b), ...], log_std)`` at adapted parameters ``params``."""
        flat = np.asarray(self.weights if self.weights is not None else params, np.float32)
        layers, i = [], 0
        for rows, cols in self.layer_shapes:
            w = flat[i : i + rows * cols].reshape(rows, cols)
            layers.append((np.ascontiguousarray(w.T), flat[i + rows * cols : i + rows * cols + rows]))
            i += rows * cols + rows
        return layers, flat[i : i + self.act_dim]

    def mean(self, layers: list[tuple[np.ndarray, np.ndarray]], params: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Mean action (normalised units) for raw observations ``obs [..., obs_dim]``."""
        x = np.asarray(obs, np.float32)
        if self.normalize:
            x = np.clip((x - self.obs_mean) / self.obs_std, -self.obs_clip, self.obs_clip)
        if self.weights is not None:
            context = np.broadcast_to(np.asarray(params, np.float32), (*x.shape[:-1], len(params)))
            x = np.concatenate([x, context], axis=-1)
        for j, (w_t, b) in enumerate(layers):
            x = x @ w_t + b
            if j < len(layers) - 1:
                x = np.maximum(x, 0.0) if self.relu else np.tanh(x)
        return x


class GradientTrials(BasePolicy):
    """Episodes of the Gaussian policy at ``options["params"]``: sampled with the trial's generator
    (``explore``) or its mean (a DAgger learner). Never reads the task.

    A policy on a motion skill acts through PyTorch (the skill is PyTorch code): the env receives the
    skill's command divided by the action scale, and the extras ``raw_action`` (the Gaussian sample the
    log-probability is of) and ``prev_command`` (the command sent the step before, zeros at an
    episode's start) are what the learner recomputes the policy from."""

    def __init__(self, policy: GradientPolicy, *, explore: bool = True) -> None:
        self.actor, self.explore = GaussianActor(policy), bool(explore)
        self.policy = policy if policy.skill is not None else None

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        self._params = np.asarray(options.get("params", self.actor.initial_params), np.float32)
        self._layers, log_std = self.actor.layers(self._params)
        self._std = np.exp(log_std)
        if self.policy is not None:
            self._params_t = torch.as_tensor(self._params)
            self._prev = np.zeros(self.policy.act_dim, np.float32)
            self._command = self._prev

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        if self.policy is not None:
            return self._act_on_skill(obs)
        mean = self.actor.mean(self._layers, self._params, obs)
        if not self.explore:
            return mean, {}
        return (mean + self._std * self.rng.standard_normal(mean.shape, dtype=np.float32)).astype(np.float32), {}

    def _act_on_skill(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        p = self.policy
        with torch.no_grad():
            inputs = p.policy_inputs(torch.as_tensor(np.asarray(obs, np.float32).reshape(1, p.obs_dim)),
                                     torch.as_tensor(self._prev[None]))
            mean, log_std = p.mean_log_std(self._params_t, inputs)
            raw = mean
            if self.explore:
                noise = torch.as_tensor(self.rng.standard_normal(p.act_dim, dtype=np.float32))
                raw = mean + torch.exp(log_std) * noise
            command = p.to_command(inputs, raw)[0].numpy()
        self._command = command
        return command / p.action_scale.numpy(), {"raw_action": raw[0].numpy(), "prev_command": self._prev.copy()}

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        if self.policy is not None:
            self._prev = self._command

    def end_episode(self) -> None:
        if self.policy is not None:
            self._prev = np.zeros(self.policy.act_dim, np.float32)

    def __getstate__(self) -> dict[str, Any]:
        trial = ("_params", "_layers", "_std", "_params_t", "_prev", "_command")
        return {k: v for k, v in super().__getstate__().items() if k not in trial}
