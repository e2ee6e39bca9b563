"""export_bundle: manifest contents, torch/onnxruntime parity, atomic publishing and clear refusals."""

from __future__ import annotations

import copy
import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import metarl_robot.export as export_module
import metarl_robot.families.context_torch as context_torch
from metarl_robot.checkpoint import CheckpointError, load_checkpoint
from metarl_robot.export import ExportError, export_bundle, onnx_export
from metarl_robot.families.context_torch import reference_outputs, sample_inputs
from metarl_robot.runtime import load_bundle
from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import manifest_digest
from metarl_robot.verify import PARITY_TOLERANCE, VerifyReport, max_abs_diff
from tests.runtime.conftest import ACTION_SCALE, ADAPTATION, BUFFER_SIZE, INTERFACE, exported_bundle, make_checkpoint


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def manifest(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def policy(bundle_dir: Path):
    return load_checkpoint(bundle_dir.parent / "grasp.safetensors")[0]


def sessions(bundle_dir: Path) -> dict[str, onnxruntime.InferenceSession]:
    return {
        graph: onnxruntime.InferenceSession(str(bundle_dir / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        for graph in ("policy", "adapt")
    }


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _copy_graphs_from(bundle_dir: Path):
    """Stand-in for the (slow) dynamo export: the shared bundle's graphs, which match any
    make_checkpoint(seed=0) policy, so the rest of export_bundle runs for real."""

    def fake_export(policy, graph, path, opset):
        shutil.copyfile(bundle_dir / path.name, path)

    return fake_export


# --------------------------------------------------------------------------------------- manifest
def test_bundle_holds_manifest_graphs_and_test_vectors(bundle_dir: Path, manifest: dict) -> None:
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "adapt.onnx",
        "manifest.json",
        "policy.onnx",
        "test_vectors.npz",
    ]
    assert manifest["files"] == {name: sha256_file(bundle_dir / name) for name in manifest["files"]}
    assert set(manifest["files"]) == {"policy.onnx", "adapt.onnx", "test_vectors.npz"}
    load_bundle(bundle_dir)


def test_manifest_carries_the_robot_contract(manifest: dict, policy) -> None:
    assert manifest["schema_version"] == 2 and manifest["format"] == "metarl_robot.bundle"
    assert manifest["digest"] == manifest_digest(manifest)  # over the canonical manifest, so over every file
    assert manifest["method"] == {"family": "context", "name": "context_ppo"}
    bounds = manifest["observation"].pop("bounds")
    assert bounds["rule"] == "training mean -+ (15 std + 0.5 |mean| + 0.1); outside it the robot holds with an error"
    assert manifest["observation"] == {"dim": 10, "layout": INTERFACE["observation_layout"], "normalization": "baked"}
    # Plausibility bounds from the training statistics: the mean -+ (15 std + 0.5 |mean| + 0.1).
    mean, std = policy.obs_norm.mean.numpy(), np.sqrt(policy.obs_norm.var.numpy())
    half = 15.0 * std + 0.5 * np.abs(mean) + 0.1
    np.testing.assert_allclose(bounds["low"], mean - half, rtol=1e-6)
    np.testing.assert_allclose(bounds["high"], mean + half, rtol=1e-6)
    assert manifest["action"] == {
        "mode": "cartesian_velocity",
        "dim": 4,
        "names": INTERFACE["action"]["names"],
        "units": INTERFACE["action"]["units"],
        "low": [-s for s in ACTION_SCALE],
        "high": ACTION_SCALE,
        "scale": ACTION_SCALE,
        "joint_names": INTERFACE["joint_names"],
        "clipping_and_scaling": "baked",
    }
    assert manifest["control_rate_hz"] == 10.0
    adaptation = manifest["adaptation"]
    assert {k: adaptation[k] for k in ADAPTATION} == ADAPTATION
    assert adaptation["kind"] == "context_encoder" and adaptation["adapted"] == "context"
    assert adaptation["context_dim"] == 8 and adaptation["inner_lr"] is None and adaptation["steps"] == 1
    with torch.no_grad():
        prior = policy.initial_context()[0].numpy()
    np.testing.assert_array_equal(np.asarray(adaptation["initial_context"], dtype=np.float32), prior)


def test_manifest_declares_graph_io(manifest: dict) -> None:
    assert manifest["graphs"] == {
        "policy": {
            "file": "policy.onnx",
            "inputs": {"obs": [None, 10], "context": [None, 8]},
            "outputs": {"command": [None, 4]},
        },
        "adapt": {
            "file": "adapt.onnx",
            "inputs": {
                "obs": [None, None, 10],
                "command": [None, None, 4],
                "reward": [None, None, 1],
                "next_obs": [None, None, 10],
                "mask": [None, None],
            },
            "outputs": {"context": [None, 8]},
        },
    }


def test_manifest_records_provenance(bundle_dir: Path, manifest: dict) -> None:
    provenance = manifest["provenance"]
    checkpoint = bundle_dir.parent / "grasp.safetensors"
    assert provenance["checkpoint_sha256"] == sha256_file(checkpoint)
    assert provenance["checkpoint_path"] == str(checkpoint.resolve())
    assert provenance["config"] == {"algo": "context_ppo", "hidden_sizes": [64, 64], "lr": 3e-4, "out": "runs/x"}
    assert provenance["seed"] == 0 and provenance["iteration"] == 7
    assert provenance["training_metrics"] == {"return_mean": 1.5, "success_rate": "nan"}
    assert provenance["code_version"].startswith("0.1.0")
    assert provenance["torch_version"] == torch.__version__
    exported_at = datetime.datetime.fromisoformat(provenance["exported_at"])
    assert exported_at.utcoffset() == datetime.timedelta(0)
    opset = onnx.load(str(bundle_dir / "policy.onnx")).opset_import
    assert provenance["onnx_opset"] == next(o.version for o in opset if o.domain == "")
    assert all(0 <= d <= PARITY_TOLERANCE for d in provenance["parity_max_abs_diff"].values())


# ----------------------------------------------------------------------------------------- parity
def test_graphs_match_torch_on_50_random_batches(bundle_dir: Path, policy) -> None:
    rng = np.random.default_rng(7)
    scale = policy.action_scale.numpy()
    for graph, session in sessions(bundle_dir).items():
        for _ in range(50):
            inputs = sample_inputs(policy, graph, rng, max_sequence=BUFFER_SIZE)
            actual = session.run(None, inputs)[0]
            expected = reference_outputs(policy, graph, inputs)
            assert max_abs_diff(graph, actual, expected, scale) <= PARITY_TOLERANCE
            if graph == "adapt":
                np.testing.assert_allclose(actual, expected, rtol=0, atol=PARITY_TOLERANCE)
            else:
                np.testing.assert_allclose(actual, expected, rtol=0, atol=PARITY_TOLERANCE * scale.max())


def test_graphs_handle_batch_one_sequence_one_and_empty_masks(bundle_dir: Path, policy) -> None:
    rng = np.random.default_rng(8)
    graphs = sessions(bundle_dir)
    for batch, sequence in [(1, 1), (1, BUFFER_SIZE), (3, 1), (2, 2 * BUFFER_SIZE)]:
        inputs = sample_inputs(policy, "adapt", rng, batch=batch, sequence=sequence)
        context = graphs["adapt"].run(None, inputs)[0]
        assert context.shape == (batch, 8)
        np.testing.assert_allclose(context, reference_outputs(policy, "adapt", inputs), atol=PARITY_TOLERANCE)
    inputs["mask"][:] = 0.0
    with torch.no_grad():
        prior = policy.initial_context(inputs["mask"].shape[0]).numpy()
    np.testing.assert_allclose(graphs["adapt"].run(None, inputs)[0], prior, atol=1e-6)


def test_policy_graph_bakes_in_clipping_and_scaling(bundle_dir: Path, policy) -> None:
    rng = np.random.default_rng(9)
    inputs = sample_inputs(policy, "policy", rng, batch=256)
    command = sessions(bundle_dir)["policy"].run(None, inputs)[0]
    scale = np.asarray(ACTION_SCALE, dtype=np.float32)
    assert np.all(np.abs(command) <= scale)
    assert np.any(np.isclose(np.abs(command), scale)), "the test policy should reach the action limits"


def test_test_vectors_hold_torch_outputs(bundle_dir: Path, policy) -> None:
    with np.load(bundle_dir / "test_vectors.npz") as vectors:
        arrays = dict(vectors)
    assert set(arrays) == {
        "policy/inputs/obs",
        "policy/inputs/context",
        "policy/outputs/command",
        "adapt/inputs/obs",
        "adapt/inputs/command",
        "adapt/inputs/reward",
        "adapt/inputs/next_obs",
        "adapt/inputs/mask",
        "adapt/outputs/context",
    }
    assert arrays["adapt/inputs/obs"].shape[1] == BUFFER_SIZE
    inputs = {k.rsplit("/", 1)[1]: v for k, v in arrays.items() if k.startswith("policy/inputs/")}
    np.testing.assert_array_equal(reference_outputs(policy, "policy", inputs), arrays["policy/outputs/command"])


# ------------------------------------------------------------------------------ publishing safely
def test_existing_destination_is_refused_without_overwrite(bundle_dir: Path, tmp_path: Path) -> None:
    target = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export_bundle(bundle_dir.parent / "grasp.safetensors", target)
    assert (target / "manifest.json").read_bytes() == before


def test_overwrite_replaces_a_bundle_atomically(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_torch, "export_graph", _copy_graphs_from(bundle_dir))
    target = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    checkpoint = make_checkpoint(tmp_path / "other.safetensors", iteration=99)

    assert export_bundle(checkpoint, target, overwrite=True) == target

    provenance = load_bundle(target).provenance
    assert provenance["checkpoint_sha256"] == sha256_file(checkpoint) and provenance["iteration"] == 99
    assert leftovers(tmp_path) == []


def test_overwrite_never_deletes_files_export_did_not_write(bundle_dir: Path, tmp_path: Path) -> None:
    target = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    (target / "calibration").mkdir()
    (target / "calibration" / "notes.txt").write_text("the robot's own")
    before = (target / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match=r"holds files export did not write \(calibration/notes.txt\); --overwrite never "
                                          r"deletes them: move them out or export to another --out"):
        export_bundle(tmp_path / "any.safetensors", target, overwrite=True)
    assert (target / "calibration" / "notes.txt").read_text() == "the robot's own"
    assert (target / "manifest.json").read_bytes() == before


def test_overwrite_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    target = tmp_path / "home"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not a bundle; refusing to overwrite"):
        export_bundle(tmp_path / "any.safetensors", target, overwrite=True)
    assert (target / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "drop, missing",
    [
        (("interface",), "'interface'"),
        (("adaptation",), "'adaptation'"),
        (("method",), "'method'"),
        (("interface.observation_layout",), "'interface.observation_layout'"),
        (("interface.action.mode",), r"'interface.action.mode' \(or 'interface.action_mode'\)"),
        (("interface.action.units",), r"'interface.action.units' \(or 'interface.action_units'\)"),
        (("interface.joint_names",), "'interface.joint_names'"),
        (("interface.control_rate_hz",), "'interface.control_rate_hz'"),
        (("adaptation.buffer_size",), "'adaptation.buffer_size'"),
        (("adaptation.reward_source",), "'adaptation.reward_source'"),
    ],
)
def test_missing_checkpoint_key_is_named(tmp_path: Path, drop: tuple[str, ...], missing: str) -> None:
    checkpoint = make_checkpoint(tmp_path / "partial.safetensors", drop=drop)
    with pytest.raises(ExportError, match=rf"missing key {missing}.*re-save the checkpoint"):
        export_bundle(checkpoint, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_flat_action_keys_are_accepted(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context_torch, "export_graph", _copy_graphs_from(bundle_dir))
    interface = {k: v for k, v in INTERFACE.items() if k != "action"}
    interface.update(action_mode="cartesian_velocity", action_names=list("abcd"), action_units=["m/s"] * 4)
    checkpoint = make_checkpoint(tmp_path / "flat.safetensors", interface=interface)

    action = load_bundle(export_bundle(checkpoint, tmp_path / "bundle")).action

    assert action["names"] == list("abcd") and action["mode"] == "cartesian_velocity"
    assert action["high"] == ACTION_SCALE


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i["action"].update(names=["a", "b", "c"]), r"'interface.action.names' has 3 entries"),
        (lambda i: i["observation_layout"][0].update(size=4), "sizes add up to 11, but the policy takes 10"),
        (lambda i: i["observation_layout"][1].pop("source"), r"'interface.observation_layout\[1\].source' must be str"),
        (lambda i: i["action"].update(high=[0.2, 0.15, 0.15, 60.0]), r"'interface.action.high' .* disagrees"),
        (lambda i: i["action"].update(scale=[1.0]), r"'interface.action.scale' \[1.0\] disagrees"),
        (lambda i: i.update(control_rate_hz=0), "'interface.control_rate_hz' must be a positive number"),
    ],
)
def test_inconsistent_interface_is_refused(tmp_path: Path, change, message: str) -> None:
    interface = copy.deepcopy(INTERFACE)
    change(interface)
    checkpoint = make_checkpoint(tmp_path / "bad.safetensors", interface=interface)
    with pytest.raises(ExportError, match=message):
        export_bundle(checkpoint, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_unreadable_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="could not be read"):
        export_bundle(tmp_path / "bad.safetensors", tmp_path / "bundle")


def test_failed_parity_aborts_with_the_numbers_and_leaves_nothing(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_torch, "export_graph", _copy_graphs_from(bundle_dir))
    monkeypatch.setattr(context_torch, "parity_max_abs_diff", lambda *a, **k: {"policy": 0.25, "adapt": 1e-7})
    with pytest.raises(ExportError, match=r"the policy graph \(max abs diff 0\.25\).*tolerance is 1e-05") as err:
        export_bundle(bundle_dir.parent / "grasp.safetensors", tmp_path / "bundle")
    assert "adapt graph" not in str(err.value)
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_failed_graph_export_leaves_no_partial_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle_dir: Path
) -> None:
    def broken(policy, graph, path, opset):
        if graph == "adapt":
            raise ExportError("torch.onnx.export (dynamo) failed for the adapt graph: boom")
        _copy_graphs_from(bundle_dir)(policy, graph, path, opset)

    monkeypatch.setattr(context_torch, "export_graph", broken)
    with pytest.raises(ExportError, match="adapt graph: boom"):
        export_bundle(bundle_dir.parent / "grasp.safetensors", tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


# ---- exact answers written from the survivors of a mutation run over export.py, verify.py, parity.py


def test_the_verify_report_lines_up_its_checks_and_names_the_failures():
    report = VerifyReport(Path("/b"))
    report.add("manifest", "pass", "sealed")
    report.add("sha256", "fail", "policy.onnx differs")
    report.add("parity", "skip", "no test vectors")
    assert report.format() == (
        "bundle /b\n"
        "  [PASS] manifest  sealed\n"
        "  [FAIL] sha256    policy.onnx differs\n"
        "  [SKIP] parity    no test vectors\n"
        "FAILED: sha256; do not deploy this bundle")
    report.add("contract", "fail", "x")
    assert report.format().endswith("FAILED: sha256, contract; do not deploy this bundle")
    assert str(report) == report.format()
    empty = VerifyReport(Path("/b"))
    assert empty.format() == "bundle /b\nFAILED: no check could run; do not deploy this bundle"
    good = VerifyReport(Path("/b"))
    good.add("a", "pass", "")
    assert good.format() == "bundle /b\n  [PASS] a  \nOK: the bundle passed every check that ran"


@pytest.fixture(scope="module")
def exported_at_opset_18(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_export")
    checkpoint = make_checkpoint(root / "grasp.safetensors", config={"algo": "context_ppo", "lr": 0.5, "out": "runs/y"})
    return checkpoint, export_bundle(checkpoint, root / "bundle", opset=18)


def test_provenance_carries_the_checkpoint_config_and_the_opset_asked_for(exported_at_opset_18):
    checkpoint, bundle = exported_at_opset_18
    provenance = json.loads((bundle / "manifest.json").read_text())["provenance"]
    assert provenance["config"] == {"algo": "context_ppo", "lr": 0.5, "out": "runs/y"}
    assert provenance["onnx_opset"] == 18
    for graph in ("policy.onnx", "adapt.onnx"):
        model = onnx.load(str(bundle / graph))
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
        assert [o.name for o in model.graph.output] == (["command"] if graph == "policy.onnx" else ["context"])


def test_exporter_failures_become_one_line_naming_the_graph(tmp_path, monkeypatch):
    def raising(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::weird")

    monkeypatch.setattr(torch.onnx, "export", raising)
    with pytest.raises(ExportError) as err:
        onnx_export(torch.nn.Identity(), (torch.zeros(1),), tmp_path / "g.onnx", "policy", ["x"], ["y"], None, None)
    assert str(err.value) == "torch.onnx.export (dynamo) failed for the policy graph: unsupported operator aten::weird"
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: None)
    with pytest.raises(ExportError) as err:
        onnx_export(torch.nn.Identity(), (torch.zeros(1),), tmp_path / "g.onnx", "adapt", ["x"], ["y"], None, None)
    assert str(err.value) == "torch.onnx.export reported success for the adapt graph but wrote no g.onnx"


def test_provenance_keeps_the_training_metrics(exported_at_opset_18):
    checkpoint, bundle = exported_at_opset_18
    provenance = json.loads((bundle / "manifest.json").read_text())["provenance"]
    assert provenance["training_metrics"] == {"return_mean": 1.5, "success_rate": "nan"}  # NaN is not JSON: a string


def test_an_unreadable_manifest_at_the_destination_is_not_replaced(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError) as err:
        export_bundle(tmp_path / "any.safetensors", target, overwrite=True)
    assert str(err.value) == (f"{str(target / 'manifest.json')!r} cannot be read as a bundle manifest; refusing to "
                              f"replace {str(target)!r}: move it aside or export to another --out")


def test_export_stages_beside_the_destination_so_publishing_is_one_rename(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder elsewhere (/tmp is often another filesystem) would make the final os.replace
    fail or copy file by file; export stages in the destination's own folder."""
    monkeypatch.setattr(context_torch, "export_graph", _copy_graphs_from(bundle_dir))
    made = []
    real = export_module.tempfile.mkdtemp

    def spy(*args, **kwargs):
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(export_module.tempfile, "mkdtemp", spy)
    out = tmp_path / "deep" / "er" / "bundle"  # missing folders are made, as mkdir -p would
    export_bundle(bundle_dir.parent / "grasp.safetensors", out)
    assert [p.parent for p in made] == [out.parent]
    assert made[0].name.startswith(".bundle.") and made[0].name.endswith(".partial")


def test_a_manifest_that_load_bundle_refuses_is_an_export_bug_and_leaves_nothing(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metarl_robot.runtime.bundle import BundleError

    monkeypatch.setattr(context_torch, "export_graph", _copy_graphs_from(bundle_dir))

    def refuse(path):
        raise BundleError("manifest.json: 'action.low' is missing")

    monkeypatch.setattr(export_module, "load_bundle", refuse)
    with pytest.raises(ExportError) as err:
        export_bundle(bundle_dir.parent / "grasp.safetensors", tmp_path / "bundle")
    assert str(err.value) == ("the exported manifest does not pass load_bundle (a bug in export): "
                              "manifest.json: 'action.low' is missing")
    assert list(tmp_path.iterdir()) == []


def test_a_finished_export_logs_one_line_with_its_parity(
    bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(context_torch, "export_graph", _copy_graphs_from(bundle_dir))
    checkpoint = bundle_dir.parent / "grasp.safetensors"
    with caplog.at_level("INFO", logger="metarl_robot.export"):
        export_bundle(checkpoint, tmp_path / "bundle")
    lines = [r.getMessage() for r in caplog.records if r.name == "metarl_robot.export"]
    assert len(lines) == 1
    assert lines[0].startswith(f"exported {checkpoint} -> {tmp_path / 'bundle'} in ")
    assert " s (parity max abs diff: policy " in lines[0] and ", adapt " in lines[0]


def test_a_section_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path / "bad.safetensors", adaptation=[1, 2])
    with pytest.raises(ExportError) as err:
        export_bundle(checkpoint, tmp_path / "bundle")
    assert str(err.value) == f"checkpoint {str(checkpoint)!r}: 'adaptation' must be a mapping, got list"


def test_a_failed_swap_puts_the_old_bundle_back(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Overwriting moves the old bundle aside, then the new one in; when the second move fails the
    old bundle returns to its place, whole, and nothing is left beside it."""
    target = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    staging = tmp_path / ".bundle.x.partial"
    staging.mkdir()
    (staging / "manifest.json").write_text("{}")
    real = export_module.os.replace

    def replace(src, dst):
        if Path(src) == staging:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(export_module.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        export_module._publish(staging, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.x.partial", "bundle"]


def test_jsonable_writes_what_json_cannot_hold_as_its_text():
    from metarl_robot.export import jsonable

    class Opaque:
        def __str__(self) -> str:
            return "opaque-42"

    assert jsonable({"a": (1, 2.5, float("inf")), "p": Path("/x/y"), 3: Opaque(), "n": np.float32(0.5)}) == \
        {"a": [1, 2.5, "inf"], "p": "/x/y", "3": "opaque-42", "n": 0.5}
