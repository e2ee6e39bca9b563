import pickle

import numpy as np

from metarl_robot.envs import MetaEnv, make_meta_env
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

ENV_ID = "metarl_robot.testing:metarl/PointGoal-v0"


def test_point_env_is_a_meta_env_and_passes_check_env():
    from gymnasium.utils.env_checker import check_env

    env = PointGoalEnv()
    assert isinstance(env, MetaEnv)
    check_env(env, skip_render_check=True)


def test_an_env_is_rebuilt_elsewhere_from_its_pickled_spec_with_its_kwargs():
    """What sampler workers do with ``env.unwrapped.spec``: the same env, kwargs included."""
    env = make_meta_env(ENV_ID, {"max_episode_steps": 5}, unwrapped=True)
    copy = make_meta_env(pickle.loads(pickle.dumps(env.unwrapped.spec)), unwrapped=True)
    assert type(copy) is type(env) and copy.max_episode_steps == 5
    task = point_goal_distribution().train_tasks[0]
    runs = []
    for e in (env, copy):
        e.set_task(task)
        obs, _ = e.reset(seed=3)
        runs.append([obs, *e.step(np.full(2, 0.5, np.float32))[:2]])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
