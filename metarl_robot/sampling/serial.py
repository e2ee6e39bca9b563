"""The serial sampler: every trial in this process, one after the other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from metarl_robot.sampling.rollout import DEFAULT_MAX_STEPS, Episode, EpisodePolicy, EpisodeRequest, SamplingError
from metarl_robot.sampling.worker import EnvId, TrialRunner, check_requests, dump_policy, ordered, request_failed


class SerialSampler:
    """Runs every request in this process, one after the other, on one env built from ``env_id``.

    Same results as the parallel samplers (the policy is copied for every trial here too); use it in
    tests and to debug a policy with a plain stack trace. ``env`` runs the trials on an env you built
    instead (it stays open on :meth:`close`). ``copy_policy=False`` runs every trial on the policy
    object itself rather than on a fresh copy, for a policy that cannot be pickled: its ``reset`` must
    then return it to the same state for every trial, or its results depend on the order of the requests.
    """

    num_workers = 1

    def __init__(
        self,
        env_id: EnvId = None,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        env: Any = None,
        copy_policy: bool = True,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        if (env_id is None) == (env is None):
            raise ValueError("SerialSampler needs an env id or an env (env=...), not both or neither")
        self.env_id = env_id
        self.max_steps = int(max_steps)
        self.copy_policy = bool(copy_policy)
        self._runner: TrialRunner | None = TrialRunner(
            env_id, dict(env_kwargs or {}), "serial", worker_process=False, env=env
        )
        self._version = 0

    def sample(self, policy: EpisodePolicy, requests: Sequence[EpisodeRequest]) -> list[Episode]:
        """Run every request; episodes ordered by request index, then episode within the trial."""
        if self._runner is None:
            raise SamplingError("this SerialSampler is closed")
        requests = check_requests(requests)
        self._version += 1
        if self.copy_policy:
            self._runner.set_policy(self._version, dump_policy(policy))
        results: dict[int, list[Episode]] = {}
        for request in requests:
            try:
                results[request.index] = self._runner.run(
                    request, self.max_steps, None if self.copy_policy else policy
                )
            except Exception as err:
                raise request_failed(request, "serial", err) from err
        return ordered(results)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> "SerialSampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
