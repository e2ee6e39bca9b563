"""``metarl_policy_node``: an exported meta-policy bundle as a ROS 2 lifecycle node that adapts online.

Lifecycle: *configure* loads the bundle (``bundle_path``, context or gradient family) on the first
available execution provider of ``execution_providers``, warms it up, checks the robot's joints
against the bundle's on one joint state (``joint_state_timeout_s``) and creates the node's topics
and services; *activate* starts the control loop; *deactivate* stops it after publishing a hold
command; *cleanup* frees everything. docs/ros_interface.md lists every topic, service and parameter.

A control step runs every 1/``control_rate_hz`` (``trigger: timer``) or on every joint state received
(``trigger: joint_states``). It assembles the observation from the latest ``joint_states`` (joints
mapped by name) and the pose topics the bundle's observation layout names, runs the policy, clamps
and rate-limits the command and publishes it: ``cmd_twist`` (stamped with the newest input it was
computed from) and ``gripper_command`` for Cartesian bundles, ``joint_command`` in the bundle's joint
order for joint-space ones. Missing, stale, non-finite or malformed inputs produce a hold command
instead (zero velocity, gripper force unchanged) and an ERROR on ``/diagnostics`` until good data
returns.

Adaptation: transitions (observation, command, the rewards received before the next step, next
observation) go to the controller; ``episode_end`` marks the last one of an episode. Context bundles
adapt at every episode end (and every ``adapt_every_n_steps`` transitions); gradient bundles once
they hold ``episodes_per_step`` episodes. The adaptation step runs after the step's command is out.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import ros_nodes  # noqa: F401  (keeps DDS discovery on loopback before rclpy loads)

import rclpy
import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.service import Service
from rclpy.wait_for_message import wait_for_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from metarl_robot.runtime import (
    BundleController,
    BundleError,
    GradientController,
    LatencyStats,
    ProviderError,
    load_controller,
    resolve_provider,
)
from ros_nodes import POLICY_NODE_NAME
from ros_nodes._runner import EXECUTORS, run_node
from ros_nodes.policy_logic import (
    CARTESIAN_VELOCITY,
    LEVEL_ERROR,
    LEVEL_OK,
    ActionSpec,
    AdaptationSchedule,
    CommandFilter,
    Hold,
    HoldKind,
    JOINT_POSITION,
    JointStateSample,
    LayoutError,
    ObservationAssembler,
    PoseSample,
    SafeCommand,
    SafetyLimits,
    Transition,
    TransitionRecorder,
    check_joint_contract,
    diagnostic_level,
)

MAX_CONTROL_RATE_HZ = 1000.0
TRIGGERS = ("timer", "joint_states")

PARAMETER_DEFAULTS: dict[str, Any] = {
    "bundle_path": "",
    "control_rate_hz": 0.0,
    "trigger": "timer",
    "execution_providers": ["cuda", "cpu"],
    "max_obs_age_s": 0.5,
    "joint_state_timeout_s": 2.0,
    "adaptation_enabled": True,
    "adapt_every_n_steps": 0,
    "max_ee_speed_mps": 0.0,
    "max_grip_force_n": 0.0,
    "max_ee_velocity_step_mps": 0.0,
    "max_grip_force_step_n": 0.0,
    "max_joint_speed": 0.0,
    "max_joint_velocity_step": 0.0,
    "command_frame_id": "world",
    "executor": "events",
}
PARAMETER_HELP = {
    "bundle_path": "exported bundle directory; read at configure and by ~/reload_bundle",
    "control_rate_hz": "control loop rate in Hz, 0 = the bundle's control_rate_hz; read at configure and reload",
    "trigger": "timer: a control step every 1/control_rate_hz; joint_states: a control step on every joint state "
    "received (the robot's state stream sets the rate), and watchdog steps every max(1/control_rate_hz, "
    "max_obs_age_s/4) while it stops; "
    "read at configure",
    "execution_providers": "onnxruntime execution providers in order of preference (cuda, tensorrt, cpu); "
    "read at configure and reload",
    "max_obs_age_s": "an input older than this (by header stamp) makes the node hold, > 0",
    "joint_state_timeout_s": "configure waits this long for a joint state to check the robot's joints against the "
    "bundle's, >= 0 (0 = do not wait; the check then runs on the first joint state)",
    "adaptation_enabled": "collect transitions and adapt the task context online",
    "adapt_every_n_steps": "also adapt every N transitions, >= 0 (0 = only at episode end)",
    "max_ee_speed_mps": "cap on the commanded end-effector speed in m/s, >= 0 (0 = the bundle's bounds)",
    "max_grip_force_n": "cap on the commanded grip force magnitude in N, >= 0 (0 = the bundle's bounds)",
    "max_ee_velocity_step_mps": "largest change of the end-effector velocity per control tick in m/s, "
    ">= 0 (0 = no rate limit)",
    "max_grip_force_step_n": "largest change of the grip force per control tick in N, >= 0 (0 = no rate limit)",
    "max_joint_speed": "joint-space bundles: cap on each joint velocity command, or on each joint position "
    "command's change per second, in rad/s or m/s, >= 0 (0 = the bundle's bounds / no limit)",
    "max_joint_velocity_step": "joint_velocity bundles: largest change of a joint velocity command per control "
    "tick, >= 0 (0 = no rate limit)",
    "command_frame_id": "frame_id written into cmd_twist headers",
    "executor": "rclpy executor spinning the node: events (rclpy.experimental.EventsExecutor, lowest overhead) "
    "or single_threaded; read-only, read at start-up",
    "robot_joint_names": "optional: the robot's joints; when set, configure fails unless the bundle's joints "
    "are all among them",
}


READ_ONLY = frozenset({"executor"})
RANGES: dict[str, tuple[float, float]] = {
    "control_rate_hz": (0.0, MAX_CONTROL_RATE_HZ),
    "max_obs_age_s": (0.0, 60.0),
    "joint_state_timeout_s": (0.0, 60.0),
    "adapt_every_n_steps": (0, 1_000_000),
    **{name: (0.0, 1e6) for name in PARAMETER_DEFAULTS if name.startswith("max_") and name != "max_obs_age_s"},
}
"""Declared ranges of the numeric parameters (also in their descriptors, where ``ros2 param describe`` shows them)."""


def describe(name: str) -> ParameterDescriptor:
    """The descriptor a parameter is declared with: help text, read-only flag, range."""
    descriptor = ParameterDescriptor(description=PARAMETER_HELP[name], read_only=name in READ_ONLY)
    if name in RANGES:
        low, high = RANGES[name]
        if isinstance(low, int):
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    return descriptor


def check_parameter(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name``, or ``None`` if it is."""
    if name == "control_rate_hz" and not (math.isfinite(value) and 0.0 <= value <= MAX_CONTROL_RATE_HZ):
        return f"control_rate_hz must be in [0, {MAX_CONTROL_RATE_HZ:g}] Hz (0 = the bundle's rate), got {value}"
    if name == "trigger" and value not in TRIGGERS:
        return f"trigger must be one of {list(TRIGGERS)}, got {value!r}"
    if name == "executor" and value not in EXECUTORS:
        return f"executor must be one of {list(EXECUTORS)}, got {value!r}"
    if name == "joint_state_timeout_s" and not (math.isfinite(value) and 0.0 <= value <= 60.0):
        return f"joint_state_timeout_s must be in [0, 60] s (0 = do not wait), got {value}"
    if name == "execution_providers":
        try:
            resolve_provider(list(value))
        except ProviderError as err:
            return f"execution_providers: {err}"
    if name == "max_obs_age_s" and not (math.isfinite(value) and 0.0 < value <= 60.0):
        return f"max_obs_age_s must be in (0, 60] s, got {value}"
    if name == "adapt_every_n_steps" and value < 0:
        return f"adapt_every_n_steps must be >= 0 (0 = only at episode end), got {value}"
    if name.startswith("max_") and name != "max_obs_age_s" and not (math.isfinite(value) and value >= 0.0):
        return f"{name} must be a finite number >= 0 (0 = off), got {value}"
    if name == "robot_joint_names" and value is not None:
        if any(not j for j in value) or len(set(value)) != len(value):
            return f"robot_joint_names must be distinct non-empty names, got {list(value)}"
    return None


@dataclasses.dataclass(frozen=True)
class LoadedPolicy:
    """A bundle ready to run, with what the node derived from its manifest."""

    controller: BundleController
    """An ``AdaptiveController`` (context bundles) or a ``GradientController`` (gradient bundles)."""
    assembler: ObservationAssembler
    action: ActionSpec
    cadence: str
    reward_topic: str
    control_rate_hz: float
    bundle_path: str

    @property
    def episodes_per_step(self) -> int:
        """Episodes one adaptation step needs (gradient bundles; 1 for context bundles)."""
        return int(getattr(self.controller, "episodes_per_step", 1))

    def schedule(self, every_n_steps: int) -> AdaptationSchedule:
        return AdaptationSchedule(self.cadence, every_n_steps, self.episodes_per_step)

    def episodes_ready(self) -> int:
        """Complete episodes waiting for the next adaptation step (gradient bundles)."""
        return int(getattr(self.controller, "episodes_ready", 1))

    def buffer_status(self) -> dict[str, str]:
        """What the adaptation data looks like, for diagnostics."""
        controller = self.controller
        if isinstance(controller, GradientController):
            return {
                "adaptation_family": "gradient",
                "episodes_ready": str(controller.episodes_ready),
                "episodes_per_step": str(controller.episodes_per_step),
                "episode_len": str(controller.episode_len),
            }
        return {"adaptation_family": "context", "buffer_len": str(controller.buffer_len)}

    @property
    def observed_joints(self) -> tuple[str, ...]:
        """Joints the robot's joint state must carry for this bundle to observe and command."""
        commanded = self.action.joint_names if self.action.mode != CARTESIAN_VELOCITY else ()
        return tuple(dict.fromkeys(self.assembler.required_joints + commanded))

    def interface_differs(self, other: LoadedPolicy) -> str | None:
        """Why ``other`` cannot replace this policy without a reconfigure, or ``None``."""
        if other.action.mode != self.action.mode:
            return f"action mode changes from {self.action.mode} to {other.action.mode}"
        if (other.action.grip_index is None) != (self.action.grip_index is None):
            return "the gripper dimension appears or disappears"
        if other.assembler.pose_sources != self.assembler.pose_sources:
            return f"pose inputs change from {self.assembler.pose_sources} to {other.assembler.pose_sources}"
        if other.reward_topic != self.reward_topic:
            return f"reward topic changes from {self.reward_topic!r} to {other.reward_topic!r}"
        return None


def load_policy(
    bundle_path: str, providers: Sequence[str], control_rate_hz: float, max_obs_age_s: float
) -> LoadedPolicy:
    """Load, check and warm up a bundle; raises ``BundleError``/``ProviderError``/``LayoutError``."""
    if not bundle_path:
        raise BundleError("bundle_path is empty; set it to an exported bundle directory")
    controller = load_controller(bundle_path, list(providers))
    manifest = controller.manifest
    assembler = ObservationAssembler.from_manifest(manifest, max_obs_age_s)
    if assembler.obs_dim != controller.obs_dim:
        raise LayoutError(f"observation layout has {assembler.obs_dim} values, the policy takes {controller.obs_dim}")
    action = ActionSpec.from_manifest(manifest["action"])
    if action.dim != controller.act_dim:
        raise LayoutError(f"action block has {action.dim} dimensions, the policy returns {controller.act_dim}")
    adaptation = manifest.get("adaptation") or {}
    reward_source = adaptation.get("reward_source") or {}
    if reward_source.get("type", "topic") != "topic":
        raise LayoutError(
            f"adaptation.reward_source.type {reward_source.get('type')!r} is not supported; this node reads "
            "rewards from a topic"
        )
    cadence = str(adaptation.get("cadence", "episode"))
    policy = LoadedPolicy(
        controller=controller,
        assembler=assembler,
        action=action,
        cadence=cadence,
        reward_topic=str(reward_source.get("topic", "reward")),
        control_rate_hz=float(control_rate_hz or manifest["control_rate_hz"]),
        bundle_path=str(bundle_path),
    )
    policy.schedule(0)  # validates the cadence
    controller.warmup()
    return policy


def _seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _to_msg(seconds: float) -> Time:
    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def _format_ms(seconds: float) -> str:
    return "nan" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


class PolicyNode(LifecycleNode):
    """The meta-policy lifecycle node; see the module docstring for its interface."""

    def __init__(self, node_name: str = POLICY_NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # Registered first so a bad value in a parameter file is refused with the same reasons.
        self.add_on_set_parameters_callback(self._validate_parameters)
        for name, default in PARAMETER_DEFAULTS.items():
            self.declare_parameter(name, default, describe(name))
        self.declare_parameter(
            "robot_joint_names",
            Parameter.Type.STRING_ARRAY,
            ParameterDescriptor(description=PARAMETER_HELP["robot_joint_names"]),
        )
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._policy: LoadedPolicy | None = None
        self._filter: CommandFilter | None = None
        self._recorder = TransitionRecorder()
        self._entities: list[Any] = []
        self._control_timer = None
        self._twist_pub = self._joint_pub = self._gripper_pub = None
        self._active = False
        self._configure_error: str | None = None
        self._last_error: str | None = None
        self._trigger = self._param("trigger")
        self._trigger_on_joint_states = False
        self._reset_inputs()
        self._reset_counters()
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

    def _apply_parameters(self, params: Sequence[Parameter]) -> None:
        self._read_settings()

    def _param(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # robot_joint_names is optional and has no default
            return None

    def _read_settings(self) -> None:
        """Apply the parameters that take effect immediately (limits, observation age, adaptation)."""
        self._limits = SafetyLimits(
            max_ee_speed_mps=self._param("max_ee_speed_mps"),
            max_grip_force_n=self._param("max_grip_force_n"),
            max_ee_velocity_step_mps=self._param("max_ee_velocity_step_mps"),
            max_grip_force_step_n=self._param("max_grip_force_step_n"),
            max_joint_speed=self._param("max_joint_speed"),
            max_joint_velocity_step=self._param("max_joint_velocity_step"),
        )
        self._adaptation_enabled = bool(self._param("adaptation_enabled"))
        self._frame_id = self._param("command_frame_id")
        if self._filter is not None:
            self._filter.set_limits(self._limits)
        if self._policy is not None:
            self._policy.assembler.max_obs_age_s = self._param("max_obs_age_s")
            timer = self._control_timer
            if timer is not None and abs(timer.timer_period_ns * 1e-9 - self._timer_period_s()) > 1e-9:
                self._create_control_timer()
            self._schedule = self._policy.schedule(self._param("adapt_every_n_steps"))
            if isinstance(self._policy.controller, GradientController):
                # Exploration noise is what a policy-gradient step learns from; frozen means the mean action.
                self._policy.controller.explore = self._adaptation_enabled

    def _load_from_parameters(self) -> LoadedPolicy:
        for name in [*PARAMETER_DEFAULTS, "robot_joint_names"]:
            reason = check_parameter(name, self._param(name))
            if reason is not None:
                raise ValueError(reason)
        policy = load_policy(
            self._param("bundle_path"),
            self._param("execution_providers"),
            self._param("control_rate_hz"),
            self._param("max_obs_age_s"),
        )
        robot_joints = self._param("robot_joint_names")
        if robot_joints:
            bundle_joints = dict.fromkeys(policy.action.joint_names + policy.observed_joints)
            problem = check_joint_contract(bundle_joints, robot_joints)
            if problem is not None:
                raise ValueError(f"{problem} (robot_joint_names parameter)")
        return policy

    def _probe_joint_contract(self, policy: LoadedPolicy) -> None:
        """At configure: wait up to ``joint_state_timeout_s`` for one joint state and check its joints.

        Raises ``ValueError`` naming the mismatch. A probe node of its own (not spun by the executor)
        takes the message, so this works from inside the lifecycle callback.
        """
        timeout_s = self._param("joint_state_timeout_s")
        if not policy.observed_joints or timeout_s <= 0:
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
            self.get_logger().warning(
                f"no joint state on {topic} within joint_state_timeout_s={timeout_s:g} s; the robot's joints "
                "will be checked against the bundle's on the first joint state (holding until then)"
            )
            return
        problem = check_joint_contract(policy.observed_joints, msg.name)
        if problem is not None:
            raise ValueError(f"{problem} (joint state on {topic} names {list(msg.name)})")
        self.get_logger().info(f"joint contract holds: {topic} carries {list(policy.observed_joints)}")

    # ------------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            policy = self._load_from_parameters()
            self._probe_joint_contract(policy)
        except Exception as err:  # any failure must fail the transition with a reason, not crash
            self._configure_error = f"configure failed: {err}"
            self.get_logger().error(self._configure_error)
            return TransitionCallbackReturn.FAILURE
        self._configure_error = None
        self._last_error = None
        self._trigger = self._param("trigger")
        self._trigger_on_joint_states = self._trigger == "joint_states"
        self._install(policy)
        self._create_interfaces()
        self.get_logger().info(
            f"configured {policy.controller.family} bundle {policy.bundle_path} on execution provider "
            f"{policy.controller.provider} (preference {list(self._param('execution_providers'))}), warmed up; "
            f"{policy.control_rate_hz:g} Hz, trigger {self._trigger}, obs {policy.controller.obs_dim}, "
            f"action {policy.action.names}"
        )
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._recorder.reset()
        self._last_tick_s = None
        self._active = True
        self._control_timer.reset()
        self.get_logger().info("active: commanding the robot")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_commanding("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._destroy_interfaces()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self._active:
            self._stop_commanding("shutting down")
        self._destroy_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}; releasing the bundle")
        self._active = False
        self._destroy_interfaces()
        return TransitionCallbackReturn.SUCCESS

    def _stop_commanding(self, why: str) -> None:
        if self._control_timer is not None:
            self._control_timer.cancel()
        if self._active and self._filter is not None:
            self._publish_command(self._filter.hold(Hold(HoldKind.INACTIVE, why)))
        self._active = False
        self._recorder.reset()
        self.get_logger().info(f"{why}: published a hold command and stopped commanding")

    def _install(self, policy: LoadedPolicy) -> None:
        """Make ``policy`` the running one; the latest sensor samples stay valid, the contract is re-checked."""
        previous_filter = self._filter
        self._policy = policy
        self._filter = CommandFilter(policy.action, self._limits, 1.0 / policy.control_rate_hz)
        if previous_filter is not None:
            self._filter.resume_from(previous_filter)
        self._recorder.reset()
        self._contract_hold = None
        self._contract_checked = self._joint_state is not None
        if self._joint_state is not None:
            self._check_contract(self._joint_state.names)
        self._read_settings()

    def _check_contract(self, names: Sequence[str]) -> None:
        problem = check_joint_contract(self._policy.observed_joints, names)
        if problem is not None:
            self._contract_hold = Hold(HoldKind.JOINT_CONTRACT, problem)
            self.get_logger().error(f"{problem}; holding until the bundle is reloaded or reconfigured")

    def _reset_inputs(self) -> None:
        self._joint_state: JointStateSample | None = None
        self._poses: dict[str, PoseSample | None] = {}
        self._contract_checked = False
        self._contract_hold: Hold | None = None
        self._hold: Hold | None = None
        self._last_tick_s: float | None = None

    def _reset_counters(self) -> None:
        self._loop_period = LatencyStats()
        self._step_latency = LatencyStats()
        self._ticks = self._holds = 0
        self._episodes = self._successes = 0
        self._adaptations_since_reset = 0
        self._steps_since_adapt = 0

    def _create_interfaces(self) -> None:
        policy = self._policy
        assert policy is not None
        events = QoSProfile(depth=10)
        sub = self.create_subscription
        self._entities += [
            sub(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data),
            *(
                sub(PoseStamped, source, functools.partial(self._on_pose, source), qos_profile_sensor_data)
                for source in policy.assembler.pose_sources
            ),
            # Rewards and episode ends are events, not samples: losing one corrupts adaptation.
            sub(Float64, policy.reward_topic, self._on_reward, QoSProfile(depth=100)),
            sub(Bool, "episode_end", self._on_episode_end, events),
            self.create_service(Trigger, "~/reset_adaptation", self._on_reset_adaptation),
            self.create_service(SetBool, "~/set_adaptation", self._on_set_adaptation),
            self.create_service(Trigger, "~/reload_bundle", self._on_reload_bundle),
        ]
        if policy.action.mode == CARTESIAN_VELOCITY:
            self._twist_pub = self.create_lifecycle_publisher(TwistStamped, "cmd_twist", events)
            self._twist_msg = TwistStamped()
        else:
            self._joint_pub = self.create_lifecycle_publisher(Float64MultiArray, "joint_command", events)
        if policy.action.grip_index is not None:
            self._gripper_pub = self.create_lifecycle_publisher(Float64MultiArray, "gripper_command", events)
        self._create_control_timer()

    def _timer_period_s(self) -> float:
        """The control period; with trigger ``joint_states`` the watchdog's, which need not be faster
        than a quarter of ``max_obs_age_s`` (each rclpy timer call costs tens of microseconds)."""
        period_s = 1.0 / self._policy.control_rate_hz
        if self._trigger_on_joint_states:
            period_s = max(period_s, self._param("max_obs_age_s") / 4.0)
        return period_s

    def _create_control_timer(self) -> None:
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
        self._control_timer = self.create_timer(self._timer_period_s(), self._on_control_timer, autostart=self._active)

    def _destroy_interfaces(self) -> None:
        for entity in self._entities:
            if isinstance(entity, Service):
                self.destroy_service(entity)
            else:
                self.destroy_subscription(entity)
        self._entities.clear()
        for pub in (self._twist_pub, self._joint_pub, self._gripper_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._twist_pub = self._joint_pub = self._gripper_pub = None
        if self._control_timer is not None:
            self.destroy_timer(self._control_timer)
            self._control_timer = None
        self._policy = None
        self._filter = None
        self._recorder.reset()
        self._reset_inputs()

    # ---------------------------------------------------------------------------------- inputs
    def _on_joint_state(self, msg: JointState) -> None:
        self._joint_state = JointStateSample.create(
            msg.name, msg.position, msg.velocity, msg.effort, _seconds(msg.header.stamp), self._now_s()
        )
        if not self._contract_checked and self._policy is not None:
            self._contract_checked = True
            self._check_contract(msg.name)
        if self._trigger_on_joint_states and self._active:
            self._control_step()

    def _on_pose(self, source: str, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        self._poses[source] = PoseSample.create(
            (p.x, p.y, p.z), (q.x, q.y, q.z, q.w), _seconds(msg.header.stamp), self._now_s()
        )

    def _on_reward(self, msg: Float64) -> None:
        self._recorder.add_reward(msg.data)

    def _on_episode_end(self, msg: Bool) -> None:
        self._episodes += 1
        self._successes += int(bool(msg.data))
        if self._active:
            obs = self._observe(self._now_s())
            self._recorder.end_episode(obs if isinstance(obs, np.ndarray) else None)

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _now_msg(self) -> Time:
        return self.get_clock().now().to_msg()

    def _observe(self, now_s: float) -> np.ndarray | Hold:
        if self._contract_hold is not None:
            return self._contract_hold
        return self._policy.assembler.assemble(now_s, self._joint_state, self._poses)

    # ------------------------------------------------------------------------------ control loop
    def _on_control_timer(self) -> None:
        """Trigger ``timer``: every control step. Trigger ``joint_states``: the watchdog that keeps
        stepping (and so holds once the data is stale) when the robot's state stream stops; it holds
        at most a quarter of ``max_obs_age_s`` (or one control period) after the data turns stale."""
        if self._trigger_on_joint_states and self._last_tick_s is not None:
            if time.perf_counter() - self._last_tick_s < 1.5 / self._policy.control_rate_hz:
                return
        self._control_step()

    def _control_step(self) -> None:
        tick_start = time.perf_counter()
        if self._last_tick_s is not None:
            self._loop_period.record(tick_start - self._last_tick_s)
        self._last_tick_s = tick_start
        self._ticks += 1
        policy, filt = self._policy, self._filter
        if policy is None or filt is None or not self._active:
            return

        obs = self._observe(self._now_s())
        fresh_obs = obs if isinstance(obs, np.ndarray) else None
        closed = self._recorder.close(fresh_obs)
        learn = self._adaptation_enabled
        if learn:  # before act(): the controller pairs a transition with the action it last sent
            self._record(closed.transition)

        if fresh_obs is None:
            self._hold_with(obs)
        else:
            try:
                measured = None
                if policy.action.mode == JOINT_POSITION and not filt.has_commanded_joints:
                    measured = self._measured_joint_positions(policy.action.joint_names)
                command = filt.filter(policy.controller.act(fresh_obs), measured)
            except ValueError as err:
                self._hold_with(Hold(HoldKind.POLICY_ERROR, str(err)))
            else:
                self._publish_command(command)
                self._recorder.open(fresh_obs, command.values)
                if self._hold is not None:
                    self.get_logger().info(f"resuming after hold ({self._hold})")
                self._hold = None
        self._step_latency.record(time.perf_counter() - tick_start)
        if learn:  # after the command is out: an adaptation step never delays it
            self._maybe_adapt(closed.episode_ended)

    def _measured_joint_positions(self, names: Sequence[str]) -> np.ndarray | None:
        sample = self._joint_state
        if sample is None or len(sample.position) != len(sample.names):
            return None
        index = {name: i for i, name in enumerate(sample.names)}
        if any(name not in index for name in names):
            return None
        return sample.position[[index[name] for name in names]]

    def _hold_with(self, reason: Hold) -> None:
        self._publish_command(self._filter.hold(reason))
        self._holds += 1
        if self._hold is None or self._hold.kind != reason.kind:
            self.get_logger().warning(f"holding: {reason}")
        self._hold = reason

    def _record(self, transition: Transition | None) -> None:
        if transition is None:
            return
        try:
            self._policy.controller.observe(
                transition.obs, transition.command, transition.reward, transition.next_obs, transition.done
            )
            self._steps_since_adapt += 1
        except ValueError as err:
            self._last_error = f"dropped a transition: {err}"
            self.get_logger().warning(self._last_error, throttle_duration_sec=5.0)

    def _maybe_adapt(self, episode_ended: bool) -> None:
        controller = self._policy.controller
        at_end = episode_ended and self._schedule.at_episode_end(self._policy.episodes_ready())
        if at_end or self._schedule.after_step(self._steps_since_adapt):
            try:
                controller.adapt()
                self._adaptations_since_reset += 1
            except ValueError as err:
                self._last_error = f"adaptation failed: {err}"
                self.get_logger().warning(self._last_error)
            self._steps_since_adapt = 0

    def _publish_command(self, command: SafeCommand) -> None:
        spec = self._policy.action
        values, known = command.values.tolist(), command.known
        # Gripper first: a lockstep simulator steps when the twist arrives.
        if self._gripper_pub is not None and known[spec.grip_index]:
            self._gripper_pub.publish(Float64MultiArray(data=[values[spec.grip_index]]))
        if self._twist_pub is not None:
            msg = self._twist_msg  # reused: publish() serializes before it returns
            # A policy command carries the stamp of the newest input it was computed from, so a
            # driver can measure input-to-command latency and reject commands built on old data.
            msg.header.stamp = self._now_msg() if command.hold else _to_msg(self._policy.assembler.stamp_s)
            msg.header.frame_id = self._frame_id
            linear, angular = msg.twist.linear, msg.twist.angular
            linear.x, linear.y, linear.z = (values[i] for i in spec.linear_indices)
            for axis, i in zip("xyz", spec.angular_indices):
                setattr(angular, axis, values[i])
            self._twist_pub.publish(msg)
        elif self._joint_pub is not None and known[list(spec.joint_indices)].all():
            self._joint_pub.publish(Float64MultiArray(data=[values[i] for i in spec.joint_indices]))

    # -------------------------------------------------------------------------------- services
    def _on_reset_adaptation(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        adaptations = self._adaptations_since_reset
        self._policy.controller.reset()
        self._recorder.reset()
        self._adaptations_since_reset = 0
        self._steps_since_adapt = 0
        response.success = True
        response.message = f"context reset to the prior and buffer emptied (after {adaptations} adaptations)"
        self.get_logger().info(f"reset_adaptation: {response.message}")
        return response

    def _on_set_adaptation(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        result = self.set_parameters([Parameter("adaptation_enabled", value=bool(request.data))])[0]
        response.success = result.successful
        response.message = (
            f"adaptation {'enabled' if request.data else 'disabled (context frozen)'}"
            if result.successful
            else result.reason
        )
        return response

    def _on_reload_bundle(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        old = self._policy
        try:
            new = self._load_from_parameters()
            difference = old.interface_differs(new)
            if difference is not None:
                raise ValueError(f"{difference}; clean up and configure the node to switch to this bundle")
        except Exception as err:  # the old bundle keeps running whatever went wrong
            response.success = False
            response.message = f"kept {old.bundle_path}: reload of {self._param('bundle_path')!r} failed: {err}"
            self._last_error = response.message
            self.get_logger().error(response.message)
            return response
        self._install(new)
        if new.control_rate_hz != old.control_rate_hz:
            self._create_control_timer()
        self._last_error = None
        response.success = True
        response.message = f"loaded {new.bundle_path} on {new.controller.provider} at {new.control_rate_hz:g} Hz"
        self.get_logger().info(f"reload_bundle: {response.message}")
        return response

    # ----------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        policy = self._policy
        status = DiagnosticStatus(name=f"{self.get_name()}: meta-policy")
        if policy is None:
            status.level = (LEVEL_ERROR if self._configure_error else LEVEL_OK).to_bytes(1, "little")
            status.message = self._configure_error or "unconfigured"
            status.hardware_id = self._param("bundle_path")
            values = {"lifecycle_state": "unconfigured"}
        else:
            controller = policy.controller
            period_s = 1.0 / policy.control_rate_hz
            level, message = diagnostic_level(
                self._hold if self._active else self._contract_hold,
                self._last_error,
                self._loop_period.p99_s if self._active else math.nan,
                period_s,
            )
            if not self._active and level == LEVEL_OK:
                message = "inactive: not commanding"
            status.level = level.to_bytes(1, "little")
            status.message = message
            status.hardware_id = policy.bundle_path
            values = {
                "lifecycle_state": "active" if self._active else "inactive",
                "bundle_path": policy.bundle_path,
                "execution_provider": controller.provider,
                "control_rate_hz": f"{policy.control_rate_hz:g}",
                "inference_latency_p50_ms": _format_ms(controller.act_latency.p50_s),
                "inference_latency_p99_ms": _format_ms(controller.act_latency.p99_s),
                "step_latency_p50_ms": _format_ms(self._step_latency.p50_s),
                "step_latency_p99_ms": _format_ms(self._step_latency.p99_s),
                "loop_period_p50_ms": _format_ms(self._loop_period.p50_s),
                "loop_period_p99_ms": _format_ms(self._loop_period.p99_s),
                "trigger": self._trigger,
                "adapt_latency_p99_ms": _format_ms(controller.adapt_latency.p99_s),
                "adaptation_enabled": str(self._adaptation_enabled).lower(),
                "adaptation_steps": str(controller.num_adapt_steps),
                "adaptations_since_reset": str(self._adaptations_since_reset),
                **policy.buffer_status(),
                "episodes": str(self._episodes),
                "episode_successes": str(self._successes),
                "control_ticks": str(self._ticks),
                "hold_ticks": str(self._holds),
                "rewards_missing": str(self._recorder.rewards_missing),
            }
        values["hold_reason"] = str(self._hold) if (self._active and self._hold) else (
            str(self._contract_hold) if self._contract_hold else ""
        )
        values["last_error"] = self._last_error or self._configure_error or ""
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def release(self) -> None:
        """Publish a hold if commanding and free the bundle (called on process exit)."""
        if self._active:
            self._stop_commanding("shutting down")
        self._destroy_interfaces()


def main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point ``metarl_policy_node``."""
    run_node(PolicyNode, sys.argv if args is None else args, before_exit=PolicyNode.release)


if __name__ == "__main__":
    main()
