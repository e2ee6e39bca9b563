"""verify_bundle: every check passes on a fresh export and each kind of damage is caught and named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import seal_manifest
from metarl_robot.verify import VerifyError, VerifyReport, verify_bundle
from tests.runtime.conftest import exported_bundle, make_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKS = [
    "manifest and checksums",
    "signature",
    "onnx checker: policy.onnx",
    "onnx checker: adapt.onnx",
    "inputs/outputs: policy.onnx",
    "inputs/outputs: adapt.onnx",
    "manifest contract",
    "command bounds vs policy graph",
    "onnxruntime vs test vectors",
    "onnxruntime vs PyTorch checkpoint",
]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_bundle(tmp_path_factory)


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def rehash(bundle: Path) -> None:
    """Update the manifest checksums and its digest, as someone hand-editing a bundle who knows the
    format would (without the digest, load_bundle refuses the edit; tests/runtime/test_bundle_integrity.py)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    path.write_text(json.dumps(seal_manifest(manifest)))


def status(report: VerifyReport) -> dict[str, str]:
    return {check.name: check.status for check in report.checks}


def test_fresh_export_passes_every_check(bundle_dir: Path) -> None:
    report = verify_bundle(bundle_dir, checkpoint=bundle_dir.parent / "grasp.safetensors")

    assert report.ok, report.format()
    assert [c.name for c in report.checks] == CHECKS
    assert set(status(report).values()) == {"pass", "skip"}
    assert [name for name, result in status(report).items() if result == "skip"] == ["signature"]  # unsigned
    text = str(report)
    assert text == report.format() and text.endswith("OK: the bundle passed every check that ran")
    assert "[PASS] onnxruntime vs PyTorch checkpoint" in text
    report.raise_if_failed()


def test_checkpoint_is_found_through_provenance(bundle_dir: Path) -> None:
    report = verify_bundle(bundle_dir)
    assert report.ok and status(report)["onnxruntime vs PyTorch checkpoint"] == "pass"


def test_missing_recorded_checkpoint_skips_the_torch_check(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["provenance"]["checkpoint_path"] = "/nowhere/grasp.safetensors"
    (bundle_copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))

    report = verify_bundle(bundle_copy)

    assert report.ok
    skipped = report.checks[-1]
    assert skipped.status == "skip" and "/nowhere/grasp.safetensors" in skipped.detail


def test_one_changed_byte_is_refused_with_a_sha256_message(bundle_copy: Path) -> None:
    graph = bundle_copy / "policy.onnx"
    data = bytearray(graph.read_bytes())
    data[100] ^= 0xFF
    graph.write_bytes(bytes(data))

    report = verify_bundle(bundle_copy)

    assert not report.ok
    assert len(report.checks) == 1 and report.checks[0].status == "fail"
    assert "policy.onnx: sha256 mismatch (expected" in report.checks[0].detail
    assert "re-export the bundle" in report.checks[0].detail
    assert "FAILED: manifest and checksums; do not deploy this bundle" in report.format()
    with pytest.raises(VerifyError, match="sha256 mismatch"):
        report.raise_if_failed()


def test_wrong_schema_version_is_refused(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    report = verify_bundle(bundle_copy)
    assert not report.ok and "schema_version 99 is not supported" in report.checks[0].detail


def test_swapped_graphs_with_fixed_checksums_are_caught(bundle_copy: Path) -> None:
    policy, adapt = bundle_copy / "policy.onnx", bundle_copy / "adapt.onnx"
    policy_bytes = policy.read_bytes()
    policy.write_bytes(adapt.read_bytes())
    adapt.write_bytes(policy_bytes)
    rehash(bundle_copy)

    report = verify_bundle(bundle_copy)

    assert not report.ok
    result = status(report)
    assert result["manifest and checksums"] == "pass"
    assert result["inputs/outputs: policy.onnx"] == "fail"
    assert result["inputs/outputs: adapt.onnx"] == "fail"
    detail = next(c.detail for c in report.checks if c.name == "inputs/outputs: policy.onnx")
    assert "inputs are ['obs', 'command', 'reward', 'next_obs', 'mask'], the manifest says ['obs', 'context']" in detail


def test_corrupt_model_fails_the_onnx_checker(bundle_copy: Path) -> None:
    (bundle_copy / "adapt.onnx").write_bytes(b"\x08\x01garbage")
    rehash(bundle_copy)
    report = verify_bundle(bundle_copy)
    assert status(report)["onnx checker: adapt.onnx"] == "fail" and not report.ok


def test_test_vectors_that_disagree_are_caught(bundle_copy: Path) -> None:
    path = bundle_copy / "test_vectors.npz"
    with np.load(path) as vectors:
        arrays = dict(vectors)
    arrays["adapt/outputs/context"] = arrays["adapt/outputs/context"] + 1e-3
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    rehash(bundle_copy)

    report = verify_bundle(bundle_copy)

    check = next(c for c in report.checks if c.name == "onnxruntime vs test vectors")
    assert check.status == "fail" and "adapt max abs diff 0.001" in check.detail
    assert status(report)["onnxruntime vs PyTorch checkpoint"] == "pass"


def test_a_different_checkpoint_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    other = make_checkpoint(tmp_path / "other.safetensors", seed=5)
    report = verify_bundle(bundle_dir, checkpoint=other)
    check = report.checks[-1]
    assert check.status == "fail" and "was not exported from this checkpoint" in check.detail
    assert not report.ok


def test_missing_bundle_fails_cleanly(tmp_path: Path) -> None:
    report = verify_bundle(tmp_path / "absent")
    assert not report.ok and "does not exist" in report.checks[0].detail


def test_verify_without_torch_still_checks_parity_against_test_vectors(bundle_dir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        from metarl_robot.verify import verify_bundle
        report = verify_bundle({str(bundle_dir)!r})
        print(report)
        sys.exit(0 if report.ok else 1)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[PASS] onnxruntime vs test vectors" in result.stdout
    assert "[SKIP] onnxruntime vs PyTorch checkpoint  torch is not installed" in result.stdout


# ---- exact answers written from the survivors of a mutation run over verify.py (docs/testing.md)


def test_a_fresh_bundle_reports_every_check_by_name_in_order(bundle_dir: Path) -> None:
    report = verify_bundle(bundle_dir)
    assert [(c.name, c.status) for c in report.checks] == [
        ("manifest and checksums", "pass"),
        ("signature", "skip"),
        ("onnx checker: policy.onnx", "pass"),
        ("onnx checker: adapt.onnx", "pass"),
        ("inputs/outputs: policy.onnx", "pass"),
        ("inputs/outputs: adapt.onnx", "pass"),
        ("manifest contract", "pass"),
        ("command bounds vs policy graph", "pass"),
        ("onnxruntime vs test vectors", "pass"),
        ("onnxruntime vs PyTorch checkpoint", "pass"),  # the checkpoint the manifest records is there
    ]
    details = {c.name: c.detail for c in report.checks}
    assert details["inputs/outputs: policy.onnx"] == "names, float32 types and shapes match the manifest"
    assert details["onnx checker: adapt.onnx"] == "valid model (full check with shape inference)"


def test_missing_or_incomplete_test_vectors_fail_their_check_with_the_fix(bundle_copy: Path) -> None:
    vectors = np.load(bundle_copy / "test_vectors.npz")
    kept = {k: vectors[k] for k in vectors.files if not k.startswith("adapt/outputs")}
    np.savez(bundle_copy / "test_vectors.npz", **kept)
    rehash(bundle_copy)
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "onnxruntime vs test vectors")
    assert (check.status, check.detail) == ("fail", "test_vectors.npz lacks array 'adapt/outputs/context'; re-export the bundle")
    (bundle_copy / "test_vectors.npz").unlink()
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["files"]["test_vectors.npz"]
    path.write_text(json.dumps(seal_manifest(manifest)))
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "onnxruntime vs test vectors")
    assert (check.status, check.detail) == ("fail", "test_vectors.npz is not in the bundle; re-export it")


def test_a_signature_that_fails_is_a_failed_signature_check(bundle_copy: Path, tmp_path: Path) -> None:
    from metarl_robot.runtime.integrity import generate_key_pair

    _, public = generate_key_pair(tmp_path, "trusted")
    report = verify_bundle(bundle_copy, trusted_keys=[public])
    check = next(c for c in report.checks if c.name == "signature")
    assert check.status == "fail" and check.detail.startswith(f"{bundle_copy}: the bundle is not signed")


def test_a_damaged_signature_file_fails_the_signature_check_without_trusted_keys(bundle_copy: Path) -> None:
    (bundle_copy / "signature.json").write_text("{")
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "signature")
    assert check.status == "fail"
    assert check.detail.startswith(f"{bundle_copy / 'signature.json'}: not valid JSON (")


@pytest.mark.parametrize("graph, check_name, reason", [
    ("adapt.onnx", "inputs/outputs: adapt.onnx", "cannot read the model: "),
    ("policy.onnx", "manifest contract", "cannot read the policy graph: "),
])
def test_an_unreadable_graph_fails_the_checks_that_read_it_with_the_reason(
    bundle_copy: Path, graph: str, check_name: str, reason: str
) -> None:
    (bundle_copy / graph).write_bytes(b"\x08\x01garbage")
    rehash(bundle_copy)
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == check_name)
    assert check.status == "fail" and check.detail.startswith(reason)


def test_a_graph_that_fails_shape_inference_fails_the_full_onnx_check(bundle_copy: Path) -> None:
    """The plain checker accepts an Add of a [2] and a [3] tensor; only the full check (strict shape
    inference) refuses it, and verify runs the full check."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "g",
                              [value("a", TensorProto.FLOAT, [2]), value("b", TensorProto.FLOAT, [3])],
                              [value("c", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), bundle_copy / "adapt.onnx")
    onnx.checker.check_model(str(bundle_copy / "adapt.onnx"))  # the plain check passes
    rehash(bundle_copy)
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "onnx checker: adapt.onnx")
    assert check.status == "fail" and check.detail.startswith("InferenceError: [ShapeInferenceError]")


def test_graph_shapes_that_differ_from_the_manifest_are_shown_or_called_unknown(bundle_copy: Path) -> None:
    import onnx

    model = onnx.load(str(bundle_copy / "policy.onnx"))
    stated = json.loads((bundle_copy / "manifest.json").read_text())["graphs"]["policy"]
    obs = next(v for v in model.graph.input if v.name == "obs")
    obs.type.tensor_type.shape.dim[-1].dim_value = 99
    command = next(v for v in model.graph.output if v.name == "command")
    command.type.tensor_type.ClearField("shape")
    onnx.save(model, bundle_copy / "policy.onnx")
    rehash(bundle_copy)
    report = verify_bundle(bundle_copy)
    check = next(c for c in report.checks if c.name == "inputs/outputs: policy.onnx")
    dims = [None if isinstance(d, str) else d for d in stated["inputs"]["obs"]]
    assert check.status == "fail"
    assert check.detail == (f"obs has shape {dims[:-1] + [99]}, the manifest says {stated['inputs']['obs']}; "
                            f"command has shape unknown, the manifest says {stated['outputs']['command']}")
    contract = next(c for c in report.checks if c.name == "manifest contract")
    assert contract.status == "fail"
    assert contract.detail == ("the policy graph's input 'obs' has last dimension 99, observation.dim is 10; "
                               "the policy graph's output 'command' has last dimension None, action.dim is 4")


def test_a_checkpoint_that_does_not_match_fails_the_torch_check_by_name(bundle_dir: Path, tmp_path: Path) -> None:
    other = make_checkpoint(tmp_path / "other.safetensors", seed=5)
    check = verify_bundle(bundle_dir, checkpoint=other).checks[-1]
    assert (check.name, check.status) == ("onnxruntime vs PyTorch checkpoint", "fail")
    assert check.detail.startswith(f"{other}: sha256 {sha256_file(other)} differs from the exported checkpoint's ")


def test_a_command_exactly_at_the_high_bound_plus_its_tolerance_is_within_it(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound check allows float32 rounding (BOUND_RTOL); a value at the edge of that allowance is in."""
    import metarl_robot.verify as verify_module
    from metarl_robot.runtime import load_bundle

    bundle = load_bundle(bundle_dir)
    low, high = (np.asarray(bundle.action[k], dtype=np.float64) for k in ("low", "high"))
    edge = high + verify_module.BOUND_RTOL * np.maximum(np.abs(low), np.abs(high))
    command = np.stack([edge, (low + high) / 2, low])  # each bound met once: never saturated
    monkeypatch.setattr(verify_module, "_probe_commands", lambda b, rng: (np.zeros((3, b.obs_dim)), command))
    report = VerifyReport(bundle_dir)
    verify_module._check_command_bounds(report, bundle)
    assert report.checks[0].status == "pass", report.checks[0].detail
    over = np.stack([np.nextafter(edge, np.inf), low, low])
    monkeypatch.setattr(verify_module, "_probe_commands", lambda b, rng: (np.zeros((3, b.obs_dim)), over))
    verify_module._check_command_bounds(report, bundle)
    assert report.checks[1].status == "fail" and "above the stated high" in report.checks[1].detail


def test_a_policy_that_never_saturates_leaves_every_bound_unreached(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Probes that never reach a clip run every round of the search and end as limits checked only."""
    import metarl_robot.verify as verify_module
    from metarl_robot.runtime import load_bundle

    bundle = load_bundle(bundle_dir)
    scale = np.asarray(bundle.action["scale"], dtype=np.float32)

    class Smooth:  # commands strictly inside the bounds, distinct for distinct observations
        def run(self, names, feed):
            obs = feed["obs"]
            assert obs.ndim == 2 and obs.shape[1] == bundle.obs_dim, obs.shape
            x = 0.1 * (obs[:, : bundle.act_dim] + 1e-2 * obs.sum(1, keepdims=True))
            return [(0.5 * scale * x / (1.0 + np.abs(x))).astype(np.float32)]

    monkeypatch.setattr(verify_module, "_cpu_session", lambda b, graph: Smooth())
    report = VerifyReport(bundle_dir)
    verify_module._check_command_bounds(report, bundle)
    check = report.checks[0]
    assert check.status == "pass", check.detail
    assert "; 0 of 8 bounds reached by a saturated command" in check.detail
    assert "; not reached, so checked only as limits: " in check.detail
    assert check.detail.count(" (furthest ") == 2 * bundle.act_dim


def test_the_probe_search_finds_a_clip_that_random_observations_do_not_reach(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that saturates only when every observation value sits near the top (or bottom) of
    its probed range: random probes stay short of it, and the search must push them there."""
    import metarl_robot.verify as verify_module
    from metarl_robot.runtime import load_bundle

    bundle = load_bundle(bundle_dir)
    scale = np.asarray(bundle.action["scale"], dtype=np.float32)
    base = verify_module._probe_observations(bundle)
    center, spread = base.mean(0), base.std(0)
    spread[spread == 0] = 1.0

    class Ridge:
        def run(self, names, feed):
            z = (feed["obs"] - center) / (2.0 * spread)  # [-1, 1] over the probed range
            x = np.clip(1.25 * z.mean(1, keepdims=True), -1.0, 1.0)  # saturates past a mean of 0.8
            return [(scale * x).astype(np.float32)]

    monkeypatch.setattr(verify_module, "_cpu_session", lambda b, graph: Ridge())
    start = Ridge().run(None, {"obs": base})[0]
    assert np.abs(start).max() < 0.9 * scale.max()  # the test vectors alone are far from the clip
    report = VerifyReport(bundle_dir)
    verify_module._check_command_bounds(report, bundle)
    check = report.checks[0]
    assert check.status == "pass", check.detail  # the manifest's bounds are +-scale: the clip is the bound
    assert "; 8 of 8 bounds reached by a saturated command and equal to the manifest's" in check.detail


def test_the_manifest_check_names_the_schema_the_digest_and_the_files(bundle_dir: Path) -> None:
    from metarl_robot.runtime import load_bundle

    bundle = load_bundle(bundle_dir)
    check = verify_bundle(bundle_dir).checks[0]
    assert (check.name, check.status) == ("manifest and checksums", "pass")
    assert check.detail == (f"schema_version 2, the manifest matches its digest {bundle.digest[:19]}..., "
                            f"{len(bundle.files)} files match their sha256")


def test_test_vectors_of_the_first_graph_that_disagree_fail_even_when_the_last_agrees(bundle_copy: Path) -> None:
    path = bundle_copy / "test_vectors.npz"
    with np.load(path) as vectors:
        arrays = dict(vectors)
    arrays["policy/outputs/command"] = arrays["policy/outputs/command"] * 1.01
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    rehash(bundle_copy)
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "onnxruntime vs test vectors")
    assert check.status == "fail" and check.detail.startswith("policy max abs diff ")
    assert ", adapt max abs diff " in check.detail


def test_a_named_checkpoint_that_does_not_exist_fails_the_torch_check(bundle_dir: Path, tmp_path: Path) -> None:
    report = verify_bundle(bundle_dir, checkpoint=tmp_path / "absent.safetensors")
    check = report.checks[-1]
    assert (check.name, check.status) == ("onnxruntime vs PyTorch checkpoint", "fail")
    assert check.detail == f"checkpoint {str(tmp_path / 'absent.safetensors')!r} does not exist"
    assert not report.ok and report.failures == [check]


def test_a_baked_bound_off_the_scale_by_more_than_float32_rounding_fails_the_contract(bundle_copy: Path) -> None:
    """BOUND_RTOL is 1e-6 (float32 holds about 7 digits); numpy's default rtol of 1e-5 would let a bound
    0.5e-5 off its scale through."""
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["action"]["high"][0] = manifest["action"]["high"][0] * (1 + 5e-6)
    path.write_text(json.dumps(seal_manifest(manifest)))
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "manifest contract")
    assert check.status == "fail" and "(+-scale of a baked clip)" in check.detail


def test_a_layout_size_of_zero_fails_the_contract_even_when_the_sizes_add_up(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    layout = manifest["observation"]["layout"]
    layout[0]["size"] += layout[2]["size"]
    layout[2]["size"] = 0  # still adds up to observation.dim
    path.write_text(json.dumps(seal_manifest(manifest)))
    check = next(c for c in verify_bundle(bundle_copy).checks if c.name == "manifest contract")
    sizes = [entry["size"] for entry in layout]
    assert check.status == "fail" and f"observation.layout sizes must be positive integers, got {sizes}" in check.detail
