"""Every env in ``sim.ENVIRONMENTS``: Gymnasium's checker, meta-env protocol, determinism, headless rendering."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

import sim  # noqa: E402
from metarl_robot.algos.context_ppo.algo import resolve  # noqa: E402
from metarl_robot.envs import MetaEnv  # noqa: E402

pytestmark = pytest.mark.sim

ENV_IDS = sorted(sim.ENVIRONMENTS)
MAX_STEPS = 40


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, **kwargs).unwrapped


def distribution(env_id: str):
    return resolve(sim.ENVIRONMENTS[env_id]["distribution"])(seed=0, num_train=4, num_test=2)


def rollout(env: gym.Env, task, seed: int, steps: int = MAX_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Observations and rewards of one seeded episode prefix with seeded random actions."""
    env.set_task(task)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [np.asarray(obs, dtype=np.float64).copy()], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        observations.append(np.asarray(obs, dtype=np.float64).copy())
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return np.stack(observations), np.asarray(rewards)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_passes_gymnasium_check_env(env_id):
    env = make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_is_a_meta_env_whose_task_takes_effect_at_reset(env_id):
    env = make(env_id)
    assert isinstance(env, MetaEnv)
    a, b = distribution(env_id).train_tasks[:2]
    env.set_task(a)
    assert env.task == a
    env.task = b
    assert env.task == b
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_and_task_give_a_bit_identical_trajectory(env_id):
    tasks = distribution(env_id).train_tasks
    env = make(env_id)
    first_obs, first_rewards = rollout(env, tasks[0], seed=3)
    rollout(env, tasks[1], seed=4)  # whatever the env did in between must not leak into the next episode
    again_obs, again_rewards = rollout(env, tasks[0], seed=3)
    fresh = make(env_id)
    fresh_obs, fresh_rewards = rollout(fresh, tasks[0], seed=3)
    for obs, rewards in ((again_obs, again_rewards), (fresh_obs, fresh_rewards)):
        np.testing.assert_array_equal(obs, first_obs)
        np.testing.assert_array_equal(rewards, first_rewards)
    other_obs, _ = rollout(env, tasks[0], seed=5)
    assert not np.array_equal(other_obs, first_obs) or len(first_obs) == 1
    env.close()
    fresh.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_renders_rgb_array_headless(env_id):
    env = make(env_id, render_mode="rgb_array")
    env.set_task(distribution(env_id).train_tasks[0])
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.shape[0] >= 64 and frame.shape[1] >= 64
    assert frame.std() > 0, "a blank frame: the camera sees nothing"
    env.close()
