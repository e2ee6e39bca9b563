"""RL²'s improvement iterations (:mod:`metarl_robot.algos.rl2.improve`): the best of several exploring
trials and the teacher's trial per task is kept and cloned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metarl_robot.algos.rl2.improve import ImproveConfig, group_trials, select_best, trial_score
from metarl_robot.sampling import Episode
from metarl_robot.tasks import TaskSpec

TASK = TaskSpec("toy", {"x": 1.0}, "toy-0")


def _episode(rewards, success: bool, index: int = 0, k: int = 0) -> Episode:
    rewards = np.asarray(rewards, np.float32)
    t = len(rewards)
    flags = np.zeros(t, bool)
    hit = flags.copy()
    hit[-1] = success
    return Episode(np.zeros((t, 1)), np.zeros((t, 1)), rewards, np.zeros((t, 1)), flags, flags, hit, {}, index, k, TASK, 0)


def test_score_counts_successes_before_return() -> None:
    one_success = [_episode([0.0], True), _episode([-5.0], False)]
    no_success_high_return = [_episode([9.0], False), _episode([9.0], False)]
    assert trial_score(one_success) == (1, -5.0)
    assert trial_score(one_success) > trial_score(no_success_high_return)


def test_select_best_keeps_per_task_the_best_candidate_and_the_first_on_a_tie() -> None:
    a = [[_episode([1.0], False)], [_episode([0.0], True)], [_episode([2.0], True)]]
    b = [[_episode([3.0], False)], [_episode([0.0], True)], [_episode([1.0], True)]]
    teacher = [[_episode([0.0], True)], [_episode([0.0], True)], [_episode([0.0], False)]]
    chosen, kept = select_best([a, b, teacher])
    # task 0: only the teacher succeeded; task 1: a three-way tie goes to the first learner candidate;
    # task 2: both learners succeeded, a with the higher return.
    assert chosen == [2, 0, 0]
    assert kept[0] is not None and kept[0][0].succeeded and kept[0][0] is teacher[0][0]
    assert kept[1][0] is a[1][0] and kept[2][0] is a[2][0]
    with pytest.raises(ValueError, match="one trial per task"):
        select_best([a, b[:2]])


def test_group_trials_orders_episodes_by_request_and_refuses_short_trials() -> None:
    episodes = [_episode([0.0], False, index=1, k=1), _episode([0.0], False, index=0, k=0),
                _episode([0.0], False, index=1, k=0), _episode([0.0], False, index=0, k=1)]
    trials = group_trials(episodes, 2, 2)
    assert [[(e.request_index, e.episode_in_trial) for e in t] for t in trials] == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
    with pytest.raises(ValueError, match="expected 2"):
        group_trials(episodes[:3], 2, 2)


def test_config_checks() -> None:
    with pytest.raises(ValueError):
        ImproveConfig(samples=-1)
    with pytest.raises(ValueError):
        ImproveConfig(buffer_trials=0)


import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)


def test_improvement_iteration_keeps_the_better_trial_and_clones_the_buffer(tmp_path: Path) -> None:
    """On the grasp suite: one iteration keeps one trial per task, never worse than the teacher's on the
    same task and reset seeds, and clones the buffer (the actor's weights move); the next one adds to it."""
    from metarl_robot.algos import rl2
    from metarl_robot.algos.rl2.improve import exploring_trials
    from metarl_robot.config import load_config

    root = Path(__file__).resolve().parents[1]
    tiny = [
        "trials_per_iteration=3", "episodes_per_trial=2", "sampler=serial", "tasks.num_train=8", "tasks.num_test=2",
        "env_kwargs.max_episode_steps=24", "policy.hidden_size=8", "policy.embed_sizes=[8]", "policy.critic_sizes=[8]",
        "warm_start.rounds=1", "warm_start.epochs=1", "improve.samples=2", "improve.epochs=20", "improve.noise_std=0.5",
        "warm_start.lr=0.01", "improve.seed_rounds=0",
    ]
    config = load_config(rl2.TrainConfig, root / "configs" / "grasp_rl2.yaml", tiny)
    algo = rl2.algo.RL2(config, tmp_path)
    try:
        before = {k: v.clone() for k, v in algo.policy.state_dict().items() if k.startswith("actor.")}
        metrics = algo.train_iteration()
        assert any(not torch.equal(v, algo.policy.state_dict()[k]) for k, v in before.items())
        assert algo.iteration == 1 and len(algo._buffer) == 3 and metrics["improve/buffer_trials"] == 3
        assert sum(metrics[f"improve/kept_success_episode_{k}"] for k in range(2)) >= sum(
            metrics[f"improve/teacher_success_episode_{k}"] for k in range(2))
        assert np.isfinite(metrics["improve/imitation_loss"])
        algo.train_iteration()
        assert len(algo._buffer) == 6
        # The exploring learner reports the command it sent as its label.
        trials = exploring_trials(algo.policy, noise_std=0.3)
        trials.reset(algo.tasks.train_tasks[0], np.random.default_rng(0), {})
        action, extras = trials.act(np.zeros(algo.obs_dim, np.float32))
        np.testing.assert_allclose(extras["teacher_command"], action * algo.policy.action_scale.numpy(), rtol=1e-6)
        assert not torch.equal(torch.as_tensor(extras["raw_action"]), torch.zeros(algo.act_dim))
    finally:
        algo.close()
