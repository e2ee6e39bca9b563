"""The on-robot meta-policy: act on raw observations, collect transitions, adapt the task context.

:class:`AdaptiveController` runs a bundle's two ONNX graphs with onnxruntime and nothing else (no
torch). ``act`` maps one raw observation to one command in physical units; ``observe`` appends the
transition to a ring buffer of the manifest's ``buffer_size``; ``adapt`` re-infers the task context
from that buffer. Inputs are validated so that a bad sensor reading raises ``ValueError`` (which a ROS
node turns into a safe hold) instead of reaching the robot as a NaN command.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from metarl_robot.runtime.bundle import Bundle, BundleError, load_bundle

logger = logging.getLogger("metarl_robot.runtime")

PROVIDER_ALIASES: Mapping[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
"""Short names accepted wherever an execution provider is named."""

DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
"""Preference when none is given. TensorRT is opt-in: it builds an engine at start-up (slow)."""


class ProviderError(ValueError):
    """An execution provider was named that does not exist or is not available in this onnxruntime."""


def resolve_provider(providers: Sequence[str] | None = None) -> str:
    """The first provider of the preference list that this onnxruntime build offers.

    Names are onnxruntime provider names or the aliases in :data:`PROVIDER_ALIASES`. Raises
    :class:`ProviderError` for an unknown name, or when none of the requested providers is available.
    """
    if isinstance(providers, str):
        providers = [providers]
    requested = list(DEFAULT_PROVIDERS if providers is None else providers)
    if not requested:
        raise ProviderError("providers is empty; name at least one, e.g. ['cuda', 'cpu']")
    known = set(onnxruntime.get_all_providers())
    names = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name) if isinstance(name, str) else name
        if full not in known:
            raise ProviderError(
                f"unknown execution provider {name!r}; valid names are {sorted(PROVIDER_ALIASES)} or one of "
                f"{sorted(known)}"
            )
        names.append(full)
    available = onnxruntime.get_available_providers()
    for name in names:
        if name in available:
            return name
    raise ProviderError(
        f"none of the requested execution providers {names} is available in this onnxruntime "
        f"(available: {available}); install the matching onnxruntime build (e.g. onnxruntime-gpu) or add 'cpu'"
    )


class LatencyStats:
    """The most recent ``capacity`` durations of one operation, for percentile reports.

    Durations are in seconds; ``summary()`` reports microseconds.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f"LatencyStats capacity must be positive, got {capacity}")
        self._durations_s = np.zeros(capacity, dtype=np.float64)
        self._next = 0
        self.count = 0
        """How many durations were recorded since the last reset (also those no longer kept)."""

    def record(self, duration_s: float) -> None:
        """Add one duration in seconds, forgetting the oldest when full."""
        self._durations_s[self._next] = duration_s
        self._next = (self._next + 1) % len(self._durations_s)
        self.count += 1

    def reset(self) -> None:
        """Forget every recorded duration."""
        self._next = 0
        self.count = 0

    def __len__(self) -> int:
        return min(self.count, len(self._durations_s))

    def durations_s(self) -> np.ndarray:
        """The kept durations in seconds (a copy, in no particular order)."""
        return self._durations_s[: len(self)].copy()

    def percentile_s(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the kept durations in seconds; NaN when empty."""
        if len(self) == 0:
            return math.nan
        return float(np.percentile(self._durations_s[: len(self)], q))

    @property
    def p50_s(self) -> float:
        """Median duration in seconds."""
        return self.percentile_s(50)

    @property
    def p99_s(self) -> float:
        """99th percentile duration in seconds."""
        return self.percentile_s(99)

    def summary(self) -> dict[str, float]:
        """``{"count", "p50_us", "p99_us", "max_us"}`` over the kept durations (NaN when empty)."""
        kept = self._durations_s[: len(self)]
        return {
            "count": self.count,
            "p50_us": self.percentile_s(50) * 1e6,
            "p99_us": self.percentile_s(99) * 1e6,
            "max_us": float(kept.max()) * 1e6 if len(kept) else math.nan,
        }


def default_session_options() -> onnxruntime.SessionOptions:
    """Options for the small graphs of a bundle: all graph optimisations, one intra-op thread.

    One thread is faster than a thread pool for these MLPs and leaves the other cores to the control
    stack; pass your own ``session_options`` to change it.
    """
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class AdaptiveController:
    """Run an exported meta-policy on the robot: ``act``, ``observe``, ``adapt``, ``reset``.

    Typical use::

        controller = AdaptiveController.load("bundles/grasp", providers=["cuda", "cpu"])
        controller.warmup()
        command = controller.act(obs)                     # every control tick
        controller.observe(obs, command, reward, next_obs, done)
        if done:                                          # cadence "episode"
            controller.adapt()

    Attributes: ``bundle`` and ``manifest`` (the validated bundle), ``provider`` (the execution
    provider that actually runs the policy graph), ``obs_dim``, ``act_dim``, ``context_dim``,
    ``buffer_size``, ``num_adapt_steps`` (adapt-graph runs since load), ``act_latency`` and
    ``adapt_latency`` (:class:`LatencyStats` of whole ``act``/``adapt`` calls).
    """

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        *,
        session_options: onnxruntime.SessionOptions | None = None,
    ) -> None:
        """Open the graphs of an already validated ``bundle``; :meth:`load` reads and validates one
        from a directory. Arguments as for :meth:`load`."""
        self.bundle = bundle
        self.manifest: dict[str, Any] = dict(bundle.manifest)
        self.obs_dim, self.act_dim = bundle.obs_dim, bundle.act_dim
        self.context_dim, self.buffer_size = bundle.context_dim, bundle.buffer_size
        self.adapt_steps = bundle.adapt_steps

        requested = resolve_provider(providers)
        options = session_options if session_options is not None else default_session_options()
        session_providers = [requested] if requested == "CPUExecutionProvider" else [requested, "CPUExecutionProvider"]
        self._policy_session = self._open_session("policy", options, session_providers)
        self._adapt_session = self._open_session("adapt", options, session_providers)
        self.session_providers: dict[str, str] = {
            "policy": self._policy_session.get_providers()[0],
            "adapt": self._adapt_session.get_providers()[0],
        }
        """The provider that actually runs each graph."""
        self.provider: str = self.session_providers["policy"]
        for graph, actual in self.session_providers.items():
            if actual != requested:
                logger.warning(
                    "bundle %s: %s graph fell back from %s to %s (onnxruntime could not use %s; see its log)",
                    bundle.path, graph, requested, actual, requested,
                )
        logger.info("bundle %s: running on %s (requested %s)", bundle.path, self.provider, requested)

        self._initial_context = bundle.initial_context.reshape(1, self.context_dim)
        self._context = self._initial_context.copy()
        self._obs = np.zeros((1, self.obs_dim), dtype=np.float32)
        self._policy_feed = {"obs": self._obs, "context": self._context}

        n = self.buffer_size
        self._buf_obs = np.zeros((1, n, self.obs_dim), dtype=np.float32)
        self._buf_command = np.zeros((1, n, self.act_dim), dtype=np.float32)
        self._buf_reward = np.zeros((1, n, 1), dtype=np.float32)
        self._buf_next_obs = np.zeros((1, n, self.obs_dim), dtype=np.float32)
        self._buf_mask = np.zeros((1, n), dtype=np.float32)
        self._adapt_feed = {
            "obs": self._buf_obs,
            "command": self._buf_command,
            "reward": self._buf_reward,
            "next_obs": self._buf_next_obs,
            "mask": self._buf_mask,
        }
        # Staging rows: a transition is validated completely before it overwrites a buffer slot.
        self._stage_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._stage_command = np.zeros(self.act_dim, dtype=np.float32)
        self._stage_next_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._next_slot = 0
        self._buffer_len = 0

        self.num_adapt_steps = 0
        self.act_latency = LatencyStats()
        self.adapt_latency = LatencyStats()

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        providers: Sequence[str] | None = None,
        *,
        session_options: onnxruntime.SessionOptions | None = None,
    ) -> AdaptiveController:
        """Validate the bundle at ``bundle_dir`` and open its graphs on the first available provider.

        ``providers`` is a preference list such as ``["tensorrt", "cuda", "cpu"]`` (default: CUDA, then
        CPU). Raises :class:`BundleError` for a bad bundle and :class:`ProviderError` for an unknown
        or unavailable provider.
        """
        return cls(load_bundle(bundle_dir), providers, session_options=session_options)

    def _open_session(
        self, graph: str, options: onnxruntime.SessionOptions, providers: list[str]
    ) -> onnxruntime.InferenceSession:
        path = self.bundle.graph_path(graph)
        try:
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types per failure
            raise BundleError(
                f"{path}: onnxruntime could not load the {graph} graph ({err}); re-export the bundle"
            ) from None
        spec = self.bundle.graphs[graph]
        found = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if found != (list(spec.inputs), list(spec.outputs)):
            raise BundleError(
                f"{path}: graph inputs/outputs {found} do not match the manifest "
                f"{(list(spec.inputs), list(spec.outputs))}; re-export the bundle"
            )
        return session

    # ------------------------------------------------------------------------------ state
    @property
    def context(self) -> np.ndarray:
        """The current task context, shape ``(context_dim,)`` (a copy)."""
        return self._context[0].copy()

    @property
    def initial_context(self) -> np.ndarray:
        """The context before any transition of a task has been seen (a copy)."""
        return self._initial_context[0].copy()

    @property
    def buffer_len(self) -> int:
        """How many transitions the buffer holds (at most ``buffer_size``)."""
        return self._buffer_len

    def reset(self) -> None:
        """Start a new task: empty the transition buffer and restore the initial context."""
        for buffer in self._adapt_feed.values():
            buffer.fill(0.0)
        self._next_slot = 0
        self._buffer_len = 0
        self._context[...] = self._initial_context

    # ------------------------------------------------------------------------------ control
    def act(self, obs: Any) -> np.ndarray:
        """The command for one raw observation ``(obs_dim,)``: float32 ``(act_dim,)`` in physical units.

        Raises ``ValueError`` naming the problem when ``obs`` has the wrong size or a non-finite value.
        """
        start = time.perf_counter()
        _load_vector(self._obs[0], obs, "obs")
        command = self._policy_session.run(None, self._policy_feed)[0][0]
        if not np.isfinite(command).all():
            raise ValueError(f"policy graph returned a non-finite command {command.tolist()}; hold the robot")
        self.act_latency.record(time.perf_counter() - start)
        return command

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        """Append one transition (``action`` = the command that was sent) to the ring buffer.

        Once the buffer holds ``buffer_size`` transitions, each new one replaces the oldest. ``done``
        marks the end of an episode; the context encoder treats the buffer as a set, so it is checked
        but not stored (with cadence "episode", call :meth:`adapt` after a ``done`` transition).
        Raises ``ValueError`` for a wrong size or non-finite value; the buffer is then unchanged.
        """
        _load_vector(self._stage_obs, obs, "obs")
        _load_vector(self._stage_command, action, "action")
        _load_vector(self._stage_next_obs, next_obs, "next_obs")
        reward_value = _scalar(reward, "reward")
        if not (isinstance(done, (bool, np.bool_)) or (isinstance(done, (int, np.integer)) and done in (0, 1))):
            raise ValueError(f"done must be a bool, got {done!r}")
        slot = self._next_slot
        self._buf_obs[0, slot] = self._stage_obs
        self._buf_command[0, slot] = self._stage_command
        self._buf_reward[0, slot, 0] = reward_value
        self._buf_next_obs[0, slot] = self._stage_next_obs
        self._buf_mask[0, slot] = 1.0
        self._next_slot = (slot + 1) % self.buffer_size
        self._buffer_len = min(self._buffer_len + 1, self.buffer_size)

    def adapt(self) -> np.ndarray:
        """Infer a new context from the buffered transitions, adopt it and return it (a copy).

        Runs the adapt graph ``adaptation.steps`` times. With an empty buffer the result is the
        initial context. Raises ``ValueError`` (keeping the old context) if the graph returns a
        non-finite context.
        """
        start = time.perf_counter()
        for _ in range(self.adapt_steps):
            context = self._adapt_session.run(None, self._adapt_feed)[0]
            if not np.isfinite(context).all():
                raise ValueError(f"adapt graph returned a non-finite context {context.tolist()}; kept the old one")
            self._context[...] = context
            self.num_adapt_steps += 1
        self.adapt_latency.record(time.perf_counter() - start)
        return self.context

    def warmup(self, iterations: int = 20) -> None:
        """Run both graphs ``iterations`` times on zeros so first-call costs (allocation, kernel
        selection, TensorRT engine build) happen now; state and latency stats are left untouched."""
        policy_feed = {"obs": np.zeros_like(self._obs), "context": self._context.copy()}
        adapt_feed = {name: np.zeros_like(buffer) for name, buffer in self._adapt_feed.items()}
        for _ in range(iterations):
            self._policy_session.run(None, policy_feed)
            self._adapt_session.run(None, adapt_feed)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _load_vector(dst: np.ndarray, value: Any, name: str) -> None:
    """Copy ``value`` into the float32 row ``dst`` after checking its shape; reject non-finite values."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.shape != dst.shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {dst.shape}")
    try:
        dst[...] = array
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}") from None
    if not np.isfinite(dst).all():
        bad = np.flatnonzero(~np.isfinite(dst))
        raise ValueError(
            f"{name} has non-finite values at indices {bad.tolist()}: {array.reshape(-1)[bad].tolist()} "
            "(values beyond float32 range count as non-finite)"
        )


def _scalar(value: Any, name: str) -> float:
    array = np.asarray(value)
    if array.size != 1 or array.ndim > 1:
        raise ValueError(f"{name} must be a single number, got shape {array.shape}")
    try:
        number = float(array.reshape(()))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        raise ValueError(f"{name} is not finite: {value!r}")
    return number
