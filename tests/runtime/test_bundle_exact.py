"""Every manifest key the runtime reads, refused by its full path when it has the wrong type or size,
and the other refusals of ``load_bundle`` word for word; the session options and providers that reach
onnxruntime; the graph call without the binding. Written from the survivors of a mutation run over
``runtime/`` (docs/testing.md): a message that names the wrong key sends a deployer to the wrong fix."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest

from metarl_robot.runtime import BundleError, load_bundle, load_controller
from metarl_robot.runtime.base import bound_run
from metarl_robot.runtime.integrity import write_manifest


def _reseal(bundle: Path, change) -> Path:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest.pop("digest", None)
    write_manifest(path, manifest)
    return path


def _set(path: str, value):
    def change(manifest):
        *parents, last = path.split(".")
        section = manifest
        for key in parents:
            section = section[key]
        section[last] = value
    return change


WRONG_TYPE = [
    ("method.family", 3, "str", "int 3"),
    ("method.name", ["x"], "str", "list ['x']"),
    ("observation.normalization", 1.5, "str", "float 1.5"),
    ("observation.bounds", [1], "dict", "list [1]"),
    ("action.mode", None, "str", "NoneType None"),
    ("action.clipping_and_scaling", True, "str", "bool True"),
    ("adaptation.kind", {}, "str", "dict {}"),
    ("graphs.policy", "policy.onnx", "dict", "str 'policy.onnx'"),
    ("graphs.policy.file", 7, "str", "int 7"),
    ("graphs.policy.inputs", [], "dict", "list []"),
]


@pytest.mark.parametrize("key,value,expected,got", WRONG_TYPE, ids=[row[0] for row in WRONG_TYPE])
def test_a_key_of_the_wrong_type_is_named_by_its_full_path(bundle_copy, key, value, expected, got):
    path = _reseal(bundle_copy, _set(key, value))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == f"{path}: {key!r} must be {expected}, got {got}"


SIZES = [
    ("observation.bounds.low", [0.0], "must have 10 entries, got 1"),
    ("action.low", [0.0], "must have 4 entries, got 1"),
    ("action.high", [0.1, 0.1, 0.1, "x"], "must be a list of finite numbers, got [0.1, 0.1, 0.1, 'x']"),
    ("action.dim", 0, "must be a positive integer, got 0"),
]


@pytest.mark.parametrize("key,value,tail", SIZES, ids=[row[0] for row in SIZES])
def test_a_list_of_the_wrong_size_is_named_by_its_full_path(bundle_copy, key, value, tail):
    path = _reseal(bundle_copy, _set(key, value))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == f"{path}: '{key}' {tail}"


def test_missing_keys_are_named_by_their_full_path(bundle_copy):
    path = _reseal(bundle_copy, lambda m: m["method"].pop("family"))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == f"{path}: missing key 'method.family'; the bundle is incomplete, re-export it"


def test_graph_entries_are_checked_by_name_and_shape(bundle_copy):
    path = _reseal(bundle_copy, _set("graphs.policy.file", "other.onnx"))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == (f"{path}: 'graphs.policy.file' is 'other.onnx', which 'files' does not list, so it "
                              "cannot be checksummed; re-export the bundle")
    _reseal(bundle_copy, _set("graphs.policy.file", "policy.onnx"))
    _reseal(bundle_copy, _set("graphs.policy.inputs", {"context": [None, 8], "obs": [None, 10]}))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == (f"{path}: 'graphs.policy.inputs' names ['context', 'obs'], expected ['obs', 'context'] "
                              "(this runtime feeds the graph by these names)")
    for shape in ([True, 10], "[None, 10]"):
        _reseal(bundle_copy, _set("graphs.policy.inputs", {"obs": shape, "context": [None, 8]}))
        with pytest.raises(BundleError) as err:
            load_bundle(bundle_copy)
        assert str(err.value) == (f"{path}: 'graphs.policy.inputs.obs' is {shape!r}, expected [None, 10] (null = "
                                  "dynamic) from the observation/action/adaptation sizes")


def test_the_schema_version_and_file_digests_are_checked_exactly(bundle_copy):
    path = _reseal(bundle_copy, _set("schema_version", True))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == (f"{path}: schema_version True is not supported (this metarl_robot reads 2); re-export "
                              "the bundle with this version or install the metarl_robot version that wrote it")
    _reseal(bundle_copy, _set("schema_version", 2))
    digest = json.loads(path.read_text())["files"]["policy.onnx"]
    _reseal(bundle_copy, _set("files", {**json.loads(path.read_text())["files"], "policy.onnx": digest.upper()}))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == f"{path}: files['policy.onnx'] must be a lowercase hex sha256, got {digest.upper()!r}"


def test_a_slow_control_rate_is_a_rate(bundle_copy):
    _reseal(bundle_copy, _set("control_rate_hz", 0.5))
    assert load_bundle(bundle_copy).control_rate_hz == 0.5


def test_paths_that_are_no_bundle_are_refused_by_name(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(BundleError) as err:
        load_bundle(absent)
    assert str(err.value) == (f"bundle {str(absent)!r} does not exist; export one with export_bundle / "
                              "`metarl-robot export`")
    a_file = tmp_path / "policy.onnx"
    a_file.write_bytes(b"")
    with pytest.raises(BundleError) as err:
        load_bundle(a_file)
    assert str(err.value) == (f"bundle {str(a_file)!r} is not a directory; pass the bundle directory, not a file in it")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError) as err:
        load_bundle(empty)
    assert str(err.value) == (f"{empty / 'manifest.json'}: not found; {str(empty)!r} is not a bundle or its export "
                              "did not finish; re-export it")
    (empty / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BundleError) as err:
        load_bundle(empty)
    assert str(err.value) == f"{empty / 'manifest.json'}: must hold a JSON object, found list"


def test_session_options_given_reach_every_graph_and_the_default_uses_one_thread(bundle_dir):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    ctl = load_controller(bundle_dir, ["cpu"], session_options=options)
    assert ctl._policy_session.get_session_options().intra_op_num_threads == 2
    assert ctl._adapt_session.get_session_options().intra_op_num_threads == 2
    default = load_controller(bundle_dir, ["cpu"])
    assert default._policy_session.get_session_options().intra_op_num_threads == 1
    assert default._adapt_session.get_session_options().intra_op_num_threads == 1
    assert default._policy_session.get_providers() == ["CPUExecutionProvider"]


def test_bound_run_without_a_binding_uses_the_public_run_with_the_names_and_feed():
    calls = []
    feed = {"obs": np.zeros(2)}
    session = SimpleNamespace(
        run=lambda names, f: calls.append((names, f)) or ["public"],
        get_inputs=lambda: [SimpleNamespace(name="obs", type="tensor(float)"),
                            SimpleNamespace(name="extra", type="optional(tensor(float))")],
        get_outputs=lambda: [SimpleNamespace(name="command")],
    )
    assert bound_run(session, feed)() == ["public"] and calls == [(["command"], feed)]
    assert bound_run(session, feed, ["command"])() == ["public"]
    session.get_inputs = lambda: [SimpleNamespace(name="obs", type="tensor(float)"),
                                  SimpleNamespace(name="extra", type="tensor(float)")]
    with pytest.raises(ValueError, match="extra"):
        bound_run(session, feed)
