"""Exact answers of export and verify that the other tests left open (from the survivors of a mutation
run over ``export.py``, ``verify.py`` and ``parity.py``, docs/testing.md): the verify report's text,
the provenance export records, the opset asked for, and the exporter's failures as one line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from metarl_robot.export import ExportError, export_bundle, onnx_export
from metarl_robot.verify import VerifyReport
from tests.runtime.conftest import make_checkpoint


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
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact_export")
    checkpoint = make_checkpoint(root / "grasp.safetensors", config={"algo": "context_ppo", "lr": 0.5, "out": "runs/y"})
    return checkpoint, export_bundle(checkpoint, root / "bundle", opset=18)


def test_provenance_carries_the_checkpoint_config_and_the_opset_asked_for(exported):
    checkpoint, bundle = exported
    provenance = json.loads((bundle / "manifest.json").read_text())["provenance"]
    assert provenance["config"] == {"algo": "context_ppo", "lr": 0.5, "out": "runs/y"}
    assert provenance["onnx_opset"] == 18
    for graph in ("policy.onnx", "adapt.onnx"):
        model = onnx.load(str(bundle / graph))
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
        assert [o.name for o in model.graph.output] == (["command"] if graph == "policy.onnx" else ["context"])


def test_exporter_failures_become_one_line_naming_the_graph(tmp_path, monkeypatch):
    import torch

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
