"""Episode samplers: run trials of a policy on many tasks, in-process, in subprocesses or on Ray.

A batch is a list of :class:`EpisodeRequest` (task, seed, number of episodes, per-request options).
Every sampler runs each request with :func:`run_trial`, the one rollout loop, and returns the
:class:`Episode` list ordered by request index, then episode within the trial:

- :class:`SerialSampler` (:mod:`.serial`) runs in this process (tests, debugging, small jobs);
- :class:`SubprocessSampler` (:mod:`.subprocess`) runs one env per worker process on this machine;
- :class:`RaySampler` (:mod:`.ray`) runs one env per Ray actor, locally or on a cluster.

Meta-training (:mod:`metarl_robot.algos`) and meta-testing (:func:`metarl_robot.evaluation.evaluate`)
collect through these samplers; :func:`make_sampler` builds the one a config names (``sampler:
serial | subprocess | ray`` and ``num_workers``).

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

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from metarl_robot.sampling.ray import RaySampler, start_local_ray
from metarl_robot.sampling.rollout import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_STEPS,
    BasePolicy,
    Episode,
    EpisodeBatch,
    EpisodePolicy,
    EpisodeRequest,
    FunctionPolicy,
    RandomPolicy,
    SamplingError,
    WorkerCrashError,
    episode_seed,
    make_requests,
    policy_rng,
    run_trial,
)
from metarl_robot.sampling.serial import SerialSampler
from metarl_robot.sampling.subprocess import SubprocessSampler
from metarl_robot.sampling.worker import EnvId

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_STEPS",
    "SAMPLERS",
    "BasePolicy",
    "Episode",
    "EpisodeBatch",
    "EpisodePolicy",
    "EpisodeRequest",
    "FunctionPolicy",
    "RandomPolicy",
    "RaySampler",
    "Sampler",
    "SamplingError",
    "SerialSampler",
    "SubprocessSampler",
    "WorkerCrashError",
    "episode_seed",
    "make_requests",
    "make_sampler",
    "policy_rng",
    "resolve_num_workers",
    "run_trial",
    "start_local_ray",
]

SAMPLERS: tuple[str, ...] = ("serial", "subprocess", "ray")
"""The sampler names a config or the CLI may give."""


class Sampler(Protocol):
    """What training and evaluation ask of a sampler."""

    num_workers: int

    def sample(self, policy: EpisodePolicy, requests: Sequence[EpisodeRequest]) -> list[Episode]: ...

    def close(self) -> None: ...


def resolve_num_workers(num_workers: int, requests_per_batch: int | None = None) -> int:
    """``num_workers``, or for 0 one per CPU core of this machine (at most ``requests_per_batch``)."""
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers} must be >= 0 (0: one per CPU core)")
    if num_workers:
        return int(num_workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, requests_per_batch or cores))


def make_sampler(
    kind: str,
    env_id: EnvId,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    num_workers: int = 1,
    max_steps: int = DEFAULT_MAX_STEPS,
    requests_per_batch: int | None = None,
    **options: Any,
) -> Sampler:
    """The sampler ``kind`` (``serial``, ``subprocess`` or ``ray``) for ``env_id`` with ``num_workers``.

    ``num_workers=0`` means one per CPU core, at most ``requests_per_batch``; the serial sampler has one.
    ``options`` go to the sampler's constructor (``start_method``, ``address``, ``max_retries``, ``env``).
    """
    if kind not in SAMPLERS:
        raise ValueError(f"sampler {kind!r} is not one of {list(SAMPLERS)}")
    if kind == "serial":
        return SerialSampler(env_id, env_kwargs, max_steps=max_steps, **options)
    workers = resolve_num_workers(num_workers, requests_per_batch)
    if kind == "subprocess":
        return SubprocessSampler(env_id, workers, env_kwargs, max_steps=max_steps, **options)
    return RaySampler(env_id, workers, env_kwargs, max_steps=max_steps, **options)
