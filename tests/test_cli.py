import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "metarl_robot.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("train", "eval", "export", "verify", "demo"):
        assert command in out.stdout


def test_bad_config_key_is_named(tmp_path):
    out = run("train", "--run-dir", str(tmp_path), "--set", "ppo.lrr=1")
    assert out.returncode == 2 and "unknown config key ppo.'lrr'" in out.stderr


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from metarl_robot.export import export_bundle
    from tests.runtime.conftest import make_checkpoint

    root = tmp_path_factory.mktemp("cli")
    return export_bundle(make_checkpoint(root / "c.safetensors"), root / "bundle")


@pytest.mark.sim
def test_eval_on_a_user_task_file_with_the_torch_free_runtime(bundle, tmp_path):
    import json

    import yaml

    examples = yaml.safe_load(open("configs/tasks/example_objects.yaml"))["tasks"]
    # a primitive, a held-out random_urdfs mesh, and one with every dynamics parameter set
    tasks = [examples[0], *[t for t in examples if "random_urdf" in t["params"] or "action_latency_steps" in t["params"]]]
    assert len(tasks) == 3
    task_file = tmp_path / "mine.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": tasks}))
    out = run("eval", "--bundle", str(bundle), "--env-id", "sim:metarl/PandaGrasp-v0", "--task-file", str(task_file),
              "--episodes", "2", "--out", str(tmp_path / "eval"))
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [t["task"]["task_id"] for t in results["tasks"]] == [t["task_id"] for t in tasks]
    assert "CPUExecutionProvider" in results["evaluated"]

    task_file.write_text(yaml.safe_dump({"tasks": [{"family": "grasp", "params": {**tasks[0]["params"], "object_mass_kg": -1}}]}))
    out = run("eval", "--bundle", str(bundle), "--env-id", "sim:metarl/PandaGrasp-v0", "--task-file", str(task_file))
    assert out.returncode == 2 and "object_mass_kg" in out.stderr
    for change, named in (({"mass_kg": 1.0}, "mass_kg"), ({"object_urdf": "gone.urdf", "object_shape": None}, "object_urdf")):
        params = {k: v for k, v in {**tasks[0]["params"], **change}.items() if v is not None}
        task_file.write_text(yaml.safe_dump({"tasks": [{"family": "grasp", "params": params}]}))
        out = run("eval", "--bundle", str(bundle), "--env-id", "sim:metarl/PandaGrasp-v0", "--task-file", str(task_file))
        assert out.returncode == 2 and named in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_verify_refuses_a_one_byte_change_through_the_cli(bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(bundle, tmp_path / "b")
    policy = bundle / "policy.onnx"
    data = bytearray(policy.read_bytes())
    data[len(data) // 2] ^= 0x01
    policy.write_bytes(bytes(data))
    import hashlib
    import json
    import re

    expected = json.loads((bundle / "manifest.json").read_text())["files"]["policy.onnx"]
    got = hashlib.sha256(policy.read_bytes()).hexdigest()
    out = run("verify", str(bundle))
    assert out.returncode == 1
    assert re.search(
        rf"\[FAIL\] manifest and checksums .*policy\.onnx: sha256 mismatch \(expected {expected}, got {got}\): "
        "the file was modified after export; re-export the bundle", out.stdout), out.stdout
    assert out.stdout.rstrip().endswith("FAILED: manifest and checksums; do not deploy this bundle")
    assert "[PASS]" not in out.stdout.split("manifest and checksums")[0]


@pytest.mark.sim
@pytest.mark.parametrize("no_adapt", [True, False])
def test_eval_no_adapt_never_adapts_and_says_so(bundle, tmp_path, monkeypatch, no_adapt):
    """``--no-adapt`` is the frozen baseline of BENCHMARKS.md's tables: adapt() is never called, and the
    report says adaptation was off. Without the flag the same command adapts after every round."""
    import json

    import yaml

    from metarl_robot.cli import main
    from metarl_robot.runtime import AdaptiveController

    calls = []
    original = AdaptiveController.adapt
    monkeypatch.setattr(AdaptiveController, "adapt", lambda self: calls.append(1) or original(self))
    task = yaml.safe_load(open("configs/tasks/example_objects.yaml"))["tasks"][0]
    task_file = tmp_path / "one.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": [task]}))
    argv = ["eval", "--bundle", str(bundle), "--env-id", "sim:metarl/PandaGrasp-v0", "--task-file", str(task_file),
            "--rounds", "3", "--episodes-per-round", "1", "--sampler", "serial", "--out", str(tmp_path / "eval")]
    assert main(argv + (["--no-adapt"] if no_adapt else [])) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert results["adapt"] is (not no_adapt)
    assert len(calls) == (0 if no_adapt else 2)  # after rounds 0 and 1, not after the last
    assert [r["adaptation_steps"] for r in results["summary"]] == ([0, 0, 0] if no_adapt else [0, 1, 2])
