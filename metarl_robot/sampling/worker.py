"""What every sampler shares: the worker side of a trial and the bookkeeping of a batch.

A worker (this process for the serial sampler, a child process, a Ray actor) holds a
:class:`TrialRunner`: one env built from the env id (or a Gymnasium ``EnvSpec``) once, the batch's
policy as bytes, and a fresh copy of the policy for every trial. The helpers below check a batch,
order its results, ship exceptions across process boundaries and log worker replacements, the same
way for every backend.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from metarl_robot.sampling.rollout import (
    Episode,
    EpisodeRequest,
    SamplingError,
    WorkerCrashError,
    run_trial,
)

logger = logging.getLogger("metarl_robot.sampling")

WORKER_START_TIMEOUT_S = 300.0
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

EnvId = Any
"""A Gymnasium id (``"module:id"`` imports the module first) or a ``gymnasium.envs.registration.EnvSpec``."""


def env_name(env_id: EnvId) -> str:
    """How messages name an env: its id."""
    return env_id if isinstance(env_id, str) else str(getattr(env_id, "id", env_id))


def check_requests(requests: Sequence[EpisodeRequest]) -> list[EpisodeRequest]:
    requests = list(requests)
    seen: set[int] = set()
    for request in requests:
        if not isinstance(request, EpisodeRequest):
            raise TypeError(f"sample() takes EpisodeRequest items, got {type(request).__name__}")
        if request.index in seen:
            raise ValueError(f"two requests have index {request.index}; give every request of a batch its own index")
        seen.add(request.index)
    return requests


def ordered(results: Mapping[int, list[Episode]]) -> list[Episode]:
    return [episode for index in sorted(results) for episode in results[index]]


def dump_policy(policy: Any, dumps: Callable[..., bytes] = pickle.dumps) -> bytes:
    try:
        return dumps(policy, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:
        raise SamplingError(
            f"the policy ({type(policy).__name__}) cannot be pickled: {type(err).__name__}: {err}. Samplers send "
            "it to their workers, so its classes and functions must be defined at module level (no lambdas)"
        ) from err


def check_pool(num_workers: int, max_retries: int) -> None:
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    if max_retries < 0:
        raise ValueError(f"max_retries={max_retries} must be >= 0")


def make_env(env_id: EnvId, env_kwargs: Mapping[str, Any]) -> Any:
    """:func:`metarl_robot.envs.make_meta_env`, refusing envs that cannot take a task."""
    from metarl_robot.envs import make_meta_env

    env = make_meta_env(env_id, env_kwargs)
    check_meta_env(env, env_id)
    return env


def check_meta_env(env: Any, env_id: EnvId = None) -> None:
    """Raise ``TypeError`` unless ``env`` (or the env it wraps) has ``set_task``."""
    if not callable(getattr(env.unwrapped, "set_task", None)):
        name = env_name(env_id) if env_id is not None else type(env.unwrapped).__name__
        raise TypeError(f"env {name!r} ({type(env).__name__}) has no set_task(TaskSpec); samplers need a MetaEnv")


def limit_torch_threads() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def limit_worker_threads() -> None:
    """One thread per worker: the parallelism is across workers."""
    for name in _THREAD_ENV_VARS:
        os.environ[name] = "1"
    limit_torch_threads()


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class TrialRunner:
    """The worker side shared by every sampler: one env, the batch's policy bytes, fresh copies per trial.

    ``env`` runs the trials on an env the caller built (the serial sampler's ``env=``); it is not closed here.
    """

    def __init__(
        self, env_id: EnvId, env_kwargs: Mapping[str, Any], name: str, *, worker_process: bool = True, env: Any = None
    ) -> None:
        # Only a worker process of its own goes single-threaded; the serial sampler leaves its host alone.
        self.worker_process = worker_process
        if worker_process:
            limit_worker_threads()
        if env is None:
            self.env, self._owns_env = make_env(env_id, env_kwargs), True
        else:
            check_meta_env(env)
            self.env, self._owns_env = env, False
        if worker_process:
            limit_torch_threads()
        self.name = name
        self.policy_version: int | None = None
        self._policy_bytes = b""

    def set_policy(self, version: int, policy_bytes: bytes) -> None:
        self.policy_version, self._policy_bytes = version, policy_bytes

    def run(self, request: EpisodeRequest, max_steps: int, policy: Any = None) -> list[Episode]:
        """Run ``request`` on a fresh copy of the batch's policy, or on ``policy`` itself when given."""
        if policy is None:
            policy = pickle.loads(self._policy_bytes)
        if self.worker_process:
            limit_torch_threads()
        return run_trial(self.env, policy, request, max_steps=max_steps, worker=self.name)

    def close(self) -> None:
        if self._owns_env:
            self.env.close()


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as the ``__cause__`` of its copy here."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def portable_exception(err: BaseException) -> tuple[bytes | None, str]:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        return pickle.dumps(err), text
    except Exception:
        return None, text


def restore_exception(blob: bytes | None, text: str) -> BaseException:
    err: BaseException | None = None
    if blob is not None:
        try:
            err = pickle.loads(blob)
        except Exception:
            err = None
    if err is None:
        err = RuntimeError(text.strip().splitlines()[-1] if text.strip() else "unknown error")
    err.__cause__ = RemoteTraceback(text)
    return err


def request_failed(request: EpisodeRequest, worker: str, err: BaseException) -> SamplingError:
    return SamplingError(f"{request.describe()} failed in worker {worker}: {type(err).__name__}: {err}")


def crash_limit_error(request: EpisodeRequest, failures: list[str], max_retries: int) -> WorkerCrashError:
    return WorkerCrashError(
        f"{request.describe()} was lost {len(failures)} times: its worker died on every attempt "
        f"({'; '.join(failures)}); giving up after max_retries={max_retries}. A worker death is a crash of the "
        "process (simulator segfault, out of memory, a signal), not a Python exception"
    )


def log_replacement(
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
