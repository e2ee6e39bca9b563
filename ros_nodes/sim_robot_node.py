"""``metarl_sim_robot_node``: a PyBullet Panda grasping one object, behind the topics of a real robot.

Publishes ``joint_states`` (sensor_msgs/JointState), ``ee_pose`` and ``object_pose``
(geometry_msgs/PoseStamped, frame ``world``), ``reward`` (std_msgs/Float64) after every control step,
``episode_end`` (std_msgs/Bool, true on success) after ``episode_steps`` steps, and
``~/episode_result`` (std_msgs/String holding one JSON object per episode) for drivers that tabulate.
Subscribes ``cmd_twist`` (geometry_msgs/TwistStamped, linear = end-effector velocity in m/s) and
``gripper_command`` (std_msgs/Float64MultiArray, ``[grip_force_n]``, <= 0 opens).

``step_mode`` ``realtime`` advances one control period per timer tick at the scene's control rate,
applying the latest command; ``lockstep`` advances one control period per ``cmd_twist`` received, so
the loop runs as fast as the policy commands. Changing ``task_index`` or ``task_yaml`` at runtime
swaps the object and its dynamics at the next episode reset (``~/reset_episode`` forces one now), or at
once with ``swap: now``: the running episode ends there (``episode_end`` false, its ``episode_result``
marked ``"aborted": true``) and the next one starts on the new object.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ros_nodes  # noqa: F401  (keeps DDS discovery on loopback before rclpy loads)

import numpy as np
import yaml
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from metarl_robot.tasks import TaskError, TaskSpec, load_task_file
from ros_nodes import SIM_ROBOT_NODE_NAME
from ros_nodes._runner import run_node
from sim import GRASP_VALIDATORS, ROBOTS, GraspScene, default_grasp_distribution
from sim.grasp_task import EPISODE_STEPS, grasp_distribution

DISTRIBUTIONS = ("demo", "suite")


def test_split(distribution: str) -> list[TaskSpec]:
    """The test split the sim robot serves without a task file: the suite's 64 objects or the demo's 16."""
    if distribution == "suite":
        return list(grasp_distribution(seed=0).test_tasks)
    if distribution == "demo":
        return list(default_grasp_distribution().test_tasks)
    raise TaskError(f"parameter distribution={distribution!r} is not known; use one of {list(DISTRIBUTIONS)}")

STEP_MODES = ("realtime", "lockstep")
SWAP_MODES = ("next_episode", "now")


def parse_task_yaml(text: str) -> TaskSpec:
    """One grasp task from inline YAML: ``{family, task_id, params}`` or just the parameter mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TaskError(f"task_yaml is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TaskError("task_yaml must be a mapping: {family: grasp, task_id: ..., params: {...}} or the params alone")
    if "params" not in data and "family" not in data:
        data = {"family": "grasp", "task_id": "inline", "params": data}
    data.setdefault("task_id", "inline")
    task = TaskSpec.from_dict(data, "task_yaml")
    validate = GRASP_VALIDATORS.get(task.family)
    if validate is None:
        raise TaskError(
            f"task_yaml: family {task.family!r} is not simulated here; use one of {sorted(GRASP_VALIDATORS)}"
        )
    try:
        validate(task)
    except TaskError as err:
        raise TaskError(f"task_yaml: {err}") from None
    return task


def _stamp(seconds_ns: int) -> Time:
    return Time(sec=seconds_ns // 1_000_000_000, nanosec=seconds_ns % 1_000_000_000)


def _stamp_ns(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class SimRobotNode(Node):
    """A :class:`sim.GraspScene` exposed as a ROS 2 robot; see the module docstring for the topics."""

    def __init__(self, node_name: str = SIM_ROBOT_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        self._tasks = self._load_task_list(self.get_parameter("task_file").value, self.get_parameter("distribution").value)
        task = self._select_task(
            self.get_parameter("task_index").value, self.get_parameter("task_yaml").value
        )
        self._frame_id = self.get_parameter("frame_id").value
        self._rng = np.random.default_rng(self.get_parameter("seed").value)
        robot = self.get_parameter("robot").value
        if robot not in ROBOTS:
            raise ValueError(f"parameter robot={robot!r} is unknown; use one of {', '.join(ROBOTS)}")
        self._scene = GraspScene(task, robot=robot)
        self._period_s = 1.0 / self._scene.control_rate_hz
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._joint_pub = self.create_publisher(JointState, "joint_states", 10)
        # One topic per pose the scene publishes (ee_pose, object_pose): what its observation is built from.
        self._pose_pubs = {
            source: self.create_publisher(PoseStamped, source, 10) for source in self._scene.robot_inputs().poses
        }
        self._reward_pub = self.create_publisher(Float64, "reward", 100)
        self._episode_end_pub = self.create_publisher(Bool, "episode_end", 10)
        self._result_pub = self.create_publisher(String, "~/episode_result", 100)
        # The gripper subscription is created first: when both commands of one policy tick are waiting,
        # the executor serves it first, so a lockstep step (triggered by the twist) sees the new force.
        self.create_subscription(Float64MultiArray, "gripper_command", self._on_gripper_command, 10)
        self.create_subscription(TwistStamped, "cmd_twist", self._on_twist, 10)
        self.create_service(Trigger, "~/reset_episode", self._on_reset_episode)
        self._timer = self.create_timer(self._period_s, self._on_timer)

        self._velocity = np.zeros(3)
        self._velocity_stamp_ns = 0
        self._grip_force_n = 0.0
        self._episode = 0
        self._stepped_since_tick = False
        self._start_episode()
        self.get_logger().info(
            f"simulating task {task.task_id!r} ({dict(task.params)}) at {self._scene.control_rate_hz:g} Hz, "
            f"step_mode={self.get_parameter('step_mode').value}"
        )

    # ------------------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        def describe(text: str, read_only: bool = False) -> ParameterDescriptor:
            return ParameterDescriptor(description=text, read_only=read_only)

        self.declare_parameter("task_file", "", describe(
            "YAML task file; empty: the test split of the distribution named by 'distribution'", read_only=True))
        self.declare_parameter("distribution", "demo", describe(
            "without a task_file, whose test split: 'suite' (the grasp suite, 64 objects) or 'demo' (16 spheres)",
            read_only=True))
        self.declare_parameter("task_index", 0, describe(
            "index into the task list; a change swaps the object at the next episode reset"))
        self.declare_parameter("task_yaml", "", describe(
            "inline YAML of one task, overriding task_index when not empty"))
        self.declare_parameter("swap", "next_episode", describe(
            "when a new task_index/task_yaml takes over: 'next_episode' (at the next reset) or 'now' "
            "(the running episode ends unsuccessful and the new object's episode starts at once)"))
        self.declare_parameter("episode_steps", EPISODE_STEPS, describe("control steps per episode, >= 1 (the grasp suite's attempt: 60)"))
        self.declare_parameter("step_mode", "realtime", describe(
            "realtime: step at the control rate with the latest command; lockstep: one step per cmd_twist"))
        self.declare_parameter("seed", 0, describe("seed of the object placement noise", read_only=True))
        self.declare_parameter("robot", "franka_panda", describe(
            "simulated arm: franka_panda, kuka_iiwa or xarm6 (joint names follow the arm)", read_only=True))
        self.declare_parameter("command_timeout_s", 0.5, describe(
            "a cmd_twist older than this is replaced by zero velocity (the grip force is kept)"))
        self.declare_parameter("frame_id", "world", describe("frame of the published poses", read_only=True))

    def _load_task_list(self, task_file: str, distribution: str) -> list[TaskSpec]:
        if task_file:
            return load_task_file(Path(task_file).expanduser(), GRASP_VALIDATORS)
        return test_split(distribution)

    def _select_task(self, task_index: int, task_yaml: str) -> TaskSpec:
        if task_yaml.strip():
            return parse_task_yaml(task_yaml)
        if not 0 <= task_index < len(self._tasks):
            raise TaskError(
                f"task_index {task_index} is out of range: there are {len(self._tasks)} tasks "
                f"(0..{len(self._tasks) - 1})"
            )
        return self._tasks[task_index]

    def _validate_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        values = {p.name: p.value for p in params}
        try:
            if "task_index" in values or "task_yaml" in values:
                self._select_task(
                    values.get("task_index", self.get_parameter("task_index").value),
                    values.get("task_yaml", self.get_parameter("task_yaml").value),
                )
            if "episode_steps" in values and values["episode_steps"] < 1:
                raise ValueError(f"episode_steps must be >= 1, got {values['episode_steps']}")
            if "swap" in values and values["swap"] not in SWAP_MODES:
                raise ValueError(f"swap must be one of {list(SWAP_MODES)}, got {values['swap']!r}")
            if "step_mode" in values and values["step_mode"] not in STEP_MODES:
                raise ValueError(f"step_mode must be one of {list(STEP_MODES)}, got {values['step_mode']!r}")
            if "command_timeout_s" in values and not values["command_timeout_s"] > 0:
                raise ValueError(f"command_timeout_s must be > 0, got {values['command_timeout_s']}")
        except (TaskError, ValueError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: Sequence[Parameter]) -> None:
        if any(p.name in ("task_index", "task_yaml") for p in params):
            task = self._select_task(self.get_parameter("task_index").value, self.get_parameter("task_yaml").value)
            self._scene.set_task(task)
            if self.get_parameter("swap").value == "now" and hasattr(self, "_task"):
                self._finish_episode(self._scene.status(), aborted=True)
                self._start_episode()
                self.get_logger().info(f"task {task.task_id!r} swapped in now; episode {self._episode} started on it")
            else:
                self.get_logger().info(f"task {task.task_id!r} selected; it takes over at the next episode reset")

    # -------------------------------------------------------------------------------- commands
    def _on_twist(self, msg: TwistStamped) -> None:
        velocity = np.array([msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z])
        if not np.all(np.isfinite(velocity)):
            self.get_logger().warning("ignored a cmd_twist with non-finite values", throttle_duration_sec=5.0)
            return
        now_ns = self.get_clock().now().nanoseconds
        stamp_ns = _stamp_ns(msg.header.stamp)
        self._velocity = velocity
        self._velocity_stamp_ns = stamp_ns if stamp_ns > 0 else now_ns
        if self.get_parameter("step_mode").value == "lockstep":
            self._step()

    def _on_gripper_command(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1 or not math.isfinite(msg.data[0]):
            self.get_logger().warning(
                f"ignored a gripper_command {list(msg.data)}: expected one finite force in N",
                throttle_duration_sec=5.0,
            )
            return
        self._grip_force_n = float(msg.data[0])

    def _current_command(self, now_ns: int) -> np.ndarray:
        """The command to apply now: stale velocities become zero, the grip force is always kept."""
        age_s = (now_ns - self._velocity_stamp_ns) * 1e-9
        fresh = age_s <= self.get_parameter("command_timeout_s").value
        velocity = self._velocity if fresh else np.zeros(3)
        return np.array([*velocity, self._grip_force_n])

    # ------------------------------------------------------------------------------- stepping
    def _on_timer(self) -> None:
        if self.get_parameter("step_mode").value == "realtime":
            self._step()
        elif not self._stepped_since_tick:
            # Lockstep and no command: the world is paused, so its state is still current.
            self._publish_state(self.get_clock().now().nanoseconds)
        self._stepped_since_tick = False

    def _step(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        self._scene.apply_command(self._current_command(now_ns))
        self._scene.step_control()
        status = self._scene.status()
        self._steps += 1
        self._return += status["reward"]
        self._crushed = self._crushed or bool(status["crushed"])
        self._stepped_since_tick = True
        self._publish_state(self.get_clock().now().nanoseconds)
        self._reward_pub.publish(Float64(data=float(status["reward"])))
        if self._steps >= self.get_parameter("episode_steps").value:
            self._finish_episode(status)
            self._start_episode()

    def _start_episode(self) -> None:
        self._scene.reset(self._rng)
        self._task = self._scene.task
        self._episode += 1
        self._steps = 0
        self._return = 0.0
        self._crushed = False
        self._velocity = np.zeros(3)
        self._grip_force_n = 0.0
        self._publish_state(self.get_clock().now().nanoseconds)

    def _finish_episode(self, status: dict, aborted: bool = False) -> None:
        success = bool(status["success"]) and not aborted
        self._episode_end_pub.publish(Bool(data=success))
        task_yaml = self.get_parameter("task_yaml").value
        result = {
            "episode": self._episode,
            "task_id": self._task.task_id,
            "task_index": -1 if task_yaml.strip() else self._task_index_of(self._task),
            "success": success,
            "crushed": self._crushed,
            "return": round(self._return, 6),
            "steps": self._steps,
            "lift_height_m": round(float(status["lift_height_m"]), 6),
            **({"aborted": True} if aborted else {}),
        }
        self._result_pub.publish(String(data=json.dumps(result)))
        self.get_logger().info(
            f"episode {self._episode} task={self._task.task_id} success={success} crushed={self._crushed} "
            f"return={self._return:.3f}"
        )

    def _task_index_of(self, task: TaskSpec) -> int:
        try:
            return self._tasks.index(task)
        except ValueError:
            return -1

    def _on_reset_episode(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        aborted = self._episode
        self._start_episode()
        response.success = True
        response.message = f"episode {aborted} aborted; episode {self._episode} started on task {self._task.task_id}"
        self.get_logger().info(response.message)
        return response

    # ----------------------------------------------------------------------------- publishing
    def _publish_state(self, now_ns: int) -> None:
        stamp = _stamp(now_ns)
        inputs = self._scene.robot_inputs()
        sample = inputs.joint_state
        joint_state = JointState()
        joint_state.header.stamp = stamp
        joint_state.name = list(sample.names)
        joint_state.position = [float(v) for v in sample.position]
        joint_state.velocity = [float(v) for v in sample.velocity]
        joint_state.effort = [float(v) for v in sample.effort]
        self._joint_pub.publish(joint_state)
        for source, pose in inputs.poses.items():
            self._pose_pubs[source].publish(self._pose(stamp, pose.position, pose.orientation_xyzw))

    def _pose(self, stamp: Time, position: np.ndarray, orientation_xyzw: np.ndarray) -> PoseStamped:
        msg = PoseStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = self._frame_id
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
        q = msg.pose.orientation
        q.x, q.y, q.z, q.w = (float(v) for v in orientation_xyzw)
        return msg

    def destroy_node(self) -> None:
        scene = getattr(self, "_scene", None)  # absent when the constructor failed
        if scene is not None:
            scene.close()
            self._scene = None
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point ``metarl_sim_robot_node``."""
    try:
        run_node(SimRobotNode, sys.argv if args is None else args)
    except TaskError as err:
        print(f"{SIM_ROBOT_NODE_NAME}: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
