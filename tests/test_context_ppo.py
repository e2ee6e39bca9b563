import numpy as np
import torch

from metarl_robot.algos.context_ppo import TrainConfig, train
from metarl_robot.algos.context_ppo.algo import gae, transition_window
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import load_config
from metarl_robot.envs import TrajectoryBatch
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


def test_resume_continues_from_last_checkpoint(tmp_path):
    train(load_config(TrainConfig, TINY), tmp_path, progress=False)
    first, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    path = train(load_config(TrainConfig, {**TINY, "iterations": 3}), tmp_path, resume=True, progress=False)
    resumed, data = load_checkpoint(path)
    assert data["iteration"] == 3
    # One more iteration changed the weights it started from.
    assert not torch.equal(first.actor[0].weight, resumed.actor[0].weight)


def _batch(rewards, valid, obs_dim=2):
    t, n = rewards.shape
    z = np.zeros((t, n, obs_dim), np.float32)
    obs = np.arange(t * n * obs_dim, dtype=np.float32).reshape(t, n, obs_dim)
    return TrajectoryBatch(obs, np.full((t, n, 1), 3.0, np.float32), rewards, z, valid * 0, valid * 0, valid, valid * 0, {}, [])


def test_transition_window_keeps_most_recent_valid_steps_and_clips_actions():
    valid = np.array([[1, 1], [1, 1], [1, 0]], dtype=bool)
    rewards = np.arange(6, dtype=np.float32).reshape(3, 2)
    w = transition_window([_batch(rewards, valid), _batch(rewards + 10, valid)], size=4)
    # env 0: 6 valid steps, last 4 kept; env 1: 4 valid steps, all kept.
    np.testing.assert_array_equal(w["reward"][0, :, 0], [4, 10, 12, 14])
    np.testing.assert_array_equal(w["reward"][1, :, 0], [1, 3, 11, 13])
    assert w["mask"].sum() == 8 and w["action"].max() == 1.0


def test_gae_matches_discounted_returns_when_lambda_is_one():
    rewards = np.array([[1.0], [1.0], [1.0]], np.float32)
    values = np.zeros_like(rewards)
    adv, ret = gae(rewards, values, np.ones_like(rewards), gamma=0.5, lam=1.0)
    np.testing.assert_allclose(ret[:, 0], [1.75, 1.5, 1.0])


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
