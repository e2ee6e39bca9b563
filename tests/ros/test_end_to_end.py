"""The whole path once: train -> checkpoint -> export -> verify -> policy node adapting online
against the PyBullet sim robot, over real DDS on loopback (this session's own domain)."""

import subprocess
import sys

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

from .test_nodes import policy_diagnostics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "metarl_robot.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"metarl-robot {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_train_export_verify_and_adapt_online_in_the_policy_node(tmp_path):
    run = tmp_path / "run"
    cli(
        "train", "--config", "configs/grasp_context_ppo.yaml", "--run-dir", str(run), "--no-progress",
        "--set", "iterations=1", "--set", "tasks_per_iteration=2", "--set", "episodes_per_task=2",
        "--set", "sampler=serial", "--set", "warm_start.rounds=0", "--set", "ppo.epochs=1",
    )
    checkpoint = run / "checkpoints" / "last.safetensors"
    assert checkpoint.is_file() and (run / "config.yaml").is_file()
    bundle = tmp_path / "bundle"
    cli("export", str(checkpoint), "--out", str(bundle))
    assert "FAIL" not in cli("verify", str(bundle), "--checkpoint", str(checkpoint))

    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": 30.0},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "episode_steps": 10},
    }
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=bundle, overrides=overrides, log_dir=tmp_path / "logs") as graph:
        diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)
        results = graph.collect(String, f"/{SIM_ROBOT_NODE_NAME}/episode_result")

        def adapted_twice() -> bool:
            return int(policy_diagnostics(diagnostics)[2].get("adaptation_steps", "0")) >= 2

        assert graph.spin_until(lambda: len(results) >= 2, 60.0), "the sim robot finished no episodes"
        assert graph.spin_until(adapted_twice, 30.0), f"no online adaptation: {policy_diagnostics(diagnostics)}"
        level, message, values = policy_diagnostics(diagnostics)
        assert values["lifecycle_state"] == "active" and values["execution_provider"] == "CPUExecutionProvider"
