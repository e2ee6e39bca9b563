"""Episode samplers: run trials of a policy on many tasks, in-process, in subprocesses or on Ray.

A batch is a list of :class:`EpisodeRequest` (task, seed, number of episodes, per-request options).
Every sampler runs each request with :func:`run_trial` and returns the :class:`Episode` list ordered by
request index, then episode within the trial:

- :class:`SerialSampler` runs in this process (tests, debugging);
- :class:`SubprocessSampler` runs one env per worker process on this machine;
- :class:`RaySampler` runs one env per Ray actor, locally or on a cluster.

Workers build their env from the env id once and receive tasks, seeds and the policy as plain data,
never pickled envs. The policy travels once per batch; every trial starts from a fresh copy of it.

Determinism: a request's episodes depend only on the env id and kwargs, the task, the seed and the
policy, so the same batch gives bit-identical arrays whichever sampler runs it and however many
workers it has. Fault tolerance: a worker process that dies (signal, simulator segfault, out of
memory) is replaced and the request it was running is run again, up to ``max_retries`` times; an
exception raised by the env or the policy is not retried and propagates as :class:`SamplingError`
naming the request.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import sys
import time
import traceback
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from metarl_robot.tasks import TaskSpec

__all__ = [
    "BasePolicy",
    "Episode",
    "EpisodePolicy",
    "EpisodeRequest",
    "FunctionPolicy",
    "RandomPolicy",
    "RaySampler",
    "SamplingError",
    "SerialSampler",
    "SubprocessSampler",
    "WorkerCrashError",
    "episode_seed",
    "make_requests",
    "policy_rng",
    "run_trial",
    "start_local_ray",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 10_000
DEFAULT_MAX_RETRIES = 3
_WORKER_START_TIMEOUT_S = 300.0
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class SamplingError(RuntimeError):
    """A request could not be run; the message names the request (index, task id, seed) and the cause."""


class WorkerCrashError(SamplingError):
    """A request's worker died on every attempt, more than ``max_retries`` times in a row."""


# ------------------------------------------------------------------------------------ requests


@dataclasses.dataclass(frozen=True)
class EpisodeRequest:
    """One trial to run: ``episodes`` consecutive episodes of the policy on ``task``.

    ``seed`` seeds the env reset of the first episode and the policy's random generator; later
    episodes of the trial reset the env with :func:`episode_seed` of ``seed``. ``options`` is free
    per-request data handed to the policy's ``reset`` (e.g. controller parameters for policy search).
    ``index`` is the request's position in its batch; results are ordered by it.
    """

    index: int
    task: TaskSpec
    seed: int
    episodes: int = 1
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

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
    stacked to ``[T, ...]``. ``seed`` is the env reset seed of this episode (:func:`episode_seed` of the
    request's seed). Episodes compare equal when every array is bit-identical and the request index,
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
    episode ``env.unwrapped.set_task`` and ``env.reset(seed=episode_seed(seed, j))`` (``env`` may be
    wrapped), and ``policy.end_episode``
    between episodes. An episode that has not ended after ``max_steps`` steps is cut there and its last
    step marked truncated. Exceptions from the env or the policy propagate unchanged.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps={max_steps} must be >= 1")
    policy.reset(request.task, policy_rng(request.seed), request.options)
    episodes = []
    for j in range(request.episodes):
        if j:
            policy.end_episode()
        reset_seed = episode_seed(request.seed, j)
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


# -------------------------------------------------------------------------------- shared pieces


def _check_requests(requests: Sequence[EpisodeRequest]) -> list[EpisodeRequest]:
    requests = list(requests)
    seen: set[int] = set()
    for request in requests:
        if not isinstance(request, EpisodeRequest):
            raise TypeError(f"sample() takes EpisodeRequest items, got {type(request).__name__}")
        if request.index in seen:
            raise ValueError(f"two requests have index {request.index}; give every request of a batch its own index")
        seen.add(request.index)
    return requests


def _ordered(results: Mapping[int, list[Episode]]) -> list[Episode]:
    return [episode for index in sorted(results) for episode in results[index]]


def _dump_policy(policy: Any, dumps: Callable[..., bytes] = pickle.dumps) -> bytes:
    try:
        return dumps(policy, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:
        raise SamplingError(
            f"the policy ({type(policy).__name__}) cannot be pickled: {type(err).__name__}: {err}. Samplers send "
            "it to their workers, so its classes and functions must be defined at module level (no lambdas)"
        ) from err


def _check_pool(num_workers: int, max_retries: int) -> None:
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    if max_retries < 0:
        raise ValueError(f"max_retries={max_retries} must be >= 0")


def _make_env(env_id: str, env_kwargs: Mapping[str, Any]) -> Any:
    """:func:`metarl_robot.envs.make_meta_env`, refusing envs that cannot take a task."""
    from metarl_robot.envs import make_meta_env

    env = make_meta_env(env_id, env_kwargs)
    if not callable(getattr(env.unwrapped, "set_task", None)):
        raise TypeError(f"env {env_id!r} ({type(env).__name__}) has no set_task(TaskSpec); samplers need a MetaEnv")
    return env


def _limit_torch_threads() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _limit_worker_threads() -> None:
    """One thread per worker: the parallelism is across workers."""
    for name in _THREAD_ENV_VARS:
        os.environ[name] = "1"
    _limit_torch_threads()


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class _TrialRunner:
    """The worker side shared by every sampler: one env, the batch's policy bytes, fresh copies per trial."""

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any], name: str, *, worker_process: bool = True) -> None:
        # Only a worker process of its own goes single-threaded; the serial sampler leaves its host alone.
        self.worker_process = worker_process
        if worker_process:
            _limit_worker_threads()
        self.env = _make_env(env_id, env_kwargs)
        if worker_process:
            _limit_torch_threads()
        self.name = name
        self.policy_version: int | None = None
        self._policy_bytes = b""

    def set_policy(self, version: int, policy_bytes: bytes) -> None:
        self.policy_version, self._policy_bytes = version, policy_bytes

    def run(self, request: EpisodeRequest, max_steps: int) -> list[Episode]:
        policy = pickle.loads(self._policy_bytes)
        if self.worker_process:
            _limit_torch_threads()
        return run_trial(self.env, policy, request, max_steps=max_steps, worker=self.name)

    def close(self) -> None:
        self.env.close()


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the ``__cause__`` of its copy here."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def _portable_exception(err: BaseException) -> tuple[bytes | None, str]:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        return pickle.dumps(err), text
    except Exception:
        return None, text


def _restore_exception(blob: bytes | None, text: str) -> BaseException:
    err: BaseException | None = None
    if blob is not None:
        try:
            err = pickle.loads(blob)
        except Exception:
            err = None
    if err is None:
        err = RuntimeError(text.strip().splitlines()[-1] if text.strip() else "unknown error")
    err.__cause__ = _RemoteTraceback(text)
    return err


def _request_failed(request: EpisodeRequest, worker: str, err: BaseException) -> SamplingError:
    return SamplingError(f"{request.describe()} failed in worker {worker}: {type(err).__name__}: {err}")


def _crash_limit_error(request: EpisodeRequest, failures: list[str], max_retries: int) -> WorkerCrashError:
    return WorkerCrashError(
        f"{request.describe()} was lost {len(failures)} times: its worker died on every attempt "
        f"({'; '.join(failures)}); giving up after max_retries={max_retries}. A worker death is a crash of the "
        "process (simulator segfault, out of memory, a signal), not a Python exception"
    )


def _log_replacement(
    kind: str,
    dead: str,
    reason: str,
    new: str,
    request: EpisodeRequest | None = None,
    failures: int = 0,
    max_retries: int = 0,
) -> None:
    if request is None:
        logger.warning("%s worker %s %s while idle; replaced by %s", kind, dead, reason, new)
    elif failures > max_retries:
        logger.warning(
            "%s worker %s %s while running %s; replaced by %s; the request crashed its worker %d times, giving up",
            kind, dead, reason, request.describe(), new, failures,
        )
    else:
        logger.warning(
            "%s worker %s %s while running %s; replaced by %s, running the request again (attempt %d of %d)",
            kind, dead, reason, request.describe(), new, failures + 1, max_retries + 1,
        )


# ---------------------------------------------------------------------------------------- serial


class SerialSampler:
    """Runs every request in this process, one after the other, on one env built from ``env_id``.

    Same results as the parallel samplers (the policy is copied for every trial here too); use it in
    tests and to debug a policy with a plain stack trace.
    """

    def __init__(
        self, env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, max_steps: int = DEFAULT_MAX_STEPS
    ) -> None:
        self.env_id = env_id
        self.max_steps = int(max_steps)
        self._runner: _TrialRunner | None = _TrialRunner(
            env_id, dict(env_kwargs or {}), "serial", worker_process=False
        )
        self._version = 0

    def sample(self, policy: EpisodePolicy, requests: Sequence[EpisodeRequest]) -> list[Episode]:
        """Run every request; episodes ordered by request index, then episode within the trial."""
        if self._runner is None:
            raise SamplingError("this SerialSampler is closed")
        requests = _check_requests(requests)
        self._version += 1
        self._runner.set_policy(self._version, _dump_policy(policy))
        results: dict[int, list[Episode]] = {}
        for request in requests:
            try:
                results[request.index] = self._runner.run(request, self.max_steps)
            except Exception as err:
                raise _request_failed(request, "serial", err) from err
        return _ordered(results)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> "SerialSampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ subprocess


def _subprocess_worker_main(conn: Any, env_id: str, env_kwargs: dict[str, Any], name: str) -> None:
    """Worker process loop. Messages in: ``("policy", version, bytes)``, ``("run", batch, request,
    max_steps)``, ``("close",)``; out: ``("ready", pid)`` or ``("init_failed", text)``, then per request
    ``("started", batch, index)`` and ``("done", batch, index, episodes)`` or ``("error", batch, index,
    exception, traceback)``."""
    try:
        runner = _TrialRunner(env_id, env_kwargs, f"{name}:pid{os.getpid()}")
    except BaseException as err:  # reported to the sampler, which raises it with the env id
        conn.send(("init_failed", "".join(traceback.format_exception(type(err), err, err.__traceback__))))
        return
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break
            if message[0] == "close":
                break
            if message[0] == "policy":
                runner.set_policy(message[1], message[2])
                continue
            _, batch, request, max_steps = message
            conn.send(("started", batch, request.index))
            try:
                episodes = runner.run(request, max_steps)
            except Exception as err:
                conn.send(("error", batch, request.index, *_portable_exception(err)))
            else:
                conn.send(("done", batch, request.index, episodes))
    finally:
        runner.close()


@dataclasses.dataclass
class _Process:
    name: str
    process: Any
    conn: Any
    pid: int | None = None
    ready: bool = False
    policy_version: int | None = None
    job: tuple[int, EpisodeRequest] | None = None  # (batch, request) sent to the worker
    started: bool = False  # whether the worker has acknowledged starting ``job``

    @property
    def label(self) -> str:
        return f"{self.name} (pid {self.pid or self.process.pid})"


class SubprocessSampler:
    """Runs requests in ``num_workers`` worker processes on this machine, one env each.

    Workers build the env from ``env_id`` (which may name the module that registers it, Gymnasium style:
    ``"sim:metarl/PandaGrasp-v0"``) and take requests one at a time as they become free, so slow and
    fast trials balance out. The policy is pickled once per batch and sent to each worker once.
    A worker that dies is replaced and its request re-run (at most ``max_retries`` times per request).

    Workers are ``multiprocessing`` processes with a pipe each rather than a ``ProcessPoolExecutor``:
    a pool breaks as a whole when one worker dies, failing every request in flight, so it cannot tell
    which request crashed a worker; here only that request is charged a retry and the other workers
    keep running.
    """

    def __init__(
        self,
        env_id: str,
        num_workers: int,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        start_method: str = "forkserver",
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        import multiprocessing

        _check_pool(num_workers, max_retries)
        methods = multiprocessing.get_all_start_methods()
        if start_method not in methods:
            raise ValueError(f"start_method={start_method!r} is not available here; use one of {methods}")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.num_workers = int(num_workers)
        self.max_retries = int(max_retries)
        self.max_steps = int(max_steps)
        self._context = multiprocessing.get_context(start_method)
        self._started = 0
        self._version = 0
        self._batch = 0
        self._closed = False
        self._failures: dict[int, list[str]] = {}  # request index -> deaths of workers running it, this batch
        self._unstarted: dict[int, int] = {}  # request index -> deaths of workers it was sent to, before they took it
        self._workers: list[_Process] = []
        try:
            self._workers = [self._start_worker() for _ in range(self.num_workers)]
            deadline = time.monotonic() + _WORKER_START_TIMEOUT_S
            while not all(w.ready for w in self._workers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SamplingError(f"workers for {env_id!r} did not start within {_WORKER_START_TIMEOUT_S:.0f} s")
                self._wait_and_receive(batch=None, results={}, timeout=remaining)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------ public API

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers, including replacements still starting (for diagnostics)."""
        return [w.process.pid for w in self._workers]

    def sample(self, policy: EpisodePolicy, requests: Sequence[EpisodeRequest]) -> list[Episode]:
        """Run every request; episodes ordered by request index, then episode within the trial."""
        if self._closed:
            raise SamplingError("this SubprocessSampler is closed")
        requests = _check_requests(requests)
        if not requests:
            return []
        self._version += 1
        self._batch += 1
        policy_bytes = _dump_policy(policy)
        pending = collections.deque(requests)
        results: dict[int, list[Episode]] = {}
        self._failures, self._unstarted = {}, {}
        while len(results) < len(requests):
            for worker in self._workers:
                if worker.ready and worker.job is None and pending:
                    self._dispatch(worker, pending.popleft(), policy_bytes)
            self._wait_and_receive(self._batch, results, pending=pending)
        return _ordered(results)

    def close(self) -> None:
        """Stop the workers (idle ones finish cleanly, busy ones are terminated). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker.job is None and worker.process.is_alive():
                try:
                    worker.conn.send(("close",))
                except OSError:
                    pass
            else:
                worker.process.terminate()
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> "SubprocessSampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------- workers

    def _start_worker(self) -> _Process:
        self._started += 1
        name = f"subprocess-{self._started}"
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_subprocess_worker_main,
            args=(child_conn, self.env_id, self.env_kwargs, name),
            name=f"metarl-sampler-{name}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Process(name, process, parent_conn)

    def _dispatch(self, worker: _Process, request: EpisodeRequest, policy_bytes: bytes) -> None:
        worker.job, worker.started = (self._batch, request), False
        try:
            if worker.policy_version != self._version:
                worker.conn.send(("policy", self._version, policy_bytes))
                worker.policy_version = self._version
            worker.conn.send(("run", self._batch, request, self.max_steps))
        except OSError:
            pass  # the worker is dead; its sentinel is ready and the next wait replaces it

    def _wait_and_receive(
        self,
        batch: int | None,
        results: dict[int, list[Episode]],
        *,
        pending: collections.deque | None = None,
        timeout: float | None = None,
    ) -> None:
        from multiprocessing.connection import wait

        waitables = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        ready = set(wait(waitables, timeout))
        for worker in list(self._workers):
            if worker.conn in ready or worker.process.sentinel in ready:
                connected = self._receive(worker, batch, results)
                if not connected or not worker.process.is_alive():
                    self._replace(worker, batch, pending)

    def _receive(self, worker: _Process, batch: int | None, results: dict[int, list[Episode]]) -> bool:
        """Handle every message waiting from ``worker``; False when its pipe is closed."""
        while True:
            try:
                if not worker.conn.poll():
                    return True
                message = worker.conn.recv()
            except (EOFError, OSError):
                return False
            kind = message[0]
            if kind == "ready":
                worker.pid, worker.ready = message[1], True
            elif kind == "init_failed":
                self.close()
                raise SamplingError(f"a worker could not build env {self.env_id!r}:\n{message[1]}")
            elif kind == "started":
                worker.started = True
            else:
                job_batch, index = message[1], message[2]
                request = worker.job[1] if worker.job else None
                worker.job = None
                if job_batch != batch:
                    continue  # a result of an earlier batch that was abandoned by an error
                if kind == "done":
                    results[index] = message[3]
                else:
                    err = _restore_exception(message[3], message[4])
                    raise _request_failed(request, worker.label, err) from err

    def _replace(self, worker: _Process, batch: int | None, pending: collections.deque | None) -> None:
        worker.process.join(timeout=1)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        reason = _describe_exit(worker.process.exitcode)
        worker.conn.close()
        if not worker.ready:
            self.close()
            raise SamplingError(f"a worker for {self.env_id!r} {reason} while starting; see its output above")
        new = self._start_worker()
        self._workers[self._workers.index(worker)] = new
        job = worker.job if worker.job is not None and worker.job[0] == batch else None
        if job is None or pending is None:
            _log_replacement("subprocess", worker.label, reason, new.name)
            return
        request = job[1]
        if not worker.started:
            # It died before taking the request (e.g. killed while idle): not the request's fault.
            lost = self._unstarted[request.index] = self._unstarted.get(request.index, 0) + 1
            logger.warning(
                "subprocess worker %s %s before starting %s; replaced by %s, sending the request again",
                worker.label, reason, request.describe(), new.name,
            )
            if lost > self.max_retries + 1:
                raise WorkerCrashError(
                    f"{request.describe()} could not be started: {lost} workers died before taking it "
                    f"(last: {worker.label} {reason})"
                )
            pending.appendleft(request)
            return
        failures = self._failures.setdefault(request.index, [])
        failures.append(f"{worker.label} {reason}")
        _log_replacement("subprocess", worker.label, reason, new.name, request, len(failures), self.max_retries)
        if len(failures) > self.max_retries:
            raise _crash_limit_error(request, failures, self.max_retries)
        pending.appendleft(request)


# ------------------------------------------------------------------------------------------- Ray


_RAY_MULTI_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _import_ray() -> Any:
    """Import Ray with usage statistics off (unless the user set ``RAY_USAGE_STATS_ENABLED``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"RaySampler needs Ray ({err}); install it with: pip install -e .[distributed]") from err
    return ray


@contextlib.contextmanager
def _ray_single_node() -> Iterator[None]:
    """Ray's single-node mode while a local instance starts.

    In multi-node mode (the default on Linux) Ray replaces a node address of 127.0.0.1 by the address
    of the interface that routes to a public IP, and its servers listen there. Single-node mode keeps
    127.0.0.1. Ray reads the switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) into a constant when it is
    imported, so the constant is set too, for the duration of ``ray.init`` only.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(_RAY_MULTI_NODE_VAR)
    saved_constant = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_RAY_MULTI_NODE_VAR] = "0"
    if saved_constant is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(_RAY_MULTI_NODE_VAR, None)
        else:
            os.environ[_RAY_MULTI_NODE_VAR] = saved_env
        if saved_constant is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_constant


def start_local_ray(num_cpus: int, *, log_to_driver: bool = False) -> Any:
    """Start a Ray instance on this machine that listens and connects on 127.0.0.1 only; return ``ray``.

    No dashboard, no usage statistics, the caller's logging left alone, and always a new instance (an
    existing local cluster or ``RAY_ADDRESS`` is not joined). Worker output goes to the session's log
    files (``/tmp/ray/session_latest/logs``) unless ``log_to_driver``. If Ray is already initialised in
    this process it is left as it is.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    with _ray_single_node():
        ray.init(
            address="local",
            num_cpus=int(num_cpus),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=log_to_driver,
            ignore_reinit_error=True,
            configure_logging=False,
        )
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":
        ray.shutdown()
        raise SamplingError(
            f"the local Ray instance took node address {node_ip} instead of 127.0.0.1 (this Ray version no "
            f"longer honours {_RAY_MULTI_NODE_VAR}=0); it was shut down"
        )
    return ray


class _RayEnvWorker:
    """The body of a Ray actor: one env, built from the env id inside the actor."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], name: str) -> None:
        self.runner = _TrialRunner(env_id, env_kwargs, f"{name}:pid{os.getpid()}")

    def pid(self) -> int:
        return os.getpid()

    def run(self, version: int, policy_ref: list, request: EpisodeRequest, max_steps: int) -> list[Episode]:
        # The reference comes wrapped in a list so Ray does not fetch it for every call.
        if self.runner.policy_version != version:
            import ray

            self.runner.set_policy(version, ray.get(policy_ref[0]))
        return self.runner.run(request, max_steps)


class RaySampler:
    """Runs requests on ``num_workers`` Ray actors, one env each, built from ``env_id`` inside the actor.

    ``address=None`` uses the Ray instance this process already initialised, or else starts a local one
    with :func:`start_local_ray` (loopback only, ``num_cpus=num_workers``) and shuts it down on
    :meth:`close`. Any other address (``"auto"``, ``"ray://head:10001"``, ``"head:6379"``) joins that
    cluster. Actors ask for one CPU each and take requests one at a time as they become free. The
    policy is put in the object store once per batch and fetched once by each actor. An actor that
    dies is replaced and its request re-run (at most ``max_retries`` times per request).
    """

    def __init__(
        self,
        env_id: str,
        num_workers: int,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        address: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        _check_pool(num_workers, max_retries)
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if address is None:
            start_local_ray(num_workers)
        elif self._owns_ray:
            ray.init(address=address, ignore_reinit_error=True, configure_logging=False, log_to_driver=False)
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.num_workers = int(num_workers)
        self.max_retries = int(max_retries)
        self.max_steps = int(max_steps)
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_RayEnvWorker)
        self._started = 0
        self._version = 0
        self._closed = False
        self._actors: list[tuple[str, Any, Any]] = []  # (name, handle, pid reference)
        free_cpus = ray.available_resources().get("CPU", 0.0)
        deadline = time.monotonic() + 2.0  # actors killed just before (a previous sampler) free their CPUs
        while free_cpus < num_workers and time.monotonic() < deadline:
            time.sleep(0.1)
            free_cpus = ray.available_resources().get("CPU", 0.0)
        if free_cpus < num_workers:
            logger.warning(
                "Ray has %.0f free CPUs for %d workers of one CPU each; the others wait until CPUs are free "
                "(at most %.0f s)", free_cpus, num_workers, _WORKER_START_TIMEOUT_S,
            )
        try:
            self._actors = [self._start_actor() for _ in range(self.num_workers)]
            try:
                ray.get([pid for _, _, pid in self._actors], timeout=_WORKER_START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise SamplingError(
                    f"{num_workers} Ray workers for {env_id!r} did not start within {_WORKER_START_TIMEOUT_S:.0f} s; "
                    f"does the cluster have {num_workers} free CPUs?"
                ) from None
            except ray.exceptions.RayError as err:
                raise SamplingError(f"a Ray worker could not build env {env_id!r}: {err}") from err
        except BaseException:
            self.close()
            raise

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the actors (they live on whichever node Ray placed them)."""
        return list(self._ray.get([pid for _, _, pid in self._actors]))

    def sample(self, policy: EpisodePolicy, requests: Sequence[EpisodeRequest]) -> list[Episode]:
        """Run every request; episodes ordered by request index, then episode within the trial."""
        if self._closed:
            raise SamplingError("this RaySampler is closed")
        requests = _check_requests(requests)
        if not requests:
            return []
        ray = self._ray
        from ray.cloudpickle import dumps

        self._version += 1
        policy_ref = ray.put(_dump_policy(policy, dumps))
        pending = collections.deque(requests)
        results: dict[int, list[Episode]] = {}
        failures: dict[int, list[str]] = {}
        in_flight: dict[Any, tuple[int, EpisodeRequest]] = {}  # result reference -> (actor slot, request)
        busy: set[int] = set()
        while len(results) < len(requests):
            for slot, (_, actor, _) in enumerate(self._actors):
                if slot not in busy and pending:
                    request = pending.popleft()
                    ref = actor.run.remote(self._version, [policy_ref], request, self.max_steps)
                    in_flight[ref] = (slot, request)
                    busy.add(slot)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                slot, request = in_flight.pop(ref)
                busy.discard(slot)
                name = self._actors[slot][0]
                try:
                    results[request.index] = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
                    raise SamplingError(
                        f"{request.describe()} failed in worker {name}: {type(cause).__name__}: {cause}"
                    ) from err
                except ray.exceptions.RayError as err:
                    reason = f"died ({type(err).__name__})"
                    new = self._replace_actor(slot)
                    record = failures.setdefault(request.index, [])
                    record.append(f"{name} {reason}")
                    _log_replacement("Ray", name, reason, new, request, len(record), self.max_retries)
                    if len(record) > self.max_retries:
                        raise _crash_limit_error(request, record, self.max_retries) from err
                    pending.appendleft(request)
        return _ordered(results)

    def close(self) -> None:
        """Stop the actors; shut Ray down if this sampler started or joined it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for _, actor, _ in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RaySampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_actor(self) -> tuple[str, Any, Any]:
        self._started += 1
        name = f"ray-{self._started}"
        actor = self._actor_class.remote(self.env_id, self.env_kwargs, name)
        return name, actor, actor.pid.remote()

    def _replace_actor(self, slot: int) -> str:
        _, actor, _ = self._actors[slot]
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:
            pass
        self._actors[slot] = self._start_actor()
        return self._actors[slot][0]
