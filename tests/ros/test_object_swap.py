"""The full grasp loop over DDS with the shipped meta-policy: the simulated object is swapped mid-run,
without telling the policy node, and the node adapts its context on the new object's episodes.

Both objects are drawn at random from the test split (the seed is printed; METARL_SWAP_SEED repeats a
run). The same run with adaptation switched off at the swap is the baseline. The test holds the
mechanics: the node adapts once per episode end on the new object, never while frozen, reports no
error, and its adapted behaviour differs from the frozen one. It asserts no success margin: on
objects drawn at random the shipped policy has none over its frozen self (BENCHMARKS.md measures
that over the whole split with confidence intervals, which one run of a few episodes cannot).
"""

import json
import os
import secrets

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

from .test_nodes import policy_diagnostics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

EPISODES_A, EPISODES_B = 3, 6
SWAP_SEED = int(os.environ.get("METARL_SWAP_SEED", secrets.randbelow(2**31)))
SEED = SWAP_SEED % 1000
"""Placement seed of the sim robot."""


def _draw_objects() -> tuple[int, int]:
    import numpy as np

    from sim import default_grasp_distribution

    count = len(default_grasp_distribution().test_tasks)
    first, second = np.random.default_rng(SWAP_SEED).choice(count, size=2, replace=False)
    return int(first), int(second)


OBJECT_A, OBJECT_B = _draw_objects()


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
        # The context policy was trained on the demo distribution's spheres with 30-step attempts.
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "task_index": OBJECT_A, "seed": SEED, "distribution": "demo",
                              "episode_steps": 30},
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


def test_object_swap_mid_run_the_node_adapts_on_the_new_object(shipped_bundle, tmp_path):
    print(f"object swap: seed {SWAP_SEED} (METARL_SWAP_SEED={SWAP_SEED} repeats it): test objects "
          f"{OBJECT_A} -> {OBJECT_B}, placement seed {SEED}")
    episodes, adapted, values = run_swap(shipped_bundle, tmp_path / "adapting", adapt_on_b=True)
    on_a = [e for e in episodes if e["task_index"] == OBJECT_A][:EPISODES_A]
    on_b = [e for e in episodes if e["task_index"] == OBJECT_B][:EPISODES_B]
    assert len(on_a) == EPISODES_A and len(on_b) == EPISODES_B
    assert values["last_error"] == "", values["last_error"]
    # One adaptation per episode end on B (the last one may land after the diagnostics message).
    assert adapted >= EPISODES_B - 1, adapted

    frozen_episodes, frozen_adapted, _ = run_swap(shipped_bundle, tmp_path / "frozen", adapt_on_b=False)
    frozen_b = [e for e in frozen_episodes if e["task_index"] == OBJECT_B][:EPISODES_B]
    assert frozen_adapted == 0, frozen_adapted
    # From the 3rd episode on, the adapting node's context comes from B's transitions only, the frozen
    # one's from A's: the two must act differently on B.
    assert [e["return"] for e in on_b[2:]] != [e["return"] for e in frozen_b[2:]], (on_b, frozen_b)
    print(f"success on B, adapting: {[e['success'] for e in on_b]}; frozen: {[e['success'] for e in frozen_b]}")
