"""What every on-robot controller shares: execution providers, ONNX sessions, latency statistics and
input validation.

:class:`BundleController` opens a bundle's policy and adapt graphs on the preferred execution provider
and reports which provider actually runs them; :class:`~metarl_robot.runtime.AdaptiveController`
(context bundles) and :class:`~metarl_robot.runtime.GradientController` (gradient bundles) add the
family's ``act``/``observe``/``adapt``. Numpy and onnxruntime only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import onnxruntime

from metarl_robot.runtime.bundle import Bundle, BundleError, load_bundle
from metarl_robot.runtime.schedule import AdaptationSchedule

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


@runtime_checkable
class Controller(Protocol):
    """What the control loop, evaluation and the ROS node may ask of any controller, whatever its family.

    Every family's on-robot controller (and its PyTorch twin used in evaluation) implements this; no
    caller branches on the family. Commands are in physical units; ``act`` raises ``ValueError`` for
    a bad observation (the control loop then holds).
    """

    family: str
    obs_dim: int
    act_dim: int

    def reset(self) -> None:
        """Forget the task: back to the prior, adaptation data dropped."""

    def act(self, obs: Any) -> np.ndarray:
        """The command for one raw observation."""

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        """Record one transition (``action`` = the command that was sent)."""

    def adapt(self) -> Any:
        """Adapt to the task from what was observed; returns the new adapted state."""

    def schedule(self, every_n_steps: int = 0) -> AdaptationSchedule:
        """When this controller adapts: its bundle's cadence, ``every_n_steps`` as the deployer set it."""

    @property
    def episodes_ready(self) -> int:
        """Complete episodes waiting for the next adaptation (1 for families that need none)."""

    def set_learning(self, enabled: bool) -> None:
        """Adaptation switched on or off by the deployer (a family may change how it acts, e.g. stop exploring)."""

    def status(self) -> dict[str, str]:
        """Diagnostic key/values describing the adaptation state (always ``adaptation_family``)."""

    def get_state(self) -> dict[str, np.ndarray]:
        """The adapted state as named arrays (copies), e.g. to log it or carry it across a restart."""

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Adopt a state returned by :meth:`get_state`; raises ``ValueError`` for a wrong name or shape."""


ControllerT = TypeVar("ControllerT", bound="BundleController")


class BundleController:
    """Opens the ``policy`` and ``adapt`` graphs of a validated bundle of the subclass's ``family``
    (``adapt`` only where the family has one: its ``graph_io`` names it; ``_adapt_session`` is ``None``
    otherwise).

    Attributes: ``bundle`` and ``manifest``, ``obs_dim``, ``act_dim``, ``adapt_steps``, ``provider``
    (the execution provider that actually runs the policy graph), ``session_providers`` (per graph),
    ``num_adapt_steps`` (adapt-graph runs since load), ``act_latency`` and ``adapt_latency``
    (:class:`LatencyStats` of whole ``act``/``adapt`` calls).
    """

    family: ClassVar[str]
    """The ``method.family`` of the bundles this controller runs."""

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        *,
        session_options: onnxruntime.SessionOptions | None = None,
    ) -> None:
        if bundle.family != self.family:
            raise BundleError(
                f"{bundle.path} is a {bundle.family!r} bundle and {type(self).__name__} runs {self.family!r} "
                "bundles; use metarl_robot.runtime.load_controller, which picks the controller for the bundle"
            )
        self.bundle = bundle
        self.manifest: dict[str, Any] = dict(bundle.manifest)
        self.obs_dim, self.act_dim = bundle.obs_dim, bundle.act_dim
        self.adapt_steps = bundle.adapt_steps

        requested = resolve_provider(providers)
        options = session_options if session_options is not None else default_session_options()
        session_providers = [requested] if requested == "CPUExecutionProvider" else [requested, "CPUExecutionProvider"]
        self._policy_session = self._open_session("policy", options, session_providers)
        # A family whose memory is its adaptation (recurrent) has no adapt graph.
        self._adapt_session = self._open_session("adapt", options, session_providers) if "adapt" in bundle.graphs else None
        self.session_providers: dict[str, str] = {"policy": self._policy_session.get_providers()[0]}
        """The provider that actually runs each graph."""
        if self._adapt_session is not None:
            self.session_providers["adapt"] = self._adapt_session.get_providers()[0]
        self.provider: str = self.session_providers["policy"]
        for graph, actual in self.session_providers.items():
            if actual != requested:
                logger.warning(
                    "bundle %s: %s graph fell back from %s to %s (onnxruntime could not use %s; see its log)",
                    bundle.path, graph, requested, actual, requested,
                )
        logger.info("bundle %s: running on %s (requested %s)", bundle.path, self.provider, requested)

        self.num_adapt_steps = 0
        self.act_latency = LatencyStats()
        self.adapt_latency = LatencyStats()

    @classmethod
    def load(
        cls: type[ControllerT], bundle_dir: str | Path, providers: Sequence[str] | None = None, **kwargs: Any
    ) -> ControllerT:
        """Validate the bundle at ``bundle_dir`` and open its graphs on the first available provider.

        ``providers`` is a preference list such as ``["tensorrt", "cuda", "cpu"]`` (default: CUDA, then
        CPU); ``kwargs`` go to the constructor (``session_options``, and the controller's own options).
        Raises :class:`BundleError` for a bad bundle or one of another family, and
        :class:`ProviderError` for an unknown or unavailable provider.
        """
        return cls(load_bundle(bundle_dir), providers, **kwargs)

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

    # ------------------------------------------------------------------ the Controller protocol, shared part
    @property
    def episodes_per_step(self) -> int:
        """Episodes one adaptation needs (1 unless the family collects several)."""
        return 1

    @property
    def episodes_ready(self) -> int:
        """Complete episodes waiting for the next adaptation (families that need none: always 1)."""
        return 1

    def schedule(self, every_n_steps: int = 0) -> AdaptationSchedule:
        """When to adapt: the manifest's ``adaptation.cadence`` with the deployer's ``every_n_steps``."""
        cadence = str(self.bundle.adaptation.get("cadence", "episode"))
        return AdaptationSchedule(cadence, every_n_steps, self.episodes_per_step)

    def set_learning(self, enabled: bool) -> None:
        """Adaptation on or off; the base controller acts the same either way."""

    def status(self) -> dict[str, str]:
        """Diagnostic key/values of the adaptation state; families add their own."""
        return {"adaptation_family": self.family}

    _STATE: ClassVar[tuple[str, ...]] = ()
    """Names of the float32 arrays (attributes ``_<name>``) that make up the adapted state."""

    def get_state(self) -> dict[str, np.ndarray]:
        """The adapted state as named float32 arrays (copies)."""
        return {name: np.array(getattr(self, f"_{name}"), dtype=np.float32) for name in self._STATE}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Adopt ``state`` (as :meth:`get_state` returns it); validated completely before anything changes."""
        if set(state) != set(self._STATE):
            raise ValueError(f"state must have exactly the keys {sorted(self._STATE)}, got {sorted(state)}")
        staged = {}
        for name in self._STATE:
            current = getattr(self, f"_{name}")
            staged[name] = np.zeros_like(current)
            load_vector(staged[name], state[name], name)
        for name, value in staged.items():
            getattr(self, f"_{name}")[...] = value

    def _warmup_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """Inputs for the policy and adapt graphs that leave the controller's state alone (``None`` for
        the adapt graph of a bundle that has none)."""
        raise NotImplementedError

    def warmup(self, iterations: int = 20) -> None:
        """Run the graphs ``iterations`` times so first-call costs (allocation, kernel selection,
        TensorRT engine build) happen now; state and latency stats are left untouched."""
        policy_feed, adapt_feed = self._warmup_feeds()
        for _ in range(iterations):
            self._policy_session.run(None, policy_feed)
            if self._adapt_session is not None and adapt_feed is not None:
                self._adapt_session.run(None, adapt_feed)


_EP_FAILURE = getattr(getattr(onnxruntime.capi, "onnxruntime_pybind11_state", None), "EPFail", None)


def bound_run(
    session: onnxruntime.InferenceSession, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
) -> Any:
    """``session.run(output_names, feed)`` as a call without arguments, for a feed whose input names are
    fixed for the session's life (its arrays may change in place, its dict entries may be replaced).

    The names are checked here once; the public ``run`` re-checks them on every call, which costs about
    1.5 µs of Python on a 9 µs policy graph. An execution-provider failure is handed to the public
    ``run``, which keeps onnxruntime's fallback to the next provider.
    """
    names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    required = {i.name for i in session.get_inputs() if not i.type.startswith("optional")}
    missing = required - set(feed)
    if missing:
        raise ValueError(f"feed lacks the graph inputs {sorted(missing)}")
    if getattr(session, "_sess", None) is None or _EP_FAILURE is None:  # an onnxruntime without it
        return lambda: session.run(names, feed)

    def run() -> Any:
        try:
            return session._sess.run(names, feed, None)  # looked up each call: a fallback replaces it
        except _EP_FAILURE:
            return session.run(names, feed)

    return run


_FLOAT32_MAX = float(np.finfo(np.float32).max)


SQUARE_LIMIT = 1.8e19
"""Largest magnitude whose square a float32 holds: the finiteness checks on the control path use one dot
product, so a value beyond it is refused too (no sensor or command of a robot comes near it)."""


class NormalRows:
    """Rows of standard normal float32 noise from a seeded generator, drawn ``block`` rows at a time:
    the same numbers in the same order as one ``standard_normal(width)`` draw per row (numpy fills a
    block row by row), at a fraction of the cost of a generator call per control tick."""

    def __init__(self, seed: int | None, width: int, block: int = 256) -> None:
        self.width, self._block_rows = int(width), int(block)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Start the stream of ``np.random.default_rng(seed)`` again (unused rows are dropped)."""
        self._rng = np.random.default_rng(seed)
        self._block = np.empty((0, self.width), dtype=np.float32)
        self._next = 0

    def draw_into(self, row: np.ndarray) -> None:
        """Write the next row of noise into ``row`` (shape ``(width,)``)."""
        if self._next == len(self._block):
            self._block = self._rng.standard_normal((self._block_rows, self.width), dtype=np.float32)
            self._next = 0
        row[...] = self._block[self._next]
        self._next += 1


def all_finite(row: np.ndarray) -> bool:
    """Whether a float32 vector is finite with every magnitude below :data:`SQUARE_LIMIT`: one dot
    product, a third of ``np.isfinite(row).all()``'s cost on the per-tick path."""
    return math.isfinite(float(row @ row))


def load_vector(dst: np.ndarray, value: Any, name: str) -> None:
    """Copy ``value`` into the float32 row ``dst`` after checking its shape; reject non-finite values
    (and magnitudes beyond :data:`SQUARE_LIMIT`)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.shape != dst.shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {dst.shape}")
    try:
        dst[...] = array
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}") from None
    flat = dst if dst.ndim == 1 else dst.reshape(-1)
    if not math.isfinite(float(flat @ flat)):  # all_finite, inlined: this runs on every control tick
        bad = np.flatnonzero(~np.isfinite(dst))
        if bad.size:
            raise ValueError(
                f"{name} has non-finite values at indices {bad.tolist()}: {array.reshape(-1)[bad].tolist()} "
                "(values beyond float32 range count as non-finite)"
            )
        huge = np.flatnonzero(np.abs(flat) > SQUARE_LIMIT)
        if huge.size:
            raise ValueError(f"{name} has values beyond ±{SQUARE_LIMIT:g} at indices {huge.tolist()}: "
                             f"{array.reshape(-1)[huge].tolist()}; check the sensor and its units")
        # several values below the limit whose squares add up past float32: as implausible on a robot
        raise ValueError(f"{name} has a norm beyond float32 range (largest magnitude {float(np.abs(flat).max()):g}); "
                         "check the sensor and its units")


def scalar(value: Any, name: str) -> float:
    """``value`` as a finite float within float32 range; raises ``ValueError`` naming ``name`` otherwise."""
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


def check_done(done: Any) -> bool:
    """``done`` as a bool; raises ``ValueError`` unless it is a bool or the integer 0 or 1."""
    if not (isinstance(done, (bool, np.bool_)) or (isinstance(done, (int, np.integer)) and done in (0, 1))):
        raise ValueError(f"done must be a bool, got {done!r}")
    return bool(done)
