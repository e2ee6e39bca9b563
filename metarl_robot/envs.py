"""The environment side of meta-RL: the :class:`MetaEnv` protocol and trajectory collection.

Any Gymnasium env with a ``set_task(TaskSpec)`` method (and a ``task`` attribute that reads and sets
the current task) is a :class:`MetaEnv`; metarl_robot trains on it without knowing the simulator.
A task set with ``set_task`` takes effect at the next ``reset``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
