"""Improving on the teacher by keeping the best of several tries: self-imitation with exploration.

A clone of a teacher that is never told the task (:mod:`.teacher`) can at best do what the teacher
does. PPO from the clone did not move it on the grasp suite at the budgets this machine allows, and
DAgger only pulls the clone back towards the teacher. This update improves on both from outcomes alone:

1. Each iteration draws ``trials_per_iteration`` train tasks and fixes the env's reset seeds of every
   episode of each trial, so every candidate below meets the same object poses and noise.
2. On each task it runs ``improve.samples`` trials of the current policy with exploration noise
   (:func:`exploring_trials`: the policy's mean plus Gaussian noise, carried through the memory as on
   the robot) and, with ``include_teacher``, one trial of the teacher itself.
3. It keeps, per task, the candidate trial with the most successful attempts (ties: the higher return;
   then the learner's over the teacher's), and puts it into a buffer of the ``buffer_trials`` most
   recent kept trials (which starts as the warm start's teacher trials, or ``seed_rounds`` fresh
   teacher rounds on a resumed run).
4. It clones the buffer (:func:`~metarl_robot.algos.rl2.teacher.clone`, teacher forcing over whole
   trials) for ``epochs`` passes.

Every candidate acts only on what the learner observes: the selection uses a trial's outcome, which
is the reward the learner is trained on, never the task's parameters. Selecting the best of several
noisy trials per task and imitating it is a policy improvement step (reward-filtered imitation, as in
expert iteration); keeping the teacher as a candidate keeps the clone from drifting below it where
exploration finds nothing better.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from metarl_robot.algos.rl2.rollout import RL2Trials
from metarl_robot.sampling import Episode


@dataclasses.dataclass(frozen=True)
class ImproveConfig:
    samples: int = 0
    """Exploring learner trials per task per iteration; 0 = iterations are PPO updates instead."""
    include_teacher: bool = True
    """The warm start's teacher also runs each task (same reset seeds) and is a candidate."""
    noise_std: float = 0.0
    """Standard deviation of the exploration noise on the normalised action; 0 = the policy's own."""
    buffer_trials: int = 1024
    """Kept trials cloned each iteration (the most recent ones)."""
    seed_rounds: int = 4
    """Teacher rounds that fill an empty buffer (a run resumed from a warm-start-only checkpoint)."""
    epochs: int = 2
    """Passes over the buffer after each iteration (``warm_start.minibatches`` and ``warm_start.lr``)."""

    def __post_init__(self) -> None:
        if min(self.samples, self.seed_rounds, self.epochs) < 0 or self.buffer_trials < 1 or self.noise_std < 0:
            raise ValueError("improve: samples, seed_rounds and epochs must be >= 0, buffer_trials >= 1, noise_std >= 0")


def exploring_trials(policy, *, noise_std: float = 0.0) -> RL2Trials:
    """RL² acting with exploration noise of a chosen size (0 = the policy's own), reporting the command
    it sent as the label to clone (extra ``teacher_command``, as :class:`~.teacher.TeacherTrials` does)."""
    return RL2Trials(policy, explore=True, noise_std=noise_std, report_command=True)


def trial_score(episodes: Sequence[Episode]) -> tuple[int, float]:
    """How a candidate trial ranks: successful attempts first, then the trial's return."""
    return sum(bool(e.succeeded) for e in episodes), float(sum(e.total_reward for e in episodes))


def select_best(candidates: Sequence[Sequence[Sequence[Episode]]]) -> tuple[list[int], list[list[Episode]]]:
    """``candidates[c][i]`` is candidate ``c``'s trial (its episodes) on task ``i``. Returns, per task,
    the index of the kept candidate and its trial: the highest :func:`trial_score`, the lowest index on
    a tie (so put the learner's candidates before the teacher's to prefer them)."""
    if not candidates:
        raise ValueError("select_best needs at least one candidate")
    tasks = len(candidates[0])
    if any(len(c) != tasks for c in candidates):
        raise ValueError("every candidate must have one trial per task")
    chosen, kept = [], []
    for i in range(tasks):
        scores = [trial_score(c[i]) for c in candidates]
        best = max(range(len(candidates)), key=lambda c: (scores[c], -c))
        chosen.append(best)
        kept.append(list(candidates[best][i]))
    return chosen, kept


def group_trials(episodes: Sequence[Episode], episodes_per_trial: int, num_trials: int) -> list[list[Episode]]:
    """The sampler's episodes as ``num_trials`` trials, trial ``j`` holding request ``j``'s episodes in order."""
    trials: list[list[Episode]] = [[] for _ in range(num_trials)]
    for episode in episodes:
        trials[episode.request_index].append(episode)
    for trial in trials:
        trial.sort(key=lambda e: e.episode_in_trial)
        if len(trial) != episodes_per_trial:
            raise ValueError(f"a trial has {len(trial)} episodes, expected {episodes_per_trial}")
    return trials
