"""Check an exported bundle before it goes to a robot: ``metarl-robot verify BUNDLE``.

:func:`verify_bundle` runs every check it can and reports each one: the manifest schema and file
checksums, the ONNX checker on both graphs, the graphs' input/output names and shapes against the
manifest, onnxruntime against the PyTorch outputs stored in ``test_vectors.npz`` (no torch needed),
and, when torch is importable and the training checkpoint is at hand, onnxruntime against the
checkpoint re-run in PyTorch on fresh random inputs (for gradient bundles also over chained
adaptation steps, and the initial parameters in ``params.npy`` against the checkpoint's).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime

from metarl_robot.runtime.bundle import GRAPH_IO, TEST_VECTORS_FILE, Bundle, BundleError, load_bundle, sha256_file

PARITY_TOLERANCE = 1e-5
"""Largest difference allowed between onnxruntime and PyTorch (or stored) outputs, as measured by
:func:`max_abs_diff`; export and verify use the same bar."""
PARITY_BATCHES = 50
"""Fresh random batches per graph in the torch comparison."""

Status = Literal["pass", "fail", "skip"]


class VerifyError(ValueError):
    """Raised by :meth:`VerifyReport.raise_if_failed`; the message is the report."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check: ``name``, ``status`` ("pass", "fail" or "skip") and a human-readable ``detail``."""

    name: str
    status: Status
    detail: str

    @property
    def passed(self) -> bool:
        """True unless the check failed (a skipped check does not fail the bundle)."""
        return self.status != "fail"


@dataclasses.dataclass
class VerifyReport:
    """Every check run on one bundle; ``ok`` when none failed and the bundle could be read."""

    bundle_path: Path
    checks: list[CheckResult] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when at least one check ran and none failed."""
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        """The failed checks."""
        return [check for check in self.checks if check.status == "fail"]

    def add(self, name: str, status: Status, detail: str) -> CheckResult:
        """Record one check result."""
        result = CheckResult(name, status, detail)
        self.checks.append(result)
        return result

    def format(self) -> str:
        """A plain-text report: one line per check, then the verdict."""
        width = max((len(check.name) for check in self.checks), default=0)
        lines = [f"bundle {self.bundle_path}"]
        lines += [f"  [{check.status.upper():4}] {check.name:<{width}}  {check.detail}" for check in self.checks]
        if self.ok:
            lines.append("OK: the bundle passed every check that ran")
        else:
            names = ", ".join(check.name for check in self.failures) or "no check could run"
            lines.append(f"FAILED: {names}; do not deploy this bundle")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def raise_if_failed(self) -> None:
        """Raise :class:`VerifyError` with the report when a check failed."""
        if not self.ok:
            raise VerifyError(self.format())


def verify_bundle(path: str | Path, checkpoint: str | Path | None = None) -> VerifyReport:
    """Run every check on the bundle at ``path`` and return the report (``report.ok``).

    ``checkpoint`` is the training checkpoint to compare against; without it the path recorded in the
    manifest's provenance is used when that file still exists. The torch comparison is skipped (not
    failed) when torch is not installed or no checkpoint is found. A bundle that cannot be loaded
    stops the run after the first check.
    """
    report = VerifyReport(Path(path))
    try:
        bundle = load_bundle(path)
    except BundleError as err:
        report.add("manifest and checksums", "fail", str(err))
        return report
    report.add(
        "manifest and checksums",
        "pass",
        f"schema_version {bundle.schema_version}, {len(bundle.files)} files match their sha256",
    )
    for graph in bundle.graphs:
        _check_onnx(report, bundle, graph)
    for graph in bundle.graphs:
        _check_io(report, bundle, graph)
    _check_test_vectors(report, bundle)
    _check_torch_parity(report, bundle, checkpoint)
    return report


def _check_onnx(report: VerifyReport, bundle: Bundle, graph: str) -> None:
    name = f"onnx checker: {bundle.graphs[graph].file}"
    try:
        onnx.checker.check_model(str(bundle.graph_path(graph)), full_check=True)
    except Exception as err:  # checker and shape inference raise several types
        report.add(name, "fail", f"{type(err).__name__}: {err}")
        return
    report.add(name, "pass", "valid model (full check with shape inference)")


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    tensor = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)


def _check_io(report: VerifyReport, bundle: Bundle, graph: str) -> None:
    spec = bundle.graphs[graph]
    name = f"inputs/outputs: {spec.file}"
    try:
        model = onnx.load(str(bundle.graph_path(graph)), load_external_data=False)
    except Exception as err:  # a protobuf decode error has no common base type
        report.add(name, "fail", f"cannot read the model: {err}")
        return
    problems = []
    for kind, expected, found in (
        ("inputs", spec.inputs, model.graph.input),
        ("outputs", spec.outputs, model.graph.output),
    ):
        names = [v.name for v in found]
        if names != list(expected):
            problems.append(f"{kind} are {names}, the manifest says {list(expected)}")
            continue
        for value in found:
            elem_type = value.type.tensor_type.elem_type
            if elem_type != onnx.TensorProto.FLOAT:
                problems.append(f"{value.name} has type {onnx.TensorProto.DataType.Name(elem_type)}, expected FLOAT")
            dims = _dims(value)
            if dims != tuple(expected[value.name]):
                shown = "unknown" if dims is None else [d for d in dims]
                problems.append(f"{value.name} has shape {shown}, the manifest says {list(expected[value.name])}")
    if problems:
        report.add(name, "fail", "; ".join(problems))
    else:
        report.add(name, "pass", "names, float32 types and shapes match the manifest")


def _cpu_session(bundle: Bundle, graph: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(bundle.graph_path(graph)), sess_options=options, providers=["CPUExecutionProvider"]
    )


def max_abs_diff(
    graph: str, actual: np.ndarray, expected: np.ndarray, action_scale: np.ndarray, *, output: str | None = None
) -> float:
    """Largest absolute difference between two outputs of ``graph`` (``inf`` if shapes differ).

    Commands (``output`` "command"; by default the policy graph's output) are compared in normalised
    action units, ``command / action_scale``, so every action dimension gets the same relative
    precision whatever its physical unit (a float32 command of 60 N cannot be reproduced to 1e-5 N);
    contexts, normalised actions and adapted parameters are compared as they are.
    """
    if actual.shape != expected.shape:
        return math.inf
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if (output == "command") if output is not None else graph == "policy":
        diff = diff / np.asarray(action_scale, dtype=np.float64)
    return float(np.max(diff)) if diff.size else 0.0


def _check_test_vectors(report: VerifyReport, bundle: Bundle) -> None:
    name = "onnxruntime vs test vectors"
    if TEST_VECTORS_FILE not in bundle.files:
        report.add(name, "fail", f"{TEST_VECTORS_FILE} is not in the bundle; re-export it")
        return
    action_scale = np.asarray(bundle.action["scale"], dtype=np.float64)
    details = []
    failed = False
    try:
        with np.load(bundle.file_path(TEST_VECTORS_FILE), allow_pickle=False) as vectors:
            arrays = {key: vectors[key] for key in vectors.files}
        for graph, (inputs, outputs) in GRAPH_IO[bundle.family].items():
            feed = {n: arrays[f"{graph}/inputs/{n}"].astype(np.float32) for n in inputs}
            actual = _cpu_session(bundle, graph).run(None, feed)
            diff = max(
                max_abs_diff(graph, got, arrays[f"{graph}/outputs/{name}"], action_scale, output=name)
                for name, got in zip(outputs, actual)
            )
            failed |= not diff <= PARITY_TOLERANCE
            details.append(f"{graph} max abs diff {diff:.2g}")
    except KeyError as err:
        report.add(name, "fail", f"{TEST_VECTORS_FILE} lacks array {err}; re-export the bundle")
        return
    except Exception as err:  # onnxruntime and numpy raise several types for bad inputs
        report.add(name, "fail", f"{type(err).__name__}: {err}")
        return
    detail = ", ".join(details) + f" (tolerance {PARITY_TOLERANCE:g}, commands in normalised action units)"
    report.add(name, "fail" if failed else "pass", detail)


def _check_torch_parity(report: VerifyReport, bundle: Bundle, checkpoint: str | Path | None) -> None:
    name = "onnxruntime vs PyTorch checkpoint"
    if importlib.util.find_spec("torch") is None:
        report.add(name, "skip", "torch is not installed; the test-vector check stands in for it")
        return
    recorded = bundle.provenance.get("checkpoint_path")
    if checkpoint is None:
        if not recorded or not os.path.isfile(recorded):
            report.add(name, "skip", f"no checkpoint given and the recorded one ({recorded!r}) is not found")
            return
        checkpoint = recorded
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        report.add(name, "fail", f"checkpoint {str(checkpoint)!r} does not exist")
        return
    expected_sha = bundle.provenance.get("checkpoint_sha256")
    actual_sha = sha256_file(checkpoint)
    if expected_sha and actual_sha != expected_sha:
        report.add(
            name,
            "fail",
            f"{checkpoint}: sha256 {actual_sha} differs from the exported checkpoint's {expected_sha}: "
            "this bundle was not exported from this checkpoint",
        )
        return
    try:
        from metarl_robot.checkpoint import load_checkpoint
        from metarl_robot.export import single_threaded_torch
        from metarl_robot.gradient_policy import GradientPolicy

        policy, _ = load_checkpoint(checkpoint)
        family = "gradient" if isinstance(policy, GradientPolicy) else "context"
        if family != bundle.family:
            report.add(
                name, "fail", f"{checkpoint} holds a {type(policy).__name__}, but this is a {bundle.family} bundle"
            )
            return
        sessions = {graph: _cpu_session(bundle, graph) for graph in bundle.graphs}
        with single_threaded_torch():
            diffs, start_name, start_diff = (_gradient_parity if family == "gradient" else _context_parity)(
                policy, bundle, sessions
            )
    except Exception as err:  # checkpoint loading and inference raise several types
        report.add(name, "fail", f"{type(err).__name__}: {err}")
        return
    failed = any(not d <= PARITY_TOLERANCE for d in diffs.values()) or not start_diff <= PARITY_TOLERANCE
    detail = (
        ", ".join(f"{graph} max abs diff {diff:.2g}" for graph, diff in diffs.items())
        + f", {start_name} diff {start_diff:.2g} over {PARITY_BATCHES} random batches per graph (seeded from the manifest)"
        + f" (checkpoint {checkpoint})"
    )
    report.add(name, "fail" if failed else "pass", detail)


def _batch_rng(bundle: Bundle) -> np.random.Generator:
    """Random batches other than the bundle's test vectors, but the same ones on every run for the
    same bundle (seeded from its manifest), so a verdict is reproducible: float32 error over chained
    adaptation steps has a long tail, and a verifier that passed and failed one bundle by turns would
    be no use."""
    digest = hashlib.sha256(json.dumps(bundle.manifest, sort_keys=True, default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _context_parity(policy, bundle: Bundle, sessions) -> tuple[dict[str, float], str, float]:
    """Graph parity on fresh batches, and the encoder's prior against ``adaptation.initial_context``."""
    import torch

    from metarl_robot.export import parity_max_abs_diff

    diffs = parity_max_abs_diff(
        policy, sessions, batches=PARITY_BATCHES, rng=_batch_rng(bundle), max_sequence=bundle.buffer_size
    )
    with torch.no_grad():
        prior = policy.initial_context()[0].numpy()
    return diffs, "initial_context", float(np.max(np.abs(prior - bundle.initial_context)))


def _gradient_parity(policy, bundle: Bundle, sessions) -> tuple[dict[str, float], str, float]:
    """Graph parity on fresh batches and chained adaptation steps, and ``params.npy`` against the
    checkpoint's initial parameters."""
    from metarl_robot import gradient_export

    diffs = gradient_export.parity_max_abs_diff(
        policy,
        sessions,
        batches=PARITY_BATCHES,
        rng=_batch_rng(bundle),
        episodes=bundle.episodes_per_step,
        max_episode_steps=bundle.max_episode_steps,
    )
    expected = gradient_export.initial_params(policy)
    stored = bundle.initial_params
    start_diff = float(np.max(np.abs(expected - stored))) if stored.shape == expected.shape else math.inf
    return diffs, "initial params", start_diff
