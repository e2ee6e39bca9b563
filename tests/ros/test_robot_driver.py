"""The policy node as a robot driver sees it: an independent rclpy client publishes joint states and
poses at rate, stops, injects NaNs, shuffles joint order and drives the standard lifecycle services.

The node runs as a child process (``ros_nodes.graph``) on this session's DDS domain; this process
plays the robot. The tests share one node and run in file order.
"""

import math

import numpy as np
import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from ros_nodes import POLICY_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, GraphError, NodeGraph  # noqa: E402

from .conftest import PANDA_JOINTS  # noqa: E402
from .test_nodes import policy_diagnostics  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

RATE_HZ = 50.0
MAX_OBS_AGE_S = 0.2
POLICY = f"/{POLICY_NODE_NAME}"
ERROR, OK, WARN = DiagnosticStatus.ERROR[0], DiagnosticStatus.OK[0], DiagnosticStatus.WARN[0]


class FakeRobot:
    """Publishes a Panda's joint states and the end-effector/object poses at 100 Hz, stamped now.

    ``names`` and the per-joint ``position``/``effort`` dictionaries say what is published; ``order``
    permutes the joints in the message (values follow their names); ``paused`` stops publishing.
    """

    def __init__(self, graph: NodeGraph, prefix: str = "") -> None:
        node = graph.node
        self.clock = node.get_clock()
        self.joint_pub = node.create_publisher(JointState, f"{prefix}joint_states", qos_profile_sensor_data)
        self.ee_pub = node.create_publisher(PoseStamped, f"{prefix}ee_pose", qos_profile_sensor_data)
        self.object_pub = node.create_publisher(PoseStamped, f"{prefix}object_pose", qos_profile_sensor_data)
        self.names = list(PANDA_JOINTS)
        self.position = {name: 0.1 * i for i, name in enumerate(PANDA_JOINTS)}
        self.position.update(panda_finger_joint1=0.012, panda_finger_joint2=0.031)
        self.effort = {name: 0.0 for name in PANDA_JOINTS}
        self.effort.update(panda_finger_joint1=1.5, panda_finger_joint2=7.0)
        self.order = list(range(len(self.names)))
        self.short_effort = False
        self.paused = False
        self.last_stamp_s = math.nan
        self.stamps: set[tuple[int, int]] = set()
        """Every stamp published, as (sec, nanosec)."""
        node.create_timer(0.01, self.publish)

    def publish(self) -> None:
        if self.paused:
            return
        now = self.clock.now()
        stamp = now.to_msg()
        names = [self.names[i] for i in self.order]
        msg = JointState(name=names, position=[self.position.get(n, 0.0) for n in names],
                         velocity=[0.0] * len(names), effort=[self.effort.get(n, 0.0) for n in names])
        if self.short_effort:
            msg.effort = msg.effort[:-1]
        msg.header.stamp = stamp
        self.stamps.add((stamp.sec, stamp.nanosec))
        self.joint_pub.publish(msg)
        for pub, xyz in ((self.ee_pub, (0.45, 0.02, 0.25)), (self.object_pub, (0.5, -0.03, 0.02))):
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = stamp, "world"
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = xyz
            pose.pose.orientation.w = 1.0
            pub.publish(pose)
        self.last_stamp_s = now.nanoseconds * 1e-9


def linear(msg: TwistStamped) -> tuple[float, float, float]:
    return (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z)


class Recorder(list):
    """A list whose ``append`` also records the receive time (a collect() target)."""

    def __init__(self, clock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    def append(self, msg) -> None:  # type: ignore[override]
        self.times.append(self.clock.now().nanoseconds * 1e-9)
        super().append(msg)

    def clear(self) -> None:  # type: ignore[override]
        self.times.clear()
        super().clear()


@pytest.fixture(scope="module")
def robot_graph(tiny_bundle, tmp_path_factory):
    overrides = {POLICY_NODE_NAME: {
        "control_rate_hz": RATE_HZ, "max_obs_age_s": MAX_OBS_AGE_S, "joint_state_timeout_s": 3.0,
    }}
    graph = NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=tiny_bundle, overrides=overrides, start_robot=False,
                      activate=False, log_dir=tmp_path_factory.mktemp("robot_driver_logs"))
    with graph:
        graph.robot = FakeRobot(graph)
        clock = graph.node.get_clock()
        graph.twists = Recorder(clock)
        graph.node.create_subscription(TwistStamped, "cmd_twist", graph.twists.append, 100)
        graph.grips = graph.collect(Float64MultiArray, "gripper_command")
        graph.diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)
        yield graph


def wait_for_diagnostics(graph: NodeGraph, predicate, timeout_s: float = 5.0) -> tuple[int, str, dict]:
    graph.spin_until(lambda: predicate(*policy_diagnostics(graph.diagnostics)), timeout_s)
    return policy_diagnostics(graph.diagnostics)


def available_transitions(graph: NodeGraph) -> set[str]:
    response = graph.call(GetAvailableTransitions, f"{POLICY}/get_available_transitions")
    return {t.transition.label for t in response.available_transitions}


def test_configure_fails_naming_the_joints_when_the_robot_has_other_joints(robot_graph):
    graph = robot_graph
    robot = graph.robot
    robot.names = [name.replace("panda_finger", "fr3_finger") for name in PANDA_JOINTS]
    with pytest.raises(GraphError, match="configure"):
        graph.change_state("configure")
    assert graph.lifecycle_state() == "unconfigured"
    level, message, values = wait_for_diagnostics(graph, lambda level, message, values: "contract" in message)
    assert level == ERROR, message
    assert "panda_finger_joint1" in message and "panda_finger_joint2" in message and "missing" in message, message
    robot.names = list(PANDA_JOINTS)


def test_lifecycle_transitions_through_the_standard_services(robot_graph):
    graph = robot_graph
    assert "configure" in available_transitions(graph)
    graph.change_state("configure")
    assert graph.lifecycle_state() == "inactive"
    assert {"activate", "cleanup"} <= available_transitions(graph)
    graph.twists.clear()
    graph.spin_for(0.5)
    assert not graph.twists, "an inactive node published commands"

    graph.change_state("activate")
    assert graph.lifecycle_state() == "active"
    assert graph.spin_until(lambda: len(graph.twists) >= 10, 5.0), "no commands while active"
    assert any(any(v != 0.0 for v in linear(m)) for m in graph.twists), "only zero commands from an active policy"

    graph.change_state("deactivate")
    assert graph.lifecycle_state() == "inactive"
    graph.spin_for(0.2)
    assert linear(graph.twists[-1]) == (0.0, 0.0, 0.0), "deactivate did not end with a hold command"
    graph.change_state("cleanup")
    assert graph.lifecycle_state() == "unconfigured"
    graph.change_state("configure")
    graph.change_state("activate")
    assert graph.lifecycle_state() == "active"
    # The tests below read commands for fixed inputs: freeze the context.
    assert graph.set_bool(f"{POLICY}/set_adaptation", False).success


def test_shuffled_joint_order_gives_identical_commands(robot_graph):
    graph, robot = robot_graph, robot_graph.robot

    def commands(seconds: float = 0.6) -> set[tuple[float, float, float]]:
        graph.spin_for(0.2)  # let inputs of the previous phase drain
        graph.twists.clear()
        graph.spin_for(seconds)
        assert len(graph.twists) >= 5
        return {linear(m) for m in graph.twists}

    in_order = commands()
    assert len(in_order) == 1, f"constant inputs gave varying commands: {in_order}"
    robot.order = list(reversed(range(len(PANDA_JOINTS))))
    assert commands() == in_order, "reversing the joint order changed the commands"
    robot.order = [3, 8, 0, 5, 7, 1, 6, 2, 4]
    assert commands() == in_order, "shuffling the joint order changed the commands"

    # The same check would catch a node that read joints by position: swapping the fingers'
    # values under the same names changes the commands.
    robot.order = list(range(len(PANDA_JOINTS)))
    p1, p2 = robot.position["panda_finger_joint1"], robot.position["panda_finger_joint2"]
    e1, e2 = robot.effort["panda_finger_joint1"], robot.effort["panda_finger_joint2"]
    robot.position.update(panda_finger_joint1=p2, panda_finger_joint2=p1)
    robot.effort.update(panda_finger_joint1=e2, panda_finger_joint2=e1)
    swapped = commands()
    robot.position.update(panda_finger_joint1=p1, panda_finger_joint2=p2)
    robot.effort.update(panda_finger_joint1=e1, panda_finger_joint2=e2)
    assert swapped != in_order, "the policy ignores the finger values; the order test above proves nothing"
    assert commands() == in_order


def test_commands_are_the_policy_on_the_observation_built_by_joint_name(robot_graph, tiny_bundle):
    """A known answer for the node's joint mapping: with the context at its initial value, the command
    is the bundle's policy on the observation written out here by hand from the layout (ee position,
    object position, finger positions, finger efforts, fingers by name). Swapping two joints anywhere
    on the node's path, consistently, changes the command, which the order tests above cannot see."""
    import sim
    from std_srvs.srv import Trigger

    from metarl_robot.runtime import AdaptiveController

    graph, robot = robot_graph, robot_graph.robot
    assert [(e["name"], e.get("joints")) for e in sim.INTERFACE["observation_layout"]] == [
        ("ee_position", None), ("object_position", None),
        ("finger_position", ["panda_finger_joint1", "panda_finger_joint2"]),
        ("finger_effort", ["panda_finger_joint1", "panda_finger_joint2"]),
    ]
    robot.order = [3, 8, 0, 5, 7, 1, 6, 2, 4]
    assert graph.call(Trigger, f"{POLICY}/reset_adaptation").success
    graph.spin_for(0.3)
    graph.twists.clear()
    graph.spin_for(0.5)
    sent = {linear(m) for m in graph.twists}
    robot.order = list(range(len(PANDA_JOINTS)))
    assert len(sent) == 1, sent

    obs = np.array([0.45, 0.02, 0.25,  # FakeRobot's ee_pose
                    0.5, -0.03, 0.02,  # its object_pose
                    robot.position["panda_finger_joint1"], robot.position["panda_finger_joint2"],
                    robot.effort["panda_finger_joint1"], robot.effort["panda_finger_joint2"]], dtype=np.float32)
    assert robot.position["panda_finger_joint1"] != robot.position["panda_finger_joint2"]
    assert robot.effort["panda_finger_joint1"] != robot.effort["panda_finger_joint2"]
    controller = AdaptiveController.load(tiny_bundle, ["cpu"])
    action = sim.INTERFACE["action"]
    expected = np.clip(controller.act(obs), action["low"], action["high"])[:3]
    np.testing.assert_allclose(next(iter(sent)), expected, rtol=1e-6, atol=1e-9)
    swapped = obs[[0, 1, 2, 3, 4, 5, 7, 6, 9, 8]]
    other = np.clip(controller.act(swapped), action["low"], action["high"])[:3]
    assert np.abs(other - expected).max() > 1e-4, "the policy cannot tell the fingers apart: the check is blind"


def test_stale_input_holds_within_max_obs_age(robot_graph):
    graph, robot = robot_graph, robot_graph.robot
    graph.spin_for(0.3)
    assert any(v != 0.0 for v in linear(graph.twists[-1])), "expected a moving command before the stop"
    robot.paused = True
    graph.spin_for(0.02)
    last_stamp = robot.last_stamp_s
    graph.twists.clear()
    assert graph.spin_until(lambda: any(linear(m) == (0.0, 0.0, 0.0) for m in graph.twists), 3.0), "no hold"
    first_hold = next(i for i, m in enumerate(graph.twists) if linear(m) == (0.0, 0.0, 0.0))
    delay = graph.twists.times[first_hold] - last_stamp
    # Held once the newest input is older than max_obs_age_s: at the first control tick after that,
    # plus delivery. Not before.
    assert MAX_OBS_AGE_S <= delay <= MAX_OBS_AGE_S + 2.0 / RATE_HZ + 0.05, f"hold after {delay:.3f} s"
    assert all(any(v != 0.0 for v in linear(m)) for m in graph.twists[:first_hold])
    level, message, values = wait_for_diagnostics(graph, lambda level, message, values: "stale" in message)
    assert level == ERROR and "stale" in message, message
    assert "stale" in values["hold_reason"]

    graph.twists.clear()
    graph.spin_for(0.3)
    assert all(linear(m) == (0.0, 0.0, 0.0) for m in graph.twists), "commanded from stale data"
    robot.paused = False
    assert graph.spin_until(lambda: any(any(v != 0.0 for v in linear(m)) for m in graph.twists), 3.0), \
        "did not recover when fresh data returned"
    level, message, _ = wait_for_diagnostics(graph, lambda level, message, values: level != ERROR)
    assert level in (OK, WARN), message


@pytest.mark.parametrize("fault", ["nan_effort", "short_effort", "missing_joint"])
def test_bad_input_holds_reports_error_and_recovers(robot_graph, fault):
    graph, robot = robot_graph, robot_graph.robot
    graph.spin_for(0.3)
    expected = {"nan_effort": "non_finite", "short_effort": "bad_size", "missing_joint": "missing_joint"}[fault]
    if fault == "nan_effort":
        robot.effort["panda_finger_joint2"] = float("nan")
    elif fault == "short_effort":
        robot.short_effort = True
    else:
        robot.names = [n for n in PANDA_JOINTS if n != "panda_finger_joint1"]
        robot.order = list(range(len(robot.names)))
    graph.spin_for(0.15)
    graph.twists.clear()
    graph.spin_for(0.3)
    assert graph.twists and all(linear(m) == (0.0, 0.0, 0.0) for m in graph.twists), f"no hold on {fault}"
    level, message, values = wait_for_diagnostics(graph, lambda level, message, values: expected in message)
    assert level == ERROR and expected in message, (level, message)

    robot.effort["panda_finger_joint2"] = 7.0
    robot.short_effort = False
    robot.names = list(PANDA_JOINTS)
    robot.order = list(range(len(PANDA_JOINTS)))
    assert graph.spin_until(lambda: any(v != 0.0 for v in linear(graph.twists[-1])), 3.0), f"no recovery after {fault}"
    level, message, _ = wait_for_diagnostics(graph, lambda level, message, values: level != ERROR)
    assert level in (OK, WARN), message


def test_input_to_command_latency_is_measurable_from_header_stamps(robot_graph):
    graph = robot_graph
    graph.twists.clear()
    graph.spin_for(0.5)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in graph.twists]
    latency = np.array(graph.twists.times) - np.array(stamps)
    # The stamp is the input's (at most one publishing period, 10 ms, plus one control period old
    # when the command leaves), never a time after the command was received.
    assert (latency > 0).all() and np.median(latency) < 0.01 + 1.0 / RATE_HZ + 0.05, latency


def test_a_command_carries_the_stamp_of_its_input_bit_for_bit(robot_graph):
    """A driver matches commands to the state they answer by stamp: no float round trip may move it.
    The robot's stamps are the clock's own nanoseconds, which seconds-as-float cannot all hold exactly."""
    graph = robot_graph
    graph.twists.clear()
    graph.spin_for(0.5)
    moving = [m for m in graph.twists if linear(m) != (0.0, 0.0, 0.0)]
    assert len(moving) >= 10
    foreign = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in moving
               if (m.header.stamp.sec, m.header.stamp.nanosec) not in graph.robot.stamps]
    assert not foreign, f"{len(foreign)} of {len(moving)} command stamps match no published stamp, e.g. {foreign[:3]}"


def test_shutdown_finalizes_with_a_hold(robot_graph):
    graph = robot_graph
    count = len(graph.twists)
    request = ChangeState.Request()
    request.transition.id = Transition.TRANSITION_ACTIVE_SHUTDOWN
    assert graph.call(ChangeState, f"{POLICY}/change_state", request).success
    assert graph.lifecycle_state() == "finalized"
    # The hold may take a while to arrive on a loaded machine (a fixed 0.3 s failed with four processes
    # on two cores): wait for it, then require it to be the last command.
    graph.spin_until(lambda: len(graph.twists) > count and linear(graph.twists[-1]) == (0.0, 0.0, 0.0), 5.0)
    graph.spin_for(0.3)
    assert len(graph.twists) > count and linear(graph.twists[-1]) == (0.0, 0.0, 0.0)
    settled = len(graph.twists)
    graph.spin_for(0.3)
    assert len(graph.twists) == settled, "commands after shutdown"


def test_trigger_joint_states_steps_once_per_joint_state_and_holds_when_the_stream_stops(tiny_bundle, tmp_path):
    max_age = 0.2
    overrides = {POLICY_NODE_NAME: {
        "control_rate_hz": 200.0, "trigger": "joint_states", "max_obs_age_s": max_age, "joint_state_timeout_s": 3.0,
    }}
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=tiny_bundle, overrides=overrides, start_robot=False,
                   log_dir=tmp_path, namespace="/trigger_test") as graph:
        robot = FakeRobot(graph, "/trigger_test/")  # 100 Hz, under the 200 Hz bound: the stream sets the rate
        twists = Recorder(graph.node.get_clock())
        graph.node.create_subscription(TwistStamped, "/trigger_test/cmd_twist", twists.append, 100)
        graph.spin_for(1.0)
        twists.clear()
        graph.spin_for(2.0)
        rate = len(twists) / 2.0
        assert 70.0 <= rate <= 115.0, f"{rate:.0f} commands/s for 100 joint states/s"
        # Each command answers one joint state: its stamp is that state's, and no two share one.
        stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in twists]
        assert len(set(stamps)) == len(stamps)

        robot.paused = True
        graph.spin_for(0.02)
        last_stamp = robot.last_stamp_s
        twists.clear()
        assert graph.spin_until(lambda: any(linear(m) == (0.0, 0.0, 0.0) for m in twists), 3.0), "no hold"
        first_hold = next(i for i, m in enumerate(twists) if linear(m) == (0.0, 0.0, 0.0))
        delay = twists.times[first_hold] - last_stamp
        # The watchdog runs every max(1/200 s, max_age/4) = 50 ms.
        assert max_age <= delay <= max_age + max_age / 4 + 0.06, f"hold after {delay:.3f} s"
        robot.paused = False
        assert graph.spin_until(lambda: any(any(v != 0.0 for v in linear(m)) for m in twists[first_hold:]), 3.0)
