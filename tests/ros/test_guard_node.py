"""The adaptation guard in the policy node, as a robot driver sees it: an independent client plays a
point mass that goes where the node commands it and publishes minus its distance to a goal as the
reward. The bundle's inner step is ten times too long, so its first adaptation makes every episode
worse; the node rolls it back, says so in diagnostics, stops adapting, and adapts again after
``~/reset_adaptation``."""

import numpy as np
import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64, Float64MultiArray  # noqa: E402

from ros_nodes import POLICY_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

from ..runtime.gradient_fixtures import OVERSHOOT, exported_gradient_bundle  # noqa: E402
from .test_nodes import policy_diagnostics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

WARN = DiagnosticStatus.WARN[0]
GOAL = np.array([0.3, -0.2])
EPISODE_STEPS = OVERSHOOT.max_episode_steps


class PointMass:
    """Publishes the position as joint states x, y; on each joint command moves to it, publishes the
    reward, and every ``EPISODE_STEPS`` commands ends the episode and starts again from the origin.
    One joint state per command (the node steps on each joint state), so the exchange is in lockstep."""

    def __init__(self, graph: NodeGraph) -> None:
        node = graph.node
        self.clock = node.get_clock()
        self.state_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        self.reward_pub = node.create_publisher(Float64, "reward", QoSProfile(depth=100))
        self.end_pub = node.create_publisher(Bool, "episode_end", 10)
        node.create_subscription(Float64MultiArray, "joint_command", self.on_command, 10)
        self.position = np.zeros(2)
        self.step = 0
        self.episode_return = 0.0
        self.returns: list[float] = []
        self.waiting_since = -1.0
        node.create_timer(0.01, self.publish)

    def now_s(self) -> float:
        return self.clock.now().nanoseconds * 1e-9

    def publish(self) -> None:
        now = self.now_s()
        if self.waiting_since >= 0 and now - self.waiting_since < 0.5:
            return  # the command for the last state has not come yet (resend after 0.5 s)
        msg = JointState(name=["x", "y"], position=self.position.tolist(), velocity=[0.0, 0.0], effort=[0.0, 0.0])
        msg.header.stamp = self.clock.now().to_msg()
        self.waiting_since = now
        self.state_pub.publish(msg)

    def on_command(self, msg: Float64MultiArray) -> None:
        if self.waiting_since < 0:
            return
        self.position = np.asarray(msg.data, dtype=np.float64)
        reward = -float(np.linalg.norm(self.position - GOAL))
        self.reward_pub.publish(Float64(data=reward))
        self.episode_return += reward
        self.step += 1
        if self.step == EPISODE_STEPS:
            self.end_pub.publish(Bool(data=False))
            self.returns.append(self.episode_return)
            self.position, self.step, self.episode_return = np.zeros(2), 0, 0.0
        self.waiting_since = -1.0


def test_the_node_rolls_back_an_adaptation_that_made_the_robot_worse(tmp_path_factory, tmp_path):
    bundle = exported_gradient_bundle(tmp_path_factory, "cavia_overshoot")
    size = OVERSHOOT.episodes_per_step
    overrides = {POLICY_NODE_NAME: {"trigger": "joint_states", "control_rate_hz": 10.0, "max_obs_age_s": 1.0,
                                    "joint_state_timeout_s": 3.0, "seed": 0, "execution_providers": ["cpu"]}}
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=bundle, overrides=overrides, start_robot=False,
                   log_dir=tmp_path) as graph:
        robot = PointMass(graph)
        diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)

        def values() -> dict:
            return policy_diagnostics(diagnostics)[2]

        assert graph.spin_until(lambda: values().get("guard_rollbacks") == "1", 60.0), (values(), robot.returns)
        level, message, status = policy_diagnostics(diagnostics)
        assert level == WARN and message.startswith("rolled back adaptation 1: the return per episode fell from ")
        assert status["guard"] == "stopped" and status["guard_event"] == message
        assert (status["guard_signal"], status["guard_max_drop"], status["guard_validated_steps"]) == \
            ("return", "0.3", "3")
        assert status["adaptation_steps"] == "1" and status["guard_steps"] == "0"
        # What the driver saw: the window after the adaptation lost more than the allowed drop.
        before, after = np.mean(robot.returns[:size]), np.mean(robot.returns[size:2 * size])
        assert after < before - 0.3, robot.returns
        assert float(status["guard_baseline"]) == pytest.approx(before, abs=1e-3)
        assert float(status["guard_last_score"]) == pytest.approx(after, abs=1e-3)

        # Stopped: windows go by without another adaptation.
        count = len(robot.returns)
        assert graph.spin_until(lambda: len(robot.returns) >= count + 2 * size + 1, 60.0)
        seen = len(diagnostics)
        graph.spin_until(lambda: len(diagnostics) > seen, 3.0)
        assert values()["adaptation_steps"] == "1" and values()["guard"] == "stopped"

        # A new task: the guard watches again and the node adapts again.
        assert graph.trigger(f"/{POLICY_NODE_NAME}/reset_adaptation").success
        assert graph.spin_until(lambda: int(values().get("adaptation_steps", "0")) >= 2, 60.0), values()
