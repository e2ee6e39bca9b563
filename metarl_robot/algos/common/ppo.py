"""The PPO configuration every method shares: one definition of the clipped-surrogate optimiser.

:class:`PPOConfig` is what any clipped-surrogate update needs (multi-task PPO, MAML-PPO, CAVIA and
Meta-SGD with ``outer: ppo``). A method that adds losses or its own schedule extends it in its own
config module (context PPO's actor-critic terms, ProMP's KL penalty) instead of copying it, so the
shared keys mean the same thing, with the same checks, under every method's ``ppo:`` section.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    lr: float = 3e-4
    """Adam learning rate of what the update trains."""
    epochs: int = 5
    """Passes over each iteration's data."""
    clip_ratio: float = 0.2
    """The probability ratio is clipped to [1 - clip_ratio, 1 + clip_ratio] in the surrogate."""
    max_grad_norm: float = 0.5
    """Gradients are clipped to this global norm before each optimiser step."""

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.epochs < 1 or not self.clip_ratio > 0 or not self.max_grad_norm > 0:
            raise ValueError("lr > 0, epochs >= 1, clip_ratio > 0 and max_grad_norm > 0 are required")


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_ratio: float) -> torch.Tensor:
    """PPO's per-sample objective (to maximise): ``min(r A, clip(r, 1 - c, 1 + c) A)`` with ``r =
    exp(log_ratio)``, the new policy's probability over the one that collected the sample. Past the clip
    in the direction the advantage favours, the sample gives no gradient."""
    ratio = log_ratio.exp()
    return torch.min(ratio * advantages, ratio.clamp(1 - clip_ratio, 1 + clip_ratio) * advantages)


def approx_kl_terms(log_ratio: torch.Tensor) -> torch.Tensor:
    """Per-sample terms of the KL estimate ``(r - 1) - log r`` (non-negative, zero where r = 1)."""
    return (log_ratio.exp() - 1) - log_ratio


def actor_critic_loss(
    policy_loss: torch.Tensor, value_loss: torch.Tensor, entropy: torch.Tensor, value_coef: float, entropy_coef: float
) -> torch.Tensor:
    """The loss an actor-critic PPO step descends: the policy loss, plus the weighted value error,
    minus the weighted entropy (a bonus: higher entropy lowers the loss)."""
    return policy_loss + value_coef * value_loss - entropy_coef * entropy
