"""Trials run by a teacher controller that is never told the task, for warm starts by imitation.

The teacher is a controller of the runtime :class:`~metarl_robot.runtime.Controller` protocol (e.g. the
classical grip-force feedback controllers of ``sim.grasp_baselines``): it reads the same observations
and rewards the learner reads and adapts between attempts as it would on the robot. Each step's extra
``teacher_command`` is its physical command, the label a method derives its imitation target from
(RL², :mod:`metarl_robot.algos.rl2.teacher`; gradient methods, :mod:`metarl_robot.algos.gradient.algo`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metarl_robot.algos.common.tasks import resolve
from metarl_robot.evaluation import reset_controller
from metarl_robot.sampling import BasePolicy
from metarl_robot.tasks import TaskSpec

__all__ = ["DaggerTrials", "TeacherTrials", "teacher_labels"]


def teacher_labels(policy, obs: torch.Tensor, commands: torch.Tensor, prev_commands: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels [T, A], weights [T, A])`` for one stretch of steps: the action that makes ``policy``
    send the teacher's physical ``commands`` after ``prev_commands`` (what was really sent the step
    before). On a skill, the skill's :meth:`~metarl_robot.skills.GraspForceSkill.imitation_labels`
    (weight 0 where undefined); otherwise the command divided by the action scale, clipped."""
    if policy.skill is not None:
        return policy.skill.imitation_labels(obs, commands, prev_commands)
    labels = torch.clamp(commands / policy.action_scale, -1.0, 1.0)
    return labels, torch.ones_like(labels)


class TeacherTrials(BasePolicy):
    """A trial run by the teacher controller (see the module docstring). The env action is the teacher's
    command divided by the action scale; ``adapt()`` is called after every episode but the last, as in
    the meta-test protocol. The extra ``raw_action`` is that same normalised command (the labels are
    derived from the whole trial afterwards)."""

    def __init__(self, teacher: str, teacher_kwargs: Mapping[str, Any], interface: Mapping[str, Any]) -> None:
        self.teacher, self.teacher_kwargs, self.interface = teacher, dict(teacher_kwargs), interface
        self.scale = np.asarray(interface["action"]["scale"], dtype=np.float32)
        self._controller: Any = None

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        self._controller = resolve(self.teacher)(self.interface, **self.teacher_kwargs)
        reset_controller(self._controller, int(rng.integers(2**31)))
        self._command = None

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        self._command = np.asarray(self._controller.act(obs), dtype=np.float32)
        action = self._command / self.scale
        return action, {"raw_action": action.copy(), "teacher_command": self._command.copy()}

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        self._controller.observe(obs, self._command, reward, next_obs, done)

    def end_episode(self) -> None:
        self._controller.adapt()

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_controller": None, "_command": None}


class DaggerTrials(TeacherTrials):
    """The learner (a trial policy: RL²'s or a gradient policy's) acts; the teacher follows
    along on the same observations, is handed the command that was really sent, adapts between
    attempts as it would, and its own command at every step is the label (extra ``teacher_command``)."""

    def __init__(self, teacher: str, teacher_kwargs: Mapping[str, Any], interface: Mapping[str, Any], learner) -> None:
        super().__init__(teacher, teacher_kwargs, interface)
        self.learner = learner

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        self.learner.reset(task, rng, options)

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        teacher = np.asarray(self._controller.act(obs), dtype=np.float32)
        action, extras = self.learner.act(obs)
        self._command = np.asarray(action, dtype=np.float32) * self.scale
        return action, {**extras, "teacher_command": teacher}

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        self._controller.observe(obs, self._command, reward, next_obs, done)
        self.learner.observe(obs, action, reward, next_obs, done)

    def end_episode(self) -> None:
        self._controller.adapt()
        self.learner.end_episode()
