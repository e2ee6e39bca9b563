"""export_bundle for gradient-based policies: manifest, params.npy, graphs against PyTorch (single
batches and chained adaptation steps) for MAML-style, CAVIA and Meta-SGD policies, and refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import metarl_robot.families.gradient_torch as gradient_export
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.export import ExportError, export_bundle
from metarl_robot.runtime import load_bundle
from metarl_robot.runtime.advantages import AdvantageConfig, compute_advantages
from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import seal_manifest
from metarl_robot.verify import PARITY_TOLERANCE, verify_bundle
from tests.runtime.conftest import exported_bundle
from tests.runtime.gradient_fixtures import (
    NAV_INTERFACE,
    VARIANTS,
    checkpoint_of,
    exported_gradient_bundle,
    make_gradient_checkpoint,
)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, variant: str) -> Path:
    return exported_gradient_bundle(tmp_path_factory, variant)


@pytest.fixture(scope="module")
def policy(bundle: Path, variant: str):
    return load_checkpoint(checkpoint_of(bundle, variant))[0]


@pytest.fixture(scope="module")
def maml_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_gradient_bundle(tmp_path_factory, "maml")


def sessions(bundle: Path) -> dict[str, onnxruntime.InferenceSession]:
    return {
        graph: onnxruntime.InferenceSession(str(bundle / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        for graph in ("policy", "adapt")
    }


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# --------------------------------------------------------------------------------------- manifest
def test_bundle_holds_graphs_params_and_test_vectors(bundle: Path) -> None:
    names = sorted(p.name for p in bundle.iterdir())
    assert names == ["adapt.onnx", "manifest.json", "params.npy", "policy.onnx", "test_vectors.npz"]
    manifest = manifest_of(bundle)
    assert manifest["files"] == {name: sha256_file(bundle / name) for name in names if name != "manifest.json"}
    assert load_bundle(bundle).family == "gradient"


def test_manifest_describes_the_gradient_step(bundle: Path, variant: str, policy) -> None:
    v = VARIANTS[variant]
    manifest = manifest_of(bundle)
    learned = v.learn_inner_lr or v.inner_loss == "reward_model"  # a reward-model step learns its step sizes
    assert manifest["method"] == {"family": "gradient", "name": v.method}
    assert manifest["observation"]["dim"] == v.obs_dim and manifest["action"]["scale"] == v.action_scale
    assert manifest["adaptation"] == {
        "kind": "gradient_step",
        "adapted": "context" if v.context_dim else "policy_parameters",
        "num_params": policy.num_adapted,
        "inner_lr": None if learned else v.inner_lr,
        "inner_lr_learned": learned,
        "steps": v.steps,
        "episodes_per_step": v.episodes_per_step,
        "max_episode_steps": v.max_episode_steps,
        "cadence": "episodes",
        "advantages": v.adaptation()["advantages"],
        "exploration": "gaussian",
        "reward_source": {"type": "topic", "topic": "reward"},
        **({"skill": {"name": v.skill, "learned_dims": [0, 2, 3]}} if v.skill else {}),
        **({"inner_loss": "reward_model"} if v.inner_loss == "reward_model" else {}),
        "initial_params_file": "params.npy",
    }
    p, n, t, o, a = policy.num_adapted, v.episodes_per_step, v.max_episode_steps, v.obs_dim, v.act_dim
    assert manifest["graphs"] == {
        "policy": {
            "file": "policy.onnx",
            "inputs": {"obs": [None, o], "prev_command": [None, a], "params": [p], "noise": [None, a]},
            "outputs": {"command": [None, a], "action": [None, a]},
        },
        "adapt": {
            "file": "adapt.onnx",
            "inputs": {"params": [p], "obs": [n, t, o], "prev_command": [n, t, a], "action": [n, t, a], "reward": [n, t],
                       "mask": [n, t]},
            "outputs": {"adapted_params": [p]},
        },
    }
    parity = manifest["provenance"]["parity_max_abs_diff"]
    assert set(parity) == {"policy", "adapt", "adapt_chained"}
    assert all(0 <= d <= PARITY_TOLERANCE for d in parity.values())


def test_params_file_holds_the_initial_adapted_vector(bundle: Path, policy) -> None:
    params = np.load(bundle / "params.npy", allow_pickle=False)
    assert params.dtype == np.float32
    np.testing.assert_array_equal(params, policy.initial_adapted().detach().numpy())
    loaded = load_bundle(bundle)
    np.testing.assert_array_equal(loaded.plugin.initial_params(loaded), params)


# ----------------------------------------------------------------------------------------- parity
def test_graphs_match_torch_on_50_batches_and_chained_steps(bundle: Path, policy) -> None:
    """Fresh random batches (not the export's seed): each graph, and chains of adapt steps fed their
    own output, against float64 PyTorch (GradientPolicy.inner_step for the adapt graph)."""
    adaptation = load_bundle(bundle).adaptation
    diffs = gradient_export.parity_max_abs_diff(
        policy,
        sessions(bundle),
        batches=50,
        rng=np.random.default_rng(2024),
        episodes=adaptation["episodes_per_step"],
        max_episode_steps=adaptation["max_episode_steps"],
        chained_steps=gradient_export.CHAINED_STEPS,
        advantages=AdvantageConfig.from_mapping(adaptation["advantages"]),
    )
    assert set(diffs) == {"policy", "adapt", "adapt_chained"}
    assert all(d <= PARITY_TOLERANCE for d in diffs.values()), diffs


def test_adapt_graph_is_one_inner_step_in_float32_too(bundle: Path, policy) -> None:
    """Against PyTorch's own float32 inner step on an on-policy batch, parameter by parameter."""
    adaptation = load_bundle(bundle).adaptation
    inputs = gradient_export.sample_inputs(
        policy,
        "adapt",
        np.random.default_rng(5),
        episodes=adaptation["episodes_per_step"],
        max_episode_steps=adaptation["max_episode_steps"],
        on_policy=True,
    )
    (adapted,) = sessions(bundle)["adapt"].run(None, inputs)
    config = AdvantageConfig.from_mapping(adaptation["advantages"])
    signal = inputs["reward"] if policy.reads_rewards else compute_advantages(inputs["obs"], inputs["reward"], inputs["mask"], config)
    batch = {**inputs, "advantage": signal}
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    policy_inputs = policy.policy_inputs(t["obs"], t["prev_command"])
    expected = policy.inner_step(t["params"], policy_inputs, t["action"], t["advantage"], t["mask"],
                                 create_graph=False).detach().numpy()
    np.testing.assert_allclose(adapted, expected, rtol=0, atol=PARITY_TOLERANCE)
    assert np.max(np.abs(adapted - inputs["params"])) > 1e-4


def test_empty_mask_leaves_the_params_unchanged(bundle: Path, policy) -> None:
    adaptation = load_bundle(bundle).adaptation
    inputs = gradient_export.sample_inputs(
        policy, "adapt", np.random.default_rng(6), episodes=adaptation["episodes_per_step"],
        max_episode_steps=adaptation["max_episode_steps"],
    )
    inputs["mask"][:] = 0.0
    np.testing.assert_array_equal(sessions(bundle)["adapt"].run(None, inputs)[0], inputs["params"])


def test_policy_graph_samples_then_clips_and_scales(bundle: Path, policy) -> None:
    rng = np.random.default_rng(9)
    inputs = gradient_export.sample_inputs(policy, "policy", rng, batch=256, episodes=1, max_episode_steps=1)
    inputs["noise"] = rng.normal(0.0, 2.0, inputs["noise"].shape).astype(np.float32)
    command, action = sessions(bundle)["policy"].run(None, inputs)
    scale = policy.action_scale.numpy()
    assert np.any(np.abs(action) > 1.0)
    policy_inputs = policy.policy_inputs(torch.from_numpy(inputs["obs"]), torch.from_numpy(inputs["prev_command"]))
    if policy.skill is None:
        assert np.all(np.abs(command) <= scale)
        np.testing.assert_allclose(command, np.clip(action, -1.0, 1.0) * scale, rtol=1e-6, atol=1e-7)
    else:  # the skill's command for the clipped action, after the previous command
        exact = gradient_export.float64_copy(policy)
        with torch.no_grad():
            expected = exact.to_command(policy_inputs.double(), torch.from_numpy(action).double()).numpy()
        assert np.max(np.abs(command - expected) / scale) <= PARITY_TOLERANCE

    inputs["noise"][:] = 0.0
    command, action = sessions(bundle)["policy"].run(None, inputs)
    with torch.no_grad():
        mean = policy.command(torch.from_numpy(inputs["params"]), policy_inputs).numpy()
    assert np.max(np.abs(command - mean) / scale) <= PARITY_TOLERANCE


def test_test_vectors_hold_torch_outputs(bundle: Path) -> None:
    with np.load(bundle / "test_vectors.npz") as vectors:
        keys = set(vectors.files)
    assert keys == {
        "policy/inputs/obs",
        "policy/inputs/prev_command",
        "policy/inputs/params",
        "policy/inputs/noise",
        "policy/outputs/command",
        "policy/outputs/action",
        "adapt/inputs/params",
        "adapt/inputs/obs",
        "adapt/inputs/prev_command",
        "adapt/inputs/action",
        "adapt/inputs/reward",
        "adapt/inputs/mask",
        "adapt/outputs/adapted_params",
    }


def test_adapt_graph_has_fixed_shapes_and_no_scatter(maml_bundle: Path) -> None:
    model = onnx.load(str(maml_bundle / "adapt.onnx"))
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert all(all(d > 0 for d in shape) for shape in dims)
    assert "ScatterND" not in {node.op_type for node in model.graph.node}


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "drop, missing",
    [
        ("episodes_per_step", "'adaptation.episodes_per_step'"),
        ("max_episode_steps", "'adaptation.max_episode_steps'"),
        ("reward_source", "'adaptation.reward_source'"),
        ("advantages", "'adaptation.advantages'"),
        ("kind", "'adaptation.kind'"),
    ],
)
def test_missing_adaptation_key_is_named(tmp_path: Path, drop: str, missing: str) -> None:
    adaptation = VARIANTS["cavia"].adaptation()
    del adaptation[drop]
    checkpoint = make_gradient_checkpoint(tmp_path / "c.safetensors", "cavia", adaptation=adaptation)
    with pytest.raises(ExportError, match=rf"missing key {missing}.*re-save the checkpoint"):
        export_bundle(checkpoint, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a["advantages"].pop("gamma"), "missing key 'adaptation.advantages.gamma'"),
        (lambda a: a["advantages"].update(gamma=1.5), r"'adaptation.advantages': gamma must be in \(0, 1\]"),
        (lambda a: a.update(kind="context_encoder"), "a GradientPolicy adapts by 'gradient_step'"),
        (lambda a: a.update(episodes_per_step=0), r"'adaptation.episodes_per_step' must be an integer >= 1"),
        (lambda a: a.update(steps=-1), r"'adaptation.steps' must be an integer >= 0"),
        (lambda a: a.update(reward_source="reward"), "'adaptation.reward_source' must be a mapping"),
    ],
)
def test_bad_adaptation_settings_are_refused(tmp_path: Path, change, message: str) -> None:
    adaptation = VARIANTS["cavia"].adaptation()
    change(adaptation)
    checkpoint = make_gradient_checkpoint(tmp_path / "c.safetensors", "cavia", adaptation=adaptation)
    with pytest.raises(ExportError, match=message):
        export_bundle(checkpoint, tmp_path / "bundle")


def test_interface_is_checked_as_for_context_policies(tmp_path: Path) -> None:
    interface = json.loads(json.dumps(NAV_INTERFACE))
    interface["action"]["names"] = ["dx"]
    checkpoint = make_gradient_checkpoint(tmp_path / "c.safetensors", "cavia", interface=interface)
    with pytest.raises(ExportError, match=r"'interface.action.names' has 1 entries"):
        export_bundle(checkpoint, tmp_path / "bundle")


def test_failed_chained_parity_aborts_naming_it(
    maml_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def copy_graph(policy, graph, path, opset, **sizes):
        shutil.copyfile(maml_bundle / path.name, path)

    monkeypatch.setattr(gradient_export, "export_graph", copy_graph)
    monkeypatch.setattr(
        gradient_export, "parity_max_abs_diff", lambda *a, **k: {"policy": 1e-7, "adapt": 2e-6, "adapt_chained": 3e-3}
    )
    with pytest.raises(ExportError, match=r"the adapt graph over chained steps .*\(max abs diff 0\.003\).*No bundle"):
        export_bundle(checkpoint_of(maml_bundle, "maml"), tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- verify
def test_verify_passes_every_check_on_a_gradient_bundle(bundle: Path, variant: str) -> None:
    report = verify_bundle(bundle, checkpoint=checkpoint_of(bundle, variant))
    assert report.ok, report.format()
    assert len(report.checks) == 10
    assert {c.name: c.status for c in report.checks if c.status != "pass"} == {"signature": "skip"}  # unsigned
    torch_check = report.checks[-1].detail
    assert "adapt_chained max abs diff" in torch_check and "initial params diff 0" in torch_check


def test_verify_refuses_one_changed_byte_naming_the_file(maml_bundle: Path, tmp_path: Path) -> None:
    for name in ("adapt.onnx", "params.npy"):
        copy = Path(shutil.copytree(maml_bundle, tmp_path / name))
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        report = verify_bundle(copy)
        assert not report.ok and len(report.checks) == 1
        assert f"{name}: sha256 mismatch (expected" in report.checks[0].detail


def test_verify_catches_params_that_differ_from_the_checkpoint(maml_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(maml_bundle, tmp_path / "bundle"))
    params = np.load(copy / "params.npy")
    np.save(copy / "params.npy", params + np.float32(1e-3))
    manifest = manifest_of(copy)
    manifest["files"]["params.npy"] = sha256_file(copy / "params.npy")
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))

    report = verify_bundle(copy)

    check = report.checks[-1]
    assert check.status == "fail" and "initial params diff 0.001" in check.detail


def test_verify_refuses_a_checkpoint_of_the_other_family(
    maml_bundle: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    context_checkpoint = exported_bundle(tmp_path_factory).parent / "grasp.safetensors"
    copy = Path(shutil.copytree(maml_bundle, tmp_path / "bundle"))
    manifest = manifest_of(copy)
    manifest["provenance"]["checkpoint_sha256"] = sha256_file(context_checkpoint)
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))

    check = verify_bundle(copy, checkpoint=context_checkpoint).checks[-1]

    assert check.status == "fail" and "holds a ContextPolicy, but this is a gradient bundle" in check.detail


def test_verify_without_torch_checks_a_gradient_bundle_against_its_test_vectors(maml_bundle: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        from metarl_robot.verify import verify_bundle
        report = verify_bundle({str(maml_bundle)!r})
        print(report)
        sys.exit(0 if report.ok else 1)
        """
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[PASS] onnxruntime vs test vectors" in result.stdout
    assert "[SKIP] onnxruntime vs PyTorch checkpoint" in result.stdout


def test_a_step_float32_cannot_reproduce_is_exported_computing_in_float64(tmp_path: Path) -> None:
    """With log std -4 the inner step divides by a variance of 3e-4 and float32 misses the 1e-5 parity
    gate; export then writes the adapt graph computing in float64 between float32 inputs and outputs,
    says so in the provenance, and the bundle passes export's gate, verify and the runtime's step."""
    from metarl_robot.checkpoint import save_checkpoint
    from metarl_robot.runtime import GradientController
    from tests.runtime.gradient_fixtures import make_gradient_policy

    policy = make_gradient_policy("maml")
    with torch.no_grad():
        policy.weights[-policy.act_dim :] = -4.0
    v = VARIANTS["maml"]
    checkpoint = save_checkpoint(tmp_path / "tiny_std.safetensors", policy, method=v.method, interface=v.interface,
                                 adaptation=v.adaptation(), config={}, seed=0, iteration=1, metrics={})
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["graph_internal_dtype"] == {"adapt": "float64"}
    assert max(manifest["provenance"]["parity_max_abs_diff"].values()) <= PARITY_TOLERANCE
    graph = onnx.load(str(bundle / "adapt.onnx"))
    assert [i.type.tensor_type.elem_type for i in graph.graph.input] == [onnx.TensorProto.FLOAT] * 6
    assert any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.DOUBLE for n in graph.graph.node)
    assert verify_bundle(bundle, checkpoint=checkpoint).ok
    # The policy graph computes in float64 the same way when float32 misses the gate.
    gradient_export.export_graph(policy, "policy", tmp_path / "policy64.onnx", None, internal=torch.float64,
                                 episodes=v.episodes_per_step, max_episode_steps=v.max_episode_steps)
    session = onnxruntime.InferenceSession(str(tmp_path / "policy64.onnx"), providers=["CPUExecutionProvider"])
    feed = gradient_export.sample_inputs(policy, "policy", np.random.default_rng(2), episodes=v.episodes_per_step,
                                         max_episode_steps=v.max_episode_steps)
    expected = gradient_export.reference_outputs(gradient_export.float64_copy(policy), "policy", feed)
    for got, want in zip(session.run(None, feed), expected):
        assert got.dtype == np.float32 and np.max(np.abs(got - want)) <= 1e-6

    controller = GradientController.load(bundle, ["cpu"], seed=0)
    inputs = gradient_export.sample_inputs(policy, "adapt", np.random.default_rng(1), episodes=v.episodes_per_step,
                                           max_episode_steps=v.max_episode_steps)
    (exact,) = gradient_export.reference_outputs(gradient_export.float64_copy(policy), "adapt", inputs,
                                                 controller.advantage_config)
    (step,) = controller._adapt_session.run(None, inputs)
    assert np.max(np.abs(step - exact)) <= 1e-6


def test_a_bundle_whose_adapt_graph_takes_advantages_is_told_to_re_export(maml_bundle: Path, tmp_path: Path) -> None:
    """Bundles exported before the advantages moved into the adapt graph name 'advantage' where this
    runtime feeds 'reward', and those exported before the previous command became an input lack
    'prev_command': one line saying so and giving the command, not two lists of names."""
    from metarl_robot.runtime import BundleError

    copy = Path(shutil.copytree(maml_bundle, tmp_path / "bundle"))
    manifest = manifest_of(copy)
    inputs = {k: v for k, v in manifest["graphs"]["adapt"]["inputs"].items() if k != "prev_command"}
    for name, why in (("advantage", "its adapt graph takes advantages"), ("reward", "its adapt graph does not read the previous commands")):
        manifest["graphs"]["adapt"]["inputs"] = {(name if k == "reward" else k): v for k, v in inputs.items()}
        (copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
        with pytest.raises(BundleError, match=rf"exported by an earlier metarl_robot: {why}.*"
                                              r"metarl-robot export CHECKPOINT --out DIR --overwrite"):
            load_bundle(copy)
    manifest["graphs"]["adapt"]["inputs"] = {("returns" if k == "reward" else k): v for k, v in inputs.items()}
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(BundleError, match=r"names \['params', 'obs', 'action', 'returns', 'mask'\], expected"):
        load_bundle(copy)
    manifest = manifest_of(Path(maml_bundle))
    manifest["graphs"]["policy"]["inputs"].pop("prev_command")
    (copy / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    with pytest.raises(BundleError, match=r"earlier metarl_robot: its policy graph does not read the previous command"):
        load_bundle(copy)


def test_chained_parity_covers_the_steps_the_guard_validated() -> None:
    """Chains are as long as the robot adapts under its guard, 3 steps when no guard is declared."""
    assert gradient_export.chained_steps({"guard": {"validated_steps": 2}}) == 2
    assert gradient_export.chained_steps({"guard": {"validated_steps": 5}}) == 5
    for adaptation in ({}, {"guard": None}, {"guard": {"validated_steps": None}}, {"guard": {"validated_steps": True}}):
        assert gradient_export.chained_steps(adaptation) == gradient_export.CHAINED_STEPS == 3
