"""The policy node and the simulated robot talking over real DDS on loopback (the session's own domain).

Two tests run a policy node in process (one against a hand-made robot), one runs
``python -m ros_nodes.graph`` and stops it, then one graph (both nodes as child processes, lockstep
simulation at 20 Hz) serves the remaining tests, which run in file order.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
from ros_nodes.graph import policy_status as policy_diagnostics  # noqa: E402,F401  (used by the other ROS tests)

from .conftest import PANDA_JOINTS  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.sim,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*"),
]

RATE_HZ = 20.0
EPISODE_STEPS = 8
POLICY = f"/{POLICY_NODE_NAME}"
SIM = f"/{SIM_ROBOT_NODE_NAME}"


def test_parameter_checks_give_reasons():
    from ros_nodes.policy_node import check_parameter

    assert check_parameter("control_rate_hz", 0.0) is None
    assert "control_rate_hz" in check_parameter("control_rate_hz", -5.0)
    assert check_parameter("execution_providers", ["cuda", "cpu"]) is None  # falls back to CPU here
    assert "warp_drive" in check_parameter("execution_providers", ["warp_drive"])
    assert "execution_providers" in check_parameter("execution_providers", [])
    assert "max_grip_force_n" in check_parameter("max_grip_force_n", float("nan"))
    assert "robot_joint_names" in check_parameter("robot_joint_names", ["a", "a"])


def test_inline_task_yaml():
    from metarl_robot.tasks import TaskError
    from ros_nodes.sim_robot_node import parse_task_yaml

    task = parse_task_yaml(
        "{object_shape: sphere, object_size_m: 0.04, object_mass_kg: 0.2, lateral_friction: 0.8, crush_force_n: 20}"
    )
    assert task.family == "grasp" and task.task_id == "inline" and task["object_mass_kg"] == 0.2
    with pytest.raises(TaskError, match="object_mass_kg"):
        parse_task_yaml("{object_shape: sphere}")
    with pytest.raises(TaskError, match="mapping"):
        parse_task_yaml("[1, 2]")


# ----------------------------------------------------------------------------- in-process node tests


@pytest.fixture
def ros_context():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    yield context
    rclpy.try_shutdown(context=context)


def test_configure_fails_with_a_reason_when_the_bundle_does_not_load(ros_context, tmp_path):
    from ros_nodes.policy_node import PolicyNode

    node = PolicyNode(
        "metarl_policy_node_missing_bundle",
        namespace="/configure_test",
        context=ros_context,
        parameter_overrides=[Parameter("bundle_path", value=str(tmp_path / "nowhere"))],
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "does not exist" in node._configure_error
    finally:
        node.destroy_node()


def test_trusted_keys_refuse_unsigned_bundles_at_configure(ros_context, tiny_bundle, tmp_path):
    import shutil

    from metarl_robot.runtime import load_bundle
    from metarl_robot.runtime.integrity import generate_key_pair, sign_bundle
    from ros_nodes.policy_node import PolicyNode

    private, public = generate_key_pair(tmp_path / "keys")
    signed = Path(shutil.copytree(tiny_bundle, tmp_path / "signed"))
    sign_bundle(load_bundle(signed), private)
    for bundle, outcome in ((tiny_bundle, TransitionCallbackReturn.FAILURE), (signed, TransitionCallbackReturn.SUCCESS)):
        node = PolicyNode("metarl_policy_node_trust", namespace="/trust_test", context=ros_context,
                          parameter_overrides=[Parameter("bundle_path", value=str(bundle)),
                                               Parameter("joint_state_timeout_s", value=0.0),
                                               Parameter("trusted_keys", value=[str(public)])])
        try:
            assert not node.set_parameters([Parameter("trusted_keys", value=[])])[0].successful  # read-only
            assert node.trigger_configure() == outcome
            refused = outcome == TransitionCallbackReturn.FAILURE
            assert ("not signed" in (node._configure_error or "")) == refused, node._configure_error
        finally:
            node.destroy_node()


def test_missing_joint_is_an_error_diagnostic_and_a_hold(ros_context, tiny_bundle):
    from ros_nodes.policy_node import PolicyNode

    name = "metarl_policy_node_contract"
    # A namespace of its own keeps this fake robot apart from any other graph on the test domain.
    policy = PolicyNode(name, namespace="/contract_test", context=ros_context, parameter_overrides=[
        Parameter("bundle_path", value=str(tiny_bundle)), Parameter("control_rate_hz", value=20.0),
    ])
    robot = rclpy.create_node("fake_robot_without_fingers", namespace="/contract_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(policy)
    executor.add_node(robot)
    joint_pub = robot.create_publisher(JointState, "joint_states", 10)
    pose_pubs = [robot.create_publisher(PoseStamped, topic, 10) for topic in ("ee_pose", "object_pose")]
    twists, diagnostics = [], []
    robot.create_subscription(TwistStamped, "cmd_twist", twists.append, 10)
    robot.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    arm_only = [j for j in PANDA_JOINTS if "finger" not in j]

    def publish_robot_state() -> None:
        stamp = robot.get_clock().now().to_msg()
        msg = JointState(name=arm_only, position=[0.0] * 7, velocity=[0.0] * 7, effort=[0.0] * 7)
        msg.header.stamp = stamp
        joint_pub.publish(msg)
        for pub in pose_pubs:
            pose = PoseStamped()
            pose.header.stamp = stamp
            pose.pose.orientation.w = 1.0
            pub.publish(pose)

    robot.create_timer(0.05, publish_robot_state)
    try:
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS

        def reported() -> bool:
            ours = [a for a in diagnostics if a.status[0].name.startswith(f"{name}:")]
            return bool(ours) and ours[-1].status[0].level == DiagnosticStatus.ERROR and len(twists) >= 3

        end = time.monotonic() + 15.0
        while not reported() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert reported(), "no ERROR diagnostic for the missing finger joints"
        status = [a for a in diagnostics if a.status[0].name.startswith(f"{name}:")][-1].status[0]
        assert "panda_finger_joint1" in status.message and "panda_finger_joint2" in status.message
        assert all((t.twist.linear.x, t.twist.linear.y, t.twist.linear.z) == (0.0, 0.0, 0.0) for t in twists)
    finally:
        executor.shutdown()
        policy.destroy_node()
        robot.destroy_node()


def test_joint_space_bundle_commands_joints_by_name(ros_context, point_bundle):
    from ros_nodes.policy_node import PolicyNode

    policy = PolicyNode("metarl_policy_node_joint", namespace="/joint_test", context=ros_context,
                        parameter_overrides=[Parameter("bundle_path", value=str(point_bundle))])
    robot = rclpy.create_node("fake_point_robot", namespace="/joint_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(policy)
    executor.add_node(robot)
    joint_pub = robot.create_publisher(JointState, "joint_states", 10)
    commands = []
    robot.create_subscription(Float64MultiArray, "joint_command", commands.append, 10)

    def publish_joint_state() -> None:
        msg = JointState(name=["y", "x"], position=[0.2, -0.1])  # not the bundle's joint order
        msg.header.stamp = robot.get_clock().now().to_msg()
        joint_pub.publish(msg)

    robot.create_timer(0.05, publish_joint_state)
    try:
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        end = time.monotonic() + 10.0
        while len(commands) < 3 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert len(commands) >= 3
        assert all(len(c.data) == 2 and max(abs(v) for v in c.data) <= 0.1 + 1e-6 for c in commands)
        assert policy.count_publishers("/joint_test/cmd_twist") == 0
        assert policy.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        count = len(commands)
        end = time.monotonic() + 5.0
        while len(commands) == count and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert list(commands[-1].data) == [0.0, 0.0], "deactivating must stop the joints"
    finally:
        executor.shutdown()
        policy.destroy_node()
        robot.destroy_node()


def test_position_delta_bundle_runs_as_joint_targets_with_stamped_trajectories(ros_context):
    """The navigation model's action is a displacement per step: the node sends measured position plus
    displacement as joint targets, and the same target as a one-point JointTrajectory stamped with the
    joint state it answers (bit for bit) and naming its joints."""
    from trajectory_msgs.msg import JointTrajectory

    from ros_nodes.policy_node import PolicyNode

    bundle = REPO_ROOT / "models" / "maml_navigation" / "bundle"
    policy = PolicyNode("metarl_policy_node_delta", namespace="/delta_test", context=ros_context,
                        parameter_overrides=[Parameter("bundle_path", value=str(bundle))])
    robot = rclpy.create_node("fake_point_robot", namespace="/delta_test", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(policy)
    executor.add_node(robot)
    joint_pub = robot.create_publisher(JointState, "joint_states", 10)
    commands, trajectories, stamps = [], [], set()
    robot.create_subscription(Float64MultiArray, "joint_command", commands.append, 10)
    robot.create_subscription(JointTrajectory, "joint_trajectory", trajectories.append, 10)

    def publish_joint_state() -> None:
        msg = JointState(name=["y", "x"], position=[0.2, -0.1])  # not the bundle's joint order
        msg.header.stamp = robot.get_clock().now().to_msg()
        stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
        joint_pub.publish(msg)

    robot.create_timer(0.05, publish_joint_state)
    try:
        assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
        end = time.monotonic() + 10.0
        while (len(commands) < 3 or len(trajectories) < 3) and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert len(commands) >= 3 and len(trajectories) >= 3
        for command in commands:
            x, y = command.data
            # Measured (x, y) = (-0.1, 0.2), displaced by at most the action scale, 0.1 m per axis.
            assert abs(x + 0.1) <= 0.1 + 1e-6 and abs(y - 0.2) <= 0.1 + 1e-6, command.data
        assert any(abs(x + 0.1) > 1e-4 or abs(y - 0.2) > 1e-4 for x, y in (c.data for c in commands)), "it never moved"
        for trajectory in trajectories:
            assert trajectory.joint_names == ["x", "y"] and len(trajectory.points) == 1
            assert (trajectory.header.stamp.sec, trajectory.header.stamp.nanosec) in stamps
        assert [list(t.points[0].positions) for t in trajectories[:3]] == [list(c.data) for c in commands[:3]]
    finally:
        executor.shutdown()
        policy.destroy_node()
        robot.destroy_node()


# ------------------------------------------------------------------------------------- process hygiene


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _read_until(process: subprocess.Popen, marker: str, timeout_s: float) -> str:
    """The process's output up to the line holding ``marker`` (or all of it at exit or timeout)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if marker in line:
                break
        elif process.poll() is not None:
            break
    return "".join(lines)


def test_graph_command_stops_its_nodes_on_sigterm(tiny_bundle, tmp_path):
    log_dir = tmp_path / "logs"
    process = subprocess.Popen(
        [sys.executable, "-m", "ros_nodes.graph", "--params", str(DEFAULT_PARAMS_FILE),
         "--bundle", str(tiny_bundle), "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=str(Path(ros_nodes.__file__).resolve().parent.parent),
    )
    try:
        output = _read_until(process, "graph running", timeout_s=60.0)
        assert "graph running" in output, output
        children = _children_of(process.pid)
        assert len(children) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children), "orphaned node processes"
        assert "published a hold command" in (log_dir / f"{POLICY_NODE_NAME}.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------- one graph, tests in file order


@pytest.fixture(scope="module")
def graph(tiny_bundle, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("graph_logs")
    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": RATE_HZ},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "episode_steps": EPISODE_STEPS},
    }
    graph = NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=tiny_bundle, overrides=overrides, log_dir=log_dir)
    with graph:
        graph.diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)
        graph.results = graph.collect(String, f"{SIM}/episode_result")
        graph.twists = graph.collect(TwistStamped, "/cmd_twist")
        graph.grips = graph.collect(Float64MultiArray, "/gripper_command")
        processes = list(graph.processes.values())
        yield graph
    assert all(p.poll() is not None for p in processes), "a node outlived NodeGraph.stop()"


def test_policy_is_active_and_commands_flow_at_the_rate(graph):
    assert graph.lifecycle_state() == "active"
    graph.spin_for(0.5)
    graph.twists.clear()
    start = time.monotonic()
    graph.spin_for(2.0)
    rate = len(graph.twists) / (time.monotonic() - start)
    # Loose bounds: this checks the loop runs at its configured rate, not how fast the machine is.
    assert 0.4 * RATE_HZ <= rate <= 1.5 * RATE_HZ, f"cmd_twist at {rate:.1f} Hz, expected about {RATE_HZ:g}"
    assert graph.grips, "no gripper_command published"
    twist = graph.twists[-1]
    assert twist.header.frame_id == "world"
    assert max(abs(twist.twist.linear.x), abs(twist.twist.linear.y), abs(twist.twist.linear.z)) <= 0.15 + 1e-6
    assert all(len(m.data) == 1 and abs(m.data[0]) <= 60.0 + 1e-6 for m in graph.grips)


def test_episode_end_triggers_an_adaptation_step(graph):
    assert graph.spin_until(lambda: len(graph.results) >= 2, 30.0), "no episode ended"
    result = json.loads(graph.results[-1].data)
    assert result["steps"] == EPISODE_STEPS and result["task_id"] == "test-0000"

    def adapted() -> bool:
        level, _, values = policy_diagnostics(graph.diagnostics)
        return int(values.get("adaptation_steps", "0")) >= 1

    assert graph.spin_until(adapted, 10.0), f"no adaptation step reported: {policy_diagnostics(graph.diagnostics)}"
    level, message, values = policy_diagnostics(graph.diagnostics)
    # OK, or WARN when a loaded test machine stretches the loop period; never ERROR.
    assert level in (DiagnosticStatus.OK[0], DiagnosticStatus.WARN[0]), message
    assert values["execution_provider"] == "CPUExecutionProvider"
    assert values["lifecycle_state"] == "active"
    for key in ("inference_latency_p50_ms", "inference_latency_p99_ms", "loop_period_p99_ms"):
        assert float(values[key]) > 0.0
    assert int(values["episodes"]) >= 1


def test_swapping_task_index_swaps_the_object(graph):
    rejected = graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": 999})[0]
    assert not rejected.successful and "out of range" in rejected.reason
    assert graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": 1})[0].successful
    graph.results.clear()

    def swapped() -> bool:
        return any(json.loads(m.data)["task_id"] == "test-0001" for m in graph.results)

    assert graph.spin_until(swapped, 30.0), [json.loads(m.data)["task_id"] for m in graph.results]
    assert json.loads(graph.results[-1].data)["task_index"] == 1


def test_swap_now_ends_the_running_episode_and_starts_the_new_object(graph):
    assert not graph.set_parameters(SIM_ROBOT_NODE_NAME, {"swap": "later"})[0].successful
    assert graph.set_parameters(SIM_ROBOT_NODE_NAME, {"swap": "now"})[0].successful
    assert graph.spin_until(lambda: len(graph.results) >= 1, 30.0)
    graph.spin_for(0.2)  # into the middle of an episode
    graph.results.clear()
    assert graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": 2})[0].successful
    assert graph.spin_until(lambda: len(graph.results) >= 2, 30.0)
    aborted, following = (json.loads(m.data) for m in graph.results[:2])
    assert aborted.get("aborted") is True and not aborted["success"] and aborted["steps"] < EPISODE_STEPS
    assert aborted["task_id"] != "test-0002"
    assert following["task_id"] == "test-0002" and "aborted" not in following
    assert graph.set_parameters(SIM_ROBOT_NODE_NAME, {"swap": "next_episode"})[0].successful


def test_adaptation_services_answer(graph):
    reset = graph.trigger(f"{POLICY}/reset_adaptation")
    assert reset.success and "reset" in reset.message
    off = graph.set_bool(f"{POLICY}/set_adaptation", False)
    assert off.success and "disabled" in off.message

    def frozen() -> bool:
        return policy_diagnostics(graph.diagnostics)[2].get("adaptation_enabled") == "false"

    assert graph.spin_until(frozen, 5.0)
    steps = policy_diagnostics(graph.diagnostics)[2]["adaptation_steps"]
    graph.results.clear()
    assert graph.spin_until(lambda: len(graph.results) >= 2, 30.0)
    seen = len(graph.diagnostics)
    graph.spin_until(lambda: len(graph.diagnostics) > seen, 5.0)
    assert policy_diagnostics(graph.diagnostics)[2]["adaptation_steps"] == steps, "adapted while disabled"
    assert graph.set_bool(f"{POLICY}/set_adaptation", True).success


def test_bad_parameter_values_are_rejected_with_a_reason(graph):
    result = graph.set_parameters(POLICY_NODE_NAME, {"max_obs_age_s": -1.0})[0]
    assert not result.successful and "max_obs_age_s" in result.reason
    result = graph.set_parameters(POLICY_NODE_NAME, {"execution_providers": ["warp_drive"]})[0]
    assert not result.successful and "warp_drive" in result.reason


def test_reload_with_a_broken_bundle_keeps_the_old_one(graph, tiny_bundle, tmp_path):
    broken = tmp_path / "broken_bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ not json")
    assert graph.set_parameters(POLICY_NODE_NAME, {"bundle_path": str(broken)})[0].successful
    response = graph.trigger(f"{POLICY}/reload_bundle")
    assert not response.success
    assert "kept" in response.message and "manifest.json" in response.message

    graph.twists.clear()
    graph.spin_for(1.0)
    assert len(graph.twists) >= 0.4 * RATE_HZ, "the old bundle stopped commanding after a failed reload"

    def warned() -> bool:
        level, _, values = policy_diagnostics(graph.diagnostics)
        return level == DiagnosticStatus.WARN[0] and "reload" in values.get("last_error", "")

    assert graph.spin_until(warned, 5.0), policy_diagnostics(graph.diagnostics)
    assert graph.set_parameters(POLICY_NODE_NAME, {"bundle_path": str(Path(tiny_bundle).resolve())})[0].successful
    reloaded = graph.trigger(f"{POLICY}/reload_bundle")
    assert reloaded.success, reloaded.message


def test_deactivate_publishes_a_hold_and_stops_commanding(graph):
    graph.spin_for(0.3)
    graph.change_state("deactivate")
    graph.spin_for(0.5)
    last = graph.twists[-1].twist.linear
    assert (last.x, last.y, last.z) == (0.0, 0.0, 0.0)
    count = len(graph.twists)
    graph.spin_for(0.5)
    assert len(graph.twists) == count, "commands kept flowing while inactive"
    assert graph.lifecycle_state() == "inactive"
    graph.change_state("activate")
    assert graph.spin_until(lambda: len(graph.twists) > count + 3, 5.0)
