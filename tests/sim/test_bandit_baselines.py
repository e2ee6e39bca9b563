"""Classical baselines for RL²'s bandits and tabular MDPs (sim/bandit_baselines.py)."""

from __future__ import annotations

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

from sim import bandit_baselines as bb  # noqa: E402
from sim.bandits import (  # noqa: E402
    BernoulliBanditEnv,
    TabularMDPEnv,
    bandit_distribution,
    optimal_episode_value,
    tabular_mdp_distribution,
)

pytestmark = pytest.mark.sim

BANDIT_POLICIES = [bb.RandomBandit, bb.ThompsonSampling, bb.UCB1, lambda: bb.GittinsIndexPolicy(0.95)]


def bandit_tasks(n: int, seed: int = 0):
    return bandit_distribution(seed=seed, num_train=1, num_test=n).test_tasks


def mdp_tasks(n: int, seed: int = 0):
    return tabular_mdp_distribution(seed=seed, num_train=1, num_test=n).test_tasks


# ------------------------------------------------------------------------ simulator == env


@pytest.mark.parametrize("make_policy", BANDIT_POLICIES)
def test_bandit_simulator_plays_exactly_as_the_env_on_the_same_seeds(make_policy):
    env = BernoulliBanditEnv(num_arms=5, num_pulls=40)
    tasks = bandit_tasks(4, seed=5)
    seeds = [11, 12, 13, 14]
    env_runs = []
    for i, (task, seed) in enumerate(zip(tasks, seeds)):
        env.set_task(task)
        env_runs.append(bb.play_bandit_env(make_policy(), env, seed=seed, policy_seed=i))
        sim = bb.simulate_bandits(make_policy(), bb.BanditBatch.from_tasks([task], [seed], 40), seed=i)
        np.testing.assert_array_equal(sim.actions[0], env_runs[-1][0])
        np.testing.assert_array_equal(sim.rewards[0], env_runs[-1][1])
    # A batch replays the env too: the env's actions, fed back, earn the env's rewards in every trial.
    batch = bb.BanditBatch.from_tasks(tasks, seeds, 40)

    class Replay(bb.BanditPolicy):
        def select(self, t):
            return np.array([run[0][t] for run in env_runs])

    replay = bb.simulate_bandits(Replay(), batch)
    np.testing.assert_array_equal(replay.rewards, np.stack([run[1] for run in env_runs]))


@pytest.mark.parametrize("make_policy", [bb.RandomMDPPolicy, bb.PSRL])
def test_mdp_simulator_plays_exactly_as_the_env_on_the_same_seeds(make_policy):
    env = TabularMDPEnv(episodes_per_trial=3)
    tasks = mdp_tasks(3, seed=7)
    for i, task in enumerate(tasks):
        env.set_task(task)
        actions, rewards = bb.play_mdp_env(make_policy(), env, seed=100 + i, policy_seed=i)
        sim = bb.simulate_mdps(make_policy(), bb.MDPBatch.from_tasks([task], [100 + i], 10, 3), seed=i)
        assert len(actions) == 30
        np.testing.assert_array_equal(sim.actions[0], actions)
        np.testing.assert_array_equal(sim.rewards[0], rewards)


def test_mdp_batch_optimal_values_are_the_envs_optimal_episode_values():
    tasks = mdp_tasks(5, seed=3)
    batch = bb.MDPBatch.from_tasks(tasks, range(5), episode_length=10, episodes=25)
    expected = [25 * optimal_episode_value(t, episode_length=10) for t in tasks]
    np.testing.assert_allclose(bb.optimal_trial_values(batch), expected, rtol=1e-12)


# ------------------------------------------------------------------------ the Gittins index


def _single_state_index(gamma: float, s: int, f: int, depth: int, iters: int = 45) -> float:
    """Reference: bisection on the retirement rate with a DP over one state's subtree."""
    a, b = 1 + s, 1 + f
    lo, hi = a / (a + b), 1.0
    for _ in range(iters):
        lam = 0.5 * (lo + hi)
        retire = lam / (1 - gamma)
        k_max = depth - (s + f)
        p = (a + np.arange(k_max + 1)) / (a + b + k_max)
        value = np.maximum(retire, p / (1 - gamma))
        for k in range(k_max - 1, -1, -1):
            p = (a + np.arange(k + 1)) / (a + b + k)
            cont = p + gamma * (p * value[1:] + (1 - p) * value[:-1])
            value = np.maximum(retire, cont)
        lo, hi = (lam, hi) if cont[0] >= retire else (lo, lam)
    return 0.5 * (lo + hi)


def test_gittins_index_matches_published_values_and_a_direct_calibration():
    # Gittins' tables for a Beta(1, 1) arm: 0.7029 at discount 0.9, 0.8699 at 0.99.
    assert bb.gittins_index_table(0.9, 20)[0, 0] == pytest.approx(0.7029, abs=1e-4)
    assert bb.gittins_index_table(0.99, 20)[0, 0] == pytest.approx(0.8699, abs=1e-4)
    table = bb.gittins_index_table(0.9, 20)
    for s, f in [(0, 1), (3, 2), (10, 4), (2, 15)]:
        assert table[s, f] == pytest.approx(_single_state_index(0.9, s, f, depth=200), abs=2e-4)


@pytest.mark.parametrize("gamma,pulls", [(0.9, 30), (0.99, 100)])
def test_gittins_index_is_monotone_and_between_the_posterior_mean_and_one(gamma, pulls):
    table = bb.gittins_index_table(gamma, pulls)
    s, f = np.meshgrid(np.arange(pulls + 1), np.arange(pulls + 1), indexing="ij")
    valid = s + f <= pulls
    mean = (1.0 + s) / (2.0 + s + f)
    assert np.isfinite(table[valid]).all() and np.isnan(table[~valid]).all()
    assert (table[valid] >= mean[valid] - 1e-12).all()
    assert (table[valid] <= 1.0).all()
    # One more success raises the index; one more failure lowers it.
    up = table[1:, :-1] - table[:-1, :-1]
    down = table[:-1, 1:] - table[:-1, :-1]
    inner = valid[1:, :-1] & valid[:-1, 1:]
    assert (up[inner] > 0).all() and (down[inner] < 0).all()
    # Index above mean by an exploration bonus that shrinks with experience.
    assert table[0, 0] - mean[0, 0] > table[10, 10] - mean[10, 10] > 0


def test_gittins_table_is_cached_and_read_only():
    a = bb.gittins_index_table(0.95, 50)
    assert bb.gittins_index_table(0.95, 50) is a
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


# ------------------------------------------------------------------------ the policies' results


def test_thompson_and_gittins_beat_random_clearly_at_100_pulls_and_nothing_beats_the_oracle():
    tasks = bandit_tasks(300, seed=1)
    batch = bb.BanditBatch.from_tasks(tasks, range(300), 100)
    oracle = batch.oracle_totals()
    totals = {}
    for make in BANDIT_POLICIES:
        policy = make()
        result = bb.simulate_bandits(policy, batch, seed=2)
        totals[policy.name] = result.totals
        # Per trial, the expected reward of any sequence of pulls is at most n * max p.
        assert (result.expected.sum(axis=1) <= oracle + 1e-9).all()
        assert result.totals.mean() < oracle.mean()
    diff = totals["Thompson sampling"] - totals["random"]
    assert diff.mean() > 15.0 and diff.mean() - 1.96 * diff.std() / np.sqrt(300) > 10.0
    assert totals["Gittins (discount 0.95)"].mean() > totals["random"].mean() + 15.0


def test_psrl_beats_random_on_tabular_mdps_and_the_oracle_beats_both():
    tasks = mdp_tasks(300, seed=2)
    batch = bb.MDPBatch.from_tasks(tasks, range(300), episode_length=10, episodes=10)
    random = bb.simulate_mdps(bb.RandomMDPPolicy(), batch, seed=0).totals
    psrl = bb.simulate_mdps(bb.PSRL(), batch, seed=0).totals
    oracle_run = bb.simulate_mdps(bb.OracleMDPPolicy(batch), batch, seed=0).totals
    oracle = bb.optimal_trial_values(batch)
    diff = psrl - random
    assert diff.mean() - 1.96 * diff.std() / np.sqrt(300) > 15.0
    # The oracle policy earns its expected value (within noise) and more than every learner, by far.
    assert abs(oracle_run.mean() - oracle.mean()) < 3 * oracle_run.std() / np.sqrt(300) + 1.0
    for learner in (random, psrl):
        gap = oracle - learner
        assert gap.mean() - 1.96 * gap.std() / np.sqrt(300) > 30.0


def test_psrl_posterior_is_the_conjugate_normal_update():
    policy = bb.PSRL()
    policy.start(1, 2, 2, 3, np.random.default_rng(0))
    for r in (2.0, 0.0, 1.0):
        policy.update(np.array([1]), np.array([0]), np.array([r]), np.array([0]), observed=True)
    policy.update(np.array([1]), np.array([0]), np.array([5.0]), np.array([1]), observed=False)
    mean, var = policy.posterior_reward()
    # Prior N(1, 1), four unit-noise rewards summing to 8: N((1 + 8) / 5, 1 / 5).
    assert mean[0, 1, 0] == pytest.approx(9 / 5) and var[0, 1, 0] == pytest.approx(1 / 5)
    assert mean[0, 0, 0] == pytest.approx(1.0) and var[0, 0, 0] == pytest.approx(1.0)
    # The unobserved last transition of an episode is not counted.
    np.testing.assert_array_equal(policy.counts[0, 1, 0], [3.0, 0.0])
