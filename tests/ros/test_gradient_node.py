"""A gradient-based (MAML-family) bundle in the policy node: it explores, collects whole episodes
against the simulated robot and takes a policy-gradient step inside onnxruntime once it has the
bundle's ``episodes_per_step`` episodes."""

import json

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

from ..runtime.gradient_fixtures import exported_gradient_bundle  # noqa: E402
from .test_nodes import policy_diagnostics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

EPISODE_STEPS = 8


def test_gradient_bundle_adapts_after_its_episodes(tmp_path_factory, tmp_path):
    bundle = exported_gradient_bundle(tmp_path_factory, "maml")
    manifest = json.loads((bundle / "manifest.json").read_text())
    episodes_per_step = manifest["adaptation"]["episodes_per_step"]
    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": 40.0},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "episode_steps": EPISODE_STEPS},
    }
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=bundle, overrides=overrides, log_dir=tmp_path) as graph:
        diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)
        results = graph.collect(String, f"/{SIM_ROBOT_NODE_NAME}/episode_result")

        def values() -> dict:
            return policy_diagnostics(diagnostics)[2]

        assert graph.spin_until(lambda: values().get("adaptation_family") == "gradient", 10.0), values()
        assert graph.spin_until(lambda: int(values().get("adaptation_steps", "0")) >= 1, 60.0), values()
        # No step before the last of its episodes, and no batch left waiting after it: in every status
        # the node published (once a second, whatever the timing), the closed episodes waiting for a step
        # are fewer than a step takes, and none was published with a step before the first batch ended.
        statuses = [policy_diagnostics([array])[2] for array in diagnostics]
        statuses = [s for s in statuses if "episodes_ready" in s]
        assert statuses, "the node published no adaptation status"
        assert all(int(s["episodes_ready"]) < episodes_per_step for s in statuses), statuses
        assert len(results) >= episodes_per_step
        level, message, status = policy_diagnostics(diagnostics)
        assert status["episodes_per_step"] == str(episodes_per_step)
        assert status["last_error"] == "", status["last_error"]
        assert int(status["rewards_missing"]) == 0

        # Frozen adaptation sends the mean action: no more steps however many episodes end.
        assert graph.set_bool(f"/{POLICY_NODE_NAME}/set_adaptation", False).success
        # Diagnostics come once a second: read the count from one published after the switch.
        assert graph.spin_until(lambda: values().get("adaptation_enabled") == "false", 5.0), values()
        seen = len(diagnostics)
        graph.spin_until(lambda: len(diagnostics) > seen, 3.0)
        steps = int(values()["adaptation_steps"])
        count = len(results)
        assert graph.spin_until(lambda: len(results) >= count + episodes_per_step + 1, 60.0)
        seen = len(diagnostics)
        graph.spin_until(lambda: len(diagnostics) > seen, 3.0)
        assert int(values()["adaptation_steps"]) == steps
