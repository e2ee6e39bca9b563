"""The full grasp loop over DDS with the shipped meta-policy: the simulated object is swapped mid-run,
without telling the policy node, and the node adapts its context on the new object's episodes.

The same run with adaptation switched off at the swap is the baseline: grasping the new object with
the context adapted to the old one. bench/ros_object_swap.py runs both over five placement seeds
(figures in BENCHMARKS.md); this test runs seed 2, where adapting grasps B in 4 of its episodes 3-8
and frozen in none, run after run.
"""

import json

import pytest

pytest.importorskip("rclpy")

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

from .test_nodes import policy_diagnostics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

OBJECT_A, OBJECT_B = 0, 11
EPISODES_A, EPISODES_B = 3, 8
SEED = 2


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    from metarl_robot.export import export_bundle
    from ros_nodes.graph import REPO_ROOT

    return export_bundle(REPO_ROOT / "models" / "grasp_context_ppo" / "checkpoint.safetensors",
                         tmp_path_factory.mktemp("shipped") / "bundle")


def run_swap(bundle, log_dir, adapt_on_b: bool) -> tuple[list[dict], int, dict]:
    """Episodes on A, then B mid-run; returns the episodes, adaptation steps taken on B, last diagnostics."""
    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": 60.0},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "task_index": OBJECT_A, "seed": SEED},
    }
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=bundle, overrides=overrides, log_dir=log_dir) as graph:
        results = graph.collect(String, f"/{SIM_ROBOT_NODE_NAME}/episode_result")
        diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)

        def adaptations() -> int:
            seen = len(diagnostics)
            graph.spin_until(lambda: len(diagnostics) > seen, 3.0)
            return int(policy_diagnostics(diagnostics)[2].get("adaptation_steps", "0"))

        assert graph.spin_until(lambda: len(results) >= EPISODES_A, 120.0), "object A: episodes did not end"
        if not adapt_on_b:
            assert graph.set_bool(f"/{POLICY_NODE_NAME}/set_adaptation", False).success
        # Mid-run: the sim swaps object and dynamics at its next episode reset; the node is not told.
        assert graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": OBJECT_B})[0].successful
        before_b = adaptations()
        assert graph.spin_until(
            lambda: sum(json.loads(m.data)["task_index"] == OBJECT_B for m in results) >= EPISODES_B, 240.0
        ), "object B: episodes did not end"
        episodes = [json.loads(m.data) for m in results]
        after_b = adaptations()
        return episodes, after_b - before_b, policy_diagnostics(diagnostics)[2]


def test_object_swap_mid_run_the_node_adapts_and_grasps_again(shipped_bundle, tmp_path):
    episodes, adapted, values = run_swap(shipped_bundle, tmp_path / "adapting", adapt_on_b=True)
    on_a = [e for e in episodes if e["task_index"] == OBJECT_A][:EPISODES_A]
    on_b = [e for e in episodes if e["task_index"] == OBJECT_B][:EPISODES_B]
    assert sum(e["success"] for e in on_a) >= 2, on_a
    assert values["last_error"] == "", values["last_error"]
    # One adaptation per episode end on B (the last one may land after the diagnostics message).
    assert adapted >= EPISODES_B - 1, adapted
    # From the 3rd episode on, the context buffer holds only B's transitions.
    recovered = sum(e["success"] for e in on_b[2:])

    frozen_episodes, frozen_adapted, _ = run_swap(shipped_bundle, tmp_path / "frozen", adapt_on_b=False)
    frozen_b = [e for e in frozen_episodes if e["task_index"] == OBJECT_B][:EPISODES_B]
    frozen = sum(e["success"] for e in frozen_b[2:])
    assert frozen_adapted == 0, frozen_adapted
    assert recovered >= 3 and recovered >= frozen + 2, (
        f"B after adapting: {[e['success'] for e in on_b]}; frozen at A's context: {[e['success'] for e in frozen_b]}"
    )
