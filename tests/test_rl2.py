"""RL² trained with PPO: config, trial layout, state handling in collection, a tiny-budget run that is
saved, exported, verified and evaluated, and (slow) a learning check on Bernoulli bandits."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl_robot.algos import rl2
from metarl_robot.algos.rl2.rollout import RL2Trials, trial_batch
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import ConfigError, load_config
from metarl_robot.sampling import EpisodeRequest, run_trial
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

REPO_ROOT = Path(__file__).resolve().parents[1]
BANDIT_CONFIG = REPO_ROOT / "configs" / "rl2_bandits.yaml"
TINY_BANDIT = [
    "iterations=2", "trials_per_iteration=8", "checkpoint_every=1", "tasks.num_train=32", "tasks.num_test=6",
    "policy.hidden_size=16", "ppo.epochs=2", "ppo.minibatches=2",
]
TINY_POINT = {
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 3},
    "iterations": 2,
    "trials_per_iteration": 4,
    "episodes_per_trial": 2,
    "sampler": "serial",
    "checkpoint_every": 1,
    "asymmetric_critic": True,
    "policy": {"cell": "lstm", "hidden_size": 12, "embed_sizes": [16]},
    "ppo": {"epochs": 2, "minibatches": 2, "bptt_steps": 7},
}


def test_config_file_loads_and_train_finds_the_method() -> None:
    from metarl_robot.families import registry

    config = load_config(rl2.TrainConfig, BANDIT_CONFIG)
    assert config.method == "rl2" and config.policy.cell == "gru" and config.episodes_per_trial == 1
    assert registry.algorithm("rl2") is rl2
    assert registry.get("recurrent").algorithms == ("metarl_robot.algos.rl2", "metarl_robot.algos.rma", "metarl_robot.algos.pearl")


@pytest.mark.parametrize(
    "override, message",
    [
        ("policy.cell=rnn", "cell 'rnn' is not supported"),
        ("policy.skill=nope", "skill 'nope' is not known"),
        # RL² warm-starts only from a teacher that is never told the task, not from a task-aware demonstrator.
        ("warm_start={rounds: 2, demonstrator: \"sim.bandits:bandit_oracle\"}", "unknown config key warm_start.'demonstrator'"),
        ("warm_start.rounds=2", "needs warm_start.teacher"),
        ("policy.privileged_dim=3", "asymmetric_critic"),
        ("ppo.bptt_steps=-1", "bptt_steps >= 0"),
        ("adaptation.cadence=episode", "not one of"),
        ("episodes_per_trial=0", "episodes_per_trial >= 1"),
    ],
)
def test_config_refuses_bad_values_by_name(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(rl2.TrainConfig, BANDIT_CONFIG, [override])


def _policy(cell: str = "gru"):
    from metarl_robot.recurrent_policy import RecurrentPolicy, RecurrentPolicyConfig

    torch.manual_seed(0)
    policy = RecurrentPolicy(2, 2, [0.1, 0.1], RecurrentPolicyConfig(cell=cell, hidden_size=8, embed_sizes=(8,)))
    with torch.no_grad():
        policy.actor[-1].weight.mul_(50.0)  # mean actions of order 1, as a trained policy's
    return policy.eval()


def _trial(policy, episodes: int = 3, explore: bool = False):
    env = PointGoalEnv(max_episode_steps=6)
    task = point_goal_distribution().train_tasks[1]
    return run_trial(env, RL2Trials(policy, explore=explore), EpisodeRequest(0, task, 5, episodes))


def test_trial_batch_lays_out_whole_trials_with_the_previous_step_shifted_in() -> None:
    episodes = _trial(_policy())
    batch = trial_batch(episodes, 3)
    assert batch.obs.shape == (1, 18, 2) and batch.valid.sum() == 18
    assert batch.episode[0].tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # The step after an episode's end reads done = 1; the trial's first step reads zeros.
    assert np.flatnonzero(batch.prev_dones[0, :, 0]).tolist() == [6, 12]
    assert not batch.prev_actions[0, 0].any() and batch.prev_rewards[0, 0, 0] == 0
    np.testing.assert_array_equal(batch.prev_actions[0, 1:], batch.actions[0, :-1])
    np.testing.assert_array_equal(batch.prev_rewards[0, 1:, 0], batch.rewards[0, :-1])
    np.testing.assert_allclose(batch.episode_returns[0], [e.total_reward for e in episodes], rtol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_collection_carries_the_state_across_episodes_exactly_as_the_update_unrolls_it(cell: str) -> None:
    """The update unrolls each trial from the zero state over all its episodes; the collection's mean
    actions match it at every step, the later episodes included, so the memory carried across episode
    ends in collection. A fresh trial starts from zero again: the first episode repeats exactly."""
    policy = _policy(cell)
    episodes = _trial(policy)
    batch = trial_batch(episodes, 3)
    algo = rl2.RL2.__new__(rl2.RL2)  # only the tensor helpers, no sampler
    algo.policy, algo.privileged_keys = policy, ()
    t = algo._tensors(batch)
    with torch.no_grad():
        features, _ = policy.unroll(t["obs"], t["prev_actions"], t["prev_rewards"], t["prev_dones"], policy.initial_state(1))
        mean = policy.distribution(features).mean
    np.testing.assert_allclose(mean[0].numpy(), batch.raw_actions[0], atol=1e-5)
    # Without the carried state (zeroed at each episode), the later episodes would act differently.
    with torch.no_grad():
        second, _ = policy.unroll(t["obs"][:, 6:12], t["prev_actions"][:, 6:12] * 0, t["prev_rewards"][:, 6:12] * 0,
                                  t["prev_dones"][:, 6:12] * 0, policy.initial_state(1))
        forgetful = policy.distribution(second).mean[0].numpy()
    assert np.abs(forgetful - batch.raw_actions[0, 6:12]).max() > 1e-2
    again = trial_batch(_trial(policy), 3)
    np.testing.assert_array_equal(again.raw_actions, batch.raw_actions)


def test_tiny_budget_bandit_run_saves_exports_verifies_and_evaluates(tmp_path: Path) -> None:
    from metarl_robot.algos.common import build_task_distribution
    from metarl_robot.config import to_dict
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import evaluate, torch_controller
    from metarl_robot.export import export_bundle
    from metarl_robot.runtime import load_controller
    from metarl_robot.verify import verify_bundle

    config = load_config(rl2.TrainConfig, BANDIT_CONFIG, TINY_BANDIT)
    path = rl2.train(config, tmp_path / "run", progress=False)
    policy, data = load_checkpoint(path)
    assert data["method"] == "rl2" and data["iteration"] == 2
    assert type(policy).__name__ == "RecurrentPolicy" and policy.config.privileged_dim == 5  # p0..p4, critic only
    assert data["privileged_keys"] == [f"p{i}" for i in range(5)]
    assert "return/trial" in data["metrics"] and list((tmp_path / "run" / "tb").glob("events.*"))

    bundle = export_bundle(path, tmp_path / "bundle")
    report = verify_bundle(bundle, checkpoint=path)
    assert report.ok, report.format()

    env = make_meta_env(config.env_id, config.env_kwargs, unwrapped=True)
    tasks = build_task_distribution(to_dict(config.tasks)).test_tasks
    on_robot = evaluate(functools.partial(load_controller, bundle, providers=["cpu"]), env, tasks, rounds=1, seed=3)
    in_torch = evaluate(torch_controller(policy, data["adaptation"]), env, tasks, rounds=1, seed=3)
    assert on_robot["num_tasks"] == len(tasks) == 6
    # Same seeds, same noise stream, same state handling: the same pulls.
    assert [t["returns"] for t in on_robot["tasks"]] == [t["returns"] for t in in_torch["tasks"]]


def test_tiny_budget_lstm_with_truncated_bptt_trains_resumes_and_exports(tmp_path: Path) -> None:
    from metarl_robot.evaluation import evaluate
    from metarl_robot.export import export_bundle
    from metarl_robot.runtime import load_controller

    path = rl2.train(load_config(rl2.TrainConfig, TINY_POINT), tmp_path, progress=False)
    first, data = load_checkpoint(path)
    assert first.config.cell == "lstm" and first.config.privileged_dim == 2  # goal_x, goal_y
    assert {"success/episode_1", "success/after_adaptation", "loss/approx_kl"} <= set(data["metrics"])
    assert first.obs_norm.count > 1
    path = rl2.train(load_config(rl2.TrainConfig, {**TINY_POINT, "iterations": 3}), tmp_path, resume=True, progress=False)
    resumed, data = load_checkpoint(path)
    assert data["iteration"] == 3 and not torch.equal(first.actor[0].weight, resumed.actor[0].weight)

    bundle = export_bundle(path, tmp_path / "bundle")
    env = PointGoalEnv()
    results = evaluate(functools.partial(load_controller, bundle, providers=["cpu"]), env,
                       point_goal_distribution(num_test=3).test_tasks, rounds=2)
    assert [r["round"] for r in results["summary"]] == [0, 1]


@pytest.mark.slow
def test_rl2_beats_a_random_policy_on_five_armed_bandits_within_two_minutes(tmp_path: Path) -> None:
    """k = 5 arms, n = 10 pulls (the RL² paper's easiest bandit setting; paper: RL² 6.7, random 5.0).
    Trained for a fixed budget of iterations (about 2 minutes on one core), evaluated on 500 held-out
    bandits against the exact expected return of uniformly random pulls on the same bandits."""
    from metarl_robot.algos.common import build_task_distribution
    from metarl_robot.config import to_dict
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import evaluate, torch_controller

    config = load_config(rl2.TrainConfig, BANDIT_CONFIG)
    start = time.perf_counter()
    policy, data = load_checkpoint(rl2.train(config, tmp_path, progress=False))
    minutes = (time.perf_counter() - start) / 60
    env = make_meta_env(config.env_id, config.env_kwargs, unwrapped=True)
    tasks = build_task_distribution(to_dict(config.tasks)).test_tasks
    results = evaluate(torch_controller(policy, data["adaptation"]), env, tasks, rounds=1, seed=0)
    pulls = config.env_kwargs["env_kwargs"]["num_pulls"]
    random_mean = float(np.mean([pulls * np.mean([t[f"p{i}"] for i in range(5)]) for t in tasks]))
    row = results["summary"][0]
    print(f"RL2 {row['return_mean']:.2f} +- {row['return_ci95']:.2f} vs random {random_mean:.2f} after {minutes:.1f} min")
    assert row["return_mean"] - row["return_ci95"] > random_mean + 0.5
