"""How RL² acts in a trial, and the trial arrays its update reads.

:class:`RL2Trials` is the policy a sampler runs: on each task it starts from the zero state and carries
the recurrent state across every episode of the trial, feeding the previous command, reward and done
flag back exactly as the robot's controller does. :func:`trial_batch` lays the sampler's episodes out
as whole trials, padded and batch-major, with the previous-step inputs shifted into place, so the
update unrolls the core over the very sequences the episodes were collected with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metarl_robot.recurrent_policy import RecurrentPolicy
from metarl_robot.sampling import BasePolicy, Episode
from metarl_robot.tasks import TaskSpec


class RL2Trials(BasePolicy):
    """RL² on one task as the robot runs it (see the module docstring). Never reads the task.

    ``act`` returns the clipped normalised action (what the robot executes) and the extra
    ``raw_action``, the unclipped Gaussian sample whose log-probability PPO needs. ``explore=False``
    acts with the mean.
    """

    def __init__(self, policy: RecurrentPolicy, *, explore: bool = True, noise_std: float = 0.0,
                 report_command: bool = False) -> None:
        self.policy, self.explore = policy, bool(explore)
        self.noise_std = float(noise_std)
        """Exploration noise on the normalised action; 0 = the policy's own standard deviation."""
        self.report_command = bool(report_command)
        """Also return the physical command sent as the extra ``teacher_command`` (the label to clone)."""

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        p = self.policy
        self._state = p.initial_state(1)
        self._prev_command = torch.zeros(1, p.act_dim)
        self._prev_reward = torch.zeros(1, 1)
        self._prev_done = torch.zeros(1, 1)
        self._command = torch.zeros(1, p.act_dim)

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        p = self.policy
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs, np.float32).reshape(1, p.obs_dim))
            features, self._state = p.step(obs_t, self._prev_command, self._prev_reward, self._prev_done, self._state)
            dist = p.distribution(features)
            if self.explore:
                noise = torch.as_tensor(self.rng.standard_normal(p.act_dim, dtype=np.float32))
                raw = dist.mean + (dist.stddev if self.noise_std <= 0 else self.noise_std) * noise
            else:
                raw = dist.mean
            self._command = p.to_command(obs_t, torch.clamp(raw, -1.0, 1.0), self._prev_command)
            # What the env executes: the command in its normalised units (the skill's command, if any).
            action = self._command / p.action_scale
        extras = {"raw_action": raw[0].numpy()}
        if self.report_command:
            extras["teacher_command"] = self._command[0].numpy().copy()
        return action[0].numpy(), extras

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        self._prev_command = self._command
        self._prev_reward = torch.full((1, 1), float(reward))
        self._prev_done = torch.full((1, 1), float(bool(done)))

    def end_episode(self) -> None:
        """An episode of the trial ended: the memory carries into the next one (nothing to do)."""

    def __getstate__(self) -> dict[str, Any]:
        trial = ("_state", "_prev_command", "_prev_reward", "_prev_done", "_command")
        return {k: v for k, v in super().__getstate__().items() if k not in trial}


def privileged_keys(task: TaskSpec) -> tuple[str, ...]:
    """The task parameters an asymmetric critic reads: the numeric ones, in sorted order."""
    return tuple(sorted(k for k, v in task.params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)))


def privileged_vector(task: TaskSpec, keys: Sequence[str]) -> np.ndarray:
    """The task's values of ``keys`` (0 where a task lacks one) as float32."""
    return np.array([float(task.params.get(k, 0.0)) for k in keys], dtype=np.float32)


@dataclasses.dataclass
class TrialBatch:
    """``N`` trials side by side, batch-major and padded to the longest ``L`` steps.

    ``obs [N, L, D]``; ``actions`` (clipped, normalised) and ``raw_actions`` (the Gaussian samples)
    ``[N, L, A]``; ``rewards``, ``valid`` ``[N, L]``; the core's previous-step inputs ``prev_actions [N, L, A]``
    (normalised from the command sent), ``prev_rewards`` and ``prev_dones`` ``[N, L, 1]``, zero at a trial's
    first step; ``episode [N, L]`` the episode of the trial each step belongs to (-1 on padding).
    """

    obs: np.ndarray
    actions: np.ndarray
    raw_actions: np.ndarray
    rewards: np.ndarray
    valid: np.ndarray
    prev_actions: np.ndarray
    prev_rewards: np.ndarray
    prev_dones: np.ndarray
    episode: np.ndarray
    success: np.ndarray
    """Outcome ``[N, E]`` of each episode of each trial."""
    episode_returns: np.ndarray
    """Return ``[N, E]`` of each episode of each trial."""
    tasks: list[TaskSpec]
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Per-step extras the trial policy returned besides ``raw_action`` (e.g. a teacher's command), ``[N, L, *]``."""

    @property
    def num_trials(self) -> int:
        return self.obs.shape[0]


def trial_batch(episodes: Sequence[Episode], episodes_per_trial: int) -> TrialBatch:
    """Group the sampler's episodes (ordered by request, then episode) into whole trials."""
    trials: dict[int, list[Episode]] = {}
    for episode in episodes:
        trials.setdefault(episode.request_index, []).append(episode)
    groups = [sorted(trials[i], key=lambda e: e.episode_in_trial) for i in sorted(trials)]
    if any(len(g) != episodes_per_trial for g in groups):
        raise ValueError(f"every trial must have {episodes_per_trial} episodes, got {[len(g) for g in groups]}")
    n, length = len(groups), max(sum(e.length for e in g) for g in groups)
    first = episodes[0]
    obs_dim, act_dim = first.obs.shape[-1], first.extras["raw_action"].shape[-1]
    out = {
        "obs": np.zeros((n, length, obs_dim), np.float32),
        "actions": np.zeros((n, length, act_dim), np.float32),
        "raw_actions": np.zeros((n, length, act_dim), np.float32),
        "rewards": np.zeros((n, length), np.float32),
        "valid": np.zeros((n, length), np.float32),
        "prev_actions": np.zeros((n, length, act_dim), np.float32),
        "prev_rewards": np.zeros((n, length, 1), np.float32),
        "prev_dones": np.zeros((n, length, 1), np.float32),
        "episode": np.full((n, length), -1, np.int64),
    }
    extra_keys = [k for k in first.extras if k != "raw_action"]
    extras = {k: np.zeros((n, length, *np.asarray(first.extras[k]).shape[1:]), np.float32) for k in extra_keys}
    success = np.zeros((n, episodes_per_trial), np.float32)
    returns = np.zeros((n, episodes_per_trial), np.float32)
    for i, group in enumerate(groups):
        t = 0
        for episode in group:
            k, j = episode.length, episode.episode_in_trial
            actions = np.clip(np.asarray(episode.actions, np.float32).reshape(k, act_dim), -1.0, 1.0)
            out["obs"][i, t : t + k] = np.asarray(episode.obs, np.float32).reshape(k, obs_dim)
            out["actions"][i, t : t + k] = actions
            out["raw_actions"][i, t : t + k] = episode.extras["raw_action"].reshape(k, act_dim)
            for key in extra_keys:
                extras[key][i, t : t + k] = episode.extras[key]
            out["rewards"][i, t : t + k] = episode.rewards
            out["valid"][i, t : t + k] = 1.0
            out["episode"][i, t : t + k] = j
            done = np.zeros(k, np.float32)
            done[-1] = 1.0  # the episode ended (terminated, truncated or cut): the next step starts a new one
            # Step t+1 reads step t's action, reward and done flag.
            out["prev_actions"][i, t + 1 : t + k + 1] = actions[: length - t - 1]
            out["prev_rewards"][i, t + 1 : t + k + 1, 0] = episode.rewards[: length - t - 1]
            out["prev_dones"][i, t + 1 : t + k + 1, 0] = done[: length - t - 1]
            success[i, j] = float(episode.succeeded)
            returns[i, j] = episode.total_reward
            t += k
    return TrialBatch(**out, success=success, episode_returns=returns, tasks=[g[0].task for g in groups], extras=extras)
