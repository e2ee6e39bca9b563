"""The gradient-based bundle in models/ loads, verifies against its checkpoint, and adapts on the
robot side with torch unimportable."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NAVIGATION = REPO_ROOT / "models" / "maml_navigation"


@pytest.mark.parametrize("name", ["maml_navigation", "cavia_imitation_navigation", "cavia_imitation_navigation_3step"])
def test_shipped_gradient_bundle_verifies_against_its_checkpoint(name):
    from metarl_robot.verify import verify_bundle

    model = REPO_ROOT / "models" / name
    report = verify_bundle(model / "bundle", checkpoint=model / "checkpoint.safetensors")
    assert report.ok, report.format()
    manifest = json.loads((model / "bundle" / "manifest.json").read_text())
    assert manifest["method"]["family"] == "gradient" and manifest["adaptation"]["reward_source"]["type"] == "topic"
    checkpoint = (model / "checkpoint.safetensors").read_bytes()
    assert manifest["provenance"]["checkpoint_sha256"] == hashlib.sha256(checkpoint).hexdigest()


def test_shipped_navigation_bundle_adapts_towards_the_goal_with_torch_blocked(tmp_path):
    """Two held-out goals, 20 episodes per step as trained: one policy-gradient step taken by the ONNX
    adapt graph must raise the return clearly, without torch anywhere in the process."""
    out = tmp_path / "result.json"
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None
        from metarl_robot.evaluation import evaluate
        from metarl_robot.runtime import load_controller
        from sim.navigation import Navigation2DEnv, navigation_distribution
        controller = load_controller({str(NAVIGATION / "bundle")!r}, providers=["cpu"], seed=0)
        tasks = navigation_distribution(seed=0, num_train=1, num_test=40).test_tasks[:2]
        results = evaluate(controller, Navigation2DEnv(), tasks, rounds=2, episodes_per_round=20, seed=0)
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        json.dump(results, open({str(out)!r}, "w"))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    before, after = (row["return_mean"] for row in results["summary"])
    for task in results["tasks"]:
        assert task["returns"][1] > task["returns"][0] + 5.0, task
    assert after > before + 10.0, (before, after)


def test_cli_evaluates_the_shipped_navigation_bundle_with_its_own_episodes_per_step(tmp_path):
    from metarl_robot.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--bundle", str(NAVIGATION / "bundle"), "--num-tasks", "2", "--rounds", "2", "--out", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["episodes_per_round"] == 20 and "CPUExecutionProvider" in results["evaluated"]
    before, after = (row["return_mean"] for row in results["summary"])
    assert after > before + 10.0


# Each shipped checkpoint and the command models/README.md documents to reproduce it: its config file
# and the overrides that command applies (the bench script's --iterations and seed for navigation).
DOCUMENTED = {
    "grasp_rl2": ("metarl-robot train --config configs/grasp_rl2.yaml --run-dir runs/grasp_rl2",
                  "configs/grasp_rl2.yaml", []),
    "grasp_context_ppo": ("metarl-robot train --config configs/grasp_meta_imitation.yaml --run-dir runs/grasp_meta",
                          "configs/grasp_meta_imitation.yaml", []),
    "maml_navigation": ("python bench/gradient_meta.py navigation --seeds 0 --iterations 200",
                        "configs/maml_navigation.yaml", ["iterations=200", "seed=0"]),
    "maml_grasp": ("python bench/gradient_meta.py grasp --seeds 0 --eval-tasks 16 --export",
                   "configs/maml_grasp.yaml", ["seed=0"]),
    "cavia_imitation_navigation": (
        "metarl-robot train --config configs/cavia_imitation_navigation.yaml --run-dir runs/cavia_imitation_navigation",
        "configs/cavia_imitation_navigation.yaml", []),
    "cavia_imitation_navigation_3step": (
        "metarl-robot train --config configs/cavia_imitation_navigation_3step.yaml --run-dir runs/cavia_imitation_navigation_3step",
        "configs/cavia_imitation_navigation_3step.yaml", []),
    "maml_grasp_skill": ("metarl-robot train --config configs/maml_grasp_skill.yaml --run-dir runs/maml_grasp_skill",
                         "configs/maml_grasp_skill.yaml", []),
}


def _flat(section: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return out


@pytest.mark.parametrize("model", sorted(DOCUMENTED))
def test_each_shipped_checkpoint_was_trained_with_its_documented_command(model):
    """The config inside the checkpoint (with the defaults of keys added since, which the code of the
    time did not read) equals the config the documented command builds: same file, same overrides."""
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.config import load_config, to_dict
    from metarl_robot.families import registry

    command, config_file, overrides = DOCUMENTED[model]
    assert command in (REPO_ROOT / "models" / "README.md").read_text(), f"models/README.md no longer documents {command!r}"
    _, data = load_checkpoint(REPO_ROOT / "models" / model / "checkpoint.safetensors")
    module = registry.algorithm(data["config"].get("method"))
    inside = _flat(to_dict(load_config(module.TrainConfig, data["config"])))
    documented = _flat(to_dict(load_config(module.TrainConfig, REPO_ROOT / config_file, overrides)))
    differences = {k: (inside.get(k), documented.get(k)) for k in sorted(set(inside) | set(documented))
                   if inside.get(k) != documented.get(k)}
    assert not differences, f"{model}: checkpoint config vs `{command}` (key: (inside, documented)): {differences}"


def test_the_shipped_grasp_gradient_bundle_computes_in_float64_and_passes_verify():
    from metarl_robot.verify import verify_bundle

    bundle = REPO_ROOT / "models" / "maml_grasp" / "bundle"
    report = verify_bundle(bundle, checkpoint=REPO_ROOT / "models" / "maml_grasp" / "checkpoint.safetensors")
    assert report.ok, report.format()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["graph_internal_dtype"] == {"policy": "float64", "adapt": "float64"}
    assert manifest["adaptation"]["guard"]["validated_steps"] == 1


def test_the_shipped_grasp_skill_bundle_passes_parity_over_its_validated_steps():
    """The gradient grasp policy on the grasp_force skill: both graphs compute in float64, the skill and
    the previous command are inside them, and the chained parity covers the two steps the guard allows."""
    from metarl_robot.families.gradient_torch import chained_steps
    from metarl_robot.verify import verify_bundle

    root = REPO_ROOT / "models" / "maml_grasp_skill"
    report = verify_bundle(root / "bundle", checkpoint=root / "checkpoint.safetensors")
    assert report.ok, report.format()
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    adaptation = manifest["adaptation"]
    assert adaptation["skill"] == {"name": "grasp_force", "learned_dims": [0, 2, 3]}
    assert adaptation["guard"]["validated_steps"] == 2 and chained_steps(adaptation) == 2
    assert manifest["provenance"]["graph_internal_dtype"] == {"policy": "float64", "adapt": "float64"}
    assert "prev_command" in manifest["graphs"]["policy"]["inputs"] and "prev_command" in manifest["graphs"]["adapt"]["inputs"]
    # The ramp's within-attempt feedback is the skill's; the learned step sizes are inside adapt.onnx.
    assert manifest["provenance"]["config"]["policy"]["skill_options"] == {"grip": "slip_law"}
    assert adaptation["inner_lr_learned"] is True and adaptation["inner_lr"] is None
