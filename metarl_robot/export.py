"""Export a training checkpoint to a deployable bundle: two ONNX graphs, test vectors, a manifest.

The checkpoint's policy class picks the bundle family. For a ``ContextPolicy`` (family "context"),
``policy.onnx`` computes ``ContextPolicy.command(obs, context)`` and ``adapt.onnx`` computes
``ContextPolicy.encode_commands(obs, command, reward, next_obs, mask)``. For a ``GradientPolicy``
(family "gradient", :mod:`metarl_robot.gradient_export`), ``policy.onnx`` samples an action at the
adapted parameters and ``adapt.onnx`` is one inner policy-gradient step on them. Observation
normalisation, action clipping and scaling are inside the graphs, so the robot feeds raw sensor values
and sends the output as is. The manifest carries the robot contract (observation layout, action mode,
names, units, limits, joint names, control rate, adaptation settings) and the provenance. The format
is specified in docs/bundle.md.

An export is checked before it is published: both graphs run in onnxruntime on random batches (and,
for gradient bundles, on chains of adaptation steps) and must match PyTorch within
:data:`PARITY_TOLERANCE`. It is written to a temporary directory and renamed into place, so a failed
export leaves no partial bundle.
"""

from __future__ import annotations

import copy

import contextlib
import dataclasses
import datetime
import enum
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.gradient_policy import GradientPolicy
from metarl_robot.policies import ContextPolicy
from metarl_robot.runtime.bundle import (
    ADAPT_FILE,
    FORMAT,
    GRAPH_IO,
    MANIFEST_FILE,
    PARAMS_FILE,
    POLICY_FILE,
    SCHEMA_VERSION,
    TEST_VECTORS_FILE,
    BundleError,
    graph_shapes,
    load_bundle,
    sha256_file,
)
from metarl_robot.verify import PARITY_TOLERANCE, max_abs_diff

logger = logging.getLogger("metarl_robot.export")

PARITY_BATCHES = 50
"""Random batches per graph in the export-time parity check."""
GRAPH_FILES = {"policy": POLICY_FILE, "adapt": ADAPT_FILE}
CONTEXT_IO = GRAPH_IO["context"]
PARITY_LABELS = {"adapt_chained": "the adapt graph over chained steps (its own output fed back)"}
"""How the parity error message names a check that is not a single graph."""


class ExportError(ValueError):
    """A checkpoint cannot be exported; the message names the missing key or failed check."""


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


def export_bundle(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the checkpoint at ``checkpoint_path`` as a bundle directory ``out_dir``; return its path.

    ``opset`` defaults to the torch exporter's default. An existing ``out_dir`` is replaced only with
    ``overwrite=True``, and only when it is empty or a bundle (holds ``manifest.json``). Raises
    :class:`ExportError` when the checkpoint lacks a required key, the ONNX export fails, or the
    onnxruntime-vs-PyTorch parity check exceeds :data:`PARITY_TOLERANCE`;
    :class:`~metarl_robot.checkpoint.CheckpointError` when the checkpoint cannot be read.
    """
    start = time.perf_counter()
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    _check_destination(out_dir, overwrite)
    policy, ckpt = load_checkpoint(checkpoint_path)
    sections = _contract_sections(policy, ckpt, checkpoint_path)
    family = sections["method"]["family"]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        build = _build_gradient if family == "gradient" else _build_context
        with single_threaded_torch():
            diffs, dims, file_names = build(policy, sections["adaptation"], staging, opset, checkpoint_path)
        files = {name: sha256_file(staging / name) for name in file_names}
        opsets = {_default_opset(staging / GRAPH_FILES[g]) for g in GRAPH_FILES}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT,
            **sections,
            "graphs": {
                graph: {"file": GRAPH_FILES[graph], **graph_shapes(family, graph, **dims)} for graph in GRAPH_FILES
            },
            "files": files,
            "provenance": _provenance(ckpt, checkpoint_path, opset=max(opsets), parity=diffs),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        try:
            load_bundle(staging)
        except BundleError as err:
            raise ExportError(f"the exported manifest does not pass load_bundle (a bug in export): {err}") from None
        os.chmod(staging, 0o755)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "exported %s -> %s in %.1f s (parity max abs diff: %s)",
        checkpoint_path, out_dir, time.perf_counter() - start, ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()),
    )
    return out_dir


def _build_context(
    policy: ContextPolicy, adaptation: Mapping[str, Any], staging: Path, opset: int | None, checkpoint_path: Path
) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """Write the context family's graphs and test vectors into ``staging`` after the parity check;
    return the parity figures, the graph sizes and the files to list."""
    for graph in CONTEXT_IO:
        _export_graph(policy, graph, staging / GRAPH_FILES[graph], opset)
    sessions = {graph: _cpu_session(staging / GRAPH_FILES[graph]) for graph in CONTEXT_IO}
    buffer_size = adaptation["buffer_size"]
    diffs = parity_max_abs_diff(
        policy, sessions, batches=PARITY_BATCHES, rng=np.random.default_rng(0), max_sequence=buffer_size
    )
    _check_parity(diffs, checkpoint_path)
    _write_test_vectors(policy, staging / TEST_VECTORS_FILE, buffer_size=buffer_size)
    dims = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "context_dim": policy.config.context_dim}
    return diffs, dims, [POLICY_FILE, ADAPT_FILE, TEST_VECTORS_FILE]


def _build_gradient(
    policy: GradientPolicy, adaptation: Mapping[str, Any], staging: Path, opset: int | None, checkpoint_path: Path
) -> tuple[dict[str, float], dict[str, int], list[str]]:
    """The gradient family's counterpart of :func:`_build_context`, plus ``params.npy``."""
    from metarl_robot import gradient_export  # imports this module, so not at the top

    sizes = {"episodes": adaptation["episodes_per_step"], "max_episode_steps": adaptation["max_episode_steps"]}
    for graph in GRAPH_FILES:
        gradient_export.export_graph(policy, graph, staging / GRAPH_FILES[graph], opset, **sizes)
    sessions = {graph: _cpu_session(staging / GRAPH_FILES[graph]) for graph in GRAPH_FILES}
    diffs = gradient_export.parity_max_abs_diff(
        policy, sessions, batches=PARITY_BATCHES, rng=np.random.default_rng(0), **sizes
    )
    _check_parity(diffs, checkpoint_path)
    gradient_export.write_test_vectors(policy, staging / TEST_VECTORS_FILE, **sizes)
    with open(staging / PARAMS_FILE, "wb") as f:
        np.save(f, gradient_export.initial_params(policy), allow_pickle=False)
    dims = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "num_params": policy.num_adapted, **sizes}
    return diffs, dims, [POLICY_FILE, ADAPT_FILE, PARAMS_FILE, TEST_VECTORS_FILE]


def _check_parity(diffs: Mapping[str, float], checkpoint_path: Path) -> None:
    failed = {name: diff for name, diff in diffs.items() if not diff <= PARITY_TOLERANCE}
    if failed:
        raise ExportError(
            f"exporting {str(checkpoint_path)!r}: onnxruntime disagrees with PyTorch on "
            + ", ".join(f"{PARITY_LABELS.get(g, f'the {g} graph')} (max abs diff {d:.3g})" for g, d in failed.items())
            + f" over {PARITY_BATCHES} random batches; the tolerance is {PARITY_TOLERANCE:g} (commands in "
            "normalised action units). "
            "No bundle was written."
        )


# ---------------------------------------------------------------------------- checkpoint -> manifest
def _contract_sections(policy: ContextPolicy | GradientPolicy, ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The manifest's method/observation/action/control_rate_hz/adaptation sections from a checkpoint."""
    where = f"checkpoint {str(path)!r}"
    resave = "re-save the checkpoint with it (see docs/bundle.md, 'Checkpoint keys read by export')"

    def require(section: Mapping[str, Any], key: str, name: str) -> Any:
        if key not in section or section[key] is None:
            raise ExportError(f"{where}: missing key {name!r}, which the bundle manifest needs; {resave}")
        return section[key]

    def mapping(section: Mapping[str, Any], key: str, name: str) -> Mapping[str, Any]:
        value = require(section, key, name)
        if not isinstance(value, Mapping):
            raise ExportError(f"{where}: {name!r} must be a mapping, got {type(value).__name__}")
        return value

    def string_list(value: Any, name: str, length: int | None = None) -> list[str]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ExportError(f"{where}: {name!r} must be a list of strings, got {value!r}")
        if length is not None and len(value) != length:
            raise ExportError(f"{where}: {name!r} has {len(value)} entries but the policy has {length} actions")
        return list(value)

    method = require(ckpt, "method", "method")
    interface = mapping(ckpt, "interface", "interface")
    adaptation = mapping(ckpt, "adaptation", "adaptation")

    layout = require(interface, "observation_layout", "interface.observation_layout")
    if not isinstance(layout, (list, tuple)) or not all(isinstance(e, Mapping) for e in layout):
        raise ExportError(f"{where}: 'interface.observation_layout' must be a list of mappings, got {layout!r}")
    for i, entry in enumerate(layout):
        for key, kind in (("name", str), ("source", str), ("size", int)):
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                raise ExportError(
                    f"{where}: 'interface.observation_layout[{i}].{key}' must be {kind.__name__}, "
                    f"got {entry.get(key)!r}"
                )
    layout_size = sum(int(entry["size"]) for entry in layout)
    if layout_size != policy.obs_dim:
        raise ExportError(
            f"{where}: 'interface.observation_layout' sizes add up to {layout_size}, but the policy takes "
            f"{policy.obs_dim} observation values"
        )

    def action_field(key: str) -> Any:
        value = _optional_action_field(interface, key)
        if value is None:
            raise ExportError(
                f"{where}: missing key 'interface.action.{key}' (or 'interface.action_{key}'), which the "
                f"bundle manifest needs; {resave}"
            )
        return value

    mode = action_field("mode")
    if not isinstance(mode, str):
        raise ExportError(f"{where}: 'interface.action.mode' must be a string, got {mode!r}")
    act_dim = policy.act_dim
    names = string_list(action_field("names"), "interface.action.names", act_dim)
    units = string_list(action_field("units"), "interface.action.units", act_dim)
    joint_names = string_list(require(interface, "joint_names", "interface.joint_names"), "interface.joint_names")
    rate = require(interface, "control_rate_hz", "interface.control_rate_hz")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ExportError(f"{where}: 'interface.control_rate_hz' must be a positive number, got {rate!r}")

    scale = _float32_list(policy.action_scale)
    for key, expected in (("scale", scale), ("low", [-v for v in scale]), ("high", scale)):
        declared = _optional_action_field(interface, key)
        if declared is None:
            continue
        try:
            values = np.asarray(declared, dtype=np.float64).reshape(-1)
            agrees = values.shape == (act_dim,) and np.allclose(values, expected, rtol=1e-6, atol=0)
        except (TypeError, ValueError):
            agrees = False
        if not agrees:
            raise ExportError(
                f"{where}: 'interface.action.{key}' {declared!r} disagrees with the policy's action_scale "
                f"{scale} (the policy graph clips to +-action_scale); fix the env interface or the policy"
            )
    if isinstance(policy, GradientPolicy):
        from metarl_robot import gradient_export  # imports this module, so not at the top

        family = "gradient"
        adaptation_section = gradient_export.adaptation_section(policy, adaptation, require, where)
    else:
        family, adaptation_section = "context", _context_adaptation(policy, adaptation, require, where)
    return {
        "method": {"family": family, "name": str(method)},
        "observation": {"dim": policy.obs_dim, "layout": _jsonable(layout), "normalization": "baked"},
        "action": {
            "mode": mode,
            "dim": act_dim,
            "names": names,
            "units": units,
            "low": [-s for s in scale],
            "high": scale,
            "scale": scale,
            "joint_names": joint_names,
            "clipping_and_scaling": "baked",
        },
        "control_rate_hz": float(rate),
        "adaptation": adaptation_section,
    }


def _context_adaptation(
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
        initial_context = _float32_list(policy.initial_context()[0])
    return {
        "kind": "context_encoder",
        "adapted": "context",
        "context_dim": policy.config.context_dim,
        "inner_lr": None,
        "steps": 1,
        "buffer_size": buffer_size,
        "cadence": cadence,
        "reward_source": _jsonable(reward_source),
        "initial_context": initial_context,
    }


def _optional_action_field(interface: Mapping[str, Any], key: str) -> Any:
    nested = interface.get("action")
    if isinstance(nested, Mapping) and key in nested:
        return nested[key]
    return interface.get(f"action_{key}")


def _provenance(ckpt: Mapping[str, Any], path: Path, *, opset: int, parity: Mapping[str, float]) -> dict[str, Any]:
    return {
        "config": _jsonable(ckpt.get("config")),
        "seed": _jsonable(ckpt.get("seed")),
        "code_version": _jsonable(ckpt.get("code_version")),
        "training_metrics": _jsonable(ckpt.get("metrics")),
        "iteration": _jsonable(ckpt.get("iteration")),
        "checkpoint_sha256": sha256_file(path),
        "checkpoint_path": str(path.resolve()),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "onnx_opset": opset,
        "parity_max_abs_diff": {graph: float(diff) for graph, diff in parity.items()},
    }


def _float32_list(tensor: torch.Tensor) -> list[float]:
    """Float32 values as the shortest decimals that read back to the same float32 (0.15, not
    0.15000000596046448)."""
    return [float(str(v)) for v in tensor.detach().cpu().numpy().astype(np.float32).reshape(-1)]


def _jsonable(value: Any) -> Any:
    """A JSON-serialisable copy: tuples become lists, paths strings, non-finite floats "nan"/"inf"."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


# ---------------------------------------------------------------------------- ONNX export
@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run PyTorch on one intra-op thread for the block. The parity references are many tiny batches,
    for which a thread pool only adds synchronisation (tens of times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's warnings and log chatter (unrelated ops, axis-name notes);
    correctness is established by the parity check instead."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _example_inputs(policy: ContextPolicy, graph: str) -> tuple[torch.Tensor, ...]:
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


def _export_graph(policy: ContextPolicy, graph: str, path: Path, opset: int | None) -> None:
    inputs, outputs = CONTEXT_IO[graph]
    module = (PolicyGraph if graph == "policy" else AdaptGraph)(policy).eval()
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    if graph == "policy":
        dynamic_shapes = {name: {0: batch} for name in inputs}
    else:
        dynamic_shapes = {name: {0: batch, 1: sequence} for name in CONTEXT_IO["adapt"][0]}
    onnx_export(module, _example_inputs(policy, graph), path, graph, inputs, outputs, dynamic_shapes, opset)


def onnx_export(module: nn.Module, args, path: Path, graph: str, inputs, outputs, dynamic_shapes, opset: int | None) -> None:
    """``torch.onnx.export`` with the dynamo exporter, its chatter silenced, failures as :class:`ExportError`."""
    try:
        with _quiet_exporter():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=True,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises a variety of types
        raise ExportError(f"torch.onnx.export (dynamo) failed for the {graph} graph: {err}") from err
    if not path.is_file():
        raise ExportError(f"torch.onnx.export reported success for the {graph} graph but wrote no {path.name}")


def _default_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _cpu_session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------- parity
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
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).double() for name in CONTEXT_IO[graph][0]]
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


def _write_test_vectors(policy: ContextPolicy, path: Path, *, buffer_size: int) -> None:
    """Store one seeded random batch per graph with the PyTorch outputs (keys in docs/bundle.md)."""
    rng = np.random.default_rng(12345)
    arrays: dict[str, np.ndarray] = {}
    for graph, batch in (("policy", 16), ("adapt", 4)):
        inputs = sample_inputs(policy, graph, rng, batch=batch, sequence=buffer_size)
        for name, array in inputs.items():
            arrays[f"{graph}/inputs/{name}"] = array
        arrays[f"{graph}/outputs/{CONTEXT_IO[graph][1][0]}"] = reference_outputs(policy, graph, inputs)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------------------- publishing
def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not overwrite:
        raise ExportError(f"{str(out_dir)!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ExportError(f"{str(out_dir)!r} exists and is not a directory; refusing to replace it with a bundle")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise ExportError(
            f"{str(out_dir)!r} is not empty and holds no {MANIFEST_FILE}, so it is not a bundle; "
            "refusing to overwrite it even with overwrite=True"
        )


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle into place; an existing one is swapped out and removed after."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.replace(out_dir, retired / out_dir.name)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(retired / out_dir.name, out_dir)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
