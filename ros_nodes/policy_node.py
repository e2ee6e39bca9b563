"""``metarl_policy_node``: an exported meta-policy bundle as a ROS 2 lifecycle node that adapts online.

The node only wires ROS to :class:`metarl_robot.runtime.RobotLoop`, which makes every decision of a
control tick (input checks, observation, act, limits, holds, transitions, adaptation, diagnostics) for
any method family. *configure* loads and warms up the bundle, checks the robot's joints and creates
topics and services; *activate* starts the control loop; *deactivate* stops it after a hold command;
*cleanup* frees everything. docs/ros_interface.md lists every topic, service and parameter.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

import ros_nodes  # noqa: F401  (keeps DDS discovery on loopback before rclpy loads)

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import Node as LifecycleNode, State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.service import Service
from rclpy.wait_for_message import wait_for_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from metarl_robot.contract import CARTESIAN_VELOCITY, JOINT_VELOCITY, RobotInputs, check_joint_contract
from metarl_robot.runtime import GuardSettings, LoopSettings, LoopStats, RobotLoop, SafetyLimits
from metarl_robot.runtime.loop import LEVEL_ERROR, LEVEL_OK, SafeCommand
from ros_nodes import POLICY_NODE_NAME, cdr
from ros_nodes._runner import run_node
from ros_nodes.policy_parameters import LIMITS, OPTIONAL_PARAMETERS, PARAMETER_DEFAULTS, check_parameter, describe


def _to_msg(seconds: float) -> Time:
    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


class PolicyNode(LifecycleNode):
    """The meta-policy lifecycle node; see the module docstring for its interface."""

    def __init__(self, node_name: str = POLICY_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Registered first so a bad value in a parameter file is refused with the same reasons.
        self.add_on_set_parameters_callback(self._validate_parameters)
        for name, default in PARAMETER_DEFAULTS.items():
            self.declare_parameter(name, default, describe(name))
        self.declare_parameter("robot_joint_names", Parameter.Type.STRING_ARRAY, describe("robot_joint_names"))
        self.declare_parameter("trusted_keys", Parameter.Type.STRING_ARRAY, describe("trusted_keys"))
        self.add_post_set_parameters_callback(lambda params: self._read_settings())

        self._loop: RobotLoop | None = None
        self._stats = LoopStats()  # counters run from the node's start, across reloads and cleanups
        self._inputs = RobotInputs()
        self._raw_stamps: dict[str, tuple[float, int, int]] = {}
        self._recorder: Any = None
        self._latest_inputs: dict[str, tuple[Any, bytes, int]] = {}
        self._seed = -1
        self._entities: list[Any] = []
        self._control_timer = None
        self._twist_pub = self._joint_pub = self._gripper_pub = self._trajectory_pub = None
        self._configure_error: str | None = None
        self._trigger = self._param("trigger")
        self._trigger_on_joint_states = False
        self._read_settings()
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)

    # ------------------------------------------------------------------------------ parameters
    def _validate_parameters(self, params: Sequence[Parameter]) -> SetParametersResult:
        for param in params:
            reason = check_parameter(param.name, param.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _param(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # the optional parameters have no default
            return None

    def _settings(self) -> LoopSettings:
        return LoopSettings(
            max_obs_age_s=self._param("max_obs_age_s"),
            limits=SafetyLimits(**{name: self._param(name) for name in LIMITS}),
            adaptation_enabled=bool(self._param("adaptation_enabled")),
            adapt_every_n_steps=self._param("adapt_every_n_steps"),
            guard=GuardSettings(
                enabled=bool(self._param("adaptation_guard")), max_drop=float(self._param("guard_max_drop")),
                beyond_validated=bool(self._param("adapt_beyond_validated_steps")),
            ),
        )

    def _clock_ns(self) -> int:
        """The node clock's time in ns. On system time (no ``use_sim_time``) that is the wall clock,
        read without building rclpy Time objects (several microseconds per call on the control path)."""
        return time.time_ns() if self._system_clock else self.get_clock().now().nanoseconds

    def _read_settings(self) -> None:
        """Apply the parameters that take effect immediately (limits, observation age, adaptation)."""
        self._frame_id = self._param("command_frame_id")
        self._system_clock = not bool(self._param("use_sim_time"))
        if self._loop is not None:
            self._loop.apply_settings(self._settings())
            timer = self._control_timer
            if timer is not None and abs(timer.timer_period_ns * 1e-9 - self._timer_period_s()) > 1e-9:
                self._create_control_timer()

    def _load(self) -> RobotLoop:
        for name in [*PARAMETER_DEFAULTS, *OPTIONAL_PARAMETERS]:
            reason = check_parameter(name, self._param(name))
            if reason is not None:
                raise ValueError(reason)
        loop = RobotLoop.load(
            self._param("bundle_path"), self._param("execution_providers"), self._settings(),
            control_rate_hz=self._param("control_rate_hz"), trusted_keys=self._param("trusted_keys") or (),
            stats=self._stats, logger=self.get_logger(), seed=self._seed_for_load(),
        )
        robot_joints = self._param("robot_joint_names")
        if robot_joints:
            contract = loop.contract
            problem = check_joint_contract(contract.action.joint_names + contract.observed_joints, robot_joints)
            if problem is not None:
                raise ValueError(f"{problem} (robot_joint_names parameter)")
        return loop

    def _seed_for_load(self) -> int:
        """The ``seed`` parameter, or fresh entropy for -1; kept so a recording can name it."""
        import secrets

        seed = int(self._param("seed"))
        self._seed = secrets.randbelow(2**31) if seed < 0 else seed
        return self._seed

    def _start_recording(self) -> None:
        path, loop = self._param("record_path"), self._loop
        if not path:
            return
        from ros_nodes.recording import SESSION_TOPIC, Recorder, initial_input

        try:
            self._recorder = Recorder(path)
        except (OSError, ImportError) as err:
            self._recorder = None
            loop.last_error = f"recording to {path} failed: {err}"
            self.get_logger().error(loop.last_error)
            return
        settings = loop.settings
        self._recorder.record(SESSION_TOPIC, {
            "bundle_path": loop.bundle_path, "providers": [loop.execution_provider.removesuffix("ExecutionProvider").lower()],
            "seed": self._seed, "control_rate_hz": loop.control_rate_hz, "reward_topic": loop.reward_topic,
            "pose_topics": list(loop.contract.observation.pose_sources),
            "twist_topics": list(loop.contract.observation.twist_sources),
            "settings": {"max_obs_age_s": settings.max_obs_age_s, "limits": dataclasses.asdict(settings.limits),
                         "adaptation_enabled": settings.adaptation_enabled,
                         "adapt_every_n_steps": settings.adapt_every_n_steps,
                         "guard": dataclasses.asdict(settings.guard)},
            # What the loop already holds: the latest sample of each input, received before recording began.
            "inputs": [initial_input(self.resolve_topic_name(topic), msg_type, data, received_ns)
                       for topic, (msg_type, data, received_ns) in self._latest_inputs.items()],
        }, self._clock_ns())
        self.get_logger().info(f"recording to {self._recorder.path}")

    def _stop_recording(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self.get_logger().info(f"recording closed: {self._recorder.path}")
            self._recorder = None

    def _record(self, topic: str, msg: Any, now_ns: int) -> None:
        recorder = self._recorder
        if recorder is not None:
            recorder.message(self.resolve_topic_name(topic), msg, now_ns)

    def _keep_input(self, topic: str, msg_type: Any, data: bytes, now_ns: int) -> None:
        """The latest sample of an input (serialized), so a recording that starts later knows what the loop holds."""
        self._latest_inputs[topic] = (msg_type, data, now_ns)
        if self._recorder is not None:
            self._recorder.message(self.resolve_topic_name(topic), data, now_ns, msg_type)

    def _probe_joint_contract(self, loop: RobotLoop) -> None:
        """At configure: wait up to ``joint_state_timeout_s`` for one joint state and check its joints.

        Raises ``ValueError`` naming the mismatch. A probe node of its own (not spun by the executor)
        takes the message, so this works from inside the lifecycle callback.
        """
        timeout_s, joints = self._param("joint_state_timeout_s"), loop.contract.observed_joints
        if not joints or timeout_s <= 0:
            return
        probe = rclpy.create_node(
            f"{self.get_name()}_joint_probe", namespace=self.get_namespace(), context=self.context,
            start_parameter_services=False, enable_rosout=False,
        )
        try:
            topic = self.resolve_topic_name("joint_states")
            received, msg = wait_for_message(JointState, probe, topic, qos_profile=qos_profile_sensor_data,
                                             time_to_wait=timeout_s)
        finally:
            probe.destroy_node()
        if not received:
            return self.get_logger().warning(f"no joint state on {topic} within joint_state_timeout_s={timeout_s:g} "
                                             "s; the joints will be checked on the first one (holding until then)")
        problem = check_joint_contract(joints, msg.name)
        if problem is not None:
            raise ValueError(f"{problem} (joint state on {topic} names {list(msg.name)})")
        self.get_logger().info(f"joint contract holds: {topic} carries {list(joints)}")

    # ------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            loop = self._load()
            self._probe_joint_contract(loop)
        except Exception as err:  # any failure must fail the transition with a reason, not crash
            self._configure_error = f"configure failed: {err}"
            self.get_logger().error(self._configure_error)
            return TransitionCallbackReturn.FAILURE
        self._configure_error = None
        self._trigger = self._param("trigger")
        self._trigger_on_joint_states = self._trigger == "joint_states"
        self._install(loop)
        self._create_interfaces()
        self.get_logger().info(
            f"configured {loop.controller.family} bundle {loop.bundle_path} on {loop.execution_provider}, warmed up; "
            f"{loop.control_rate_hz:g} Hz, trigger {self._trigger}, action {loop.contract.action.names}"
        )
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)
        if result == TransitionCallbackReturn.SUCCESS:
            self._loop.start()
            self._start_recording()
            self._control_timer.reset()
            self.get_logger().info("active: commanding the robot")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_commanding("deactivated")
        self._stop_recording()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._destroy_interfaces()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_commanding("shutting down")
        self._stop_recording()
        self._destroy_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}; releasing the bundle")
        self._destroy_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def _stop_commanding(self, why: str) -> None:
        if self._control_timer is not None:
            self._control_timer.cancel()
        command = self._loop.stop(why) if self._loop is not None else None
        if command is not None:
            self._publish_command(command)
            self.get_logger().info(f"{why}: published a hold command and stopped commanding")

    def _install(self, loop: RobotLoop) -> None:
        """Make ``loop`` the running one; the latest inputs stay valid, the joint contract is re-checked."""
        if self._loop is not None:
            loop.resume_from(self._loop)
        self._loop = loop
        if self._inputs.joint_state is not None:
            loop.check_joints(self._inputs.joint_state.names)
        self._read_settings()

    def _create_interfaces(self) -> None:
        loop = self._loop
        layout, action = loop.contract.observation, loop.contract.action
        events, sub = QoSProfile(depth=10), self.create_subscription
        # Samples, not events: only the newest of each matters, so the middleware keeps one and a busy
        # node never works through a backlog of old joint states (it computes from the newest).
        sensor = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._entities += [
            sub(JointState, "joint_states", self._on_joint_state, sensor, raw=True),
            *(sub(PoseStamped, source, functools.partial(self._on_pose, source), sensor, raw=True)
              for source in layout.pose_sources),
            *(sub(TwistStamped, source, functools.partial(self._on_twist, source), sensor, raw=True)
              for source in layout.twist_sources),
            # Rewards and episode ends are events, not samples: losing one corrupts adaptation.
            sub(Float64, loop.reward_topic, self._on_reward, QoSProfile(depth=100)),
            sub(Bool, "episode_end", self._on_episode_end, events),
            self.create_service(Trigger, "~/reset_adaptation", self._on_reset_adaptation),
            self.create_service(SetBool, "~/set_adaptation", self._on_set_adaptation),
            self.create_service(Trigger, "~/reload_bundle", self._on_reload_bundle),
        ]
        if action.mode == CARTESIAN_VELOCITY:
            self._twist_pub = self.create_lifecycle_publisher(TwistStamped, "cmd_twist", events)
            self._twist_msg = TwistStamped()
        else:
            self._joint_pub = self.create_lifecycle_publisher(Float64MultiArray, "joint_command", events)
            # The same command, stamped with its input's stamp and naming its joints (a driver can match
            # it to the state it answers); a one-point trajectory reached one control period later.
            self._trajectory_pub = self.create_lifecycle_publisher(JointTrajectory, "joint_trajectory", events)
        if action.grip_index is not None:
            self._gripper_pub = self.create_lifecycle_publisher(Float64MultiArray, "gripper_command", events)
        self._create_control_timer()

    def _timer_period_s(self) -> float:
        """The control period; with trigger ``joint_states`` the watchdog's, which need not be faster
        than a quarter of ``max_obs_age_s`` (each rclpy timer call costs tens of microseconds)."""
        period_s = self._loop.control_period_s
        return max(period_s, self._param("max_obs_age_s") / 4.0) if self._trigger_on_joint_states else period_s

    def _create_control_timer(self) -> None:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
        active = self._loop is not None and self._loop.active
        self._control_timer = self.create_timer(self._timer_period_s(), self._on_control_timer, autostart=active)

    def _destroy_interfaces(self) -> None:
        for entity in self._entities:
            (self.destroy_service if isinstance(entity, Service) else self.destroy_subscription)(entity)
        self._entities.clear()
        for pub in (self._twist_pub, self._joint_pub, self._gripper_pub, self._trajectory_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._twist_pub = self._joint_pub = self._gripper_pub = self._trajectory_pub = None
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        self._loop = None
        self._inputs = RobotInputs()
        self._raw_stamps = {}
        self._latest_inputs = {}

    # ---------------------------------------------------------------------------------- inputs
    def _command_stamp(self, seconds: float) -> Time:
        """The stamp of the input a command was computed from (``seconds`` is the loop's newest input),
        bit for bit: the loop compares stamps in seconds, the node keeps each input's own."""
        for value, sec, nanosec in self._raw_stamps.values():
            if value == seconds:
                return Time(sec=sec, nanosec=nanosec)
        return _to_msg(seconds)

    # The inputs arrive serialized (raw subscriptions) and are read by ros_nodes.cdr, the decoding
    # `metarl-robot replay` uses too.
    def _on_joint_state(self, data: bytes) -> None:
        now_ns = self._clock_ns()
        self._keep_input("joint_states", JointState, data, now_ns)
        sample, sec, nanosec = cdr.joint_state_sample(data, now_ns * 1e-9)
        self._inputs.joint_state = sample
        self._raw_stamps["joint_states"] = (sample.stamp_s, sec, nanosec)
        loop = self._loop
        if loop is not None and not loop.joints_checked:
            loop.check_joints(list(sample.names))
        if self._trigger_on_joint_states and loop is not None and loop.active:
            self._tick()

    def _on_pose(self, source: str, data: bytes) -> None:
        now_ns = self._clock_ns()
        self._keep_input(source, PoseStamped, data, now_ns)
        sample, sec, nanosec = cdr.pose_sample(data, now_ns * 1e-9)
        self._inputs.poses[source] = sample
        self._raw_stamps[f"pose:{source}"] = (sample.stamp_s, sec, nanosec)

    def _on_twist(self, source: str, data: bytes) -> None:
        now_ns = self._clock_ns()
        self._keep_input(source, TwistStamped, data, now_ns)
        sample, sec, nanosec = cdr.twist_sample(data, now_ns * 1e-9)
        self._inputs.twists[source] = sample
        self._raw_stamps[f"twist:{source}"] = (sample.stamp_s, sec, nanosec)

    def _on_episode_end(self, msg: Bool) -> None:
        now_ns = self._clock_ns()
        self._record("episode_end", msg, now_ns)
        self._loop.end_episode(bool(msg.data), now_ns * 1e-9, self._inputs)

    def _on_reward(self, msg: Float64) -> None:
        self._record(self._loop.reward_topic, msg, self._clock_ns())
        self._loop.add_reward(msg.data)

    # ------------------------------------------------------------------------------ control loop
    def _on_control_timer(self) -> None:
        """Trigger ``timer``: every control step. Trigger ``joint_states``: the watchdog, which steps only
        when no step has run for a whole watchdog period, i.e. when the robot's state stream stopped; it
        holds at most a quarter of ``max_obs_age_s`` (or one control period) after the data turns stale."""
        last_tick_s = self._stats.last_tick_s
        if self._trigger_on_joint_states and last_tick_s is not None:
            if time.perf_counter() - last_tick_s < self._timer_period_s():
                return
        self._tick()

    def _tick(self) -> None:
        now_ns = self._clock_ns()
        if self._recorder is None:
            self._loop.tick(now_ns * 1e-9, self._inputs, self._publish_command)
            return
        from ros_nodes.recording import TICK_TOPIC, command_record

        command = self._loop.tick(now_ns * 1e-9, self._inputs, self._publish_command)
        if command is not None:
            self._recorder.record(TICK_TOPIC, command_record(now_ns, command), now_ns)

    def _publish_command(self, command: SafeCommand) -> None:
        spec = self._loop.contract.action
        values, known = command.values.tolist(), command.known
        # Gripper first: a lockstep simulator steps when the twist arrives.
        record = self._recorder is not None
        now_ns = self._clock_ns() if record else 0
        if self._gripper_pub is not None and known[spec.grip_index]:
            grip = Float64MultiArray(data=[values[spec.grip_index]])
            self._gripper_pub.publish(grip)
            if record:
                self._record("gripper_command", grip, now_ns)
        if self._twist_pub is not None:
            msg = self._twist_msg  # reused: publish() serializes before it returns
            # A policy command carries the stamp of the newest input it was computed from, so a
            # driver can measure input-to-command latency and reject commands built on old data.
            msg.header.stamp = self.get_clock().now().to_msg() if command.hold else self._command_stamp(command.stamp_s)
            msg.header.frame_id = self._frame_id
            for vector, axes, indices in ((msg.twist.linear, spec.linear_axes, spec.linear_indices),
                                          (msg.twist.angular, spec.angular_axes, spec.angular_indices)):
                for axis, i in zip(axes, indices):
                    setattr(vector, axis, values[i])
            self._twist_pub.publish(msg)
            if record:
                self._record("cmd_twist", msg, now_ns)
        elif self._joint_pub is not None and known[list(spec.joint_indices)].all():
            joint_values = [values[i] for i in spec.joint_indices]
            joint_msg = Float64MultiArray(data=joint_values)
            self._joint_pub.publish(joint_msg)
            trajectory = JointTrajectory(joint_names=list(spec.joint_names))
            trajectory.header.stamp = self.get_clock().now().to_msg() if command.hold else self._command_stamp(command.stamp_s)
            trajectory.header.frame_id = self._frame_id
            period_ns = int(round(1e9 / self._loop.control_rate_hz))
            point = JointTrajectoryPoint(positions=joint_values) if spec.mode != JOINT_VELOCITY else \
                JointTrajectoryPoint(velocities=joint_values)
            point.time_from_start.sec, point.time_from_start.nanosec = divmod(period_ns, 1_000_000_000)
            trajectory.points = [point]
            self._trajectory_pub.publish(trajectory)
            if record:
                self._record("joint_command", joint_msg, now_ns)
                self._record("joint_trajectory", trajectory, now_ns)

    # -------------------------------------------------------------------------------- services
    def _on_reset_adaptation(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        adaptations = self._loop.reset_adaptation()
        response.success = True
        response.message = f"adaptation reset to the prior, its data dropped (after {adaptations} adaptations)"
        self.get_logger().info(f"reset_adaptation: {response.message}")
        return response

    def _on_set_adaptation(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("adaptation_enabled", value=bool(request.data))])[0]
        state = "enabled" if request.data else "disabled (adapted state frozen)"
        response.success, response.message = result.successful, (f"adaptation {state}" if result.successful
                                                                  else result.reason)
        return response

    def _on_reload_bundle(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        old = self._loop
        try:
            new = self._load()
            difference = old.interface_differs(new)
            if difference is not None:
                raise ValueError(f"{difference}; clean up and configure the node to switch to this bundle")
        except Exception as err:  # the old bundle keeps running whatever went wrong
            response.success = False
            response.message = f"kept {old.bundle_path}: reload of {self._param('bundle_path')!r} failed: {err}"
            old.last_error = response.message
            self.get_logger().error(response.message)
            return response
        self._install(new)
        if new.control_rate_hz != old.control_rate_hz:
            self._create_control_timer()
        response.success = True
        response.message = f"loaded {new.bundle_path} on {new.execution_provider} at {new.control_rate_hz:g} Hz"
        self.get_logger().info(f"reload_bundle: {response.message}")
        return response

    # ----------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        loop = self._loop
        status = DiagnosticStatus(name=f"{self.get_name()}: meta-policy")
        if loop is None:
            level, message = (LEVEL_ERROR if self._configure_error else LEVEL_OK), self._configure_error or "unconfigured"
            status.hardware_id = self._param("bundle_path")
            values = {"lifecycle_state": "unconfigured", "hold_reason": "", "last_error": self._configure_error or ""}
        else:
            level, message, loop_values = loop.status()
            status.hardware_id = loop.bundle_path
            values = {"lifecycle_state": "active" if loop.active else "inactive", "trigger": self._trigger,
                      **loop_values}
        status.level, status.message = level.to_bytes(1, "little"), message
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)
        self._record("/diagnostics", array, self._clock_ns())

    def release(self) -> None:
        """Publish a hold if commanding and free the bundle (called on process exit)."""
        self._stop_commanding("shutting down")
        self._stop_recording()
        self._destroy_interfaces()


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point ``metarl_policy_node``."""
    run_node(PolicyNode, sys.argv if args is None else args, before_exit=PolicyNode.release)


if __name__ == "__main__":
    main()
