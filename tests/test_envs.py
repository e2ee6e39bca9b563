import numpy as np
import pytest

from metarl_robot.envs import MetaEnv, collect, make_vector_env
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

ENV_ID = "metarl_robot.testing:metarl/PointGoal-v0"


def test_point_env_is_a_meta_env_and_passes_check_env():
    from gymnasium.utils.env_checker import check_env

    env = PointGoalEnv()
    assert isinstance(env, MetaEnv)
    check_env(env, skip_render_check=True)


def test_collect_sets_one_task_per_env_and_masks_after_the_end():
    tasks = point_goal_distribution().train_tasks[:3]
    envs = make_vector_env(ENV_ID, 3)
    batch = collect(envs, lambda obs: (np.zeros((3, 2), np.float32), {"v": np.ones(3)}), tasks, seed=1)
    assert batch.obs.shape == (20, 3, 2) and batch.extras["v"].shape == (20, 3)
    assert batch.valid.all() and batch.truncated[-1].all()
    # The reward is minus the distance to each env's own goal.
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks])
    np.testing.assert_allclose(batch.rewards[0], -np.linalg.norm(batch.next_obs[0] - goals, axis=1), rtol=1e-5)
    assert [e.task for e in envs.envs] == tasks
    with pytest.raises(ValueError, match="one task per env"):
        collect(envs, lambda o: (np.zeros((3, 2)), {}), tasks[:2])


def test_collect_is_deterministic_given_seed():
    tasks = point_goal_distribution().train_tasks[:2]
    a = collect(make_vector_env(ENV_ID, 2), lambda o: (np.full((2, 2), 0.5, np.float32), {}), tasks, seed=7)
    b = collect(make_vector_env(ENV_ID, 2), lambda o: (np.full((2, 2), 0.5, np.float32), {}), tasks, seed=7)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.rewards, b.rewards)
