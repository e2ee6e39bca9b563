"""The subprocess sampler: trials in worker processes on this machine, one env each."""

from __future__ import annotations

import collections
import dataclasses
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from metarl_robot.sampling.rollout import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_STEPS,
    Episode,
    EpisodePolicy,
    EpisodeRequest,
    SamplingError,
    WorkerCrashError,
)
from metarl_robot.sampling.worker import (
    WORKER_START_TIMEOUT_S,
    EnvId,
    TrialRunner,
    check_pool,
    check_requests,
    crash_limit_error,
    describe_exit,
    dump_policy,
    env_name,
    log_replacement,
    logger,
    ordered,
    portable_exception,
    request_failed,
    restore_exception,
)


def _subprocess_worker_main(conn: Any, env_id: EnvId, env_kwargs: dict[str, Any], name: str) -> None:
    """Worker process loop. Messages in: ``("policy", version, bytes)``, ``("run", batch, request,
    max_steps)``, ``("close",)``; out: ``("ready", pid)`` or ``("init_failed", text)``, then per request
    ``("started", batch, index)`` and ``("done", batch, index, episodes)`` or ``("error", batch, index,
    exception, traceback)``."""
    try:
        runner = TrialRunner(env_id, env_kwargs, f"{name}:pid{os.getpid()}")
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
                conn.send(("error", batch, request.index, *portable_exception(err)))
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
        env_id: EnvId,
        num_workers: int,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        start_method: str = "forkserver",
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        import multiprocessing

        check_pool(num_workers, max_retries)
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
            deadline = time.monotonic() + WORKER_START_TIMEOUT_S
            while not all(w.ready for w in self._workers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SamplingError(f"workers for {env_name(env_id)!r} did not start within {WORKER_START_TIMEOUT_S:.0f} s")
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
        requests = check_requests(requests)
        if not requests:
            return []
        self._version += 1
        self._batch += 1
        policy_bytes = dump_policy(policy)
        pending = collections.deque(requests)
        results: dict[int, list[Episode]] = {}
        self._failures, self._unstarted = {}, {}
        while len(results) < len(requests):
            for worker in self._workers:
                if worker.ready and worker.job is None and pending:
                    self._dispatch(worker, pending.popleft(), policy_bytes)
            self._wait_and_receive(self._batch, results, pending=pending)
        return ordered(results)

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
                raise SamplingError(f"a worker could not build env {env_name(self.env_id)!r}:\n{message[1]}")
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
                    err = restore_exception(message[3], message[4])
                    raise request_failed(request, worker.label, err) from err

    def _replace(self, worker: _Process, batch: int | None, pending: collections.deque | None) -> None:
        worker.process.join(timeout=1)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        reason = describe_exit(worker.process.exitcode)
        worker.conn.close()
        if not worker.ready:
            self.close()
            raise SamplingError(f"a worker for {env_name(self.env_id)!r} {reason} while starting; see its output above")
        new = self._start_worker()
        self._workers[self._workers.index(worker)] = new
        job = worker.job if worker.job is not None and worker.job[0] == batch else None
        if job is None or pending is None:
            log_replacement("subprocess", worker.label, reason, new.name)
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
        log_replacement("subprocess", worker.label, reason, new.name, request, len(failures), self.max_retries)
        if len(failures) > self.max_retries:
            raise crash_limit_error(request, failures, self.max_retries)
        pending.appendleft(request)
