"""The classical controller an engineer would write for 2D navigation to a hidden goal.

The reward of :class:`sim.navigation.Navigation2DEnv` is minus the distance from the point to the goal
after each move, so three rewards at three non-collinear positions fix the goal (trilateration).
:class:`TrilaterationController` probes with three moves, solves for the goal by least squares over
every (position, distance) pair it has seen on the task (in constant time per step), and then drives straight at its estimate at
full speed. It keeps what it learned across the task's episodes (its ``reset`` is per task), never
needs ``adapt()``, and has the runtime controller's interface (``reset``, ``act``, ``observe``,
``adapt``) so :func:`metarl_robot.evaluation.evaluate` runs it under the same protocol as the learned
policies. It knows the reward's form, which no learned method here is told: it is the bar a learned
method must justify itself against, not a method of this project.
"""

from __future__ import annotations

import numpy as np

from sim.navigation import MAX_STEP_M

__all__ = ["TrilaterationController", "solve_goal"]

PROBE = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float64)
"""Normalised probing moves: right, up, left. After them the point has stood at three non-collinear
positions (one step apart), which is what the least-squares solve needs."""


def solve_goal(positions: np.ndarray, distances: np.ndarray) -> np.ndarray | None:
    """The point whose distances to ``positions [K, 2]`` best match ``distances [K]`` (linear least
    squares on the differences of the squared-distance equations), or ``None`` while the positions do
    not span the plane (fewer than three, or all on one line)."""
    p = np.asarray(positions, np.float64).reshape(-1, 2)
    d = np.asarray(distances, np.float64).reshape(-1)
    if len(p) < 3:
        return None
    # |p_i - g|^2 = d_i^2, minus the same for p_0:  2 (p_i - p_0) . g = |p_i|^2 - |p_0|^2 - d_i^2 + d_0^2
    a = 2.0 * (p[1:] - p[0])
    b = (p[1:] ** 2).sum(1) - (p[0] ** 2).sum() - d[1:] ** 2 + d[0] ** 2
    if np.linalg.matrix_rank(a, tol=1e-9) < 2:
        return None
    goal, *_ = np.linalg.lstsq(a, b, rcond=None)
    return goal


class TrilaterationController:
    """Probe three moves, trilaterate the goal from the rewards, drive to it (module docstring).

    Commands are displacements in metres (the robot contract's ``position_delta``), at most
    ``MAX_STEP_M`` per axis; the straight line to the estimate is kept by scaling both axes together."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the task: a new goal."""
        self._first: tuple[np.ndarray, float] | None = None
        self._normal = np.zeros((2, 2))  # the solve's normal equations, accumulated one step at a time
        self._rhs = np.zeros(2)
        self._goal: np.ndarray | None = None
        self._probe_step = 0

    @property
    def goal_estimate(self) -> np.ndarray | None:
        """The goal as last solved (m), or ``None`` before three non-collinear positions were seen."""
        return None if self._goal is None else self._goal.copy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        position = np.asarray(obs, np.float64).reshape(-1)[:2]
        if self._goal is None:
            move = PROBE[self._probe_step % len(PROBE)]
            self._probe_step += 1
            return (move * MAX_STEP_M).astype(np.float32)
        offset = (self._goal - position) / MAX_STEP_M
        offset /= max(float(np.abs(offset).max()), 1.0)
        return (offset * MAX_STEP_M).astype(np.float32)

    def observe(self, obs, action, reward: float, next_obs, done: bool) -> None:
        position, distance = np.asarray(next_obs, np.float64).reshape(-1)[:2].copy(), -float(reward)
        if self._first is None:
            self._first = (position, distance)
            return
        p0, d0 = self._first  # one row of solve_goal's system, added to its normal equations
        row = 2.0 * (position - p0)
        self._normal += np.outer(row, row)
        self._rhs += row * ((position**2).sum() - (p0**2).sum() - distance**2 + d0**2)
        if np.linalg.det(self._normal) > 1e-12 * max(1.0, float(np.trace(self._normal))) ** 2:
            self._goal = np.linalg.solve(self._normal, self._rhs)

    def adapt(self) -> None:
        """Nothing to do: the estimate is refreshed at every step in :meth:`observe`."""
