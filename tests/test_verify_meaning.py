"""verify checks what the manifest says against what the policy graph computes: the command bounds and
scale (by probing the graph into saturation), the observation and command sizes, the control rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import seal_manifest
from metarl_robot.verify import verify_bundle
from tests.runtime.conftest import exported_bundle
from tests.runtime.gradient_fixtures import exported_gradient_bundle

CONTRACT, BOUNDS = "manifest contract", "command bounds vs policy graph"
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(params=["context", "maml", "cavia"])
def fresh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "context":
        return exported_bundle(tmp_path_factory)
    return exported_gradient_bundle(tmp_path_factory, request.param)


@pytest.fixture(params=["context", "maml"])
def bundle_copy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of a fresh bundle of each family, on the grasp interface (scale 0.15 x3, 60 N)."""
    source = (
        exported_bundle(tmp_path_factory)
        if request.param == "context"
        else exported_gradient_bundle(tmp_path_factory, request.param)
    )
    return Path(shutil.copytree(source, tmp_path / "bundle"))


def reseal(bundle: Path, edit: Edit) -> None:
    """Edit the manifest and recompute its file hashes and digest, so load_bundle accepts it."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    path.write_text(json.dumps(seal_manifest(manifest), indent=2))


def scaled(keys: tuple[str, ...], factor: float, dim: int | None = None) -> Edit:
    """Multiply the action's ``keys`` by ``factor`` (in one dimension, or all)."""

    def edit(manifest: dict[str, Any]) -> None:
        for key in keys:
            values = manifest["action"][key]
            manifest["action"][key] = [v * factor if dim in (None, i) else v for i, v in enumerate(values)]

    return edit


def checks(bundle: Path) -> dict[str, Any]:
    report = verify_bundle(bundle)
    assert report.checks[0].status == "pass", report.format()  # the edit loads: only meaning can catch it
    return {check.name: check for check in report.checks}


def test_fresh_bundles_pass_and_every_bound_is_reached(fresh: Path) -> None:
    found = checks(fresh)
    assert found[CONTRACT].status == "pass", found[CONTRACT].detail
    assert found[BOUNDS].status == "pass", found[BOUNDS].detail
    act_dim = json.loads((fresh / "manifest.json").read_text())["action"]["dim"]
    assert f"{2 * act_dim} of {2 * act_dim} bounds reached" in found[BOUNDS].detail


@pytest.mark.parametrize(
    "edit, contract, bounds",
    [
        (scaled(("high",), 2.0, 0), "ee_vx: high 0.3 is not 0.15", "ee_vx: the graph saturates at 0.15, but the manifest states high 0.3"),
        (scaled(("low",), 2.0, 3), "grip_force: low -120 is not -60", "grip_force: the graph saturates at -60, but the manifest states low -120"),
        (scaled(("scale",), 2.0, 1), "ee_vy: high 0.15 is not 0.3", "ee_vy: the graph saturates at 0.15, but the manifest's scale 0.3"),
        (scaled(("low", "high", "scale"), 2.0), None, "ee_vz: the graph saturates at 0.15, but the manifest states high 0.3"),
        (scaled(("low", "high", "scale"), 1.001, 3), None, "grip_force: the graph saturates at 60, but the manifest states high 60.06"),
        (scaled(("low", "high", "scale"), 0.5), None, "ee_vx: the graph commands 0.15 above the stated high 0.075"),
    ],
    ids=["high", "low", "scale", "all-widened", "all-widened-0.1%", "all-narrowed"],
)
def test_sealed_bound_and_scale_edits_are_caught(bundle_copy: Path, edit: Edit, contract: str | None, bounds: str) -> None:
    reseal(bundle_copy, edit)
    found = checks(bundle_copy)
    if contract is None:
        assert found[CONTRACT].status == "pass", found[CONTRACT].detail
    else:
        assert found[CONTRACT].status == "fail" and contract in found[CONTRACT].detail, found[CONTRACT].detail
    assert found[BOUNDS].status == "fail" and bounds in found[BOUNDS].detail, found[BOUNDS].detail


def _grow_observation(manifest: dict[str, Any]) -> None:
    """Observation dim 10 -> 11 everywhere in the manifest; the graphs still take 10."""
    manifest["observation"]["dim"] = 11
    manifest["observation"]["layout"][0]["size"] = 4
    bounds = manifest["observation"].get("bounds")
    if bounds is not None:  # keep the plausibility bounds the right length too
        bounds["low"].insert(3, -1.0)
        bounds["high"].insert(3, 1.0)
    for graph in manifest["graphs"].values():
        for shape in (*graph["inputs"].values(), *graph["outputs"].values()):
            if shape and shape[-1] == 10:
                shape[-1] = 11


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_grow_observation, "the policy graph's input 'obs' has last dimension 10, observation.dim is 11"),
        (lambda m: m["observation"]["layout"][0].update(size=4), "observation.layout sizes add up to 11, but observation.dim is 10"),
        (lambda m: m["action"]["joint_names"].append(m["action"]["joint_names"][0]), "action.joint_names must be non-empty, distinct names"),
    ],
    ids=["observation.dim", "layout", "joint_names"],
)
def test_sealed_contract_edits_are_caught(bundle_copy: Path, edit: Edit, expected: str) -> None:
    reseal(bundle_copy, edit)
    found = checks(bundle_copy)
    assert found[CONTRACT].status == "fail" and expected in found[CONTRACT].detail, found[CONTRACT].detail


def test_cli_verify_fails_a_sealed_bound_edit(bundle_copy: Path, capsys: pytest.CaptureFixture) -> None:
    from metarl_robot.cli import main

    reseal(bundle_copy, scaled(("low", "high", "scale"), 2.0))
    assert main(["verify", str(bundle_copy)]) == 1
    assert f"FAILED: {BOUNDS}; do not deploy this bundle" in capsys.readouterr().out


def test_a_policy_that_never_saturates_passes_with_its_bounds_checked_as_limits(tmp_path: Path) -> None:
    """A policy whose commands stay well inside the bounds: nothing pins the bounds, so they are
    reported as limits only; narrowing them below what the policy commands is still caught."""
    import torch

    from metarl_robot.checkpoint import save_checkpoint
    from metarl_robot.export import export_bundle
    from tests.runtime import conftest

    policy = conftest.make_policy()
    with torch.no_grad():
        policy.actor[-1].weight.div_(150.0 * 20.0)  # undo the fixture's push into the clip, and then some
        policy.actor[-1].bias.zero_()
    checkpoint = save_checkpoint(
        tmp_path / "gentle.safetensors", policy, method="context_ppo", interface=conftest.INTERFACE,
        adaptation=conftest.ADAPTATION, config={}, seed=0, iteration=0, metrics={},
    )
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    found = checks(bundle)
    assert found[BOUNDS].status == "pass" and "0 of 8 bounds reached" in found[BOUNDS].detail
    assert "checked only as limits: ee_vx high" in found[BOUNDS].detail

    reseal(bundle, scaled(("low", "high", "scale"), 1e-4))
    found = checks(bundle)
    assert found[BOUNDS].status == "fail" and "above the stated high" in found[BOUNDS].detail
