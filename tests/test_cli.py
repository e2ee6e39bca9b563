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
    out = run("verify", str(bundle))
    assert out.returncode != 0
    assert "sha256" in (out.stdout + out.stderr)
