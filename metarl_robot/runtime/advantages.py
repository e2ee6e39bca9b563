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


INNER_LOSSES = ("policy_gradient", "reward_model")
"""What a gradient step descends, and so what it reads per step (``adaptation.inner_loss``;
docs/bundle.md): the policy-gradient loss of the advantages computed here, or a reward model's error on
the rewards themselves."""
MAX_MATRIX_STEPS = 2048
"""Episodes up to this long sum discounted tails with one cached ``[T, T]`` matrix product (32 MB at
most in float64); longer ones with a loop over steps."""
_TAIL_MATRICES: dict[tuple[int, float], np.ndarray] = {}


def _tail_matrix(steps: int, factor: float) -> np.ndarray:
    """``M [T, T]`` with ``M[k, t] = factor**(k - t)`` for ``k >= t``, else 0: ``x @ M`` is the
    discounted sum of each row's tail, ``sum_{k >= t} factor**(k - t) x[k]`` (one per (T, factor), kept)."""
    key = (steps, float(factor))
    matrix = _TAIL_MATRICES.get(key)
    if matrix is None:
        lag = np.arange(steps)[:, None] - np.arange(steps)[None, :]
        matrix = np.where(lag >= 0, float(factor) ** np.maximum(lag, 0), 0.0)  # 0**0 = 1: factor 0 is the identity
        if len(_TAIL_MATRICES) >= 8:
            _TAIL_MATRICES.clear()
        _TAIL_MATRICES[key] = matrix
    return matrix


def discounted_tails(values: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    """``sum_{k >= t} factor**(k - t) values[:, k]`` over the valid steps of episodes ``[N, T]`` whose
    valid steps (``mask`` 1) come first; 0 on invalid steps. Float64."""
    values = np.asarray(values, np.float64) * mask
    steps = values.shape[1]
    if steps <= MAX_MATRIX_STEPS:
        return (values @ _tail_matrix(steps, factor)) * mask
    out = np.zeros_like(values)
    running = np.zeros(values.shape[0])
    for t in range(steps - 1, -1, -1):
        running = values[:, t] + factor * running * mask[:, t]
        out[:, t] = running
    return out * mask


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """Reward-to-go ``[N, T]`` of episodes ``[N, T]`` whose valid steps (``mask`` 1) come first."""
    return discounted_tails(rewards, np.asarray(mask, np.float64), gamma)


def baseline_features(obs: np.ndarray) -> np.ndarray:
    """Regression features ``[N, T, 2*obs_dim + 4]`` of observations ``[N, T, obs_dim]``."""
    obs = np.asarray(obs)
    n, t, d = obs.shape
    out = np.empty((n, t, 2 * d + 4))
    np.clip(obs, -10.0, 10.0, out=out[..., :d])
    np.square(out[..., :d], out=out[..., d : 2 * d])
    time = np.arange(t, dtype=np.float64) / 100.0
    out[..., 2 * d] = time
    out[..., 2 * d + 1] = time**2
    out[..., 2 * d + 2] = time**3
    out[..., 2 * d + 3] = 1.0
    return out


def linear_feature_baseline(obs: np.ndarray, returns: np.ndarray, mask: np.ndarray, ridge: float = 1e-5) -> np.ndarray:
    """Value estimates ``[N, T]`` from a ridge regression of ``returns`` on :func:`baseline_features`;
    zeros (no baseline) when the batch has no more valid steps than the regression has features."""
    features = baseline_features(obs)
    weight = np.asarray(mask, np.float64)
    if not weight.sum() > features.shape[-1]:
        # A regression with as many unknowns as samples interpolates the returns: the advantages left
        # would be rounding noise, which normalisation scales up to unit size.
        return np.zeros(np.shape(returns))
    x = features.reshape(-1, features.shape[-1])
    masked = x * weight.reshape(-1, 1)  # invalid rows drop out of the normal equations
    gram, target = masked.T @ x, masked.T @ np.asarray(returns, np.float64).reshape(-1)
    eye = np.eye(gram.shape[0])
    try:  # well posed with the ridge as a rule: one solve and one step of iterative refinement
        normal = gram + ridge * eye
        coef = np.linalg.solve(normal, target)
        coef += np.linalg.solve(normal, target - normal @ coef)
    except np.linalg.LinAlgError:
        coef = np.full(gram.shape[0], np.nan)
    while not np.isfinite(coef).all() and ridge < 1e6:
        coef = np.linalg.lstsq(gram + ridge * eye, target, rcond=None)[0]
        ridge *= 10.0
    return (features @ coef) * weight


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
    return discounted_tails(deltas, mask, gamma * lam)


def compute_advantages(
    obs: np.ndarray, rewards: np.ndarray, mask: np.ndarray, config: AdvantageConfig = AdvantageConfig()
) -> np.ndarray:
    """Float32 advantages ``[N, T]`` (0 on invalid steps) of episodes ``obs [N, T, D]``, ``rewards [N, T]``."""
    return advantages_float64(obs, rewards, mask, config).astype(np.float32)


def advantages_float64(
    obs: np.ndarray, rewards: np.ndarray, mask: np.ndarray, config: AdvantageConfig = AdvantageConfig()
) -> np.ndarray:
    """:func:`compute_advantages` before its rounding to float32 (what a float64 adapt graph feeds its step)."""
    mask = np.asarray(mask, np.float64)
    rewards = np.asarray(rewards, np.float64)
    returns = discounted_returns(rewards, mask, config.gamma)
    values = linear_feature_baseline(obs, returns, mask, config.baseline_ridge)
    advantages = gae(rewards, values, mask, config.gamma, config.gae_lambda)
    if config.normalize and mask.sum() > 1:
        valid = mask > 0
        mean, std = advantages[valid].mean(), advantages[valid].std()
        advantages = (advantages - mean) / (std + 1e-8) * mask
    return advantages
