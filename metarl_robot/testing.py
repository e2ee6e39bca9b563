"""Tiny, simulator-free meta-envs for fast tests and examples.

:class:`PointGoalEnv` is 2D point navigation to a hidden goal (the MAML paper's toy problem, small):
the task is the goal, so a policy that cannot infer it from rewards cannot do well.
:class:`TargetBanditEnv` is a continuous bandit whose best uninformed action is known, for tests
that a learner's update moves its policy the right way.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from metarl_robot.envs import TaskEnv
from metarl_robot.tasks import TaskDistribution, TaskError, TaskSpec, Uniform

POINT_INTERFACE = {
    "robot": "point_mass",
    "control_rate_hz": 20.0,
    "frame_id": "world",
    "joint_names": ["x", "y"],
    "observation_layout": [
        {"name": "position", "source": "joint_states", "field": "position", "joints": ["x", "y"], "size": 2}
    ],
    "action": {
        "mode": "joint_velocity",
        "names": ["vx", "vy"],
        "units": ["m/s", "m/s"],
        "scale": [0.1, 0.1],
        "low": [-0.1, -0.1],
        "high": [0.1, 0.1],
    },
}


def point_goal_distribution(seed: int = 0, num_train: int = 32, num_test: int = 8) -> TaskDistribution:
    return TaskDistribution(
        "point_goal",
        {"goal_x": Uniform(-0.5, 0.5), "goal_y": Uniform(-0.5, 0.5)},
        seed=seed,
        num_train=num_train,
        num_test=num_test,
    )


class PointGoalEnv(TaskEnv):
    """Move a point from the origin towards a hidden goal; reward is minus the distance.

    ``success`` means ending within ``success_radius`` of the goal.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    interface = POINT_INTERFACE

    def __init__(self, task: TaskSpec | None = None, max_episode_steps: int = 20, success_radius: float = 0.1,
                 render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: PointGoalEnv renders 'rgb_array' frames only")
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_episode_steps = max_episode_steps
        self.success_radius = success_radius
        self._task = task or point_goal_distribution().train_tasks[0]
        self._goal = np.zeros(2)
        self._pos = np.zeros(2)
        self._t = 0

    def validate_task(self, task: TaskSpec) -> None:
        if task.family != "point_goal":
            raise TaskError(f"PointGoalEnv takes tasks of family 'point_goal', got {task.family!r}")

    def reset(self, *, seed=None, options=None):
        self._start_reset(seed, options)
        self._goal = np.array([self._task["goal_x"], self._task["goal_y"]], dtype=np.float64)
        self._pos = self.np_random.uniform(-0.02, 0.02, 2)
        self._t = 0
        return self._pos.astype(np.float32), {}

    def step(self, action):
        velocity = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0) * 0.1
        self._pos = self._pos + velocity
        self._t += 1
        distance = float(np.linalg.norm(self._pos - self._goal))
        info = {"success": distance < self.success_radius}
        return self._pos.astype(np.float32), -distance, False, self._t >= self.max_episode_steps, info

    def render(self):
        """A 64x64 view of ``[-1, 1]^2``: the goal (green, its success radius pale) and the point (blue)."""
        if self.render_mode != "rgb_array":
            return None
        return _square_view(self._goal, self.success_radius, self._pos, self._t / self.max_episode_steps)


def point_goal_demonstrator(obs: np.ndarray, tasks) -> np.ndarray:
    """Knows the goals: full speed towards each env's goal (normalised actions)."""
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks], dtype=np.float64)
    return np.clip((goals - obs) / 0.1, -1.0, 1.0).astype(np.float32)


def target_bandit_distribution(seed: int = 0, num_train: int = 32, num_test: int = 8) -> TaskDistribution:
    """Targets around ``TARGET_MEAN``: the best action of a policy that is not told the task is their mean."""
    return TaskDistribution(
        "target_bandit",
        {"target_x": Uniform(0.4, 0.6), "target_y": Uniform(-0.5, -0.3)},
        seed=seed,
        num_train=num_train,
        num_test=num_test,
    )


TARGET_MEAN = np.array([0.5, -0.4])
"""The mean target of :func:`target_bandit_distribution`, in normalised action units."""


class TargetBanditEnv(TaskEnv):
    """A continuous bandit with a known optimum, for learning-direction tests: every step of a
    ``max_episode_steps`` episode observes the same zeros and pays ``-|a - target|^2`` for the
    (clipped, normalised) action ``a``. The task is the target; over the distribution's tasks the
    expected reward of a fixed action is highest at their mean, :data:`TARGET_MEAN`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    interface = POINT_INTERFACE

    def __init__(self, task: TaskSpec | None = None, max_episode_steps: int = 4, render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: TargetBanditEnv renders 'rgb_array' frames only")
        self.render_mode = render_mode
        self._last_action = np.zeros(2)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_episode_steps = max_episode_steps
        self._task = task or target_bandit_distribution().train_tasks[0]
        self._t = 0

    def validate_task(self, task: TaskSpec) -> None:
        if task.family != "target_bandit":
            raise TaskError(f"TargetBanditEnv takes tasks of family 'target_bandit', got {task.family!r}")

    def reset(self, *, seed=None, options=None):
        self._start_reset(seed, options)
        self._t = 0
        self._last_action = np.zeros(2)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        target = np.array([self._task["target_x"], self._task["target_y"]])
        self._last_action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        error = self._last_action - target
        self._t += 1
        reward = -float(error @ error)
        return np.zeros(2, np.float32), reward, False, self._t >= self.max_episode_steps, {"success": reward > -0.01}

    def render(self):
        """A 64x64 view of the action square ``[-1, 1]^2``: the target (green) and the last action (blue)."""
        if self.render_mode != "rgb_array":
            return None
        target = np.array([self._task["target_x"], self._task["target_y"]])
        return _square_view(target, 0.0, self._last_action, self._t / self.max_episode_steps)


def _square_view(goal: np.ndarray, goal_radius: float, point: np.ndarray, progress: float) -> np.ndarray:
    """A 64x64 image of ``[-1, 1]^2`` (x right, y up): the goal in green with a pale disc of
    ``goal_radius``, the point in blue, and the episode's progress along the bottom."""
    from metarl_robot.rendering import canvas, draw_progress, fill_disc

    size = 64
    image = canvas(size, size, (250, 250, 250))

    def pixel(xy: np.ndarray) -> tuple[float, float]:
        return ((1.0 - xy[1]) * (size - 1) / 2.0, (xy[0] + 1.0) * (size - 1) / 2.0)

    if goal_radius > 0:
        fill_disc(image, *pixel(goal), goal_radius * (size - 1) / 2.0, (190, 235, 190))
    fill_disc(image, *pixel(goal), 1.5, (20, 150, 40))
    fill_disc(image, *pixel(point), 2.0, (30, 60, 200))
    draw_progress(image, progress)
    return image


ENVIRONMENTS: dict[str, dict] = {
    "metarl/PointGoal-v0": {"entry_point": "metarl_robot.testing:PointGoalEnv",
                            "distribution": "metarl_robot.testing:point_goal_distribution"},
    "metarl/TargetBandit-v0": {"entry_point": "metarl_robot.testing:TargetBanditEnv",
                               "distribution": "metarl_robot.testing:target_bandit_distribution"},
}
"""The envs this module registers, with the task distribution each draws from (as ``sim.ENVIRONMENTS``)."""

gym.register("metarl/PointGoal-v0", entry_point=PointGoalEnv)
gym.register("metarl/TargetBandit-v0", entry_point=TargetBanditEnv)
