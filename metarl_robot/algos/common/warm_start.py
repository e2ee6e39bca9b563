"""Warm start by imitation, then DAgger: one implementation for every method.

A demonstrator that is told the task (``module:function(obs[N, D], tasks) -> actions[N, A]``, in
normalised units) labels every state a trial reaches. Round 0 lets the demonstrator act; each of the
``dagger_iterations`` rounds after it lets the learner act, as it would on the robot, and the
demonstrator labels the states the learner reaches, so the clone learns to recover from its own
mistakes. After each round the method imitates all labels gathered so far (:func:`run_dagger`'s
``imitate``): what is trained, and how, is the method's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from metarl_robot.algos.common.tasks import resolve
from metarl_robot.sampling import BasePolicy, Episode, EpisodePolicy
from metarl_robot.tasks import TaskSpec


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    demonstrator: str = ""
    """``module:function(obs[N, D], tasks) -> actions[N, A]`` (normalised); empty = no warm start."""
    rounds: int = 0
    """Demonstration rounds per DAgger iteration, each one trial on each of an iteration's train tasks."""
    epochs: int = 100
    """Imitation passes over the labelled states after each DAgger iteration."""
    lr: float = 1e-3
    dagger_iterations: int = 0
    """DAgger rounds after the first cloning: the learner acts, the demonstrator labels its states."""

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.epochs < 0 or self.dagger_iterations < 0 or not self.lr > 0:
            raise ValueError("rounds, epochs and dagger_iterations must be >= 0 and lr > 0")
        if self.rounds and not self.demonstrator:
            raise ValueError("warm_start.rounds > 0 needs warm_start.demonstrator ('module:function')")


class DemonstratorLabels(BasePolicy):
    """A trial whose every state the demonstrator labels with its action (extra ``"label"``, clipped to
    [-1, 1]). The demonstrator acts too, unless a ``learner`` trial policy is given (DAgger): then the
    learner acts, adapts and is never told the task. The demonstrator is named by reference, so the
    trial pickles and the workers import it."""

    def __init__(self, demonstrator: str, learner: EpisodePolicy | None = None) -> None:
        self.demonstrator, self.learner = demonstrator, learner
        self._demonstrate: Callable[..., Any] | None = None

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        if self._demonstrate is None:
            self._demonstrate = resolve(self.demonstrator)
        if self.learner is not None:
            self.learner.reset(task, rng, options)

    def act(self, obs: Any) -> tuple[Any, Mapping[str, np.ndarray]]:
        label = np.clip(np.asarray(self._demonstrate(np.asarray(obs)[None], [self.task]))[0], -1.0, 1.0).astype(np.float32)
        action = label if self.learner is None else self.learner.act(obs)[0]
        return action, {"label": label}

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        if self.learner is not None:
            self.learner.observe(obs, action, reward, next_obs, done)

    def end_episode(self) -> None:
        if self.learner is not None:
            self.learner.end_episode()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_demonstrate": None}


def run_dagger(
    config: WarmStartConfig,
    collect: Callable[[bool], list[Episode]],
    imitate: Callable[[list[Episode], bool], float],
) -> dict[str, float]:
    """Demonstrate, then ``config.dagger_iterations`` DAgger iterations; returns the warm-start metrics.

    ``collect(learner_acts)`` runs one round of labelled trials (:class:`DemonstratorLabels`) and
    returns its episodes in sampler order; ``imitate(episodes, first)`` trains on every labelled
    episode so far (``first``: only the demonstrator's yet) and returns the final imitation loss.
    Metrics: ``warm_start/{demonstrator|learner_i}_success`` (and ``..._success_episode_k`` per
    episode of a trial), ``warm_start/imitation_loss`` and ``warm_start/transitions``.
    """
    data: list[Episode] = []
    metrics: dict[str, float] = {}
    for iteration in range(config.dagger_iterations + 1):
        name = f"learner_{iteration}" if iteration else "demonstrator"
        episodes = [episode for _ in range(config.rounds) for episode in collect(iteration > 0)]
        metrics[f"warm_start/{name}_success"] = float(np.mean([e.succeeded for e in episodes]))
        for k in sorted({e.episode_in_trial for e in episodes}):
            outcomes = [e.succeeded for e in episodes if e.episode_in_trial == k]
            metrics[f"warm_start/{name}_success_episode_{k}"] = float(np.mean(outcomes))
        data += episodes
        metrics["warm_start/imitation_loss"] = imitate(data, iteration == 0)
    metrics["warm_start/transitions"] = float(sum(e.length for e in data))
    return metrics
