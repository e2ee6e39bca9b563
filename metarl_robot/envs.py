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


# ------------------------------------------------------------------------------------------------
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np


@dataclasses.dataclass
class TrajectoryBatch:
    """Time-major arrays from ``num_envs`` envs stepped in lock-step for one episode each.

    Shapes: ``obs``/``next_obs`` ``[T, N, obs_dim]``, ``actions`` ``[T, N, act_dim]``, ``rewards``,
    ``terminated``, ``truncated``, ``valid`` and ``success`` ``[T, N]``; ``extras`` holds per-step arrays
    returned by the acting function (log-probabilities, values, ...). ``valid`` is False after an env's
    episode ended (those steps are padding and must be masked out).
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    valid: np.ndarray
    success: np.ndarray
    extras: dict[str, np.ndarray]
    tasks: list[TaskSpec]

    @property
    def num_steps(self) -> int:
        return self.obs.shape[0]

    @property
    def num_envs(self) -> int:
        return self.obs.shape[1]

    def episode_returns(self) -> np.ndarray:
        return (self.rewards * self.valid).sum(0)

    def episode_success(self) -> np.ndarray:
        """Outcome of each env's episode: success at its last valid step."""
        last = np.maximum(self.valid.sum(0).astype(int) - 1, 0)
        return self.success[last, np.arange(self.num_envs)]


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


ActFn = Callable[[np.ndarray], tuple[np.ndarray, Mapping[str, np.ndarray]]]


def collect(
    envs: gym.vector.VectorEnv,
    act: ActFn,
    tasks: Sequence[TaskSpec],
    *,
    seed: int | None = None,
    max_steps: int = 10_000,
) -> TrajectoryBatch:
    """Run one episode in every env of ``envs`` on ``tasks`` (one per env) and return the batch.

    ``act(obs[N, obs_dim]) -> (actions[N, act_dim], extras)`` is called once per step for all envs.
    The vector env must be created with ``autoreset_mode=DISABLED`` (see :func:`make_vector_env`):
    every episode starts with an explicit reset, so tasks set here apply to exactly one episode.
    """
    if len(tasks) != envs.num_envs:
        raise ValueError(f"collect: got {len(tasks)} tasks for {envs.num_envs} envs; pass one task per env")
    envs.set_attr("task", list(tasks))
    obs, _ = envs.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "valid", "success")}
    extras: dict[str, list[np.ndarray]] = {}
    done = np.zeros(envs.num_envs, dtype=bool)
    for _ in range(max_steps):
        action, extra = act(obs)
        next_obs, reward, terminated, truncated, info = envs.step(action)
        steps["obs"].append(obs)
        steps["actions"].append(np.asarray(action, dtype=np.float32))
        steps["rewards"].append(np.asarray(reward, dtype=np.float32))
        steps["next_obs"].append(next_obs)
        steps["terminated"].append(terminated)
        steps["truncated"].append(truncated)
        steps["valid"].append(~done)
        success = info.get("success", np.zeros(envs.num_envs, dtype=bool))
        steps["success"].append(np.asarray(success, dtype=bool) & ~done)
        for key, value in extra.items():
            extras.setdefault(key, []).append(np.asarray(value))
        ended = terminated | truncated
        done = done | ended
        obs = next_obs
        if done.all():
            break
        if ended.any():
            # Autoreset is disabled, so an env that ended must be reset before it is stepped again; its
            # later steps are padding (valid=False) and never reach the learner.
            obs, _ = envs.reset(options={"reset_mask": ended})
    else:
        raise RuntimeError(f"collect: episodes did not end within max_steps={max_steps}; give the env a time limit")
    arrays = {k: np.stack(v) for k, v in steps.items()}
    return TrajectoryBatch(**arrays, extras={k: np.stack(v) for k, v in extras.items()}, tasks=list(tasks))


def make_meta_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, unwrapped: bool = False) -> gym.Env:
    """Build the env of ``env_id`` (``"module:id"`` imports ``module`` first) with ``env_kwargs``.

    The kwargs go into the registered spec rather than through ``gym.make(id, **kwargs)``, which would
    take ``max_episode_steps`` for a TimeLimit wrapper instead of handing it to the constructor, as the
    envs here expect. ``unwrapped=True`` returns the bare env (vector envs and the evaluation protocol
    step it directly); otherwise the registered wrappers are kept. The env checker is left to the tests.
    """
    import importlib

    module, _, name = env_id.rpartition(":")
    if module:
        importlib.import_module(module)
    spec = gym.spec(name)
    spec = dataclasses.replace(spec, kwargs={**spec.kwargs, **dict(env_kwargs or {})})
    env = gym.make(spec, disable_env_checker=True)
    return env.unwrapped if unwrapped else env


def make_vector_env(
    env_id: str, num_envs: int, *, asynchronous: bool = False, env_kwargs: Mapping[str, Any] | None = None
) -> gym.vector.VectorEnv:
    """A vector env of ``num_envs`` copies of ``env_id`` with autoreset disabled.

    ``env_id`` may carry the module that registers it, Gymnasium style: ``"sim:metarl/PandaGrasp-v0"``.
    ``asynchronous`` runs each env in its own subprocess (Gymnasium's AsyncVectorEnv); workers are
    built from the env id and receive tasks as plain :class:`TaskSpec` data, never pickled envs.
    """
    factories = [_EnvFactory(env_id, dict(env_kwargs or {})) for _ in range(num_envs)]
    if not asynchronous:
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    return gym.vector.AsyncVectorEnv(factories, autoreset_mode=gym.vector.AutoresetMode.DISABLED, context="forkserver")


class _EnvFactory:
    """Picklable env constructor for subprocess workers (they receive the id, never an env)."""

    def __init__(self, env_id: str, kwargs: Mapping[str, Any]) -> None:
        self.env_id, self.kwargs = env_id, dict(kwargs)

    def __call__(self) -> gym.Env:
        return make_meta_env(self.env_id, self.kwargs, unwrapped=True)
