"""Warm start of RL² from a teacher that knows no more than the learner.

A policy trained to imitate a demonstrator that is told the task (an object's mass and fragility)
learns to act as if it knew them, and so never learns to find out. The teacher here is a controller
of the runtime :class:`~metarl_robot.runtime.Controller` protocol that is **never told the task**: it
reads the same observations and rewards the learner reads, carries its own memory across the attempts
of a trial and adapts between them (e.g. the classical grip-force feedback controllers of
``sim.grasp_baselines``). Its trials are cloned into the recurrent policy (teacher forcing over whole
trials, the previous command, reward and done flag fed back as the robot does), the critic is fitted
to the trials' discounted returns, and PPO then improves on the teacher from its own experience.

Policies on a skill (:mod:`metarl_robot.skills`) learn the skill's action that reproduces the teacher's
command (:meth:`~metarl_robot.skills.GraspForceSkill.imitation_labels`); plain policies learn the
teacher's command divided by the action scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metarl_robot.algos.common.teacher import DaggerTrials, TeacherTrials, teacher_labels
from metarl_robot.runtime.advantages import gae

__all__ = ["DaggerTrials", "TeacherTrials", "TeacherWarmStartConfig", "clone", "imitation_loss", "imitation_targets", "teacher_tensors"]


@dataclasses.dataclass(frozen=True)
class TeacherWarmStartConfig:
    teacher: str = ""
    """``module:Class`` of a Controller-protocol teacher, built as ``Class(interface, **teacher_kwargs)``;
    it is never told the task. Empty: no warm start."""
    teacher_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    rounds: int = 0
    """Batches of teacher trials (``trials_per_iteration`` each) to clone before PPO; 0 = no warm start."""
    epochs: int = 200
    """Passes over the teacher's trials."""
    dagger_iterations: int = 0
    """DAgger rounds after the first cloning: the learner acts, the teacher (following along, never
    told the task) labels every step, and the learner is refitted on everything gathered so far."""
    dagger_rounds: int = 4
    """Batches of learner trials per DAgger round."""
    dagger_epochs: int = 50
    """Passes over the gathered trials after each DAgger round."""
    lr: float = 2e-3
    minibatches: int = 4

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.epochs < 0 or self.minibatches < 1 or not self.lr > 0 or min(
                self.dagger_iterations, self.dagger_rounds, self.dagger_epochs) < 0:
            raise ValueError("warm_start: rounds and epochs must be >= 0, minibatches >= 1 and lr > 0")
        if self.rounds and not self.teacher:
            raise ValueError("warm_start.rounds > 0 needs warm_start.teacher ('module:Class' of a controller)")


def imitation_targets(policy, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [N, L, A], weights [N, L, A])`` for trials in ``batch`` whose extra ``teacher_command``
    holds the teacher's physical command at every step (what was really sent is ``batch.actions``)."""
    commands = torch.as_tensor(batch.extras["teacher_command"])
    sent_before = torch.as_tensor(batch.prev_actions) * policy.action_scale
    labels = torch.zeros_like(commands)
    weights = torch.zeros_like(commands)
    for i in range(batch.num_trials):
        steps = torch.as_tensor(np.flatnonzero(batch.valid[i] > 0))
        lab, w = teacher_labels(policy, torch.as_tensor(batch.obs[i, steps]), commands[i, steps], sent_before[i, steps])
        labels[i, steps], weights[i, steps] = lab, w
    return labels, weights


def teacher_tensors(algo, batch) -> dict[str, torch.Tensor]:
    """The teacher trials as the update reads them, with their imitation targets."""
    t = algo._tensors(batch)
    labels, weights = imitation_targets(algo.policy, batch)
    t["labels"], t["weights"] = labels, weights * t["valid"].unsqueeze(-1)
    return t


def imitation_loss(algo, t: Mapping[str, torch.Tensor], rows: int) -> torch.Tensor:
    """Weighted squared error of the actor's mean against the teacher's actions on ``rows`` random
    teacher trials (teacher forcing from the zero state)."""
    policy = algo.policy
    pick = torch.randperm(t["obs"].shape[0])[: max(1, rows)]
    features, _ = algo._unroll(t, pick, slice(None), policy.initial_state(len(pick)))
    w = t["weights"][pick]
    return (((policy.actor(features) - t["labels"][pick]) ** 2) * w).sum() / w.sum().clamp(min=1.0)


def clone(algo, batch, epochs: int | None = None, update_normalizers: bool = True) -> dict[str, float]:
    """Fit the actor's mean to the teacher's actions and the critic to the trials' discounted returns
    (teacher forcing over whole trials); returns the final losses."""
    cfg = algo.config.warm_start
    policy = algo.policy
    if update_normalizers:
        policy.obs_norm.update(torch.as_tensor(batch.obs)[torch.as_tensor(batch.valid) > 0])
    t = algo._tensors(batch)
    if algo.privileged_keys and update_normalizers:
        policy.privileged_norm.update(t["privileged"])
    labels, weights = imitation_targets(policy, batch)
    weights = weights * t["valid"].unsqueeze(-1)
    ppo = algo.config.ppo
    rewards = batch.rewards * ppo.reward_scale
    returns = torch.as_tensor(gae(rewards, np.zeros_like(rewards), batch.valid, ppo.gamma, 1.0), dtype=torch.float32)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    n = batch.num_trials
    out = {}
    for _ in range(cfg.epochs if epochs is None else epochs):
        for rows in torch.randperm(n).chunk(cfg.minibatches):
            features, _ = algo._unroll(t, rows, slice(None), policy.initial_state(len(rows)))
            mean = policy.actor(features)
            w = weights[rows]
            bc = (((mean - labels[rows]) ** 2) * w).sum() / w.sum().clamp(min=1.0)
            privileged = t["privileged"][rows].unsqueeze(1).expand(-1, features.shape[1], -1) if algo.privileged_keys else None
            value = policy.value(features if ppo.value_through_core else features.detach(), privileged)
            m = t["valid"][rows]
            value_loss = (((value - returns[rows]) ** 2) * m).sum() / m.sum().clamp(min=1.0)
            loss = bc + ppo.value_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), ppo.max_grad_norm)
            optimizer.step()
            out = {"warm_start/imitation_loss": float(bc.detach()), "warm_start/value_loss": float(value_loss.detach())}
    return out
