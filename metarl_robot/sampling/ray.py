"""The Ray sampler: trials on Ray actors, one env each, on this machine or a cluster."""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from metarl_robot.sampling.rollout import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_STEPS,
    Episode,
    EpisodePolicy,
    EpisodeRequest,
    SamplingError,
)
from metarl_robot.sampling.worker import (
    WORKER_START_TIMEOUT_S,
    EnvId,
    TrialRunner,
    check_pool,
    check_requests,
    crash_limit_error,
    dump_policy,
    env_name,
    log_replacement,
    logger,
    ordered,
)


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

    def __init__(self, env_id: EnvId, env_kwargs: dict[str, Any], name: str) -> None:
        self.runner = TrialRunner(env_id, env_kwargs, f"{name}:pid{os.getpid()}")

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
        env_id: EnvId,
        num_workers: int,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        address: str | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        check_pool(num_workers, max_retries)
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
                "(at most %.0f s)", free_cpus, num_workers, WORKER_START_TIMEOUT_S,
            )
        try:
            self._actors = [self._start_actor() for _ in range(self.num_workers)]
            try:
                ray.get([pid for _, _, pid in self._actors], timeout=WORKER_START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise SamplingError(
                    f"{num_workers} Ray workers for {env_name(env_id)!r} did not start within {WORKER_START_TIMEOUT_S:.0f} s; "
                    f"does the cluster have {num_workers} free CPUs?"
                ) from None
            except ray.exceptions.RayError as err:
                raise SamplingError(f"a Ray worker could not build env {env_name(env_id)!r}: {err}") from err
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
        requests = check_requests(requests)
        if not requests:
            return []
        ray = self._ray
        from ray.cloudpickle import dumps

        self._version += 1
        policy_ref = ray.put(dump_policy(policy, dumps))
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
                    log_replacement("Ray", name, reason, new, request, len(record), self.max_retries)
                    if len(record) > self.max_retries:
                        raise crash_limit_error(request, record, self.max_retries) from err
                    pending.appendleft(request)
        return ordered(results)

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
