"""The plug-in protocol of a method family.

A family says, in one place: the graphs its bundles hold (names, inputs and outputs, shapes), what its
manifest ``adaptation`` section holds and how it is validated, which controller runs its bundles on the
robot, and — through methods that import torch only when called — how its PyTorch model is rebuilt
from a checkpoint, exported and checked for parity, and evaluated in PyTorch with the robot's
semantics. Importing this module, or a family module, never imports torch: the robot loads bundles
with the runtime half alone.

Subclass :class:`Family`, fill in the class attributes and the methods, and register an instance with
:func:`metarl_robot.families.register`. docs/architecture.md walks through an example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from metarl_robot.runtime.base import Controller
    from metarl_robot.runtime.bundle import Bundle, ManifestChecker

Shape = tuple[int | None, ...]
GraphIO = Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
Require = Callable[[Mapping[str, Any], str, str], Any]
"""``require(section, key, dotted_name)``: the value, or an export error naming the missing key."""


@dataclasses.dataclass(frozen=True)
class BuiltGraphs:
    """What a family's export wrote into the staging directory."""

    dims: Mapping[str, int]
    """The sizes :meth:`Family.expected_shapes` needs (``obs_dim``, ``act_dim`` and the family's own)."""
    files: Sequence[str]
    """Every file written (graphs included), to be listed in the manifest with its sha256."""
    parity: Mapping[str, float]
    """Largest onnxruntime-vs-PyTorch difference per check, as :func:`metarl_robot.parity.max_abs_diff`."""
    internal_dtypes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Graphs that compute in another precision than their float32 inputs and outputs (``{"adapt":
    "float64"}``), recorded in the provenance; empty when every graph computes in float32."""


class Family:
    """Base class of a method-family plug-in; see the module docstring."""

    name: ClassVar[str]
    """The manifest's ``method.family``."""
    adaptation_kind: ClassVar[str]
    """The manifest's ``adaptation.kind`` this family requires."""
    graph_io: ClassVar[GraphIO]
    """Per graph, its input and output names in order; the runtime feeds graphs by these names."""
    graph_files: ClassVar[Mapping[str, str]] = {"policy": "policy.onnx", "adapt": "adapt.onnx"}
    """Per graph, the file it is written to. Same graphs as ``graph_io``: every family has ``policy``
    (whose output ``command`` is the command); ``adapt`` is optional, for a family whose adaptation
    happens inside the policy step (a recurrent memory) leaves it out of both."""
    policy_class: ClassVar[str]
    """Class name of the family's PyTorch policy, as a checkpoint records it."""
    retired_graph_io: ClassVar[Mapping[str, Sequence[tuple[tuple[str, ...], str]]]] = {}
    """Per graph, the input names earlier exports wrote, each with why it changed, so a bundle that still
    has them is told to re-export rather than shown two name lists."""
    parity_labels: ClassVar[Mapping[str, str]] = {}
    """How an export error names a parity check that is not a single graph."""
    algorithms: ClassVar[tuple[str, ...]] = ()
    """Packages under ``metarl_robot.algos`` (or elsewhere) that train this family's policies; each
    exposes ``METHODS`` (the config ``method`` names it trains), ``TrainConfig`` and ``train``."""

    # ------------------------------------------------------------------ runtime half (numpy only)
    def check_adaptation(self, check: ManifestChecker, adaptation: Mapping[str, Any]) -> dict[str, int]:
        """Validate the manifest's ``adaptation`` section (``kind`` is already checked); return the
        family's sizes that :meth:`expected_shapes` needs. Raise ``BundleError`` through ``check``."""
        raise NotImplementedError

    def expected_shapes(self, graph: str, dims: Mapping[str, int]) -> dict[str, Shape]:
        """Shape of every input and output of ``graph`` (``None`` = dynamic) for the given sizes."""
        raise NotImplementedError

    def check_files(self, root: Path, adaptation: Mapping[str, Any], dims: Mapping[str, int]) -> None:
        """Check family-specific files (already checksummed) beyond the graphs; ``BundleError`` if bad."""

    def files_named_in_adaptation(self, adaptation: Mapping[str, Any]) -> Sequence[str]:
        """Bundle files the ``adaptation`` section names; each must be listed (and so checksummed)."""
        return ()

    def controller(
        self, bundle: Bundle, providers: Sequence[str] | None = None, *, seed: int | None = None, **kwargs: Any
    ) -> Controller:
        """Open ``bundle`` with this family's on-robot controller."""
        raise NotImplementedError

    def probe_feed(self, bundle: Bundle, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Policy-graph inputs for the observations ``obs [B, obs_dim]`` that push the command as far
        as the family allows (verify checks the command never leaves, and reaches, the manifest's bounds)."""
        raise NotImplementedError

    def graph_shapes(self, graph: str, dims: Mapping[str, int]) -> dict[str, dict[str, list[int | None]]]:
        """The manifest's ``inputs``/``outputs`` shapes of ``graph``."""
        expected = self.expected_shapes(graph, dims)
        inputs, outputs = self.graph_io[graph]
        return {"inputs": {n: list(expected[n]) for n in inputs}, "outputs": {n: list(expected[n]) for n in outputs}}

    # ------------------------------------------------------------------ PyTorch half (imports torch when called)
    def build_policy(self, spec: Mapping[str, Any]) -> Any:
        """An untrained policy module from a checkpoint's ``policy`` spec (obs_dim, act_dim,
        action_scale, config); the caller loads the weights."""
        raise NotImplementedError

    def adaptation_section(
        self, policy: Any, adaptation: Mapping[str, Any], require: Require, where: str
    ) -> dict[str, Any]:
        """The manifest's ``adaptation`` section from the checkpoint's ``adaptation`` and the policy."""
        raise NotImplementedError

    def build_graphs(
        self, policy: Any, adaptation: Mapping[str, Any], staging: Path, opset: int | None
    ) -> BuiltGraphs:
        """Export the graphs (and any other file) of ``policy`` into ``staging``, measure parity against
        PyTorch and write test vectors (``test_vectors.npz``: ``<graph>/inputs/<name>``,
        ``<graph>/outputs/<name>``)."""
        raise NotImplementedError

    def torch_controller(
        self, policy: Any, adaptation: Mapping[str, Any], *, seed: int = 0, explore: bool = True
    ) -> Controller:
        """The runtime controller's semantics over the PyTorch ``policy`` (for evaluation of checkpoints)."""
        raise NotImplementedError

    def checkpoint_parity(
        self, policy: Any, bundle: Bundle, sessions: Mapping[str, Any], rng: np.random.Generator, batches: int
    ) -> tuple[dict[str, float], str, float]:
        """Parity of the bundle's graphs with ``policy`` on fresh random batches, plus one named
        comparison of the adaptation's starting point: ``(diffs, start_name, start_diff)``."""
        raise NotImplementedError


def saturating_noise(rng: np.random.Generator, rows: int, act_dim: int) -> np.ndarray:
    """Float32 exploration noise ``[rows, act_dim]`` of magnitude 1e3 or more with random signs: far past
    the action clip, so a policy graph that samples ``mean + std * noise`` commands its bounds exactly
    (for :meth:`Family.probe_feed`)."""
    noise = rng.normal(0.0, 1.0, size=(rows, act_dim))
    return (np.where(noise >= 0, 1e3, -1e3) * (1.0 + np.abs(noise))).astype(np.float32)


class TorchControllerBase:
    """The parts of :class:`metarl_robot.runtime.Controller` every PyTorch twin of a runtime controller
    shares; a family's twin adds ``reset``/``act``/``observe``/``adapt`` (and ``state_names``)."""

    family = "torch"
    cadence = "episode"
    episodes_per_step = 1
    state_names: ClassVar[tuple[str, ...]] = ()

    @property
    def episodes_ready(self) -> int:
        return 1

    def schedule(self, every_n_steps: int = 0) -> Any:
        from metarl_robot.runtime.schedule import AdaptationSchedule

        return AdaptationSchedule(self.cadence, every_n_steps, self.episodes_per_step)

    def set_learning(self, enabled: bool) -> None:
        if hasattr(self, "explore"):
            self.explore = bool(enabled)

    def status(self) -> dict[str, str]:
        return {"adaptation_family": self.family}

    def get_state(self) -> dict[str, np.ndarray]:
        return {name: np.array(_to_numpy(getattr(self, name)), dtype=np.float32) for name in self.state_names}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.state_names):
            raise ValueError(f"state must have exactly the keys {sorted(self.state_names)}, got {sorted(state)}")
        import torch

        for name in self.state_names:
            current = getattr(self, name)
            value = torch.as_tensor(np.asarray(state[name], dtype=np.float32)).reshape(current.shape)
            setattr(self, name, value.to(current.dtype))


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
