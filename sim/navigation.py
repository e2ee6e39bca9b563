"""2D point navigation to a hidden goal: the MAML paper's (Finn et al., 2017) reference RL task.

A point starts at the origin and moves by a commanded displacement each step; the goal is drawn
uniformly from ``[-0.5, 0.5]^2`` and the reward is minus the distance to it, so the goal can only be
inferred from rewards. Tasks are of family ``"navigation2d"`` with parameters ``goal_x`` and ``goal_y``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from metarl_robot.rendering import canvas, draw_line, draw_progress, fill_disc, fill_rect
from metarl_robot.contract import JointStateSample, ObservationLayout, RobotInputs
from metarl_robot.envs import TaskEnv
from metarl_robot.tasks import TaskDistribution, TaskError, TaskSpec, Uniform

__all__ = [
    "FAMILY",
    "GOAL_RANGE_M",
    "MAX_STEP_M",
    "NAVIGATION_INTERFACE",
    "Navigation2DEnv",
    "navigation_distribution",
    "navigation_oracle",
    "SparsePointRobotEnv",
    "sparse_point_distribution",
    "validate_navigation_task",
]

FAMILY = "navigation2d"
GOAL_RANGE_M = 0.5
"""Goals lie in ``[-GOAL_RANGE_M, GOAL_RANGE_M]^2``."""
MAX_STEP_M = 0.1
"""Largest displacement per step and axis (the action scale)."""
GOAL_TOLERANCE_M = 0.01
"""The episode terminates when the point is this close to the goal on both axes (MAML's criterion)."""
SUCCESS_RADIUS_M = 0.1

NAVIGATION_INTERFACE = {
    "robot": "point_mass",
    "control_rate_hz": 10.0,
    "frame_id": "world",
    "joint_names": ["x", "y"],
    "observation_layout": [
        {"name": "position", "source": "joint_states", "field": "position", "joints": ["x", "y"], "size": 2}
    ],
    "action": {
        "mode": "position_delta",
        "names": ["dx", "dy"],
        "units": ["m", "m"],
        "scale": [MAX_STEP_M, MAX_STEP_M],
        "low": [-MAX_STEP_M, -MAX_STEP_M],
        "high": [MAX_STEP_M, MAX_STEP_M],
    },
}
"""The robot contract: observation = position (m), action = displacement per step (m), normalised by ``scale``."""
_LAYOUT = ObservationLayout.parse(NAVIGATION_INTERFACE["observation_layout"])
_JOINTS = ("x", "y")
_NO_VALUES = np.zeros(0)


def navigation_distribution(
    seed: int = 0, num_train: int = 64, num_test: int = 16, num_validation: int = 0
) -> TaskDistribution:
    """Goals uniform in ``[-0.5, 0.5]^2``, as in the MAML paper; train, test and validation goals are
    independent draws of the same distribution."""
    goal = Uniform(-GOAL_RANGE_M, GOAL_RANGE_M)
    return TaskDistribution(
        FAMILY,
        {"goal_x": goal, "goal_y": goal},
        seed=seed,
        num_train=num_train,
        num_test=num_test,
        num_validation=num_validation,
    )


def validate_navigation_task(task: TaskSpec) -> None:
    """Raise :class:`TaskError` naming the offending field if ``task`` is not a navigation task.

    Goals outside the training range are allowed (to test extrapolation); they must be finite numbers.
    """
    if task.family != FAMILY:
        raise TaskError(f"family={task.family!r}: Navigation2DEnv runs family {FAMILY!r} only")
    unknown = sorted(set(task.params) - {"goal_x", "goal_y"})
    if unknown:
        raise TaskError(f"unknown navigation2d parameter(s) {unknown}; allowed: goal_x, goal_y")
    for name in ("goal_x", "goal_y"):
        if name not in task.params:
            raise TaskError(f"missing navigation2d parameter {name!r}: the goal coordinate in metres")
        value = task.params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TaskError(f"{name}={value!r} must be a number (the goal coordinate in metres)")


class Navigation2DEnv(TaskEnv):
    """Move a point from the origin to a hidden goal within ``max_episode_steps`` steps.

    ============  ===============================================================================
    observation   position ``(x, y)`` in m, float32
    action        ``Box(-1, 1, (2,))``: displacement ``clip(action, -1, 1) * 0.1`` m per axis
    reward        ``-||position - goal||`` after the move
    terminated    within 0.01 m of the goal on both axes (``terminate_at_goal``, MAML's criterion)
    truncated     after ``max_episode_steps`` (100) steps
    observe_goal  ``True`` appends the goal ``(goal_x, goal_y)`` to the observation (the task is then
                  visible: the MAML paper's oracle is a policy trained this way)
    info          ``success``: within 0.1 m of the goal (Euclidean) after the step; ``distance_m``
    ============  ===============================================================================
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    interface = NAVIGATION_INTERFACE
    demonstrator = "sim.navigation:navigation_oracle"
    """The task-aware policy ``metarl-robot gif --policy oracle`` and imitation warm starts use."""

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        max_episode_steps: int = 100,
        terminate_at_goal: bool = True,
        observe_goal: bool = False,
        render_mode: str | None = None,
    ) -> None:
        self._check_render_mode(render_mode)
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} must be >= 1")
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_at_goal = bool(terminate_at_goal)
        # observe_goal appends the goal to the observation: the task is then visible, which makes the
        # env the "oracle" of the MAML paper (a policy trained with the goal as input).
        self.observe_goal = bool(observe_goal)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4 if self.observe_goal else 2,), np.float32)
        if self.observe_goal:
            goal_entry = {"name": "goal", "source": "task", "field": "goal", "size": 2}
            self.interface = {**NAVIGATION_INTERFACE,
                              "observation_layout": [*NAVIGATION_INTERFACE["observation_layout"], goal_entry]}
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._task = navigation_distribution().train_tasks[0]
        if task is not None:
            self.set_task(task)
        self._goal = np.zeros(2)
        self._position = np.zeros(2)
        self._path: list[np.ndarray] = [self._position.copy()]
        self._elapsed_steps = 0

    # ---------------------------------------------------------------------------------- tasks

    def validate_task(self, task: TaskSpec) -> None:
        validate_navigation_task(task)

    # ------------------------------------------------------------------------------- episodes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start at the origin; ``options={"task": TaskSpec}`` switches the task first."""
        self._start_reset(seed, options)
        self._goal = np.array([self._task["goal_x"], self._task["goal_y"]], dtype=np.float64)
        self._position = np.zeros(2)
        self._path = [self._position.copy()]
        self._elapsed_steps = 0
        return self._observation(), {"distance_m": self._distance(), "success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._position = self._position + action * MAX_STEP_M
        self._path.append(self._position.copy())
        self._elapsed_steps += 1
        distance = self._distance()
        offset = np.abs(self._position - self._goal)
        terminated = self.terminate_at_goal and bool(np.all(offset < GOAL_TOLERANCE_M))
        truncated = self._elapsed_steps >= self.max_episode_steps
        info = {"distance_m": distance, "success": distance < SUCCESS_RADIUS_M}
        return self._observation(), -distance, terminated, truncated, info

    def robot_inputs(self) -> RobotInputs:
        """What a point robot would publish: a joint state of joints ``x`` and ``y`` at its position (m)."""
        return RobotInputs(JointStateSample(_JOINTS, self._position.copy(), _NO_VALUES, _NO_VALUES))

    def _observation(self) -> np.ndarray:
        obs = _LAYOUT.assemble_inputs(self.robot_inputs())  # the robot contract's assembly
        return np.concatenate([obs, self._goal.astype(np.float32)]) if self.observe_goal else obs

    def _distance(self) -> float:
        return float(np.linalg.norm(self._position - self._goal))

    # ------------------------------------------------------------------------------ rendering

    def render(self):
        """A 128x128 top view of ``[-1, 1]^2`` m: goal range (grey square), goal (green), path and point (blue)."""
        if self.render_mode != "rgb_array":
            return None
        size = 128
        image = canvas(size, size, (250, 250, 250))

        def pixel(xy: np.ndarray) -> tuple[float, float]:
            # World x to the right, y up; the view spans [-1, 1] m on both axes.
            return ((1.0 - xy[1]) * (size - 1) / 2.0, (xy[0] + 1.0) * (size - 1) / 2.0)

        low, high = pixel(np.array([-GOAL_RANGE_M, GOAL_RANGE_M])), pixel(np.array([GOAL_RANGE_M, -GOAL_RANGE_M]))
        fill_rect(image, low[0], low[1], high[0] + 1, high[1] + 1, (228, 228, 228))
        goal = pixel(self._goal)
        fill_disc(image, *goal, SUCCESS_RADIUS_M * (size - 1) / 2.0, (190, 235, 190))
        fill_disc(image, *goal, 2.5, (20, 150, 40))
        for start, end in zip(self._path[:-1], self._path[1:]):
            draw_line(image, pixel(start), pixel(end), (120, 150, 220))
        fill_disc(image, *pixel(self._position), 3.0, (30, 60, 200))
        draw_progress(image, self._elapsed_steps / self.max_episode_steps)
        return image


def navigation_oracle(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Normalised actions ``[N, 2]`` that move each point straight towards its task's goal at full speed
    along the straight line (the last step lands on the goal)."""
    obs = np.asarray(obs, dtype=np.float64).reshape(len(tasks), -1)[:, :2]
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks], dtype=np.float64)
    offset = (goals - obs) / MAX_STEP_M
    # Scale the whole vector so the largest axis is at most 1: the direction stays straight at the goal.
    largest = np.maximum(np.abs(offset).max(axis=1, keepdims=True), 1.0)
    return (offset / largest).astype(np.float32)


# ------------------------------------------------------------------------- sparse point robot (PEARL)
SPARSE_GOAL_RADIUS_M = 1.0
"""Goals of the sparse point robot lie on the upper half of this circle around the start."""
SPARSE_REWARD_RADIUS_M = 0.2
"""The sparse point robot earns reward only within this distance of the goal."""


class _SemicircleGoals(TaskDistribution):
    """Goals at angle ``goal_angle`` (uniform in [0, pi]) on the circle of radius 1 m; a task carries only
    ``goal_x`` and ``goal_y`` (the angle is how they were drawn)."""

    def _draw(self, rng: np.random.Generator, n: int, split: str) -> list[TaskSpec]:
        tasks = []
        for task in super()._draw(rng, n, split):
            angle = float(task.params["goal_angle"])
            params = {"goal_x": SPARSE_GOAL_RADIUS_M * float(np.cos(angle)), "goal_y": SPARSE_GOAL_RADIUS_M * float(np.sin(angle))}
            tasks.append(TaskSpec(FAMILY, params, task.task_id))
        return tasks


def sparse_point_distribution(
    seed: int = 0, num_train: int = 80, num_test: int = 20, num_validation: int = 0
) -> TaskDistribution:
    """PEARL's sparse point robot task family (Rakelly et al., 2019): goals uniform on the half circle of
    radius 1 m above the start (x in [-1, 1], y >= 0); train, test and validation goals are independent draws."""
    return _SemicircleGoals(FAMILY, {"goal_angle": Uniform(0.0, float(np.pi))}, seed=seed, num_train=num_train,
                            num_test=num_test, num_validation=num_validation)


class SparsePointRobotEnv(Navigation2DEnv):
    """The 2D point of :class:`Navigation2DEnv` with PEARL's sparse reward: goals on a half circle of
    radius 1 m, 20 steps per episode (0.1 m per step and axis at most), reward 1 on every step that
    ends within 0.2 m of the goal and 0 elsewhere, so until the point has been near the goal nothing it
    sees says where the goal is. No early termination. ``info["success"]``: within 0.2 m after the step;
    ``info["distance_m"]`` the distance."""

    def __init__(self, task: TaskSpec | None = None, *, max_episode_steps: int = 20, render_mode: str | None = None) -> None:
        super().__init__(task, max_episode_steps=max_episode_steps, terminate_at_goal=False, render_mode=render_mode)
        if task is None:
            self._task = sparse_point_distribution().train_tasks[0]

    def step(self, action):
        obs, dense, terminated, truncated, info = super().step(action)
        inside = -dense < SPARSE_REWARD_RADIUS_M
        info = {**info, "success": bool(inside)}
        return obs, float(inside), terminated, truncated, info


def dense_point_reward(obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray, task: TaskSpec) -> np.ndarray:
    """Minus the distance to the task's goal after each step: the dense reward a meta-trainer may give its
    critic on the sparse point robot (it knows the train tasks' goals; the robot never sees this)."""
    goal = np.array([task["goal_x"], task["goal_y"]], dtype=np.float64)
    return (-np.linalg.norm(np.asarray(next_obs, np.float64)[:, :2] - goal, axis=1)).astype(np.float32)
