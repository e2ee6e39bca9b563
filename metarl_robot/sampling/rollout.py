"""The one rollout loop: what a trial is, what a policy must offer, and the episode record.

A batch is a list of :class:`EpisodeRequest` (task, seed, number of episodes, per-request options).
:func:`run_trial` runs one request on one env and returns its :class:`Episode` records; every sampler
(:mod:`.serial`, :mod:`.subprocess`, :mod:`.ray`) calls it in its workers, and training and evaluation
collect through those samplers. :class:`EpisodeBatch` lays a list of episodes side by side, time-major
and padded, for learners that work on ``[T, N]`` arrays.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from metarl_robot.tasks import TaskSpec

DEFAULT_MAX_STEPS = 10_000
DEFAULT_MAX_RETRIES = 3


class SamplingError(RuntimeError):
    """A request could not be run; the message names the request (index, task id, seed) and the cause."""


class WorkerCrashError(SamplingError):
    """A request's worker died on every attempt, more than ``max_retries`` times in a row."""


# ------------------------------------------------------------------------------------ requests


@dataclasses.dataclass(frozen=True)
class EpisodeRequest:
    """One trial to run: ``episodes`` consecutive episodes of the policy on ``task``.

    ``seed`` seeds the env reset of the first episode and the policy's random generator; later
    episodes of the trial reset the env with :func:`episode_seed` of ``seed``, unless ``reset_seeds``
    names the reset seed of every episode (one per episode; a protocol that fixed its seeds before
    samplers existed keeps them this way). ``options`` is free per-request data handed to the policy's
    ``reset`` (e.g. controller parameters for policy search, or adapted parameters in meta-training).
    ``index`` is the request's position in its batch; results are ordered by it.
    """

    index: int
    task: TaskSpec
    seed: int
    episodes: int = 1
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reset_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("index", "seed", "episodes"):
            value = getattr(self, name)
            if isinstance(value, np.integer):
                value = int(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"EpisodeRequest.{name} must be an int, got {value!r}")
        if self.index < 0 or self.seed < 0:
            raise ValueError(f"EpisodeRequest: index and seed must be >= 0, got index={self.index}, seed={self.seed}")
        if self.episodes < 1:
            raise ValueError(f"EpisodeRequest.episodes must be >= 1, got {self.episodes}")
        if not isinstance(self.task, TaskSpec):
            raise TypeError(f"EpisodeRequest.task must be a TaskSpec, got {type(self.task).__name__}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"EpisodeRequest.options must be a mapping, got {type(self.options).__name__}")
        object.__setattr__(self, "options", dict(self.options))
        if self.reset_seeds:
            seeds = tuple(int(x) for x in self.reset_seeds)
            if len(seeds) != self.episodes or min(seeds) < 0:
                raise ValueError(
                    f"EpisodeRequest.reset_seeds must hold {self.episodes} seeds >= 0 (one per episode), got {self.reset_seeds}"
                )
            object.__setattr__(self, "reset_seeds", seeds)

    def reset_seed(self, episode_in_trial: int) -> int:
        """The env reset seed of episode ``episode_in_trial`` of this trial."""
        if self.reset_seeds:
            return self.reset_seeds[episode_in_trial]
        return episode_seed(self.seed, episode_in_trial)

    def describe(self) -> str:
        """``request 3 (task 'train-0002', seed 17)``: how errors and logs name this request."""
        return f"request {self.index} (task {self.task.task_id or self.task.family!r}, seed {self.seed})"


def make_requests(
    tasks: Sequence[TaskSpec],
    *,
    seed: int,
    episodes: int = 1,
    options: Mapping[str, Any] | None = None,
) -> list[EpisodeRequest]:
    """One request per task, indexed in order, with per-request seeds drawn from ``seed``."""
    seeds = np.random.SeedSequence(seed).generate_state(len(tasks), np.uint32) if tasks else []
    return [
        EpisodeRequest(i, task, int(s), episodes, dict(options or {})) for i, (task, s) in enumerate(zip(tasks, seeds))
    ]


def episode_seed(seed: int, episode_in_trial: int) -> int:
    """The env reset seed of episode ``episode_in_trial`` of a trial seeded with ``seed``."""
    if episode_in_trial == 0:
        return int(seed)
    state = np.random.SeedSequence(seed, spawn_key=(1, episode_in_trial)).generate_state(1, np.uint64)
    return int(state[0])


def policy_rng(seed: int) -> np.random.Generator:
    """The policy's random generator for a trial seeded with ``seed``.

    It is a stream of its own: the env's generator (seeded with ``seed`` itself) draws different numbers.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))


# ------------------------------------------------------------------------------------- policies


@runtime_checkable
class EpisodePolicy(Protocol):
    """What samplers run. It must be picklable: it is sent to the workers once per batch.

    ``reset`` starts a trial; a privileged (oracle) policy may read ``task``, an adaptive one must not.
    ``act`` returns the action and per-step extras (log-probabilities, values, ...), ``observe`` sees
    each transition, and ``end_episode`` is called between the episodes of a trial (adapt there).
    """

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None: ...

    def act(self, obs: Any) -> tuple[Any, Mapping[str, np.ndarray | float]]: ...

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None: ...

    def end_episode(self) -> None: ...


class BasePolicy:
    """An :class:`EpisodePolicy` with no-op hooks; subclasses implement ``act``.

    ``reset`` keeps the task, generator and options as ``self.task``, ``self.rng`` and ``self.options``.
    """

    task: TaskSpec | None = None
    rng: np.random.Generator | None = None
    options: Mapping[str, Any] = types.MappingProxyType({})

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        self.task, self.rng, self.options = task, rng, options

    def act(self, obs: Any) -> tuple[Any, Mapping[str, np.ndarray | float]]:
        raise NotImplementedError(f"{type(self).__name__}.act")

    def observe(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        pass

    def end_episode(self) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        # Trial state (task, generator, options) is not part of what is sent to workers.
        return {k: v for k, v in self.__dict__.items() if k not in ("task", "rng", "options")}


class RandomPolicy(BasePolicy):
    """Uniformly random actions from ``action_space``, drawn from the trial's generator."""

    def __init__(self, action_space: Any) -> None:
        self.action_space = action_space

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        self.action_space.seed(int(rng.integers(2**63)))

    def act(self, obs: Any) -> tuple[Any, Mapping[str, np.ndarray | float]]:
        return self.action_space.sample(), {}


class FunctionPolicy(BasePolicy):
    """Scripted control: ``fn(obs, task, options) -> action`` with ``fn`` a module-level function.

    It reads the task, so it is a privileged policy (an oracle or a scripted demonstrator).
    """

    def __init__(self, fn: Callable[[Any, TaskSpec, Mapping[str, Any]], Any]) -> None:
        self.fn = fn

    def act(self, obs: Any) -> tuple[Any, Mapping[str, np.ndarray | float]]:
        return self.fn(obs, self.task, self.options), {}


# ------------------------------------------------------------------------------------- episodes


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclasses.dataclass(eq=False)
class Episode:
    """One episode: per-step arrays of length ``T`` and where it came from.

    ``obs``/``next_obs`` ``[T, *obs_shape]`` as the env returns them, ``actions`` ``[T, *action_shape]``,
    ``rewards`` ``[T]`` float32, ``terminated``/``truncated``/``success`` ``[T]`` bool (``success`` is
    ``info["success"]``, False where the env does not report it), ``extras`` the policy's per-step extras
    stacked to ``[T, ...]``. ``seed`` is the env reset seed of this episode (``request.reset_seed(j)``).
    Episodes compare equal when every array is bit-identical and the request index,
    episode number, task and seed match; ``worker`` is for diagnostics only and never compared.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    extras: dict[str, np.ndarray]
    request_index: int
    episode_in_trial: int
    task: TaskSpec
    seed: int
    worker: str = ""

    _ARRAYS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "success")

    @property
    def length(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum(dtype=np.float64))

    @property
    def succeeded(self) -> bool:
        """Success at the last step: the episode's outcome."""
        return bool(self.success[-1]) if self.length else False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Episode):
            return NotImplemented
        return (
            (self.request_index, self.episode_in_trial, self.task, self.seed)
            == (other.request_index, other.episode_in_trial, other.task, other.seed)
            and all(_same_array(getattr(self, k), getattr(other, k)) for k in self._ARRAYS)
            and self.extras.keys() == other.extras.keys()
            and all(_same_array(self.extras[k], other.extras[k]) for k in self.extras)
        )


def _stack_extras(steps: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    if not steps:
        return {}
    keys = set(steps[0])
    for t, extra in enumerate(steps):
        if set(extra) != keys:
            raise ValueError(
                f"policy.act returned extras {sorted(extra)} at step {t} but {sorted(keys)} at step 0; "
                "return the same keys at every step"
            )
    return {k: np.stack([np.asarray(extra[k]) for extra in steps]) for k in sorted(keys)}


def run_trial(
    env: Any,
    policy: EpisodePolicy,
    request: EpisodeRequest,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    worker: str = "",
) -> list[Episode]:
    """Run ``request`` on ``env`` with ``policy``: the one definition of a trial every sampler uses.

    ``policy.reset`` once with the task, :func:`policy_rng` of the seed and the options; then for each
    episode ``env.unwrapped.set_task`` and ``env.reset(seed=request.reset_seed(j))`` (``env`` may be
    wrapped), and ``policy.end_episode`` between episodes. An episode that has not ended after ``max_steps`` steps is cut there and its last
    step marked truncated. Exceptions from the env or the policy propagate unchanged.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    policy.reset(request.task, policy_rng(request.seed), request.options)
    episodes = []
    for j in range(request.episodes):
        if j:
            policy.end_episode()
        reset_seed = request.reset_seed(j)
        env.unwrapped.set_task(request.task)
        obs, _ = env.reset(seed=reset_seed)
        columns: dict[str, list] = {k: [] for k in Episode._ARRAYS}
        extras: list[Mapping[str, Any]] = []
        for t in range(max_steps):
            action, extra = policy.act(obs)
            next_obs, reward, terminated, truncated, info = env.step(action)
            terminated = bool(terminated)
            truncated = bool(truncated) or (t == max_steps - 1 and not terminated)
            policy.observe(obs, action, float(reward), next_obs, terminated or truncated)
            # Copies: an env or policy may reuse one buffer for every step.
            columns["obs"].append(np.array(obs))
            columns["actions"].append(np.array(action))
            columns["rewards"].append(reward)
            columns["next_obs"].append(np.array(next_obs))
            columns["terminated"].append(terminated)
            columns["truncated"].append(truncated)
            columns["success"].append(bool(info.get("success", False)))
            extras.append(extra)
            obs = next_obs
            if terminated or truncated:
                break
        episodes.append(
            Episode(
                obs=np.stack(columns["obs"]),
                actions=np.stack(columns["actions"]),
                rewards=np.asarray(columns["rewards"], dtype=np.float32),
                next_obs=np.stack(columns["next_obs"]),
                terminated=np.asarray(columns["terminated"], dtype=bool),
                truncated=np.asarray(columns["truncated"], dtype=bool),
                success=np.asarray(columns["success"], dtype=bool),
                extras=_stack_extras(extras),
                request_index=request.index,
                episode_in_trial=j,
                task=request.task,
                seed=reset_seed,
                worker=worker,
            )
        )
    return episodes


@dataclasses.dataclass
class EpisodeBatch:
    """Episodes side by side, time-major and padded to the longest: the layout learners work on.

    Shapes: ``obs``/``next_obs`` ``[T, N, *obs_shape]``, ``actions`` ``[T, N, *action_shape]``, ``rewards``,
    ``terminated``, ``truncated``, ``valid`` and ``success`` ``[T, N]``, ``extras`` ``[T, N, ...]``, where
    ``N`` is the number of episodes and ``T`` the longest one. ``valid`` is False after an episode
    ended: those steps are zero padding and must be masked out. Built by :meth:`from_episodes`, so the
    :class:`Episode` stays the one record of an episode and this is a view of a list of them.
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

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode]) -> "EpisodeBatch":
        """Stack ``episodes`` (in the given order) into ``[T, N, ...]`` arrays with zero padding."""
        if not episodes:
            raise ValueError("EpisodeBatch.from_episodes needs at least one episode")
        steps, n = max(e.length for e in episodes), len(episodes)

        def stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
            out = np.zeros((steps, n, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
            for i, array in enumerate(arrays):
                out[: len(array), i] = array
            return out

        keys = episodes[0].extras.keys()
        if any(e.extras.keys() != keys for e in episodes):
            raise ValueError("EpisodeBatch.from_episodes: the episodes carry different extras")
        return cls(
            **{k: stack([getattr(e, k) for e in episodes]) for k in Episode._ARRAYS},
            valid=stack([np.ones(e.length, dtype=bool) for e in episodes]),
            extras={k: stack([e.extras[k] for e in episodes]) for k in keys},
            tasks=[e.task for e in episodes],
        )

    @property
    def num_steps(self) -> int:
        return self.obs.shape[0]

    @property
    def num_episodes(self) -> int:
        return self.obs.shape[1]

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode ``[N]``."""
        return (self.rewards * self.valid).sum(0)

    def episode_success(self) -> np.ndarray:
        """Outcome of each episode ``[N]``: success at its last valid step."""
        last = np.maximum(self.valid.sum(0).astype(int) - 1, 0)
        return self.success[last, np.arange(self.num_episodes)]
