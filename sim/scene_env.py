"""The Gymnasium side of the arm scenes: one env class the grasp, reach and push envs specialise.

:class:`SceneEnv` maps normalised actions to a scene's physical commands with the interface's action
scale, steps the scene one control period per ``step``, truncates after ``max_episode_steps`` (never
terminates early, so vectorised episodes stay in lock-step), adds the task's observation noise and
renders headless. Subclasses build the scene and say what goes into ``info``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from metarl_robot.contract import RobotInputs
from metarl_robot.envs import TaskEnv
from metarl_robot.tasks import TaskSpec


class SceneEnv(TaskEnv):
    """A :class:`TaskEnv` over a scene with ``set_task``/``task``, ``reset(rng)``, ``apply_command``,
    ``step_control``, ``status``, ``observation``, ``robot_inputs``, ``render_rgb`` and ``close``.

    Subclasses call :meth:`_init_scene_env` from ``__init__`` and may override :meth:`_info`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    obs_noise_std: float = 0.0
    """Observation noise of tasks that do not set their own ``obs_noise_std``."""

    def _init_scene_env(self, make_scene: Callable[[], Any], *, max_episode_steps: int, render_mode: str | None) -> None:
        """Check the arguments, then build the scene with ``make_scene()``."""
        self._check_render_mode(render_mode)
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} must be >= 1")
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps)
        self._scene = make_scene()
        self.interface = self._scene.interface
        self._action_scale = np.asarray(self.interface["action"]["scale"], dtype=np.float64)
        self._elapsed_steps = 0

    # ---------------------------------------------------------------------------------- tasks

    def set_task(self, task: TaskSpec) -> None:
        """Use ``task`` from the next ``reset`` on; raises :class:`TaskError` naming a bad field."""
        self._scene.set_task(task)

    def _current_task(self) -> TaskSpec:
        return self._scene.task

    @property
    def scene(self) -> Any:
        return self._scene

    # ------------------------------------------------------------------------------- episodes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; ``options={"task": TaskSpec}`` switches the task first."""
        self._start_reset(seed, options)
        self._scene.reset(self.np_random)
        self._elapsed_steps = 0
        return self._observe(), self._info(self._scene.status())

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(self._action_scale.shape)
        self._scene.apply_command(np.minimum(np.maximum(action, -1.0), 1.0) * self._action_scale)
        self._scene.step_control()
        self._elapsed_steps += 1
        status = self._scene.status()
        truncated = self._elapsed_steps >= self.max_episode_steps
        return self._observe(), float(status["reward"]), False, truncated, self._info(status)

    def robot_inputs(self) -> RobotInputs:
        """What the robot publishes now (joint state, poses, twists); the observation, before the
        task's observation noise, is the robot contract's assembly of it."""
        return self._scene.robot_inputs()

    def _observe(self) -> np.ndarray:
        obs = self._scene.observation()
        noise = float(self.task.params.get("obs_noise_std", self.obs_noise_std))
        if noise > 0:
            obs = obs + self.np_random.normal(0.0, noise, obs.shape).astype(np.float32)
        return obs

    def _info(self, status: dict) -> dict[str, Any]:
        return {**{k: v for k, v in status.items() if k != "reward"}, "task_id": self.task.task_id}

    def render(self):
        if self.render_mode == "rgb_array":
            return self._scene.render_rgb()
        return None

    def close(self) -> None:
        self._scene.close()
