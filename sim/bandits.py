"""Multi-armed Bernoulli bandits and random tabular MDPs: the small-scale benchmarks of RL² (Duan et al., 2016).

In both, one Gymnasium episode is one *trial*: a fixed number of interactions with one task, during
which a recurrent policy must explore and then exploit. Observations carry what RL² feeds its agent
(the previous action and reward, and for MDPs the state and an end-of-episode flag), so a memoryless
policy cannot do better than a fixed guess.

* ``"bernoulli_bandit"`` tasks have parameters ``p0 .. p{k-1}``, each arm's success probability.
* ``"tabular_mdp"`` tasks store the whole MDP as plain numbers: ``p_s{s}_a{a}_s{n}`` is the probability of
  moving from state ``s`` to state ``n`` under action ``a`` and ``r_s{s}_a{a}`` is the mean reward of
  taking ``a`` in ``s``. A task file therefore reproduces an MDP exactly, with no generator involved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from metarl_robot.rendering import canvas, draw_progress, fill_rect
from metarl_robot.envs import TaskEnv
from metarl_robot.tasks import TaskDistribution, TaskError, TaskSpec, Uniform

__all__ = [
    "BANDIT_FAMILY",
    "MDP_FAMILY",
    "BernoulliBanditEnv",
    "TabularMDPDistribution",
    "TabularMDPEnv",
    "arm_probabilities",
    "bandit_distribution",
    "bandit_oracle",
    "best_arm_probability",
    "expected_regret",
    "mdp_arrays",
    "mdp_task",
    "optimal_episode_value",
    "tabular_mdp_distribution",
    "tabular_mdp_oracle",
    "validate_bandit_task",
    "validate_mdp_task",
]

BANDIT_FAMILY = "bernoulli_bandit"
MDP_FAMILY = "tabular_mdp"
INITIAL_STATE = 0
"""Every episode of a tabular MDP starts in this state."""
ROW_SUM_TOLERANCE = 1e-6


def _number(task: TaskSpec, name: str, what: str) -> float:
    value = task.params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"{name}={value!r} must be a number: {what}")
    return float(value)


def _discrete_action(action: Any, n: int) -> int:
    """The integer in ``[0, n)`` that ``action`` (an int, or a one-element array) names."""
    value = np.asarray(action).reshape(-1)
    if value.size != 1 or float(value[0]) != int(value[0]) or not 0 <= int(value[0]) < n:
        raise ValueError(f"action {action!r} must be one integer in [0, {n})")
    return int(value[0])


def _one_hot(index: int | None, size: int) -> np.ndarray:
    vector = np.zeros(size, dtype=np.float32)
    if index is not None:
        vector[index] = 1.0
    return vector


def _discrete_interface(robot: str, layout: list[dict], action_name: str, n: int) -> dict[str, Any]:
    return {
        "robot": robot,
        "control_rate_hz": 1.0,
        "frame_id": "none",
        "joint_names": [],
        "observation_layout": layout,
        "action": {
            "mode": "discrete",
            "n": n,
            "names": [action_name],
            "units": ["index"],
            "scale": [1.0],
            "low": [0],
            "high": [n - 1],
        },
    }


# ============================================================================== Bernoulli bandits


def bandit_distribution(
    seed: int = 0, num_train: int = 64, num_test: int = 16, num_validation: int = 0, num_arms: int = 5
) -> TaskDistribution:
    """Bandits with ``num_arms`` arms whose success probabilities are i.i.d. uniform on [0, 1] (RL²'s setup)."""
    if num_arms < 2:
        raise TaskError(f"num_arms={num_arms} must be >= 2")
    return TaskDistribution(
        BANDIT_FAMILY,
        {f"p{i}": Uniform(0.0, 1.0) for i in range(num_arms)},
        seed=seed,
        num_train=num_train,
        num_test=num_test,
        num_validation=num_validation,
    )


def validate_bandit_task(task: TaskSpec, num_arms: int | None = None) -> None:
    """Raise :class:`TaskError` naming the bad field unless ``task`` is a bandit with ``num_arms`` arms
    (any number >= 2 when None) whose probabilities lie in [0, 1]."""
    if task.family != BANDIT_FAMILY:
        raise TaskError(f"family={task.family!r}: this env runs family {BANDIT_FAMILY!r} only")
    if num_arms is None:
        num_arms = len(task.params)
    expected = [f"p{i}" for i in range(num_arms)]
    unknown = sorted(set(task.params) - set(expected))
    if unknown:
        raise TaskError(f"unknown {BANDIT_FAMILY} parameter(s) {unknown} for {num_arms} arms; allowed: p0 .. p{num_arms - 1}")
    for name in expected:
        if name not in task.params:
            raise TaskError(f"missing {BANDIT_FAMILY} parameter {name!r}: the arm's success probability in [0, 1]")
        if not 0.0 <= _number(task, name, "a success probability in [0, 1]") <= 1.0:
            raise TaskError(f"{name}={task.params[name]!r} must lie in [0, 1] (a success probability)")
    if num_arms < 2:
        raise TaskError(f"a {BANDIT_FAMILY} task needs at least p0 and p1, got {sorted(task.params)}")


def arm_probabilities(task: TaskSpec) -> np.ndarray:
    """The arms' success probabilities ``[p0, p1, ...]``."""
    validate_bandit_task(task)
    return np.array([float(task[f"p{i}"]) for i in range(len(task.params))])


def best_arm_probability(task: TaskSpec) -> float:
    """The expected reward per pull of an agent that knows the best arm."""
    return float(arm_probabilities(task).max())


def expected_regret(task: TaskSpec, actions: Sequence[int]) -> float:
    """Expected regret of a sequence of pulls: ``sum_t (p* - p_{a_t})``; 0 for always pulling the best arm."""
    p = arm_probabilities(task)
    return float(np.sum(p.max() - p[np.asarray(actions, dtype=int)]))


class BernoulliBanditEnv(TaskEnv):
    """One trial of ``num_pulls`` pulls of a ``num_arms``-armed Bernoulli bandit.

    ============  ===============================================================================
    observation   ``[one_hot(previous arm) (k), previous reward]``, float32; all zeros at the start
    action        ``Discrete(k)``: the arm to pull
    reward        1 with the arm's probability ``p_a``, else 0
    terminated    after ``num_pulls`` pulls (the trial is the whole problem: nothing follows it)
    info          ``expected_reward`` (``p_a``), ``regret`` (``p* - p_a``), ``pulls_left``
    ============  ===============================================================================
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}
    demonstrator = "sim.bandits:bandit_oracle"
    """The task-aware policy ``metarl-robot gif --policy oracle`` uses: always the best arm."""

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        num_arms: int = 5,
        num_pulls: int = 10,
        render_mode: str | None = None,
    ) -> None:
        self._check_render_mode(render_mode)
        if num_arms < 2 or num_pulls < 1:
            raise ValueError(f"num_arms={num_arms} must be >= 2 and num_pulls={num_pulls} >= 1")
        self.render_mode = render_mode
        self.num_arms = int(num_arms)
        self.num_pulls = int(num_pulls)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.num_arms + 1,), np.float32)
        self.action_space = gym.spaces.Discrete(self.num_arms)
        self.interface = _discrete_interface(
            BANDIT_FAMILY,
            [
                {"name": "previous_action", "source": "previous_action", "field": "one_hot", "size": self.num_arms},
                {"name": "previous_reward", "source": "reward", "field": "value", "size": 1},
            ],
            "arm",
            self.num_arms,
        )
        self._task = bandit_distribution(num_arms=self.num_arms).train_tasks[0]
        if task is not None:
            self.set_task(task)
        self._p = np.zeros(self.num_arms)
        self._counts = np.zeros(self.num_arms, dtype=int)
        self._last_arm: int | None = None
        self._pulls = 0

    def validate_task(self, task: TaskSpec) -> None:
        validate_bandit_task(task, self.num_arms)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a trial; ``options={"task": TaskSpec}`` switches the task first."""
        self._start_reset(seed, options)
        self._p = np.array([float(self._task[f"p{i}"]) for i in range(self.num_arms)])
        self._counts[:] = 0
        self._last_arm = None
        self._pulls = 0
        return np.zeros(self.num_arms + 1, dtype=np.float32), {"pulls_left": self.num_pulls}

    def step(self, action):
        arm = _discrete_action(action, self.num_arms)
        reward = float(self.np_random.random() < self._p[arm])
        self._counts[arm] += 1
        self._last_arm = arm
        self._pulls += 1
        obs = np.append(_one_hot(arm, self.num_arms), np.float32(reward)).astype(np.float32)
        info = {
            "expected_reward": float(self._p[arm]),
            "regret": float(self._p.max() - self._p[arm]),
            "pulls_left": self.num_pulls - self._pulls,
        }
        return obs, reward, self._pulls >= self.num_pulls, False, info

    def render(self):
        """Bars of pull counts per arm (the last pulled arm in orange); black ticks at each arm's ``p``."""
        if self.render_mode != "rgb_array":
            return None
        height, width = 128, max(128, 3 * self.num_arms)
        image = canvas(height, width, (250, 250, 250))
        slot = width / self.num_arms
        bar_width = max(1.0, slot * 0.7)
        top, bottom = 8, height - 8
        for arm in range(self.num_arms):
            left = round(arm * slot + (slot - bar_width) / 2)
            right = max(left + 1, round(left + bar_width))
            bar = round((bottom - top) * self._counts[arm] / self.num_pulls)
            colour = (235, 140, 40) if arm == self._last_arm else (90, 120, 200)
            fill_rect(image, bottom - bar, left, bottom, right, colour)
            tick = round(bottom - (bottom - top) * self._p[arm])
            fill_rect(image, tick - 1, left, tick + 1, right, (20, 20, 20))
        draw_progress(image, self._pulls / self.num_pulls)
        return image


def bandit_oracle(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Actions ``[N]``: each task's best arm."""
    return np.array([int(np.argmax(arm_probabilities(t))) for t in tasks], dtype=np.int64)


# ================================================================================ tabular MDPs

_MDP_KEY = re.compile(r"^(?:p_s(\d+)_a(\d+)_s(\d+)|r_s(\d+)_a(\d+))$")


def mdp_task(transitions: np.ndarray, reward_means: np.ndarray, task_id: str = "") -> TaskSpec:
    """The ``tabular_mdp`` task of transition probabilities ``[S, A, S]`` and mean rewards ``[S, A]``."""
    transitions = np.asarray(transitions, dtype=np.float64)
    reward_means = np.asarray(reward_means, dtype=np.float64)
    num_states, num_actions = reward_means.shape
    if transitions.shape != (num_states, num_actions, num_states):
        raise TaskError(f"transitions have shape {transitions.shape}, expected {(num_states, num_actions, num_states)}")
    params: dict[str, float] = {}
    for s in range(num_states):
        for a in range(num_actions):
            params[f"r_s{s}_a{a}"] = float(reward_means[s, a])
            for n in range(num_states):
                params[f"p_s{s}_a{a}_s{n}"] = float(transitions[s, a, n])
    task = TaskSpec(MDP_FAMILY, params, task_id)
    validate_mdp_task(task, num_states, num_actions)
    return task


def _mdp_shape(task: TaskSpec) -> tuple[int, int]:
    """(S, A) implied by the task's ``r_s{s}_a{a}`` keys."""
    states, actions = set(), set()
    for key in task.params:
        match = _MDP_KEY.match(key)
        if match is None:
            raise TaskError(f"unknown {MDP_FAMILY} parameter {key!r}; parameters are p_s<s>_a<a>_s<next> and r_s<s>_a<a>")
        if match.group(4) is not None:
            states.add(int(match.group(4)))
            actions.add(int(match.group(5)))
    if not states:
        raise TaskError(f"a {MDP_FAMILY} task needs r_s<s>_a<a> mean rewards, e.g. 'r_s0_a0'")
    return max(states) + 1, max(actions) + 1


def validate_mdp_task(task: TaskSpec, num_states: int | None = None, num_actions: int | None = None) -> None:
    """Raise :class:`TaskError` naming the bad field unless ``task`` is a complete ``num_states`` x
    ``num_actions`` MDP (sizes inferred when None) whose transition rows are distributions."""
    if task.family != MDP_FAMILY:
        raise TaskError(f"family={task.family!r}: this env runs family {MDP_FAMILY!r} only")
    inferred = _mdp_shape(task)
    num_states = inferred[0] if num_states is None else num_states
    num_actions = inferred[1] if num_actions is None else num_actions
    expected = set()
    for s in range(num_states):
        for a in range(num_actions):
            expected.add(f"r_s{s}_a{a}")
            expected.update(f"p_s{s}_a{a}_s{n}" for n in range(num_states))
    unknown = sorted(set(task.params) - expected)
    if unknown:
        raise TaskError(
            f"{MDP_FAMILY} parameter(s) {unknown[:5]} do not fit {num_states} states and {num_actions} actions"
        )
    for s in range(num_states):
        for a in range(num_actions):
            name = f"r_s{s}_a{a}"
            if name not in task.params:
                raise TaskError(f"missing {MDP_FAMILY} parameter {name!r}: the mean reward of action {a} in state {s}")
            _number(task, name, "a mean reward")
            row = 0.0
            for n in range(num_states):
                name = f"p_s{s}_a{a}_s{n}"
                if name not in task.params:
                    raise TaskError(f"missing {MDP_FAMILY} parameter {name!r}: P(next state {n} | state {s}, action {a})")
                p = _number(task, name, "a transition probability in [0, 1]")
                if not 0.0 <= p <= 1.0:
                    raise TaskError(f"{name}={p!r} must lie in [0, 1] (a transition probability)")
                row += p
            if abs(row - 1.0) > ROW_SUM_TOLERANCE:
                raise TaskError(
                    f"p_s{s}_a{a}_s* sum to {row:.6g}; the next-state probabilities of a state and action must sum to 1"
                )


def mdp_arrays(task: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """Transition probabilities ``P[s, a, next]`` and mean rewards ``R[s, a]`` of a ``tabular_mdp`` task."""
    validate_mdp_task(task)
    num_states, num_actions = _mdp_shape(task)
    transitions = np.empty((num_states, num_actions, num_states))
    reward_means = np.empty((num_states, num_actions))
    for s in range(num_states):
        for a in range(num_actions):
            reward_means[s, a] = float(task[f"r_s{s}_a{a}"])
            for n in range(num_states):
                transitions[s, a, n] = float(task[f"p_s{s}_a{a}_s{n}"])
    return transitions, reward_means


def _finite_horizon_q(transitions: np.ndarray, reward_means: np.ndarray, horizon: int) -> list[np.ndarray]:
    """``Q[h]`` for ``h = 1 .. horizon`` steps to go (expected reward, no discount)."""
    values = np.zeros(transitions.shape[0])
    qs = []
    for _ in range(horizon):
        q = reward_means + transitions @ values
        values = q.max(axis=1)
        qs.append(q)
    return qs


def optimal_episode_value(task: TaskSpec, episode_length: int = 10, initial_state: int = INITIAL_STATE) -> float:
    """Expected return of one episode under the optimal policy of the *known* MDP (finite-horizon value
    iteration). A trial of ``n`` episodes can earn at most ``n`` times this in expectation."""
    transitions, reward_means = mdp_arrays(task)
    return float(_finite_horizon_q(transitions, reward_means, episode_length)[-1][initial_state].max())


class TabularMDPDistribution(TaskDistribution):
    """Random MDPs as in RL²: each ``P[s, a, :]`` is drawn from a flat Dirichlet (all concentrations 1) and
    each mean reward ``R[s, a]`` from N(1, 1); the reward of a step is then drawn from N(R[s, a], 1).

    Splits behave as in :class:`TaskDistribution` (independent seeded streams per split).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        num_train: int = 64,
        num_test: int = 16,
        num_validation: int = 0,
        num_states: int = 10,
        num_actions: int = 5,
    ) -> None:
        if num_states < 1 or num_actions < 1:
            raise TaskError(f"num_states={num_states} and num_actions={num_actions} must be >= 1")
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        super().__init__(
            MDP_FAMILY, {}, seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation
        )

    def _draw(self, rng: np.random.Generator, n: int, split: str) -> list[TaskSpec]:
        shape = (self.num_states, self.num_actions)
        tasks = []
        for i in range(n):
            transitions = rng.dirichlet(np.ones(self.num_states), size=shape)
            reward_means = rng.normal(1.0, 1.0, size=shape)
            tasks.append(mdp_task(transitions, reward_means, f"{split}-{i:04d}"))
        return tasks

    def validate(self, task: TaskSpec) -> None:
        validate_mdp_task(task, self.num_states, self.num_actions)


def tabular_mdp_distribution(
    seed: int = 0,
    num_train: int = 64,
    num_test: int = 16,
    num_validation: int = 0,
    num_states: int = 10,
    num_actions: int = 5,
) -> TabularMDPDistribution:
    """RL²'s random tabular MDPs (10 states, 5 actions by default); see :class:`TabularMDPDistribution`."""
    return TabularMDPDistribution(
        seed=seed,
        num_train=num_train,
        num_test=num_test,
        num_validation=num_validation,
        num_states=num_states,
        num_actions=num_actions,
    )


class TabularMDPEnv(TaskEnv):
    """One trial: ``episodes_per_trial`` episodes of ``episode_length`` steps in one random MDP.

    Every episode starts in state 0. The env does not reset between the episodes of a trial; it
    moves the agent back to state 0 and raises the end-of-episode flag in the next observation.

    ============  ===============================================================================
    observation   ``[one_hot(state) (S), one_hot(previous action) (A), previous reward,
                  previous step ended an episode (0/1)]``, float32; at the trial start the state
                  is 0 and the rest is zeros. After an episode's last step the state part already
                  shows the next episode's initial state.
    action        ``Discrete(A)``
    reward        drawn from N(R[s, a], 1)
    terminated    after the trial's last step (``episodes_per_trial * episode_length`` steps)
    info          ``episode_in_trial`` (0-based index of the episode the step belonged to),
                  ``step_in_episode`` (steps taken in it, 1..T), ``episode_done``, ``state``
                  (the state the step reached, before any move to the initial state),
                  ``expected_reward`` (R[s, a])
    ============  ===============================================================================
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}
    demonstrator = "sim.bandits:tabular_mdp_oracle"
    """The task-aware policy ``metarl-robot gif --policy oracle`` uses."""

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        num_states: int = 10,
        num_actions: int = 5,
        episode_length: int = 10,
        episodes_per_trial: int = 10,
        render_mode: str | None = None,
    ) -> None:
        self._check_render_mode(render_mode)
        if min(num_states, num_actions, episode_length, episodes_per_trial) < 1:
            raise ValueError("num_states, num_actions, episode_length and episodes_per_trial must be >= 1")
        self.render_mode = render_mode
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        self.episode_length = int(episode_length)
        self.episodes_per_trial = int(episodes_per_trial)
        size = self.num_states + self.num_actions + 2
        low = np.zeros(size, dtype=np.float32)
        high = np.ones(size, dtype=np.float32)
        low[-2], high[-2] = -np.inf, np.inf
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.num_actions)
        self.interface = _discrete_interface(
            MDP_FAMILY,
            [
                {"name": "state", "source": "state", "field": "one_hot", "size": self.num_states},
                {"name": "previous_action", "source": "previous_action", "field": "one_hot", "size": self.num_actions},
                {"name": "previous_reward", "source": "reward", "field": "value", "size": 1},
                {"name": "episode_done", "source": "episode_done", "field": "flag", "size": 1},
            ],
            "action",
            self.num_actions,
        )
        self._task = tabular_mdp_distribution(
            num_train=1, num_test=0, num_states=self.num_states, num_actions=self.num_actions
        ).train_tasks[0]
        if task is not None:
            self.set_task(task)
        self._arrays_of: TaskSpec | None = None
        self._cumulative = np.zeros((self.num_states, self.num_actions, self.num_states))
        self._reward_means = np.zeros((self.num_states, self.num_actions))
        self._visits = np.zeros(self.num_states, dtype=int)
        self._state = INITIAL_STATE
        self._episode = 0
        self._step_in_episode = 0

    def validate_task(self, task: TaskSpec) -> None:
        validate_mdp_task(task, self.num_states, self.num_actions)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a trial in state 0; ``options={"task": TaskSpec}`` switches the task first."""
        self._start_reset(seed, options)
        if self._arrays_of != self._task:
            transitions, self._reward_means = mdp_arrays(self._task)
            self._cumulative = np.cumsum(transitions, axis=2)
            self._arrays_of = self._task
        self._state = INITIAL_STATE
        self._episode = 0
        self._step_in_episode = 0
        self._visits[:] = 0
        self._visits[self._state] = 1
        obs = self._observe(None, 0.0, False)
        return obs, {"episode_in_trial": 0, "step_in_episode": 0, "state": self._state}

    def step(self, action):
        if self._episode >= self.episodes_per_trial:
            raise RuntimeError("the trial is over; call reset()")
        a = _discrete_action(action, self.num_actions)
        s = self._state
        reward = float(self.np_random.normal(self._reward_means[s, a], 1.0))
        # Inverse-CDF sampling; the row's last cumulative value is ~1, so clip to the last state.
        draw = self.np_random.random()
        next_state = min(int(np.searchsorted(self._cumulative[s, a], draw, side="right")), self.num_states - 1)
        episode = self._episode
        self._step_in_episode += 1
        step_in_episode = self._step_in_episode
        episode_done = self._step_in_episode >= self.episode_length
        self._state = next_state
        if episode_done:
            self._episode += 1
            self._step_in_episode = 0
            self._state = INITIAL_STATE
        self._visits[self._state] += 1
        terminated = self._episode >= self.episodes_per_trial
        info = {
            "episode_in_trial": episode,
            "step_in_episode": step_in_episode,
            "episode_done": episode_done,
            "state": next_state,
            "expected_reward": float(self._reward_means[s, a]),
        }
        return self._observe(a, reward, episode_done), reward, terminated, False, info

    def _observe(self, action: int | None, reward: float, episode_done: bool) -> np.ndarray:
        return np.concatenate(
            [
                _one_hot(self._state, self.num_states),
                _one_hot(action, self.num_actions),
                np.array([reward, float(episode_done)], dtype=np.float32),
            ]
        ).astype(np.float32)

    def render(self):
        """States as cells in rows of five, shaded by visits this trial; the current state in orange.
        The bottom bar is the elapsed part of the trial, with a tick per episode."""
        if self.render_mode != "rgb_array":
            return None
        size = 128
        image = canvas(size, size, (250, 250, 250))
        columns = min(5, self.num_states)
        rows = -(-self.num_states // columns)
        cell = min((size - 8) // columns, (size - 16) // rows)
        left0 = (size - columns * cell) // 2
        top0 = (size - 8 - rows * cell) // 2
        most = max(1, int(self._visits.max()))
        for s in range(self.num_states):
            r, c = divmod(s, columns)
            top, left = top0 + r * cell, left0 + c * cell
            shade = int(230 - 150 * self._visits[s] / most)
            colour = (235, 140, 40) if s == self._state else (shade, shade, 245)
            fill_rect(image, top + 2, left + 2, top + cell - 2, left + cell - 2, colour)
        steps = self._episode * self.episode_length + self._step_in_episode
        draw_progress(image, steps / (self.episodes_per_trial * self.episode_length))
        for e in range(1, self.episodes_per_trial):
            x = round(size * e / self.episodes_per_trial)
            fill_rect(image, size - 6, x, size, x + 1, (20, 20, 20))
        return image


def tabular_mdp_oracle(obs: np.ndarray, tasks: Sequence[TaskSpec], episode_length: int = 10) -> np.ndarray:
    """Actions ``[N]``: greedy in each task's known MDP with respect to ``episode_length``-step values.

    The observation does not say how many steps of the episode are left, so this acts as if a full
    episode were always ahead: optimal at each episode's first step, near-optimal after.
    """
    obs = np.asarray(obs, dtype=np.float64).reshape(len(tasks), -1)
    actions = []
    for o, task in zip(obs, tasks):
        transitions, reward_means = mdp_arrays(task)
        q = _finite_horizon_q(transitions, reward_means, episode_length)[-1]
        actions.append(int(np.argmax(q[int(np.argmax(o[: transitions.shape[0]]))])))
    return np.array(actions, dtype=np.int64)
