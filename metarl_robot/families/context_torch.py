"""The context family's PyTorch half: the graphs a :class:`~metarl_robot.policies.ContextPolicy`
exports, their parity checks and test vectors, and the runtime controller's semantics in PyTorch.

``policy.onnx`` computes ``ContextPolicy.command(obs, context)`` and ``adapt.onnx``
``ContextPolicy.encode_commands(obs, command, reward, next_obs, mask)``; observation normalisation,
action clipping and scaling are inside the graphs. Imported only through the plug-in in
:mod:`metarl_robot.families.context`, when torch is needed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import nn

from metarl_robot.export import ExportError, cpu_session, float32_list, jsonable, onnx_export, single_threaded_torch
from metarl_robot.families import registry
from metarl_robot.families.base import BuiltGraphs, TorchControllerBase
from metarl_robot.parity import max_abs_diff
from metarl_robot.policies import ContextPolicy

FAMILY = registry.get("context")
IO = FAMILY.graph_io
GRAPH_FILES = FAMILY.graph_files
TEST_VECTORS_FILE = "test_vectors.npz"
PARITY_BATCHES = 50
"""Random batches per graph in the export-time parity check."""


class PolicyGraph(nn.Module):
    """What ``policy.onnx`` computes: raw observation and context in, physical command out."""

    def __init__(self, policy: ContextPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.policy.command(obs, context)


class AdaptGraph(nn.Module):
    """What ``adapt.onnx`` computes: a batch of transition sequences (commands in physical units) in,
    context out."""

    def __init__(self, policy: ContextPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self,
        obs: torch.Tensor,
        command: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.policy.encode_commands(obs, command, reward, next_obs, mask)


def adaptation_section(
    policy: ContextPolicy, adaptation: Mapping[str, Any], require: Callable[..., Any], where: str
) -> dict[str, Any]:
    """The manifest's ``adaptation`` section of a context bundle from the checkpoint's ``adaptation``."""
    buffer_size = require(adaptation, "buffer_size", "adaptation.buffer_size")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        raise ExportError(f"{where}: 'adaptation.buffer_size' must be a positive integer, got {buffer_size!r}")
    cadence = require(adaptation, "cadence", "adaptation.cadence")
    if not isinstance(cadence, str):
        raise ExportError(f"{where}: 'adaptation.cadence' must be a string, got {cadence!r}")
    reward_source = require(adaptation, "reward_source", "adaptation.reward_source")
    if not isinstance(reward_source, Mapping):
        raise ExportError(f"{where}: 'adaptation.reward_source' must be a mapping, got {type(reward_source).__name__}")
    with torch.no_grad():
        initial_context = float32_list(policy.initial_context()[0])
    return {
        "kind": "context_encoder",
        "adapted": "context",
        "context_dim": policy.config.context_dim,
        "inner_lr": None,
        "steps": 1,
        "buffer_size": buffer_size,
        "cadence": cadence,
        "reward_source": jsonable(reward_source),
        "initial_context": initial_context,
    }


def build_graphs(policy: ContextPolicy, adaptation: Mapping[str, Any], staging: Path, opset: int | None) -> BuiltGraphs:
    """Write the graphs and test vectors into ``staging``; return the parity figures, sizes and files."""
    for graph in IO:
        export_graph(policy, graph, staging / GRAPH_FILES[graph], opset)
    sessions = {graph: cpu_session(staging / GRAPH_FILES[graph]) for graph in IO}
    buffer_size = adaptation["buffer_size"]
    with single_threaded_torch():
        diffs = parity_max_abs_diff(
            policy, sessions, batches=PARITY_BATCHES, rng=np.random.default_rng(0), max_sequence=buffer_size
        )
        write_test_vectors(policy, staging / TEST_VECTORS_FILE, buffer_size=buffer_size)
    dims = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "context_dim": policy.config.context_dim}
    return BuiltGraphs(dims=dims, files=[*GRAPH_FILES.values(), TEST_VECTORS_FILE], parity=diffs)


def checkpoint_parity(policy: ContextPolicy, bundle, sessions, rng: np.random.Generator, batches: int):
    """Graph parity on fresh batches, and the encoder's prior against ``adaptation.initial_context``."""
    with single_threaded_torch():
        diffs = parity_max_abs_diff(
            policy, sessions, batches=batches, rng=rng, max_sequence=int(bundle.adaptation["buffer_size"])
        )
        with torch.no_grad():
            prior = policy.initial_context()[0].numpy()
    stored = np.asarray(bundle.adaptation["initial_context"], dtype=np.float32)
    start = float(np.max(np.abs(prior - stored))) if prior.shape == stored.shape else math.inf
    return diffs, "initial_context", start


def example_inputs(policy: ContextPolicy, graph: str) -> tuple[torch.Tensor, ...]:
    batch, seq = 2, 3
    if graph == "policy":
        return torch.zeros(batch, policy.obs_dim), torch.zeros(batch, policy.config.context_dim)
    return (
        torch.zeros(batch, seq, policy.obs_dim),
        torch.zeros(batch, seq, policy.act_dim),
        torch.zeros(batch, seq, 1),
        torch.zeros(batch, seq, policy.obs_dim),
        torch.ones(batch, seq),
    )


def export_graph(policy: ContextPolicy, graph: str, path: Path, opset: int | None) -> None:
    inputs, outputs = IO[graph]
    module = (PolicyGraph if graph == "policy" else AdaptGraph)(policy).eval()
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    if graph == "policy":
        dynamic_shapes = {name: {0: batch} for name in inputs}
    else:
        dynamic_shapes = {name: {0: batch, 1: sequence} for name in IO["adapt"][0]}
    onnx_export(module, example_inputs(policy, graph), path, graph, inputs, outputs, dynamic_shapes, opset)


def sample_inputs(
    policy: ContextPolicy,
    graph: str,
    rng: np.random.Generator,
    *,
    batch: int | None = None,
    sequence: int | None = None,
    max_sequence: int = 64,
) -> dict[str, np.ndarray]:
    """Random float32 inputs for ``graph`` that exercise the normaliser clip and the action clip.

    ``batch`` defaults to a random 1..8 and ``sequence`` (adapt graph) to a random 1..``max_sequence``.
    Observations are drawn around the policy's normaliser statistics with 4 standard deviations of
    spread; commands reach 1.5x the action scale; masks have random holes (and may be all zero).
    """
    if batch is None:
        batch = int(rng.integers(1, 9))
    mean = policy.obs_norm.mean.numpy()
    std = np.sqrt(policy.obs_norm.var.numpy() + 1e-8)

    def observations(*shape: int) -> np.ndarray:
        return (mean + std * rng.normal(0.0, 4.0, size=(*shape, policy.obs_dim))).astype(np.float32)

    if graph == "policy":
        context = rng.uniform(-1.0, 1.0, size=(batch, policy.config.context_dim))
        return {"obs": observations(batch), "context": context.astype(np.float32)}
    seq = int(rng.integers(1, max_sequence + 1)) if sequence is None else sequence
    scale = policy.action_scale.numpy()
    return {
        "obs": observations(batch, seq),
        "command": (rng.uniform(-1.5, 1.5, size=(batch, seq, policy.act_dim)) * scale).astype(np.float32),
        "reward": rng.normal(size=(batch, seq, 1)).astype(np.float32),
        "next_obs": observations(batch, seq),
        "mask": (rng.random((batch, seq)) < 0.7).astype(np.float32),
    }


@torch.no_grad()
def reference_outputs(policy: ContextPolicy, graph: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """What PyTorch computes for ``graph`` on ``inputs``, evaluated in float64 and returned as float32.

    The float32 graph is compared with the exact function rather than with PyTorch's own float32
    rounding: for wide layers the two float32 implementations each drift a few 1e-6 from the exact
    result, in different directions, which would otherwise count twice against the tolerance.
    """
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).double() for name in IO[graph][0]]
    exact = copy.deepcopy(policy).double()
    module = PolicyGraph(exact) if graph == "policy" else AdaptGraph(exact)
    return module.eval()(*tensors).numpy().astype(np.float32)


def parity_max_abs_diff(
    policy: ContextPolicy,
    sessions: Mapping[str, onnxruntime.InferenceSession],
    *,
    batches: int,
    rng: np.random.Generator,
    max_sequence: int,
) -> dict[str, float]:
    """Largest difference between onnxruntime and PyTorch per graph over random batches, as
    :func:`max_abs_diff` measures it."""
    action_scale = policy.action_scale.numpy()
    diffs: dict[str, float] = {}
    for graph, session in sessions.items():
        worst = 0.0
        for _ in range(batches):
            inputs = sample_inputs(policy, graph, rng, max_sequence=max_sequence)
            actual = session.run(None, inputs)[0]
            expected = reference_outputs(policy, graph, inputs)
            worst = max(worst, max_abs_diff(graph, actual, expected, action_scale))
            if not math.isfinite(worst):
                break
        diffs[graph] = worst
    return diffs


def write_test_vectors(policy: ContextPolicy, path: Path, *, buffer_size: int) -> None:
    """Store one seeded random batch per graph with the PyTorch outputs (keys in docs/bundle.md)."""
    rng = np.random.default_rng(12345)
    arrays: dict[str, np.ndarray] = {}
    for graph, batch in (("policy", 16), ("adapt", 4)):
        inputs = sample_inputs(policy, graph, rng, batch=batch, sequence=buffer_size)
        for name, array in inputs.items():
            arrays[f"{graph}/inputs/{name}"] = array
        arrays[f"{graph}/outputs/{IO[graph][1][0]}"] = reference_outputs(policy, graph, inputs)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


class TorchController(TorchControllerBase):
    """The runtime's controller semantics over a PyTorch :class:`~metarl_robot.policies.ContextPolicy`."""

    family = "context"
    state_names = ("context",)

    def __init__(self, policy, buffer_size: int):
        self.policy, self.buffer_size = policy, buffer_size
        self.obs_dim, self.act_dim = policy.obs_dim, policy.act_dim
        self.reset()

    def reset(self) -> None:
        self._buffer: list[tuple[np.ndarray, ...]] = []
        with torch.no_grad():
            self.context = self.policy.initial_context(1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs, np.float32)[None])
            return self.policy.command(obs_t, self.context)[0].numpy()

    def observe(self, obs, action, reward, next_obs, done) -> None:
        item = (np.asarray(obs, np.float32), np.asarray(action, np.float32), np.float32(reward), np.asarray(next_obs, np.float32))
        self._buffer = (self._buffer + [item])[-self.buffer_size :]

    def adapt(self):
        t = torch
        if not self._buffer:
            return self.context
        obs, cmd, rew, nxt = (np.stack(x) for x in zip(*self._buffer))
        with t.no_grad():
            self.context = self.policy.encode_commands(
                t.as_tensor(obs[None]), t.as_tensor(cmd[None]), t.as_tensor(rew[None, :, None]),
                t.as_tensor(nxt[None]), t.ones(1, len(obs)),
            )
        return self.context
