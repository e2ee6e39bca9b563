"""Classical baselines for RL²'s reference tasks (:mod:`sim.bandits`), run on many trials at once.

RL² (Duan et al., 2016) compares its learned agent with hand-designed algorithms on the same task
distributions: random, Thompson sampling, UCB1 and a Gittins-index policy on Bernoulli bandits, and
random and PSRL on random tabular MDPs. This module implements those baselines and plays them on
the exact dynamics of :class:`sim.bandits.BernoulliBanditEnv` and :class:`sim.bandits.TabularMDPEnv`,
vectorised over trials with numpy so thousands of trials take seconds.

How the batch simulator stays equal to the envs
-----------------------------------------------
The envs draw their randomness from ``env.np_random`` seeded by ``reset(seed=s)`` (a PCG64 generator,
the same as ``np.random.default_rng(s)``), and what they draw does not depend on the agent:

* the bandit draws one uniform ``u_t`` per pull and pays ``u_t < p[arm]``;
* the MDP draws, per step, one standard normal ``z_t`` (the reward is ``R[s, a] + z_t``) and then one
  uniform ``u_t`` (the next state is the first ``s'`` whose cumulative probability exceeds ``u_t``).

:class:`BanditBatch` and :class:`MDPBatch` draw those same numbers from the same seeds up front and
replay the envs' arithmetic; ``tests/sim/test_bandit_baselines.py`` checks, action for action and
reward for reward, that a policy played through the env (:func:`play_bandit_env`,
:func:`play_mdp_env`, which see only the env's observations) and through the batch simulator
(:func:`simulate_bandits`, :func:`simulate_mdps`) does the same thing on the same seeds.

Policies
--------
A policy acts on ``N`` trials at once: ``start(...)`` with a numpy ``Generator`` for its own
randomness (never the env's), ``select(...)`` returns one action per trial and ``update(...)`` learns
from what the env's observation shows (the previous action and reward; for MDPs the state too).

Bandits (Beta(1, 1) prior on every arm, i.e. the uniform distribution the tasks are drawn from):

* :class:`RandomBandit`: a uniformly random arm every pull.
* :class:`ThompsonSampling`: draw ``theta_a ~ Beta(1 + successes_a, 1 + failures_a)`` per arm, pull the
  largest.
* :class:`UCB1` (Auer et al., 2002): pull each arm once, then the arm maximising
  ``mean_a + sqrt(2 ln t / n_a)`` (``t``: pulls so far). Not tuned.
* :class:`GittinsIndexPolicy`: pull the arm with the largest *discounted* Gittins index of its Beta
  posterior, for a discount ``gamma`` given per horizon (see :func:`gittins_index_table` for the
  computation and its approximations). The Gittins index is Bayes-optimal for the infinite-horizon
  discounted problem, not for the finite ``n`` pulls of a trial; the discount plays the part of the
  horizon and is a tuning parameter (``bench/rl2_reference.py`` picks it on a validation split).

Tabular MDPs (every episode starts in state 0; the agent knows the episode length ``T``):

* :class:`RandomMDPPolicy`: uniformly random actions.
* :class:`PSRL` (Osband et al., 2013): at each episode start, sample an MDP from the posterior and
  follow its finite-horizon optimal (time-dependent) policy for the episode. Priors: each row
  ``P[s, a, :]`` ~ Dirichlet(1, ..., 1) (the distribution the tasks are drawn from), and each mean
  reward ``R[s, a]`` ~ N(1, 1) with the env's known unit reward noise (again the generating
  distribution), so the reward posterior is the conjugate normal: after ``m`` rewards summing to
  ``S``, ``R[s, a] ~ N((1 + S) / (1 + m), 1 / (1 + m))``. The transition of an episode's last step is
  not counted: the env's observation already shows the next episode's state 0 there, not where the
  step led. ``PSRL(reward_prior_mean=0.0)`` is the same algorithm with the reward prior N(0, 1), the
  default of Osband's TabulaRL (``FiniteHorizonTabularAgent``: ``alpha0=1, mu0=0, tau0=1, tau=1``),
  whose agents are the set RL² compares with; that prior is pessimistic about untried actions here.
* :class:`OracleMDPPolicy`: told the MDP; the finite-horizon optimal policy (for tests: its expected
  return is ``episodes * optimal_episode_value(task)``, which :func:`optimal_trial_values` computes).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from metarl_robot.tasks import TaskSpec
from sim.bandits import INITIAL_STATE, arm_probabilities, mdp_arrays

__all__ = [
    "BanditBatch",
    "BanditPolicy",
    "BanditResult",
    "GittinsIndexPolicy",
    "MDPBatch",
    "MDPPolicy",
    "MDPResult",
    "OracleMDPPolicy",
    "PSRL",
    "RandomBandit",
    "RandomMDPPolicy",
    "ThompsonSampling",
    "UCB1",
    "finite_horizon_q",
    "gittins_index_table",
    "optimal_trial_values",
    "play_bandit_env",
    "play_mdp_env",
    "simulate_bandits",
    "simulate_mdps",
]


def _argmax_random_ties(values: np.ndarray, rng: np.random.Generator, tol: float = 1e-12) -> np.ndarray:
    """Row-wise argmax of ``values [N, K]``, ties (within ``tol``) broken uniformly at random."""
    best = values.max(axis=1, keepdims=True)
    tied = values >= best - tol
    return np.argmax(np.where(tied, rng.random(values.shape), -1.0), axis=1)


# ============================================================================== Bernoulli bandits


@dataclasses.dataclass
class BanditBatch:
    """``N`` bandit trials: arm probabilities ``probs [N, k]`` and the env's uniforms ``uniforms [N, n]``."""

    probs: np.ndarray
    uniforms: np.ndarray

    @classmethod
    def from_tasks(cls, tasks: Sequence[TaskSpec], seeds: Sequence[int], num_pulls: int) -> "BanditBatch":
        """Trial ``i`` is ``tasks[i]`` after ``env.reset(seed=seeds[i])``: the same pulls pay the same."""
        if len(tasks) != len(seeds):
            raise ValueError(f"{len(tasks)} tasks but {len(seeds)} seeds")
        probs = np.stack([arm_probabilities(t) for t in tasks])
        uniforms = np.stack([np.random.default_rng(int(s)).random(num_pulls) for s in seeds])
        return cls(probs, uniforms)

    @property
    def num_trials(self) -> int:
        return self.probs.shape[0]

    @property
    def num_arms(self) -> int:
        return self.probs.shape[1]

    @property
    def num_pulls(self) -> int:
        return self.uniforms.shape[1]

    def oracle_totals(self) -> np.ndarray:
        """Expected total reward per trial of always pulling the best arm: ``n * max_a p_a``."""
        return self.num_pulls * self.probs.max(axis=1)


@dataclasses.dataclass
class BanditResult:
    """What a policy did: ``actions``, ``rewards`` (0/1) and ``expected`` (``p`` of the arm pulled), ``[N, n]``."""

    actions: np.ndarray
    rewards: np.ndarray
    expected: np.ndarray

    @property
    def totals(self) -> np.ndarray:
        """Total reward of each trial, ``[N]``."""
        return self.rewards.sum(axis=1)


class BanditPolicy:
    """Base of the bandit policies: keeps ``successes`` and ``failures`` per trial and arm, ``[N, k]``."""

    name = "policy"

    def start(self, num_trials: int, num_arms: int, num_pulls: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.num_pulls = int(num_pulls)
        self.successes = np.zeros((num_trials, num_arms))
        self.failures = np.zeros((num_trials, num_arms))

    def select(self, t: int) -> np.ndarray:
        """The arm to pull at pull ``t`` (0-based) of every trial, ``[N]`` ints."""
        raise NotImplementedError

    def update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        rows = np.arange(len(arms))
        self.successes[rows, arms] += rewards
        self.failures[rows, arms] += 1.0 - rewards


class RandomBandit(BanditPolicy):
    """A uniformly random arm every pull."""

    name = "random"

    def select(self, t: int) -> np.ndarray:
        return self.rng.integers(self.successes.shape[1], size=self.successes.shape[0])


class ThompsonSampling(BanditPolicy):
    """Thompson sampling with Beta(1, 1) priors: pull the arm whose posterior draw is largest."""

    name = "Thompson sampling"

    def select(self, t: int) -> np.ndarray:
        return np.argmax(self.rng.beta(1.0 + self.successes, 1.0 + self.failures), axis=1)


class UCB1(BanditPolicy):
    """UCB1: each arm once (in random order), then ``argmax mean_a + sqrt(2 ln t / n_a)``."""

    name = "UCB1"

    def select(self, t: int) -> np.ndarray:
        pulls = self.successes + self.failures
        with np.errstate(divide="ignore", invalid="ignore"):
            score = self.successes / pulls + np.sqrt(2.0 * np.log(max(t, 1)) / pulls)
        score = np.where(pulls == 0, np.inf, score)
        return _argmax_random_ties(score, self.rng)


@functools.lru_cache(maxsize=32)
def _gittins_table_cached(discount: float, max_pulls: int, depth: int, grid: int) -> np.ndarray:
    gamma = float(discount)
    scale = 1.0 / (1.0 - gamma)
    lam = np.linspace(0.0, 1.0, grid)  # retirement rates: reward per step of retiring for good
    retire = (lam * scale)[:, None]
    table = np.full((max_pulls + 1, max_pulls + 1), np.nan)
    # Truncation: at ``depth`` pulls, treat the posterior mean as the truth (no more learning): the
    # best one can do is retire or pull for ever, max(lambda, p) / (1 - gamma).
    p = (1.0 + np.arange(depth + 1)) / (depth + 2.0)
    stop = retire >= p * scale
    value = np.where(stop, retire, p * scale)
    slope = np.where(stop, scale, 0.0)  # d value / d lambda
    for t in range(depth - 1, -1, -1):
        succ = np.arange(t + 1)
        p = (1.0 + succ) / (t + 2.0)  # posterior mean of Beta(1 + succ, 1 + t - succ)
        cont = p + gamma * (p * value[:, 1 : t + 2] + (1.0 - p) * value[:, : t + 1])
        cont_slope = gamma * (p * slope[:, 1 : t + 2] + (1.0 - p) * slope[:, : t + 1])
        gap = cont - retire  # decreasing and convex in lambda; the index is its root
        if t <= max_pulls:
            k = np.clip((gap >= 0.0).sum(axis=0) - 1, 0, grid - 2)
            g0, g1 = gap[k, succ], gap[k + 1, succ]
            s0, s1 = cont_slope[k, succ] - scale, cont_slope[k + 1, succ] - scale
            # A convex decreasing function lies below its chord and above its tangents, so the chord's
            # root is an upper bound on the index and the tangents' roots are lower bounds.
            chord = lam[k] + (lam[k + 1] - lam[k]) * g0 / (g0 - g1)
            tangent = np.maximum(lam[k] - g0 / s0, lam[k + 1] - g1 / s1)
            table[succ, t - succ] = np.minimum(chord, tangent)
        stop = gap < 0.0
        value = np.where(stop, retire, cont)
        slope = np.where(stop, scale, cont_slope)
    table.setflags(write=False)
    return table


def gittins_index_table(discount: float, max_pulls: int, *, depth: int | None = None, grid: int = 256) -> np.ndarray:
    """Discounted Gittins indices of a Bernoulli arm with a Beta(1, 1) prior: ``table[s, f]`` is the index
    after ``s`` successes and ``f`` failures (posterior Beta(1 + s, 1 + f)), for ``s + f <= max_pulls``
    (NaN elsewhere). Read-only and cached per argument set.

    The index of a state is the retirement rate ``lambda`` at which pulling once more and then acting
    optimally (pull on or retire for ever with ``lambda`` per step) is worth exactly as much as retiring
    now, with discount ``discount`` per pull (the calibration definition; Gittins, 1979). Values: Beta(1, 1)
    gives 0.7029 at ``discount=0.9`` and 0.8699 at 0.99, as in Gittins' tables.

    Computation (vectorised): one backward induction over the whole grid of states ``s + f <= depth``
    for ``grid`` retirement rates ``lambda`` in [0, 1] at once, carrying values and their derivatives
    in ``lambda``; each state's index is the root of (continue - retire), located between two grid
    rates and taken as the smaller of the chord's root (an upper bound) and the larger tangent root
    (a lower bound). Approximations:

    * the grid: with the default 256 rates the index is within about 1e-5 of a 2048-rate grid at
      ``discount=0.9`` and within 7e-4 at 0.99 (worst states: many pulls and a mean near 1; the
      99th percentile over states with up to 100 pulls is 3e-4);
    * truncation at ``depth`` pulls (default ``max_pulls + min(6 / (1 - discount), 2000)``), beyond which
      the posterior mean is taken as the truth. Doubling the depth changed no index by more than 1e-7 at
      ``discount=0.99``; at 0.998 and 0.999 with 500 pulls (depth 2500), going to depth 4500 moves 99% of
      the indices by less than 3e-5 and the worst (states near 500 pulls) by 1.5e-3.

    Cost grows as ``grid * depth**2``: a few seconds for ``discount=0.998`` up to 500 pulls.
    """
    if not 0.0 < discount < 1.0:
        raise ValueError(f"discount={discount} must lie in (0, 1)")
    if depth is None:
        depth = max_pulls + int(np.ceil(min(6.0 / (1.0 - discount), 2000.0)))
    if depth <= max_pulls:
        raise ValueError(f"depth={depth} must exceed max_pulls={max_pulls}")
    return _gittins_table_cached(float(discount), int(max_pulls), int(depth), int(grid))


class GittinsIndexPolicy(BanditPolicy):
    """Pull the arm with the largest discounted Gittins index (:func:`gittins_index_table`) of its
    Beta(1 + successes, 1 + failures) posterior; ties broken at random."""

    def __init__(self, discount: float, grid: int = 256, table_pulls: int = 0) -> None:
        self.discount = float(discount)
        self.grid = int(grid)
        self.table_pulls = int(table_pulls)
        """Build the index table for at least this many pulls (one cached table then serves every n)."""
        self.name = f"Gittins (discount {self.discount:g})"

    def start(self, num_trials: int, num_arms: int, num_pulls: int, rng: np.random.Generator) -> None:
        super().start(num_trials, num_arms, num_pulls, rng)
        self.table = gittins_index_table(self.discount, max(num_pulls, self.table_pulls), grid=self.grid)

    def select(self, t: int) -> np.ndarray:
        index = self.table[self.successes.astype(int), self.failures.astype(int)]
        return _argmax_random_ties(index, self.rng)


def simulate_bandits(policy: BanditPolicy, batch: BanditBatch, seed: int = 0) -> BanditResult:
    """Play ``policy`` on every trial of ``batch`` at once; ``seed`` seeds the policy's own randomness."""
    n, rows = batch.num_pulls, np.arange(batch.num_trials)
    policy.start(batch.num_trials, batch.num_arms, n, np.random.default_rng(seed))
    actions = np.empty((batch.num_trials, n), dtype=np.int64)
    rewards = np.empty((batch.num_trials, n))
    for t in range(n):
        arms = np.asarray(policy.select(t), dtype=np.int64)
        p = batch.probs[rows, arms]
        r = (batch.uniforms[:, t] < p).astype(np.float64)
        policy.update(arms, r)
        actions[:, t], rewards[:, t] = arms, r
    return BanditResult(actions, rewards, batch.probs[rows[:, None], actions])


def play_bandit_env(policy: BanditPolicy, env, seed: int, policy_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Play one trial of ``policy`` in a :class:`sim.bandits.BernoulliBanditEnv` (after
    ``env.reset(seed=seed)``), learning only from the observations (previous arm and reward).
    Returns ``(actions [n], rewards [n])``."""
    k, n = env.num_arms, env.num_pulls
    obs, _ = env.reset(seed=seed)
    policy.start(1, k, n, np.random.default_rng(policy_seed))
    actions, rewards = [], []
    terminated, t = False, 0
    while not terminated:
        arm = int(policy.select(t)[0])
        obs, reward, terminated, _, _ = env.step(arm)
        policy.update(np.array([int(np.argmax(obs[:k]))]), np.array([float(obs[k])]))
        actions.append(arm)
        rewards.append(reward)
        t += 1
    return np.array(actions), np.array(rewards)


# ================================================================================ tabular MDPs


def finite_horizon_q(transitions: np.ndarray, reward_means: np.ndarray, horizon: int) -> np.ndarray:
    """``Q[h - 1]`` for ``h = 1 .. horizon`` steps to go, of ``N`` MDPs at once: ``transitions [N, S, A, S]``,
    ``reward_means [N, S, A]`` -> ``[horizon, N, S, A]`` (no discount)."""
    values = np.zeros(transitions.shape[:2])
    qs = np.empty((horizon,) + reward_means.shape)
    for h in range(horizon):
        qs[h] = reward_means + np.einsum("nsat,nt->nsa", transitions, values)
        values = qs[h].max(axis=2)
    return qs


@dataclasses.dataclass
class MDPBatch:
    """``N`` trials of ``episodes`` episodes of ``episode_length`` steps: the MDPs (``transitions
    [N, S, A, S]``, ``reward_means [N, S, A]``) and the env's draws per step (``normals``, ``uniforms``,
    ``[N, episodes * episode_length]``)."""

    transitions: np.ndarray
    reward_means: np.ndarray
    normals: np.ndarray
    uniforms: np.ndarray
    episode_length: int
    episodes: int

    def __post_init__(self) -> None:
        # Cumulative rows exactly as the env computes them, so inverse-CDF sampling picks the same state.
        self.cumulative = np.cumsum(self.transitions, axis=3)

    @classmethod
    def from_tasks(
        cls, tasks: Sequence[TaskSpec], seeds: Sequence[int], episode_length: int = 10, episodes: int = 10
    ) -> "MDPBatch":
        """Trial ``i`` is ``tasks[i]`` after ``env.reset(seed=seeds[i])`` in a :class:`TabularMDPEnv`."""
        if len(tasks) != len(seeds):
            raise ValueError(f"{len(tasks)} tasks but {len(seeds)} seeds")
        arrays = [mdp_arrays(t) for t in tasks]
        steps = episode_length * episodes
        normals = np.empty((len(tasks), steps))
        uniforms = np.empty((len(tasks), steps))
        for i, s in enumerate(seeds):
            rng = np.random.default_rng(int(s))
            for t in range(steps):  # the env's order: the reward's normal, then the next state's uniform
                normals[i, t] = rng.standard_normal()
                uniforms[i, t] = rng.random()
        return cls(
            np.stack([a[0] for a in arrays]), np.stack([a[1] for a in arrays]), normals, uniforms, episode_length, episodes
        )

    @property
    def num_trials(self) -> int:
        return self.transitions.shape[0]

    @property
    def num_states(self) -> int:
        return self.transitions.shape[1]

    @property
    def num_actions(self) -> int:
        return self.transitions.shape[2]


def optimal_trial_values(batch: MDPBatch) -> np.ndarray:
    """Expected total reward per trial of the optimal policy of the known MDP: ``episodes`` times the
    optimal episode value from state 0 (:func:`sim.bandits.optimal_episode_value`), ``[N]``."""
    q = finite_horizon_q(batch.transitions, batch.reward_means, batch.episode_length)[-1]
    return batch.episodes * q[:, INITIAL_STATE].max(axis=1)


@dataclasses.dataclass
class MDPResult:
    """What a policy did: ``actions``, ``rewards`` and ``expected`` (``R[s, a]``), ``[N, steps]``."""

    actions: np.ndarray
    rewards: np.ndarray
    expected: np.ndarray

    @property
    def totals(self) -> np.ndarray:
        return self.rewards.sum(axis=1)


class MDPPolicy:
    """Base of the MDP policies. ``start`` once per trial, ``begin_episode`` at each episode start,
    ``select(states, h)`` at step ``h`` (0-based) of the episode, and ``update`` with each transition;
    ``observed`` is False where the next state is not seen (an episode's last step)."""

    name = "policy"

    def start(self, num_trials: int, num_states: int, num_actions: int, episode_length: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.shape = (int(num_trials), int(num_states), int(num_actions))
        self.episode_length = int(episode_length)

    def begin_episode(self) -> None:
        pass

    def select(self, states: np.ndarray, h: int) -> np.ndarray:
        raise NotImplementedError

    def update(self, states, actions, rewards, next_states, observed: bool) -> None:
        pass


class RandomMDPPolicy(MDPPolicy):
    """Uniformly random actions."""

    name = "random"

    def select(self, states: np.ndarray, h: int) -> np.ndarray:
        return self.rng.integers(self.shape[2], size=self.shape[0])


class _PlanningPolicy(MDPPolicy):
    """Acts by the time-dependent optimal policy of ``self.q`` (``[T, N, S, A]``, steps to go)."""

    def select(self, states: np.ndarray, h: int) -> np.ndarray:
        rows = np.arange(self.shape[0])
        return np.argmax(self.q[self.episode_length - 1 - h][rows, states], axis=1)


class PSRL(_PlanningPolicy):
    """Posterior sampling for RL: a fresh posterior sample of the MDP at each episode start, followed by
    its finite-horizon optimal policy. Dirichlet(``dirichlet_prior``) transition rows; reward means
    N(``reward_prior_mean``, ``reward_prior_var``) with known reward noise variance ``reward_noise_var``."""

    name = "PSRL"

    def __init__(
        self,
        dirichlet_prior: float = 1.0,
        reward_prior_mean: float = 1.0,
        reward_prior_var: float = 1.0,
        reward_noise_var: float = 1.0,
    ) -> None:
        self.dirichlet_prior = float(dirichlet_prior)
        self.reward_prior_mean, self.reward_prior_var = float(reward_prior_mean), float(reward_prior_var)
        self.reward_noise_var = float(reward_noise_var)

    def start(self, num_trials, num_states, num_actions, episode_length, rng) -> None:
        super().start(num_trials, num_states, num_actions, episode_length, rng)
        n, s, a = self.shape
        self.counts = np.zeros((n, s, a, s))
        self.reward_sum = np.zeros((n, s, a))
        self.reward_n = np.zeros((n, s, a))

    def posterior_reward(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of every ``R[s, a]``, ``[N, S, A]`` each."""
        precision = 1.0 / self.reward_prior_var + self.reward_n / self.reward_noise_var
        mean = (self.reward_prior_mean / self.reward_prior_var + self.reward_sum / self.reward_noise_var) / precision
        return mean, 1.0 / precision

    def begin_episode(self) -> None:
        gammas = self.rng.standard_gamma(self.dirichlet_prior + self.counts)
        transitions = gammas / gammas.sum(axis=3, keepdims=True)
        mean, var = self.posterior_reward()
        rewards = mean + np.sqrt(var) * self.rng.standard_normal(mean.shape)
        self.q = finite_horizon_q(transitions, rewards, self.episode_length)

    def update(self, states, actions, rewards, next_states, observed: bool) -> None:
        rows = np.arange(self.shape[0])
        self.reward_sum[rows, states, actions] += rewards
        self.reward_n[rows, states, actions] += 1.0
        if observed:
            self.counts[rows, states, actions, next_states] += 1.0


class OracleMDPPolicy(_PlanningPolicy):
    """Told the MDPs: their finite-horizon optimal policy (an upper bound for every other policy)."""

    name = "oracle"

    def __init__(self, batch: MDPBatch) -> None:
        self.q = finite_horizon_q(batch.transitions, batch.reward_means, batch.episode_length)


def simulate_mdps(policy: MDPPolicy, batch: MDPBatch, seed: int = 0) -> MDPResult:
    """Play ``policy`` on every trial of ``batch`` at once; ``seed`` seeds the policy's own randomness."""
    n, T = batch.num_trials, batch.episode_length
    rows = np.arange(n)
    policy.start(n, batch.num_states, batch.num_actions, T, np.random.default_rng(seed))
    steps = T * batch.episodes
    actions = np.empty((n, steps), dtype=np.int64)
    rewards = np.empty((n, steps))
    expected = np.empty((n, steps))
    states = np.full(n, INITIAL_STATE, dtype=np.int64)
    for t in range(steps):
        h = t % T
        if h == 0:
            policy.begin_episode()
        a = np.asarray(policy.select(states, h), dtype=np.int64)
        mean = batch.reward_means[rows, states, a]
        r = mean + batch.normals[:, t]
        cumulative = batch.cumulative[rows, states, a]
        # searchsorted(cumulative, u, side="right") as the env does, clipped to the last state.
        nxt = np.minimum((cumulative <= batch.uniforms[:, t, None]).sum(axis=1), batch.num_states - 1)
        last = h == T - 1
        policy.update(states, a, r, nxt, observed=not last)
        actions[:, t], rewards[:, t], expected[:, t] = a, r, mean
        states = np.full(n, INITIAL_STATE, dtype=np.int64) if last else nxt
    return MDPResult(actions, rewards, expected)


def play_mdp_env(policy: MDPPolicy, env, seed: int, policy_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Play one trial of ``policy`` in a :class:`sim.bandits.TabularMDPEnv` (after ``env.reset(seed=seed)``),
    learning only from what the robot loop hands an agent: the observations (state, previous action,
    episode-end flag) and the step's reward (the float the env returns; the observation carries it as
    float32).
    Returns ``(actions, rewards)``, one per step of the trial."""
    S, A, T = env.num_states, env.num_actions, env.episode_length
    obs, _ = env.reset(seed=seed)
    policy.start(1, S, A, T, np.random.default_rng(policy_seed))
    actions, rewards = [], []
    terminated, h = False, 0
    while not terminated:
        if h == 0:
            policy.begin_episode()
        state = int(np.argmax(obs[:S]))
        action = int(policy.select(np.array([state]), h)[0])
        obs, reward, terminated, _, _ = env.step(action)
        ended = bool(obs[S + A + 1])
        policy.update(
            np.array([state]), np.array([int(np.argmax(obs[S : S + A]))]), np.array([float(reward)]),
            np.array([int(np.argmax(obs[:S]))]), observed=not ended,
        )
        actions.append(action)
        rewards.append(reward)
        h = 0 if ended else h + 1
    return np.array(actions), np.array(rewards)
