"""The environment side of meta-RL: the :class:`MetaEnv` protocol, :class:`TaskEnv` and env construction.

Any Gymnasium env with a ``set_task(TaskSpec)`` method (and a ``task`` attribute that reads and sets
the current task) is a :class:`MetaEnv`; metarl_robot trains on it without knowing the simulator.
A task set with ``set_task`` takes effect at the next ``reset``. Episodes are collected by
:mod:`metarl_robot.sampling`, which builds its envs with :func:`make_meta_env`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym

from metarl_robot.tasks import TaskSpec


@runtime_checkable
class MetaEnv(Protocol):
    """A Gymnasium env whose task can be set. ``task`` is a read/write property over ``set_task``."""

    observation_space: object
    action_space: object

    def set_task(self, task: TaskSpec) -> None: ...

    @property
    def task(self) -> TaskSpec: ...

    def reset(self, *, seed: int | None = None, options: dict | None = None): ...

    def step(self, action): ...


class TaskEnv(gym.Env):
    """A Gymnasium env with the task plumbing of :class:`MetaEnv`, written once.

    Subclasses check tasks in :meth:`validate_task` (raising :class:`~metarl_robot.tasks.TaskError`
    naming the field) and start their ``reset`` with :meth:`_start_reset`. The task is kept in
    ``self._task`` and takes effect at the next reset; an env that keeps it elsewhere (a simulation
    scene) overrides :meth:`set_task` and :meth:`_current_task`.
    """

    _task: TaskSpec

    def validate_task(self, task: TaskSpec) -> None:
        """Raise ``TaskError`` if this env cannot run ``task``."""

    def set_task(self, task: TaskSpec) -> None:
        """Use ``task`` from the next ``reset`` on."""
        self.validate_task(task)
        self._task = task

    def _current_task(self) -> TaskSpec:
        return self._task

    @property
    def task(self) -> TaskSpec:
        return self._current_task()

    @task.setter
    def task(self, task: TaskSpec) -> None:
        self.set_task(task)

    def _check_render_mode(self, render_mode: str | None) -> None:
        """Refuse a ``render_mode`` the env's metadata does not list, naming the ones it does."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: use one of {self.metadata['render_modes']} or None")

    def _start_reset(self, seed: int | None, options: Mapping[str, Any] | None) -> None:
        """Seed ``np_random`` as ``gym.Env.reset`` does, then switch to ``options["task"]`` if given."""
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])


def make_meta_env(
    env_id: str | gym.envs.registration.EnvSpec, env_kwargs: Mapping[str, Any] | None = None, *, unwrapped: bool = False
) -> gym.Env:
    """Build the env of ``env_id`` (``"module:id"`` imports ``module`` first) with ``env_kwargs``.

    ``env_id`` may also be a Gymnasium ``EnvSpec``, such as ``env.unwrapped.spec`` of an env made here:
    that rebuilds the same env (its kwargs included) in another process.

    The kwargs go into the registered spec rather than through ``gym.make(id, **kwargs)``, which would
    take ``max_episode_steps`` for a TimeLimit wrapper instead of handing it to the constructor, as the
    envs here expect. ``unwrapped=True`` returns the bare env; otherwise the registered wrappers are
    kept. The env checker is left to the tests.
    """
    import importlib

    if isinstance(env_id, gym.envs.registration.EnvSpec):
        spec = env_id
    else:
        module, _, name = env_id.rpartition(":")
        if module:
            importlib.import_module(module)
        spec = gym.spec(name)
    spec = dataclasses.replace(spec, kwargs={**spec.kwargs, **dict(env_kwargs or {})})
    env = gym.make(spec, disable_env_checker=True)
    return env.unwrapped if unwrapped else env
