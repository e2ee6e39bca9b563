import numpy as np
import pytest
import torch

from metarl_robot.algos.context_ppo import TrainConfig, train
from metarl_robot.algos.context_ppo.algo import actor_critic_advantages
from metarl_robot.algos.context_ppo.rollout import trial_windows, transition_window
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import load_config
from metarl_robot.runtime.advantages import gae
from metarl_robot.sampling import Episode, EpisodeBatch
from metarl_robot.evaluation import evaluate, write_report
from metarl_robot.families.context_torch import TorchController
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

TINY = {
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 4},
    "iterations": 2,
    "tasks_per_iteration": 4,
    "episodes_per_task": 2,
    "asynchronous": False,
    "checkpoint_every": 1,
    "policy": {"hidden_sizes": [16, 16], "context_dim": 4},
    "ppo": {"epochs": 2, "minibatches": 2},
    "adaptation": {"buffer_size": 20},
}


def test_tiny_budget_run_writes_checkpoint_config_and_tensorboard(tmp_path):
    path = train(load_config(TrainConfig, TINY), tmp_path, progress=False)
    policy, data = load_checkpoint(path)
    assert data["iteration"] == 2 and data["method"] == "context_ppo"
    assert data["interface"]["action"]["scale"] == [0.1, 0.1]
    assert "success/before_adaptation" in data["metrics"] and "loss/reward_prediction" in data["metrics"]
    assert (tmp_path / "config.yaml").exists() and list((tmp_path / "tb").glob("events.*"))
    assert policy.obs_norm.count > 1  # the normaliser saw the collected observations
    # The guard the robot runs it under: one-episode windows, three standard errors of a difference.
    sd = data["metrics"]["return/episode_sd"]
    assert sd > 0 and data["adaptation"]["guard"] == {
        "signal": "return", "max_drop": pytest.approx(3.0 * sd * 2**0.5), "validated_steps": None}


def test_resume_continues_from_last_checkpoint(tmp_path):
    train(load_config(TrainConfig, TINY), tmp_path, progress=False)
    first, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    path = train(load_config(TrainConfig, {**TINY, "iterations": 3}), tmp_path, resume=True, progress=False)
    resumed, data = load_checkpoint(path)
    assert data["iteration"] == 3
    # One more iteration changed the weights it started from.
    assert not torch.equal(first.actor[0].weight, resumed.actor[0].weight)


def _episode(rewards, index, episode_in_trial, obs_dim=2):
    t = len(rewards)
    obs = np.arange(t * obs_dim, dtype=np.float32).reshape(t, obs_dim) + 100 * episode_in_trial
    flags = np.zeros(t, bool)
    return Episode(obs, np.full((t, 1), 3.0, np.float32), np.asarray(rewards, np.float32), obs + 1, flags, flags, flags,
                   {"value": np.zeros(t, np.float32)}, index, episode_in_trial, TASK, 0)


TASK = point_goal_distribution().train_tasks[0]


def test_transition_window_keeps_most_recent_steps_and_clips_actions():
    w = transition_window(np.zeros((6, 2), np.float32), np.full((6, 1), 3.0, np.float32),
                          np.arange(6, dtype=np.float32), np.zeros((6, 2), np.float32), size=4)
    np.testing.assert_array_equal(w["reward"][:, 0], [2, 3, 4, 5])
    assert w["mask"].sum() == 4 and w["action"].max() == 1.0
    short = transition_window(*(x[:2] for x in (np.zeros((6, 2)), np.ones((6, 1)), np.arange(6.0), np.zeros((6, 2)))), size=4)
    np.testing.assert_array_equal(short["mask"], [1, 1, 0, 0])


def test_trial_windows_hold_what_came_before_each_episode_of_its_own_trial():
    # Two trials (requests 0 and 1) of two episodes each, in sampler order.
    episodes = [_episode([1, 2, 3], 0, 0), _episode([4, 5], 0, 1), _episode([7], 1, 0), _episode([8, 9], 1, 1)]
    windows = trial_windows(episodes, size=2)
    assert [w["mask"].sum() for w in windows] == [0, 2, 0, 1]
    np.testing.assert_array_equal(windows[1]["reward"][:, 0], [2, 3])  # the last two of episode 0
    np.testing.assert_array_equal(windows[3]["reward"][:, 0], [7, 0])  # request 1 only: nothing from request 0


def test_training_advantages_are_the_robots_gae_on_the_same_episodes():
    """Context PPO's advantages are runtime.advantages.gae (the robot's numpy code) with the critic's values."""
    rng = np.random.default_rng(0)
    episodes = [_episode(rng.normal(size=n), i, 0) for i, n in enumerate([5, 3, 4])]
    for e in episodes:
        e.extras["value"] = rng.normal(size=e.length).astype(np.float32)
    batch = EpisodeBatch.from_episodes(episodes)
    adv, ret = actor_critic_advantages(batch, gamma=0.9, lam=0.8)
    for i, e in enumerate(episodes):
        robot = gae(e.rewards[None], e.extras["value"][None], np.ones((1, e.length)), 0.9, 0.8)[0]
        np.testing.assert_allclose(adv[: e.length, i], robot, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ret[: e.length, i], robot + e.extras["value"], rtol=1e-6, atol=1e-6)
        assert not adv[e.length :, i].any() and not ret[e.length :, i].any()


def test_gae_matches_discounted_returns_when_lambda_is_one():
    rewards = np.array([[1.0, 1.0, 1.0]])
    adv = gae(rewards, np.zeros_like(rewards), np.ones_like(rewards), gamma=0.5, lam=1.0)
    np.testing.assert_allclose(adv[0], [1.75, 1.5, 1.0])


def test_evaluate_reports_before_and_after_adaptation(tmp_path):
    path = train(load_config(TrainConfig, TINY), tmp_path, progress=False)
    policy, data = load_checkpoint(path)
    tasks = point_goal_distribution(num_test=3).test_tasks
    results = evaluate(TorchController(policy, 20), PointGoalEnv(), tasks, rounds=3, seed=0)
    assert [r["round"] for r in results["summary"]] == [0, 1, 2]
    assert len(results["tasks"]) == 3 and all(len(t["returns"]) == 3 for t in results["tasks"])
    json_path, png_path = write_report(results, tmp_path / "eval")
    assert json_path.exists() and png_path.stat().st_size > 1000


def test_warm_start_imitates_then_runs_dagger_over_task_sequences(tmp_path):
    cfg = load_config(
        TrainConfig,
        {**TINY, "iterations": 0, "warm_start": {"demonstrator": "metarl_robot.testing:point_goal_demonstrator",
                                                  "rounds": 2, "epochs": 60, "dagger_iterations": 1}},
    )
    policy, data = load_checkpoint(train(cfg, tmp_path, progress=False))
    assert data["iteration"] == 0
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the run logged through it)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"warm_start/demonstrator_success_episode_0", "warm_start/learner_1_success_episode_1"} <= tags
    # The imitation error must fall well below the labels' own energy (the error of predicting zero).
    from metarl_robot.testing import point_goal_demonstrator

    tasks = point_goal_distribution(num_train=8).train_tasks
    labels = point_goal_demonstrator(np.zeros((len(tasks), 2), np.float32), tasks)
    loss = events.Scalars("warm_start/imitation_loss")[-1].value
    assert loss < 0.75 * float((labels**2).mean()), (loss, float((labels**2).mean()))


def test_sampler_keys_and_their_older_spelling():
    from metarl_robot.algos.common import PPOConfig
    from metarl_robot.algos.gradient import TrainConfig as GradientConfig
    from metarl_robot.config import ConfigError

    assert load_config(TrainConfig, {}).sampler == "subprocess" and load_config(GradientConfig, {}).sampler == "serial"
    for cls in (TrainConfig, GradientConfig):
        assert load_config(cls, {"asynchronous": True}).sampler == "subprocess"
        assert load_config(cls, {"asynchronous": False}).sampler == "serial"
        config = load_config(cls, {"sampler": "ray", "num_workers": 2})
        assert (config.sampler, config.num_workers) == ("ray", 2)
        with pytest.raises(ConfigError, match="disagree"):
            load_config(cls, {"sampler": "subprocess", "asynchronous": False})
        with pytest.raises(ConfigError, match="sampler"):
            load_config(cls, {"sampler": "threads"})
        with pytest.raises(ConfigError, match="unknown config key 'num_worker'"):
            load_config(cls, {"num_worker": 2})
        with pytest.raises(ConfigError, match="num_workers"):
            load_config(cls, {"num_workers": -1})
        # One PPO config: both methods' ``ppo`` sections are the shared class (context PPO extends it).
        assert isinstance(cls().ppo, PPOConfig)
    with pytest.raises(ConfigError, match="unknown config key ppo.'minibatches'"):
        load_config(GradientConfig, {"ppo": {"minibatches": 2}})


def test_every_shipped_config_still_loads():
    from pathlib import Path

    from metarl_robot.cli import train_module

    for path in sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")):
        module = train_module(str(path), [])
        load_config(module.TrainConfig, path)
