"""How context PPO acts in a trial, and the transition windows its encoder reads.

:class:`ContextTrials` is the policy a sampler runs for context PPO: on each task it starts from the
prior context and, before every later episode, re-infers the context from the most recent
``buffer_size`` transitions, exactly as the robot does with the exported adapt graph. The learner
rebuilds the same windows from the collected :class:`~metarl_robot.sampling.Episode` records with
:func:`trial_windows` (both go through :func:`transition_window`), so the contexts the update
recomputes with gradients are the ones the episodes were collected with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metarl_robot.policies import ContextPolicy
from metarl_robot.sampling import BasePolicy, Episode
from metarl_robot.tasks import TaskSpec


def empty_window(n: int, size: int, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """``n`` transition windows of ``size`` slots with mask 0: the encoder's input for the prior."""
    return {
        "obs": np.zeros((n, size, obs_dim), np.float32),
        "action": np.zeros((n, size, act_dim), np.float32),
        "reward": np.zeros((n, size, 1), np.float32),
        "next_obs": np.zeros((n, size, obs_dim), np.float32),
        "mask": np.zeros((n, size), np.float32),
    }


def transition_window(
    obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """One window (``[size, *]`` arrays) of the last ``size`` of the transitions ``[K, *]`` given.

    Actions are clipped to [-1, 1] (what the robot actually executes); unfilled slots have mask 0.
    """
    obs_dim, act_dim = obs.shape[-1], actions.shape[-1]
    out = {k: v[0] for k, v in empty_window(1, size, obs_dim, act_dim).items()}
    k = min(len(obs), size)
    if k:
        out["obs"][:k] = obs[-k:]
        out["action"][:k] = np.clip(actions[-k:], -1.0, 1.0)
        out["reward"][:k, 0] = rewards[-k:]
        out["next_obs"][:k] = next_obs[-k:]
        out["mask"][:k] = 1.0
    return out


def trial_windows(episodes: Sequence[Episode], size: int) -> list[dict[str, np.ndarray]]:
    """The window the encoder read before each of ``episodes`` (in sampler order: each trial's
    episodes consecutive, from ``episode_in_trial`` 0): the trial's transitions before that episode."""
    windows, previous = [], []
    for episode in episodes:
        if episode.episode_in_trial == 0:
            previous = []
        if previous:
            stacked = [np.concatenate([getattr(e, k) for e in previous]) for k in ("obs", "actions", "rewards", "next_obs")]
        else:
            stacked = [np.zeros((0, *episode.obs.shape[1:]), np.float32), np.zeros((0, *episode.actions.shape[1:]), np.float32),
                       np.zeros(0, np.float32), np.zeros((0, *episode.obs.shape[1:]), np.float32)]
        windows.append(transition_window(*stacked, size))
        previous.append(episode)
    return windows


def stack_windows(windows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``[N, size, *]`` arrays of ``N`` windows."""
    return {k: np.stack([w[k] for w in windows]) for k in windows[0]}


def encode_window(policy: ContextPolicy, window: Mapping[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
    """Contexts ``[N, C]`` of windows ``[N, size, *]``."""
    t = {k: torch.as_tensor(v) for k, v in window.items()}
    return policy.encode(t["obs"], t["action"], t["reward"], t["next_obs"], t["mask"])


class ContextTrials(BasePolicy):
    """Context PPO acting on one task as the robot does (see the module docstring).

    ``explore``: actions drawn from the Gaussian with the trial's generator, extras ``log_prob`` and
    ``value``; otherwise the mean action (a DAgger learner). Never reads the task.
    """

    def __init__(self, policy: ContextPolicy, buffer_size: int, *, explore: bool = True) -> None:
        self.policy, self.buffer_size, self.explore = policy, int(buffer_size), bool(explore)

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        self._transitions: list[tuple[np.ndarray, np.ndarray, np.float32, np.ndarray]] = []
        self._context = self._encode()

    def _encode(self) -> torch.Tensor:
        if self._transitions:
            obs, actions, rewards, next_obs = (np.stack(x) for x in zip(*self._transitions))
        else:
            obs = next_obs = np.zeros((0, self.policy.obs_dim), np.float32)
            actions, rewards = np.zeros((0, self.policy.act_dim), np.float32), np.zeros(0, np.float32)
        window = transition_window(obs, actions, rewards, next_obs, self.buffer_size)
        with torch.no_grad():
            return encode_window(self.policy, {k: v[None] for k, v in window.items()})

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        with torch.no_grad():
            dist, value = self.policy.distribution(torch.as_tensor(np.asarray(obs, np.float32)[None]), self._context)
            if self.explore:
                noise = torch.as_tensor(self.rng.standard_normal(self.policy.act_dim, dtype=np.float32))
                action = dist.mean + dist.stddev * noise
            else:
                action = dist.mean
            log_prob = dist.log_prob(action).sum(-1)
        return action[0].numpy(), {"log_prob": log_prob[0].numpy(), "value": value[0].numpy()}

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        item = (np.asarray(obs, np.float32), np.asarray(action, np.float32), np.float32(reward), np.asarray(next_obs, np.float32))
        self._transitions = (self._transitions + [item])[-self.buffer_size :]

    def end_episode(self) -> None:
        self._context = self._encode()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__getstate__().items() if k not in ("_transitions", "_context")}
