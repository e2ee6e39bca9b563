"""load_bundle: a valid bundle loads; anything untrustworthy is refused with a message naming it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from metarl_robot.runtime import Bundle, BundleError, load_bundle
from metarl_robot.runtime.integrity import seal_manifest

from .conftest import ACT_DIM, BUFFER_SIZE, CONTEXT_DIM, JOINT_NAMES, OBS_DIM


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and re-seal its digest, so the checks after the digest's are what is tested
    (tests/runtime/test_bundle_integrity.py tests the digest itself)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(seal_manifest(manifest)))


def test_load_bundle_reads_the_contract(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)

    assert isinstance(bundle, Bundle)
    assert bundle.path == bundle_dir.resolve()
    assert (bundle.obs_dim, bundle.act_dim, bundle.adaptation["context_dim"]) == (OBS_DIM, ACT_DIM, CONTEXT_DIM)
    assert bundle.adaptation["buffer_size"] == BUFFER_SIZE and bundle.adapt_steps == 1
    assert bundle.family == "context" and bundle.plugin.name == "context"
    assert bundle.control_rate_hz == 10.0
    assert bundle.action["joint_names"] == JOINT_NAMES
    assert len(bundle.adaptation["initial_context"]) == CONTEXT_DIM
    assert bundle.graphs["policy"].inputs == {"obs": (None, OBS_DIM), "context": (None, CONTEXT_DIM)}
    assert bundle.graphs["adapt"].outputs == {"context": (None, CONTEXT_DIM)}
    assert bundle.graph_path("adapt") == bundle.path / "adapt.onnx"
    assert set(bundle.files) == {"policy.onnx", "adapt.onnx", "test_vectors.npz"}
    with pytest.raises(KeyError, match="not a file of bundle"):
        bundle.file_path("other.bin")


def test_bundle_is_frozen(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    with pytest.raises(AttributeError):
        bundle.path = Path("/elsewhere")  # type: ignore[misc]


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_a_file_instead_of_a_directory_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(bundle_dir / "policy.onnx")


def test_missing_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: not found.*re-export"):
        load_bundle(bundle_copy)


def test_unparsable_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_unsupported_schema_version_is_refused(bundle_copy: Path, version: Any) -> None:
    edit_manifest(bundle_copy, lambda m: m.update(schema_version=version))
    with pytest.raises(BundleError, match=rf"schema_version {version!r} is not supported .*reads 2"):
        load_bundle(bundle_copy)


def test_missing_schema_version_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: m.pop("schema_version"))
    with pytest.raises(BundleError, match="missing key 'schema_version'"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "section, key, expected",
    [
        (None, "action", "missing key 'action'"),
        (None, "provenance", "missing key 'provenance'"),
        ("adaptation", "buffer_size", "missing key 'adaptation.buffer_size'"),
        ("adaptation", "initial_context", "missing key 'adaptation.initial_context'"),
        ("observation", "layout", "missing key 'observation.layout'"),
        ("action", "joint_names", "missing key 'action.joint_names'"),
    ],
)
def test_missing_key_is_refused(bundle_copy: Path, section: str | None, key: str, expected: str) -> None:
    edit_manifest(bundle_copy, lambda m: (m[section] if section else m).pop(key))
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m["observation"].update(dim="10"), r"'observation\.dim' must be int"),
        (lambda m: m["adaptation"].update(buffer_size=0), "must be a positive integer"),
        (lambda m: m["action"].update(names=["vx"]), r"'action\.names' must have 4 entries"),
        (lambda m: m["adaptation"].update(initial_context=[0.0] * 3), "must have 8 entries"),
        (lambda m: m["action"].update(high=[1, 1, 1, "x"]), "list of finite numbers"),
        (lambda m: m.update(control_rate_hz=0), "control_rate_hz must be positive"),
        (lambda m: m.update(format="other"), "expected 'metarl_robot.bundle'"),
        (lambda m: m["graphs"]["policy"]["inputs"].update(obs=[None, 11]), r"graphs\.policy\.inputs\.obs"),
        (lambda m: m["graphs"]["adapt"].update(outputs={"z": [None, 8]}), r"names \['z'\], expected \['context'\]"),
        (lambda m: m["files"].pop("policy.onnx"), "which 'files' does not list"),
        (lambda m: m["files"].update({"../escape.bin": "0" * 64}), "relative paths inside the bundle"),
        (lambda m: m["files"].update({"policy.onnx": "abc"}), "must be a lowercase hex sha256"),
    ],
)
def test_malformed_manifest_is_refused(bundle_copy: Path, change: Callable, expected: str) -> None:
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_copy)


def test_modified_graph_is_refused_with_sha256_message(bundle_copy: Path) -> None:
    graph = bundle_copy / "policy.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()

    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    message = str(err.value)
    assert "policy.onnx: sha256 mismatch (expected " in message
    assert f"got {actual})" in message
    assert "modified after export; re-export the bundle" in message


def test_missing_listed_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "test_vectors.npz").unlink()
    with pytest.raises(BundleError, match=r"test_vectors\.npz: listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_bundle_error_is_a_value_error() -> None:
    assert issubclass(BundleError, ValueError)
