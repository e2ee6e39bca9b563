"""Check an exported bundle before it goes to a robot: ``metarl-robot verify BUNDLE``.

:func:`verify_bundle` runs every check it can and reports each one: the manifest schema, digest and
file checksums, the signature (against trusted keys, when given), the ONNX checker on both graphs, the
graphs' input/output names and shapes against the manifest, the manifest's meaning against the policy
graph (sizes, rate, and the command bounds and scale, by probing the graph into saturation),
onnxruntime against the PyTorch outputs stored in ``test_vectors.npz`` (no torch needed),
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
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime

from metarl_robot.families import registry
from metarl_robot.parity import PARITY_TOLERANCE, max_abs_diff
from metarl_robot.runtime import integrity
from metarl_robot.runtime.bundle import TEST_VECTORS_FILE, Bundle, BundleError, load_bundle, sha256_file
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


def verify_bundle(
    path: str | Path, checkpoint: str | Path | None = None, *, trusted_keys: Sequence[str | Path] | None = None
) -> VerifyReport:
    """Run every check on the bundle at ``path`` and return the report (``report.ok``).

    ``checkpoint`` is the training checkpoint to compare against; without it the path recorded in the
    manifest's provenance is used when that file still exists. The torch comparison is skipped (not
    failed) when torch is not installed or no checkpoint is found. With ``trusted_keys`` (public-key
    PEM paths) the bundle must be signed by one of them. A bundle that cannot be loaded
    stops the run after the first check; a checkpoint that is not a readable checkpoint file (a
    pickle, a torn file) raises :class:`~metarl_robot.checkpoint.CheckpointError`.
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
        f"schema_version {bundle.schema_version}, the manifest matches its digest {bundle.digest[:19]}..., "
        f"{len(bundle.files)} files match their sha256",
    )
    _check_signature(report, bundle, trusted_keys)
    for graph in bundle.graphs:
        _check_onnx(report, bundle, graph)
    for graph in bundle.graphs:
        _check_io(report, bundle, graph)
    _check_contract(report, bundle)
    _check_command_bounds(report, bundle)
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
        for graph, (inputs, outputs) in bundle.plugin.graph_io.items():
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
    from metarl_robot.checkpoint import load_checkpoint

    # Raises CheckpointError, which stops verify, for a file that is no safe checkpoint (a pickle is never run).
    policy, _ = load_checkpoint(checkpoint)
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
        from metarl_robot.export import single_threaded_torch

        family = registry.for_policy_class(type(policy).__name__).name
        if family != bundle.family:
            report.add(
                name, "fail", f"{checkpoint} holds a {type(policy).__name__}, but this is a {bundle.family} bundle"
            )
            return
        sessions = {graph: _cpu_session(bundle, graph) for graph in bundle.graphs}
        with single_threaded_torch():
            diffs, start_name, start_diff = bundle.plugin.checkpoint_parity(
                policy, bundle, sessions, _batch_rng(bundle), PARITY_BATCHES
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


# ------------------------------------------------------------------------------------ signature and meaning
PROBE_BATCH = 256
"""Observations per probe run of the policy graph."""
PROBE_ROUNDS = 12
"""Rounds of the search that pushes each command dimension towards each of its bounds."""
PROBE_KEEP = 16
"""Best probes kept per round of that search."""
BOUND_RTOL = 1e-6
"""Relative tolerance of a command against a stated bound (float32 holds about 7 digits)."""


def _check_signature(report: VerifyReport, bundle: Bundle, trusted_keys: Sequence[str | Path] | None) -> None:
    name = "signature"
    if not trusted_keys:
        try:
            content = integrity.read_signatures(bundle.path)
        except BundleError as err:
            report.add(name, "fail", str(err))
            return
        if content is None:
            report.add(name, "skip", "unsigned; pass --trusted-key PUBLIC.pem to require a signature")
        else:
            signers = ", ".join(e["key_id"] for e in content["signatures"])
            report.add(name, "skip", f"signed by key {signers}, not checked: pass --trusted-key PUBLIC.pem to check it")
        return
    try:
        signer = integrity.check_signature(bundle.path, bundle.digest, trusted_keys)
    except BundleError as err:
        report.add(name, "fail", str(err))
        return
    report.add(name, "pass", f"the digest {bundle.digest[:19]}... is signed by trusted key {signer}")


def _graph_dim(model: onnx.ModelProto, kind: str, name: str) -> int | None:
    """The last dimension of input or output ``name`` of ``model`` (``None`` when absent or dynamic)."""
    for value in model.graph.input if kind == "input" else model.graph.output:
        if value.name == name:
            dims = _dims(value)
            return dims[-1] if dims else None
    return None


def _check_contract(report: VerifyReport, bundle: Bundle) -> None:
    """The manifest's contract is self-consistent and agrees with the policy graph's interface."""
    name = "manifest contract"
    problems = []
    rate = bundle.control_rate_hz
    if not (math.isfinite(rate) and rate > 0):
        problems.append(f"control_rate_hz {rate!r} is not a finite positive rate")
    action = bundle.action
    act_names = list(action["names"])
    low, high, scale = (np.asarray(action[key], dtype=np.float64) for key in ("low", "high", "scale"))
    for i in np.flatnonzero(~(low < high)):
        problems.append(f"{act_names[i]}: low {low[i]:g} is not below high {high[i]:g}")
    for i in np.flatnonzero(~(scale > 0)):
        problems.append(f"{act_names[i]}: scale {scale[i]:g} is not positive")
    if action.get("clipping_and_scaling") == "baked":  # command = clip(action, -1, 1) * scale
        for key, bound, expected in (("low", low, -scale), ("high", high, scale)):
            for i in np.flatnonzero(~np.isclose(bound, expected, rtol=BOUND_RTOL, atol=0.0)):
                problems.append(f"{act_names[i]}: {key} {bound[i]:g} is not {expected[i]:g} (+-scale of a baked clip)")
    for label, values in (("action.names", act_names), ("action.joint_names", list(action["joint_names"]))):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated or not values or any(not v for v in values):
            problems.append(f"{label} must be non-empty, distinct names; got {values}")
    layout = bundle.observation["layout"]
    sizes = [entry.get("size") if isinstance(entry, dict) else None for entry in layout]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        problems.append(f"observation.layout sizes must be positive integers, got {sizes}")
    elif sum(sizes) != bundle.obs_dim:
        problems.append(f"observation.layout sizes add up to {sum(sizes)}, but observation.dim is {bundle.obs_dim}")
    try:
        model = onnx.load(str(bundle.graph_path("policy")), load_external_data=False)
    except Exception as err:  # a protobuf decode error has no common base type
        problems.append(f"cannot read the policy graph: {err}")
    else:
        for kind, io_name, stated, label in (
            ("input", "obs", bundle.obs_dim, "observation.dim"),
            ("output", "command", bundle.act_dim, "action.dim"),
        ):
            found = _graph_dim(model, kind, io_name)
            if found != stated:
                problems.append(f"the policy graph's {kind} {io_name!r} has last dimension {found}, {label} is {stated}")
    if problems:
        report.add(name, "fail", "; ".join(problems))
        return
    report.add(
        name,
        "pass",
        f"control rate {rate:g} Hz, bounds ordered and +-scale, observation {bundle.obs_dim} = layout = policy "
        f"input, command {bundle.act_dim} = policy output",
    )


def _probe_observations(bundle: Bundle) -> np.ndarray:
    """Observations the policy was exported for: the test vectors' (spread around the normaliser's
    statistics), the only ones a bundle carries."""
    with np.load(bundle.file_path(TEST_VECTORS_FILE), allow_pickle=False) as vectors:
        obs = np.asarray(vectors["policy/inputs/obs"], dtype=np.float64)
    if obs.ndim != 2 or obs.shape[1] != bundle.obs_dim or len(obs) < 2:
        raise ValueError(f"{TEST_VECTORS_FILE}: policy/inputs/obs has shape {obs.shape}, expected [>=2, {bundle.obs_dim}]")
    return obs


def _probe_commands(bundle: Bundle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(obs, command)`` of every distinct probe: random observations within two spreads of the test
    vectors' (inside the normaliser's clip, so distinct observations stay distinct inside the graph),
    then, per command dimension and direction, a search that keeps the probes pushing furthest and
    perturbs them, until two distinct probes give the same extreme value (a clip) or the rounds run out."""
    session = _cpu_session(bundle, "policy")
    base = _probe_observations(bundle)
    center, spread = base.mean(0), base.std(0)
    spread[spread == 0] = 1.0
    lo, hi = center - 2.0 * spread, center + 2.0 * spread

    def run(obs: np.ndarray) -> np.ndarray:
        obs = np.clip(obs, lo, hi).astype(np.float32)
        command = session.run(["command"], bundle.plugin.probe_feed(bundle, obs, rng))[0]  # the family picks its other inputs
        seen_obs.append(obs)
        seen_command.append(command)
        return command

    seen_obs: list[np.ndarray] = []
    seen_command: list[np.ndarray] = []
    start = np.concatenate([base, center + spread * rng.uniform(-2.0, 2.0, (PROBE_BATCH, bundle.obs_dim))])
    start_command = run(start)
    start = seen_obs[-1]
    for i in range(bundle.act_dim):
        for sign in (1.0, -1.0):
            order = np.argsort(-sign * start_command[:, i])[:PROBE_KEEP]
            best_obs, best_command = start[order], start_command[order]
            for round_ in range(PROBE_ROUNDS):
                if np.count_nonzero(best_command[:, i] == best_command[0, i]) >= 2:
                    break  # two probes at one extreme value: saturated
                step = 0.5 * spread / (1.0 + round_ / 4.0)
                candidates = np.repeat(best_obs, PROBE_BATCH // PROBE_KEEP, axis=0)
                candidates = candidates + step * rng.normal(size=candidates.shape)
                command = run(candidates)
                obs = np.concatenate([best_obs, seen_obs[-1]])
                command = np.concatenate([best_command, command])
                order = np.argsort(-sign * command[:, i], kind="stable")[:PROBE_KEEP]
                best_obs, best_command = obs[order], command[order]
    obs, first = np.unique(np.concatenate(seen_obs), axis=0, return_index=True)
    return obs, np.concatenate(seen_command)[first]


def _check_command_bounds(report: VerifyReport, bundle: Bundle) -> None:
    """The bounds and scale the manifest states are what the policy graph computes: no probe's command
    leaves ``[low, high]``, and where the probes saturate a dimension (two distinct probes with the same
    extreme value: the graph's clip) the saturated value is the stated bound and +-scale."""
    name = "command bounds vs policy graph"
    if TEST_VECTORS_FILE not in bundle.files:
        report.add(name, "skip", f"{TEST_VECTORS_FILE} is not in the bundle, so there are no observations to probe with")
        return
    try:
        obs, command = _probe_commands(bundle, _batch_rng(bundle))
    except Exception as err:  # onnxruntime, numpy and a family's probe raise several types
        report.add(name, "fail", f"cannot probe the policy graph: {type(err).__name__}: {err}")
        return
    action = bundle.action
    act_names = list(action["names"])
    low, high, scale = (np.asarray(action[key], dtype=np.float64) for key in ("low", "high", "scale"))
    command = command.astype(np.float64)
    tol = BOUND_RTOL * np.maximum(np.abs(low), np.abs(high))
    baked = action.get("clipping_and_scaling") == "baked"
    # A motion skill inside the graph computes the command from the observation: a value many probes
    # share (e.g. no vertical speed before the pads press) is a phase of the skill, not the action clip.
    skill = bool(bundle.adaptation.get("skill"))
    problems, unreached = [], []
    if command.shape != (len(obs), bundle.act_dim) or not np.isfinite(command).all():
        report.add(name, "fail", f"the policy graph returned commands of shape {command.shape} or non-finite ones")
        return
    for i, label in enumerate(act_names):
        top, bottom = command[:, i].max(), command[:, i].min()
        if top > high[i] + tol[i]:
            problems.append(f"{label}: the graph commands {top:.7g} above the stated high {high[i]:.7g}")
        if bottom < low[i] - tol[i]:
            problems.append(f"{label}: the graph commands {bottom:.7g} below the stated low {low[i]:.7g}")
        for side, value, bound, sign in (("high", top, high[i], 1.0), ("low", bottom, low[i], -1.0)):
            if skill:
                unreached.append(f"{label} {side} (furthest {value:.4g} of {bound:.4g})")
                continue
            if np.count_nonzero(command[:, i] == value) < 2:
                unreached.append(f"{label} {side} (furthest {value:.4g} of {bound:.4g})")
                continue
            if abs(value - bound) > tol[i]:
                problems.append(f"{label}: the graph saturates at {value:.7g}, but the manifest states {side} {bound:.7g}")
            elif baked and abs(value - sign * scale[i]) > tol[i]:
                problems.append(
                    f"{label}: the graph saturates at {value:.7g}, but the manifest's scale {scale[i]:.7g} says "
                    f"{sign * scale[i]:.7g}"
                )
    if problems:
        report.add(name, "fail", "; ".join(problems))
        return
    detail = f"{len(obs)} distinct probes, every command within [low, high]"
    reached = 2 * bundle.act_dim - len(unreached)
    detail += f"; {reached} of {2 * bundle.act_dim} bounds reached by a saturated command and equal to the manifest's"
    if unreached:
        why = "the command comes from the bundle's motion skill" if skill else "not reached"
        detail += f"; {why}, so checked only as limits: {', '.join(unreached)}"
    report.add(name, "pass", detail)
