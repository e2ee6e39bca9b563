"""Advantages for a policy-gradient adaptation step, computed from episodes the robot collected.

Numpy only: the robot computes the advantages it feeds the exported adaptation graph with exactly the
code that meta-training used, so adaptation on the robot is the adaptation the policy was trained for.

The baseline is the linear feature baseline of Duan et al. (2016), which MAML used: per batch, a
ridge regression of the discounted return on ``[obs, obs^2, t, t^2, t^3, 1]`` (``t`` = step/100,
observations clipped to +-10), refitted for every adaptation batch. Advantages use GAE (:func:`gae`,
which meta-training's critics use too) and are normalised to zero mean, unit variance over the valid
steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: discounted return minus baseline, as in MAML)."""
    normalize: bool = True
    """Scale advantages to zero mean and unit variance over the batch's valid steps."""
    baseline_ridge: float = 1e-5
    """Initial ridge coefficient of the baseline regression (raised tenfold until it is well posed)."""

    @classmethod
    def from_mapping(cls, section: "Mapping[str, Any]") -> "AdvantageConfig":
        """The config a manifest's ``adaptation.advantages`` section states (every field required)."""
        return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gamma must be in (0, 1] and gae_lambda in [0, 1], got {self.gamma}, {self.gae_lambda}")
        if not self.baseline_ridge > 0:
            raise ValueError(f"baseline_ridge must be positive, got {self.baseline_ridge}")


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """Reward-to-go ``[N, T]`` of episodes ``[N, T]`` whose valid steps (``mask`` 1) come first."""
    rewards = np.asarray(rewards, np.float64) * mask
    out = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def baseline_features(obs: np.ndarray) -> np.ndarray:
    """Regression features ``[N, T, 2*obs_dim + 4]`` of observations ``[N, T, obs_dim]``."""
    obs = np.clip(np.asarray(obs, np.float64), -10.0, 10.0)
    n, t = obs.shape[:2]
    time = np.broadcast_to((np.arange(t, dtype=np.float64) / 100.0)[None, :, None], (n, t, 1))
    return np.concatenate([obs, obs**2, time, time**2, time**3, np.ones((n, t, 1))], axis=-1)


def linear_feature_baseline(obs: np.ndarray, returns: np.ndarray, mask: np.ndarray, ridge: float = 1e-5) -> np.ndarray:
    """Value estimates ``[N, T]`` from a ridge regression of ``returns`` on :func:`baseline_features`."""
    features = baseline_features(obs)
    valid = np.asarray(mask, bool)
    x, y = features[valid], np.asarray(returns, np.float64)[valid]
    if len(y) == 0:
        return np.zeros(np.shape(returns))
    gram, target = x.T @ x, x.T @ y
    eye = np.eye(gram.shape[0])
    coef = np.zeros(gram.shape[0])
    for _ in range(5):
        coef = np.linalg.lstsq(gram + ridge * eye, target, rcond=None)[0]
        if np.isfinite(coef).all():
            break
        ridge *= 10.0
    return (features @ coef) * valid


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates ``[N, T]`` (float64, 0 on invalid steps) of episodes ``[N, T]``
    whose valid steps (``mask`` 1) come first, given value estimates ``values [N, T]``.

    An episode ends at its last valid step without bootstrapping. The one GAE of the project: the
    robot's adaptation step (with the linear baseline's values) and meta-training's critics use it.
    """
    mask = np.asarray(mask, np.float64)
    rewards, values = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
    next_values = np.concatenate([values[:, 1:] * mask[:, 1:], np.zeros((values.shape[0], 1))], axis=1)
    deltas = (rewards + gamma * next_values - values) * mask
    advantages = np.zeros_like(deltas)
    running = np.zeros(deltas.shape[0])
    for t in range(deltas.shape[1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * running * mask[:, t]
        advantages[:, t] = running
    return advantages * mask


def compute_advantages(
    obs: np.ndarray, rewards: np.ndarray, mask: np.ndarray, config: AdvantageConfig = AdvantageConfig()
) -> np.ndarray:
    """Float32 advantages ``[N, T]`` (0 on invalid steps) of episodes ``obs [N, T, D]``, ``rewards [N, T]``."""
    mask = np.asarray(mask, np.float64)
    rewards = np.asarray(rewards, np.float64)
    returns = discounted_returns(rewards, mask, config.gamma)
    values = linear_feature_baseline(obs, returns, mask, config.baseline_ridge)
    advantages = gae(rewards, values, mask, config.gamma, config.gae_lambda)
    if config.normalize and mask.sum() > 1:
        valid = mask > 0
        mean, std = advantages[valid].mean(), advantages[valid].std()
        advantages = (advantages - mean) / (std + 1e-8) * mask
    return advantages.astype(np.float32)
