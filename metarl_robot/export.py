"""Export a training checkpoint to a deployable bundle: the family's ONNX graphs, test vectors, a manifest.

The checkpoint's policy class picks the family plug-in (:mod:`metarl_robot.families`), which writes
its graphs and files and states its manifest ``adaptation`` section; this writer knows no family. Observation
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.families import registry
from metarl_robot.parity import PARITY_TOLERANCE
from metarl_robot.runtime.bundle import FORMAT, MANIFEST_FILE, SCHEMA_VERSION, BundleError, load_bundle, sha256_file
from metarl_robot.runtime.guard import GuardError, GuardSpec
from metarl_robot.runtime.integrity import write_manifest

logger = logging.getLogger("metarl_robot.export")

PARITY_BATCHES = 50
"""Random batches per graph in the export-time parity check (each family uses this figure)."""


class ExportError(ValueError):
    """A checkpoint cannot be exported; the message names the missing key or failed check."""


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
    plugin = registry.for_policy_class(type(policy).__name__)
    sections = _contract_sections(plugin, policy, ckpt, checkpoint_path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        with single_threaded_torch():
            built = plugin.build_graphs(policy, sections["adaptation"], staging, opset)
        diffs = dict(built.parity)
        _check_parity(plugin, diffs, checkpoint_path)
        files = {name: sha256_file(staging / name) for name in built.files}
        opsets = {_default_opset(staging / file) for file in plugin.graph_files.values()}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT,
            **sections,
            "graphs": {
                graph: {"file": file, **plugin.graph_shapes(graph, built.dims)} for graph, file in plugin.graph_files.items()
            },
            "files": files,
            "provenance": _provenance(ckpt, checkpoint_path, opset=max(opsets), parity=diffs),
        }
        if built.internal_dtypes:  # graphs that compute in float64 between float32 inputs and outputs
            manifest["provenance"]["graph_internal_dtype"] = dict(built.internal_dtypes)
        write_manifest(staging / MANIFEST_FILE, manifest)  # sealed with the digest over it and so every file
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


def _check_parity(plugin: Any, diffs: Mapping[str, float], checkpoint_path: Path) -> None:
    failed = {name: diff for name, diff in diffs.items() if not diff <= PARITY_TOLERANCE}
    if failed:
        raise ExportError(
            f"exporting {str(checkpoint_path)!r}: onnxruntime disagrees with PyTorch on "
            + ", ".join(f"{plugin.parity_labels.get(g, f'the {g} graph')} (max abs diff {d:.3g})" for g, d in failed.items())
            + f" over {PARITY_BATCHES} random batches; the tolerance is {PARITY_TOLERANCE:g} (commands in "
            "normalised action units). "
            "No bundle was written."
        )


# ---------------------------------------------------------------------------- checkpoint -> manifest
def _contract_sections(plugin: Any, policy: Any, ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
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

    scale = float32_list(policy.action_scale)
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
    adaptation_section = plugin.adaptation_section(policy, adaptation, require, where)
    try:  # the adaptation guard is the same for every family (metarl_robot.runtime.guard)
        guard = GuardSpec.from_adaptation(adaptation)
    except GuardError as err:
        raise ExportError(f"{where}: {err}") from None
    if guard is not None:
        adaptation_section["guard"] = guard.to_dict()
    return {
        "method": {"family": plugin.name, "name": str(method)},
        "observation": {"dim": policy.obs_dim, "layout": jsonable(layout), "normalization": "baked",
                        **({"bounds": bounds} if (bounds := observation_bounds(policy)) is not None else {})},
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


def _optional_action_field(interface: Mapping[str, Any], key: str) -> Any:
    nested = interface.get("action")
    if isinstance(nested, Mapping) and key in nested:
        return nested[key]
    return interface.get(f"action_{key}")


def _provenance(ckpt: Mapping[str, Any], path: Path, *, opset: int, parity: Mapping[str, float]) -> dict[str, Any]:
    return {
        "config": jsonable(ckpt.get("config")),
        "seed": jsonable(ckpt.get("seed")),
        "code_version": jsonable(ckpt.get("code_version")),
        "training_metrics": jsonable(ckpt.get("metrics")),
        "iteration": jsonable(ckpt.get("iteration")),
        "checkpoint_sha256": sha256_file(path),
        "checkpoint_path": str(path.resolve()),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "onnx_opset": opset,
        "parity_max_abs_diff": {graph: float(diff) for graph, diff in parity.items()},
    }


PLAUSIBLE_STDS = 15.0
"""Half-width of the plausible range in training standard deviations; the graph's normaliser already
saturates at 10, so beyond this a value tells the policy nothing and most likely is a sensor fault."""


def observation_bounds(policy: torch.nn.Module) -> dict[str, Any] | None:
    """The manifest's ``observation.bounds``: per value, the training mean -+ (15 std + half the mean's
    magnitude + 0.1) from the policy's observation statistics; ``None`` when it never saw data."""
    norm = getattr(policy, "obs_norm", None)
    if norm is None or float(norm.count) < 2.0:
        return None
    mean = norm.mean.detach().to(torch.float64)
    half = PLAUSIBLE_STDS * torch.sqrt(norm.var.detach().to(torch.float64).clamp(min=0.0)) + 0.5 * mean.abs() + 0.1
    return {
        "low": float32_list(mean - half),
        "high": float32_list(mean + half),
        "rule": "training mean -+ (15 std + 0.5 |mean| + 0.1); outside it the robot holds with an error",
    }


def float32_list(tensor: torch.Tensor) -> list[float]:
    """Float32 values as the shortest decimals that read back to the same float32 (0.15, not
    0.15000000596046448)."""
    return [float(str(v)) for v in tensor.detach().cpu().numpy().astype(np.float32).reshape(-1)]


def jsonable(value: Any) -> Any:
    """A JSON-serialisable copy: tuples become lists, paths strings, non-finite floats "nan"/"inf"."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        return jsonable(value.tolist())
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


def cpu_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU for an exported graph file (parity checks, verify)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


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
    # Replacing the bundle removes the folder: only if it holds nothing export did not write.
    try:
        listed = set(json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8")).get("files", {}))
    except (OSError, ValueError, AttributeError):
        listed = None
    if listed is None:
        raise ExportError(f"{str(out_dir / MANIFEST_FILE)!r} cannot be read as a bundle manifest; refusing to replace "
                          f"{str(out_dir)!r}: move it aside or export to another --out")
    ours = listed | {MANIFEST_FILE, "signature.json"}
    foreign = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and
                     str(p.relative_to(out_dir)) not in ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ExportError(f"{str(out_dir)!r} holds files export did not write ({shown}); --overwrite never deletes them: "
                          "move them out or export to another --out")


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
