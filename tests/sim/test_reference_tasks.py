"""The reference meta-RL tasks: MAML's 2D navigation and half cheetah, RL²'s bandits and tabular MDPs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

from metarl_robot.tasks import TaskError, TaskSpec, load_task_file, save_task_file  # noqa: E402
from sim.bandits import (  # noqa: E402
    BernoulliBanditEnv,
    TabularMDPEnv,
    bandit_distribution,
    bandit_oracle,
    best_arm_probability,
    expected_regret,
    mdp_arrays,
    mdp_task,
    optimal_episode_value,
    tabular_mdp_distribution,
    tabular_mdp_oracle,
    validate_mdp_task,
)
from sim.half_cheetah import (  # noqa: E402
    GEAR_NM,
    HalfCheetahDirEnv,
    HalfCheetahVelEnv,
    cheetah_direction_distribution,
    cheetah_gait_demonstrator,
    cheetah_velocity_distribution,
    sinusoidal_gait,
)
from sim.navigation import Navigation2DEnv, navigation_distribution, navigation_oracle  # noqa: E402

pytestmark = pytest.mark.sim


def goal(x: float, y: float) -> TaskSpec:
    return TaskSpec("navigation2d", {"goal_x": x, "goal_y": y})


# ------------------------------------------------------------------------------------ navigation


def test_navigation_goals_are_uniform_in_the_maml_square():
    dist = navigation_distribution(seed=1, num_train=200, num_test=50)
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in dist.train_tasks + dist.test_tasks])
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.4 and goals.max() > 0.4
    assert {t.family for t in dist.train_tasks} == {"navigation2d"}


def test_navigation_moves_by_the_clipped_scaled_action_and_rewards_minus_the_distance_after_it():
    env = Navigation2DEnv(goal(0.3, -0.2))
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert env.interface["action"]["scale"] == [0.1, 0.1]
    obs, reward, terminated, truncated, info = env.step(np.array([5.0, -0.5]))
    np.testing.assert_allclose(obs, [0.1, -0.05], atol=1e-7)
    assert reward == pytest.approx(-math.hypot(0.1 - 0.3, -0.05 + 0.2))
    assert not terminated and not truncated and not info["success"]


def test_navigation_terminates_within_a_centimetre_on_both_axes_and_succeeds_within_ten():
    env = Navigation2DEnv(goal(0.2, 0.105))
    env.reset(seed=0)
    _, _, terminated, _, info = env.step([1.0, 1.0])
    assert not terminated and not info["success"]
    _, _, terminated, _, info = env.step([1.0, 0.0])  # at (0.2, 0.1): 5 mm off on y
    assert terminated and info["success"]

    env = Navigation2DEnv(goal(0.2, 0.105), terminate_at_goal=False)
    env.reset(seed=0)
    env.step([1.0, 1.0])
    _, _, terminated, _, _ = env.step([1.0, 0.0])
    assert not terminated


def test_navigation_truncates_after_100_steps():
    env = Navigation2DEnv(goal(0.5, 0.5))
    env.reset(seed=0)
    for t in range(1, 101):
        _, _, terminated, truncated, _ = env.step([-1.0, 0.0])
        assert not terminated and truncated == (t == 100)


def test_navigation_oracle_reaches_every_goal_in_a_straight_line():
    env = Navigation2DEnv()
    for task in navigation_distribution(num_train=8, num_test=0).train_tasks:
        env.set_task(task)
        obs, _ = env.reset(seed=0)
        for steps in range(1, 8):
            obs, reward, terminated, _, _ = env.step(navigation_oracle(obs[None], [task])[0])
            if terminated:
                break
        assert terminated and steps <= 6 and reward > -0.01


# -------------------------------------------------------------------------------------- bandits


def test_bandit_distribution_draws_one_uniform_probability_per_arm():
    dist = bandit_distribution(seed=0, num_train=100, num_test=10, num_arms=10)
    assert sorted(dist.train_tasks[0].params) == sorted(f"p{i}" for i in range(10))
    p = np.array([[t[f"p{i}"] for i in range(10)] for t in dist.train_tasks])
    assert p.min() >= 0.0 and p.max() <= 1.0 and abs(p.mean() - 0.5) < 0.05


def test_bandit_trial_is_num_pulls_long_and_observes_the_previous_arm_and_reward():
    task = TaskSpec("bernoulli_bandit", {"p0": 0.0, "p1": 1.0, "p2": 0.5})
    env = BernoulliBanditEnv(task, num_arms=3, num_pulls=4)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, np.zeros(4))
    for pull, (arm, reward) in enumerate([(1, 1.0), (0, 0.0), (1, 1.0), (0, 0.0)], start=1):
        obs, r, terminated, truncated, info = env.step(arm)
        assert r == reward and info["regret"] == pytest.approx(1.0 - task[f"p{arm}"])
        np.testing.assert_array_equal(obs, [arm == 0, arm == 1, arm == 2, reward])
        assert terminated == (pull == 4) and not truncated


def test_bandit_rewards_are_bernoulli_with_the_arms_probability():
    task = TaskSpec("bernoulli_bandit", {"p0": 0.3, "p1": 0.8})
    env = BernoulliBanditEnv(task, num_arms=2, num_pulls=4000)
    env.reset(seed=1)
    rewards = [env.step(i % 2)[1] for i in range(4000)]
    assert np.mean(rewards[0::2]) == pytest.approx(0.3, abs=0.04)
    assert np.mean(rewards[1::2]) == pytest.approx(0.8, abs=0.04)


def test_bandit_oracle_values_and_regret():
    task = TaskSpec("bernoulli_bandit", {"p0": 0.2, "p1": 0.9, "p2": 0.4})
    assert best_arm_probability(task) == 0.9
    assert bandit_oracle(np.zeros((1, 4)), [task]).tolist() == [1]
    assert expected_regret(task, [1, 1, 0, 2]) == pytest.approx(0.7 + 0.5)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"p0": 0.1, "p1": 1.5, "p2": 0.3}, "p1"),
        ({"p0": 0.1, "p1": 0.5}, "p2"),
        ({"p0": 0.1, "p1": 0.5, "p2": 0.3, "p3": 0.1}, "p3"),
        ({"p0": "high", "p1": 0.5, "p2": 0.3}, "p0"),
    ],
)
def test_bad_bandit_tasks_are_refused_naming_the_field(params, field):
    env = BernoulliBanditEnv(num_arms=3)
    with pytest.raises(TaskError, match=field):
        env.set_task(TaskSpec("bernoulli_bandit", params))
    with pytest.raises(TaskError, match="family"):
        env.set_task(TaskSpec("navigation2d", {"goal_x": 0.0, "goal_y": 0.0}))


# --------------------------------------------------------------------------------- tabular MDPs


def test_mdp_transition_rows_are_dirichlet_distributions_and_reward_means_are_normal_around_one():
    dist = tabular_mdp_distribution(seed=0, num_train=20, num_test=2)
    means = []
    for task in dist.train_tasks:
        transitions, reward_means = mdp_arrays(task)
        assert transitions.shape == (10, 5, 10) and reward_means.shape == (10, 5)
        np.testing.assert_allclose(transitions.sum(axis=2), 1.0, atol=1e-12)
        assert transitions.min() >= 0.0
        means.append(reward_means)
    means = np.concatenate(means).ravel()
    assert means.mean() == pytest.approx(1.0, abs=0.15) and means.std() == pytest.approx(1.0, abs=0.15)
    # A flat Dirichlet over 10 states has per-entry mean 0.1 and variance 0.9 / 110.
    entries = np.concatenate([mdp_arrays(t)[0].ravel() for t in dist.train_tasks])
    assert entries.var() == pytest.approx(0.9 / 110, rel=0.15)


def test_mdp_splits_are_reproducible_and_disjoint():
    a, b = tabular_mdp_distribution(seed=3, num_train=3, num_test=2), tabular_mdp_distribution(seed=3, num_train=5, num_test=2)
    assert a.train_tasks == b.train_tasks[:3] and a.test_tasks == b.test_tasks
    assert not set(a.train_tasks) & set(a.test_tasks)
    assert len(a.sample(4, np.random.default_rng(0), "test")) == 4


def test_an_mdp_task_round_trips_through_a_task_file_exactly(tmp_path):
    task = tabular_mdp_distribution(seed=0, num_train=1, num_test=0).train_tasks[0]
    save_task_file([task], tmp_path / "mdp.yaml")
    (loaded,) = load_task_file(tmp_path / "mdp.yaml", {"tabular_mdp": TabularMDPEnv().set_task})
    assert loaded == task


def test_mdp_trial_resets_the_state_every_episode_and_ends_after_n_episodes():
    env = TabularMDPEnv(episodes_per_trial=3)
    obs, info = env.reset(seed=0)
    assert obs.shape == (17,) and obs[0] == 1.0 and obs[10:].sum() == 0.0 and info["episode_in_trial"] == 0
    for t in range(1, 31):
        action = t % 5
        obs, _, terminated, truncated, info = env.step(action)
        assert info["episode_in_trial"] == (t - 1) // 10 and info["step_in_episode"] == (t - 1) % 10 + 1
        assert obs[10 + action] == 1.0 and obs[10:15].sum() == 1.0
        episode_done = t % 10 == 0
        assert info["episode_done"] == episode_done and obs[16] == float(episode_done)
        if episode_done:
            assert obs[0] == 1.0 and obs[:10].sum() == 1.0  # back in the initial state
        assert terminated == (t == 30) and not truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_mdp_follows_its_transitions_and_draws_rewards_with_unit_variance():
    # Two states: action 0 stays, action 1 switches; state 1 pays 2 on average, state 0 pays -1.
    transitions = np.zeros((2, 2, 2))
    transitions[0, 0, 0] = transitions[1, 0, 1] = transitions[0, 1, 1] = transitions[1, 1, 0] = 1.0
    reward_means = np.array([[-1.0, -1.0], [2.0, 2.0]])
    task = mdp_task(transitions, reward_means)
    env = TabularMDPEnv(task, num_states=2, num_actions=2, episode_length=1000, episodes_per_trial=1)
    env.reset(seed=0)
    obs, _, _, _, info = env.step(1)
    assert info["state"] == 1 and obs[:2].tolist() == [0.0, 1.0]
    rewards = np.array([env.step(0)[1] for _ in range(999)])
    assert rewards.mean() == pytest.approx(2.0, abs=0.1) and rewards.std() == pytest.approx(1.0, abs=0.1)


def test_optimal_episode_value_by_value_iteration():
    transitions = np.zeros((2, 2, 2))
    transitions[0, 0, 0] = transitions[0, 1, 1] = transitions[1, 0, 1] = transitions[1, 1, 1] = 1.0
    reward_means = np.array([[1.0, 0.0], [3.0, 3.0]])
    task = mdp_task(transitions, reward_means)
    assert optimal_episode_value(task, episode_length=1) == 1.0  # one step: take the 1 now
    assert optimal_episode_value(task, episode_length=3) == 6.0  # move (0), then 3 + 3
    assert tabular_mdp_oracle(np.array([[1.0, 0.0, 0, 0, 0, 0]]), [task], episode_length=3).tolist() == [1]


def test_bad_mdp_tasks_are_refused_naming_the_field():
    task = tabular_mdp_distribution(seed=0, num_train=1, num_test=0).train_tasks[0]
    env = TabularMDPEnv()
    row = [f"p_s2_a1_s{n}" for n in range(10)]
    largest = max(row, key=lambda name: task[name])  # at least 0.1: halving it breaks the row's sum
    with pytest.raises(TaskError, match=r"p_s2_a1_s\* sum to"):
        env.set_task(task.replace(**{largest: task[largest] / 2}))
    with pytest.raises(TaskError, match="p_s0_a0_s3"):
        env.set_task(task.replace(p_s0_a0_s3=-0.5))
    params = dict(task.params)
    del params["r_s4_a2"]
    with pytest.raises(TaskError, match="r_s4_a2"):
        env.set_task(TaskSpec("tabular_mdp", params))
    with pytest.raises(TaskError, match="gamma"):
        validate_mdp_task(task.replace(gamma=0.9))
    with pytest.raises(TaskError, match="do not fit"):
        TabularMDPEnv(num_states=5).set_task(task)


# --------------------------------------------------------------------------------- half cheetah


def test_cheetah_task_distributions_follow_maml():
    velocities = [t["goal_velocity"] for t in cheetah_velocity_distribution(num_train=100, num_test=20).train_tasks]
    assert 0.0 <= min(velocities) and max(velocities) <= 2.0 and max(velocities) - min(velocities) > 1.5
    dist = cheetah_direction_distribution(num_train=4, num_test=2)
    for split in (dist.train_tasks, dist.test_tasks):
        assert {t["direction"] for t in split} == {1, -1}


def test_cheetah_interface_scales_actions_by_the_gears_and_observes_17_values_without_x():
    env = HalfCheetahVelEnv()
    assert env.interface["action"]["scale"] == list(GEAR_NM)
    assert sum(item["size"] for item in env.interface["observation_layout"]) == 17
    assert env.observation_space.shape == (17,) and env.action_space.shape == (6,)
    env.reset(seed=0)
    for _ in range(20):
        obs, *_ = env.step(sinusoidal_gait(0.0))
    # Root z and pitch, the six joint angles, then all nine velocities: the root's x position is left out.
    positions, velocities = env._world.joint_state()
    np.testing.assert_array_equal(obs, np.concatenate([positions[1:], velocities]).astype(np.float32))
    env.close()


def test_cheetah_rewards_follow_maml_formulas():
    env = HalfCheetahVelEnv(TaskSpec("cheetah_velocity", {"goal_velocity": 1.3}))
    env.reset(seed=0)
    action = np.array([0.5, -1.0, 0.2, 2.0, 0.0, -0.3])  # 2.0 is clipped to 1
    _, reward, _, _, info = env.step(action)
    control = 0.05 * float(np.sum(np.clip(action, -1, 1) ** 2))
    assert info["control_cost"] == pytest.approx(control)
    assert reward == pytest.approx(-abs(info["forward_velocity_m_s"] - 1.3) - control)
    env.close()
    env = HalfCheetahDirEnv(TaskSpec("cheetah_direction", {"direction": -1}))
    env.reset(seed=0)
    _, reward, _, _, info = env.step(action)
    assert reward == pytest.approx(-info["forward_velocity_m_s"] - control)
    env.close()


def test_a_sinusoidal_gait_runs_forwards_for_dir_plus_one_and_against_dir_minus_one():
    returns = {}
    env = HalfCheetahDirEnv()
    for direction in (1, -1):
        env.set_task(TaskSpec("cheetah_direction", {"direction": direction}))
        env.reset(seed=0)
        total, steps, truncated = 0.0, 0, False
        while not truncated:
            _, reward, terminated, truncated, info = env.step(sinusoidal_gait(steps * env.dt))
            assert not terminated
            total += reward
            steps += 1
        assert steps == 200
        returns[direction] = total
        assert info["x_position_m"] > 2.0
    assert returns[1] > 0 > returns[-1]
    env.close()


def test_cheetah_demonstrator_tracks_a_goal_velocity():
    task = TaskSpec("cheetah_velocity", {"goal_velocity": 1.0})
    env = HalfCheetahVelEnv(task, max_episode_steps=120)
    obs, _ = env.reset(seed=2)
    velocities = []
    for _ in range(120):
        obs, *_, info = env.step(cheetah_gait_demonstrator(obs[None], [task])[0])
        velocities.append(info["forward_velocity_m_s"])
    assert np.mean(velocities[40:]) == pytest.approx(1.0, abs=0.25)
    env.close()


def test_cheetah_envs_in_one_process_do_not_disturb_each_other():
    task = TaskSpec("cheetah_direction", {"direction": 1})
    alone = HalfCheetahDirEnv(task)
    alone.reset(seed=7)
    expected = [alone.step(sinusoidal_gait(t * alone.dt))[0] for t in range(30)]
    a, b = HalfCheetahDirEnv(task), HalfCheetahDirEnv(TaskSpec("cheetah_direction", {"direction": -1}))
    a.reset(seed=7)
    b.reset(seed=8)
    for t in range(30):
        b.step(-sinusoidal_gait(t * b.dt))
        np.testing.assert_array_equal(a.step(sinusoidal_gait(t * a.dt))[0], expected[t])
    for env in (alone, a, b):
        env.close()


@pytest.mark.parametrize(
    "env_cls, task, field",
    [
        (HalfCheetahDirEnv, TaskSpec("cheetah_direction", {"direction": 0}), "direction"),
        (HalfCheetahDirEnv, TaskSpec("cheetah_direction", {"dir": 1}), "dir"),
        (HalfCheetahVelEnv, TaskSpec("cheetah_velocity", {"goal_velocity": "fast"}), "goal_velocity"),
        (HalfCheetahVelEnv, TaskSpec("cheetah_direction", {"direction": 1}), "family"),
        (Navigation2DEnv, TaskSpec("navigation2d", {"goal_x": 0.1}), "goal_y"),
    ],
)
def test_bad_tasks_are_refused_naming_the_field(env_cls, task, field):
    env = env_cls()
    with pytest.raises(TaskError, match=field):
        env.set_task(task)
    with pytest.raises(TaskError, match=field):
        env.reset(options={"task": task})
    env.close()


def test_navigation_can_show_the_goal_for_an_oracle_policy():
    from sim.navigation import Navigation2DEnv, navigation_distribution, navigation_oracle

    task = navigation_distribution(seed=3).test_tasks[0]
    env = Navigation2DEnv(task, observe_goal=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (4,) and env.observation_space.contains(obs)
    np.testing.assert_allclose(obs[2:], [task["goal_x"], task["goal_y"]], rtol=1e-6)
    assert [e["name"] for e in env.interface["observation_layout"]] == ["position", "goal"]
    assert Navigation2DEnv.interface["observation_layout"][-1]["name"] == "position", "the class contract is unchanged"
    next_obs, *_ = env.step(navigation_oracle(obs[None], [task])[0])
    np.testing.assert_allclose(next_obs[2:], obs[2:])
