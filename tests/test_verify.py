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
