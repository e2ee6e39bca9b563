"""load_bundle on gradient bundles: the contract loads, and each broken key is refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from metarl_robot.runtime import AdvantageConfig, BundleError, load_bundle
from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import seal_manifest

from .gradient_fixtures import VARIANTS, exported_gradient_bundle


@pytest.fixture(scope="module")
def gradient_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_gradient_bundle(tmp_path_factory, "meta_sgd")


@pytest.fixture
def gradient_copy(gradient_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(gradient_bundle, tmp_path / "bundle"))


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(seal_manifest(manifest)))  # re-sealed: the checks after the digest are tested


def test_gradient_bundle_reads_the_contract(gradient_bundle: Path) -> None:
    v = VARIANTS["meta_sgd"]
    bundle = load_bundle(gradient_bundle)
    assert bundle.family == "gradient" and bundle.adapt_steps == v.steps
    adaptation = bundle.adaptation
    assert (adaptation["episodes_per_step"], adaptation["max_episode_steps"]) == (v.episodes_per_step, v.max_episode_steps)
    assert AdvantageConfig.from_mapping(adaptation["advantages"]) == AdvantageConfig(
        gamma=0.99, gae_lambda=0.95, normalize=True, baseline_ridge=1e-5
    )
    params = bundle.plugin.initial_params(bundle)
    assert params.dtype == np.float32 and params.shape == (adaptation["num_params"],)
    assert bundle.graphs["adapt"].inputs["mask"] == (v.episodes_per_step, v.max_episode_steps)
    assert bundle.graphs["policy"].outputs == {"command": (None, v.act_dim), "action": (None, v.act_dim)}
    assert set(bundle.files) == {"policy.onnx", "adapt.onnx", "params.npy", "test_vectors.npz"}


def test_context_bundle_has_no_gradient_keys(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.family == "context"
    assert "num_params" not in bundle.adaptation and "initial_params_file" not in bundle.adaptation


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m["adaptation"].pop("reward_source"), "missing key 'adaptation.reward_source'"),
        (lambda m: m["adaptation"].pop("episodes_per_step"), "missing key 'adaptation.episodes_per_step'"),
        (lambda m: m["adaptation"]["advantages"].pop("gamma"), "missing key 'adaptation.advantages.gamma'"),
        (lambda m: m["adaptation"]["advantages"].update(normalize=1), "'adaptation.advantages.normalize' must be true"),
        (lambda m: m["adaptation"]["advantages"].update(gae_lambda=2.0), r"'adaptation.advantages': gamma must be"),
        (lambda m: m["adaptation"].update(inner_lr_learned=False), "'adaptation.inner_lr' is null but"),
        (lambda m: m["adaptation"].update(inner_lr=-0.1), "'adaptation.inner_lr' must be a positive number"),
        (lambda m: m["adaptation"].update(kind="context_encoder"), "gradient bundles adapt by 'gradient_step'"),
        (lambda m: m["adaptation"].update(adapted="weights"), r"'adaptation.adapted' is 'weights', expected one of"),
        (lambda m: m["adaptation"].update(exploration="epsilon"), r"this runtime samples \['gaussian'\]"),
        (lambda m: m["adaptation"].update(steps=-1), "'adaptation.steps' must be a non-negative integer"),
        (lambda m: m["adaptation"].update(num_params=3), r"'graphs.policy.inputs.params' is \[356\], expected \[3\]"),
        (lambda m: m["adaptation"].update(max_episode_steps=9), r"'graphs.adapt.inputs.obs' is \[5, 8, 2\]"),
        (lambda m: m["files"].pop("params.npy"), "the adaptation section names 'params.npy', which 'files' does not list"),
        (lambda m: m["method"].update(family="evolution"), "'method.family': unknown method family 'evolution'; registered families"),
        (lambda m: m["graphs"]["adapt"].update(outputs={"context": [356]}), r"expected \['adapted_params'\]"),
    ],
)
def test_malformed_gradient_manifest_is_refused(gradient_copy: Path, change: Callable, expected: str) -> None:
    edit_manifest(gradient_copy, change)
    with pytest.raises(BundleError, match=expected):
        load_bundle(gradient_copy)


@pytest.mark.parametrize(
    "params, expected",
    [
        (np.zeros(5, np.float32), r"must hold 356 finite float32 values .* shape \(5,\)"),
        (np.zeros(356, np.float64), "must hold .* got dtype float64"),
        (np.full(356, np.nan, np.float32), "must hold 356 finite float32 values"),
    ],
)
def test_bad_params_file_is_refused_even_with_a_matching_checksum(gradient_copy: Path, params, expected: str) -> None:
    np.save(gradient_copy / "params.npy", params)
    edit_manifest(gradient_copy, lambda m: m["files"].update({"params.npy": sha256_file(gradient_copy / "params.npy")}))
    with pytest.raises(BundleError, match=rf"params\.npy: {expected}"):
        load_bundle(gradient_copy)
