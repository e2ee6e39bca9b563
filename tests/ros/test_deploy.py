"""``metarl-robot deploy``: the launch files' node graph without ROS 2 launch, run as a user runs it.

Each test runs the command as a subprocess on this session's DDS domain (tests/ros/conftest.py) and
reads what it prints; node output goes to ``--log-dir`` so the assertions can read the logs too.
"""

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

REPO_ROOT = Path(ros_nodes.__file__).resolve().parent.parent
DEPLOY = [sys.executable, "-m", "metarl_robot.cli", "deploy"]


def deploy(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([*DEPLOY, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT)


def _read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """Read the process's stdout until a line contains ``marker``, it exits, or ``timeout_s`` passes."""
    output, end = b"", time.monotonic() + timeout_s
    fd = process.stdout.fileno()  # read the pipe unbuffered, so select sees every byte not yet read
    while marker.encode() not in output and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            output += chunk
    return output.decode(errors="replace")


@pytest.mark.sim
def test_deploy_sim_runs_the_graph_active_then_stops_with_a_hold(tiny_bundle, tmp_path):
    logs = tmp_path / "logs"
    result = deploy(
        "--sim", "--bundle", str(tiny_bundle), "--duration", "8", "--log-dir", str(logs),
        "--set", f"{SIM_ROBOT_NODE_NAME}.step_mode=lockstep",
        "--set", f"{SIM_ROBOT_NODE_NAME}.episode_steps=5",
        "--set", f"{POLICY_NODE_NAME}.control_rate_hz=20",  # an int for a double: deploy makes it 20.0
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}" in out
    assert f"/{POLICY_NODE_NAME}: active" in out
    assert f"/{SIM_ROBOT_NODE_NAME}: running" in out
    for topic in ("/joint_states", "/ee_pose", "/reward", "/episode_end", "/cmd_twist", "/gripper_command"):
        assert topic in out, f"{topic} not listed:\n{out}"
    assert f"/{POLICY_NODE_NAME}/reset_adaptation" in out
    assert "[deploy] stopped" in out
    overrides = yaml.safe_load((logs / "graph_overrides.yaml").read_text())
    assert overrides[POLICY_NODE_NAME]["ros__parameters"]["control_rate_hz"] == 20.0
    policy_log = (logs / f"{POLICY_NODE_NAME}.log").read_text()
    assert "20 Hz" in policy_log and "active: commanding the robot" in policy_log
    assert "deactivated: published a hold command" in policy_log
    sim_log = (logs / f"{SIM_ROBOT_NODE_NAME}.log").read_text()
    assert "step_mode=lockstep" in sim_log


def test_deploy_without_sim_runs_the_policy_alone_in_a_namespace_until_ctrl_c(tiny_bundle, tmp_path):
    logs = tmp_path / "logs"
    process = subprocess.Popen(
        [*DEPLOY, "--bundle", str(tiny_bundle), "--namespace", "deploy_test", "--log-dir", str(logs),
         "--set", f"{POLICY_NODE_NAME}.joint_state_timeout_s=0.5", "--remap", "joint_states:=/franka/joint_states"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )
    try:
        out = _read_until(process, "running until Ctrl-C", timeout_s=40.0)
        assert "running until Ctrl-C" in out, out
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out += rest.decode(errors="replace")
    assert process.returncode == 0, out
    assert f"/deploy_test/{POLICY_NODE_NAME}: active" in out
    assert "/franka/joint_states" in out and "/deploy_test/cmd_twist" in out
    assert "/deploy_test/joint_states" not in out
    assert SIM_ROBOT_NODE_NAME not in out
    assert "[deploy] stopped" in out
    assert sorted(p.name for p in logs.glob("*.log")) == [f"{POLICY_NODE_NAME}.log"]
    policy_log = (logs / f"{POLICY_NODE_NAME}.log").read_text()
    assert "holding" in policy_log  # no robot: nothing to act on, so it holds
    assert "deactivated: published a hold command" in policy_log


def test_deploy_names_a_missing_bundle(tmp_path):
    missing = tmp_path / "no_such_bundle"
    result = deploy("--sim", "--bundle", str(missing), timeout_s=30)
    assert result.returncode != 0
    assert str(missing) in result.stderr and "does not exist" in result.stderr


def test_deploy_refuses_a_sim_parameter_without_sim(tiny_bundle):
    result = deploy("--bundle", str(tiny_bundle), "--set", f"{SIM_ROBOT_NODE_NAME}.task_index=1", timeout_s=30)
    assert result.returncode == 2
    assert "--sim" in result.stderr


def test_deploy_refuses_a_parameter_the_node_does_not_declare(tiny_bundle):
    result = deploy("--bundle", str(tiny_bundle), "--duration", "1", "--set", f"{POLICY_NODE_NAME}.control_rat_hz=5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "declares no parameter 'control_rat_hz'" in result.stderr
    assert "control_rate_hz" in result.stderr  # the list it does declare


def test_deploy_set_values_follow_the_parameter_types():
    from ros_nodes.cli import parse_node_overrides

    reference = {
        POLICY_NODE_NAME: {"control_rate_hz": 0.0, "execution_providers": ["cuda", "cpu"], "trigger": "timer"},
        SIM_ROBOT_NODE_NAME: {"task_index": 0, "task_yaml": ""},
    }
    nodes = [POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME]
    parsed = parse_node_overrides(
        [f"{POLICY_NODE_NAME}.control_rate_hz=50", f"{POLICY_NODE_NAME}.execution_providers=[cpu]",
         f"{POLICY_NODE_NAME}.adaptation_enabled=false", f"{SIM_ROBOT_NODE_NAME}.task_index=3",
         f"{SIM_ROBOT_NODE_NAME}.task_yaml={{mass: 0.2}}"],
        nodes, reference,
    )
    assert parsed == {
        POLICY_NODE_NAME: {"control_rate_hz": 50.0, "execution_providers": ["cpu"], "adaptation_enabled": False},
        SIM_ROBOT_NODE_NAME: {"task_index": 3, "task_yaml": "{mass: 0.2}"},
    }
    assert type(parsed[POLICY_NODE_NAME]["control_rate_hz"]) is float
    for bad, reason in (
        ("control_rate_hz=5", "NODE.PARAM=VALUE"),
        (f"{POLICY_NODE_NAME}.bundle_path=/x", "--bundle"),
        ("nobody.x=1", "no node 'nobody'"),
        (f"{POLICY_NODE_NAME}.max_obs_age_s={{a: 1}}", "number, string, boolean or list"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_node_overrides([bad], nodes, reference)


def test_deploy_refuses_a_malformed_remap(tiny_bundle):
    result = subprocess.run([*DEPLOY, "--bundle", str(tiny_bundle), "--remap", "joint_command=/x"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode != 0 and "FROM:=TO" in result.stderr, result.stderr
