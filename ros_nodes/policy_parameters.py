"""The policy node's parameters as data: names, defaults, help, ranges, and the check that gives a reason.

``launch/params.yaml``, docs/ros_interface.md and the tests are held to this table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from metarl_robot.runtime import ProviderError, SafetyLimits, resolve_provider
from ros_nodes._runner import EXECUTORS

MAX_CONTROL_RATE_HZ = 1000.0
TRIGGERS = ("timer", "joint_states")
LIMITS = tuple(field.name for field in dataclasses.fields(SafetyLimits))
"""The deployer limit parameters, named as the fields of :class:`SafetyLimits`."""

PARAMETER_DEFAULTS: dict[str, Any] = {
    "bundle_path": "",
    "control_rate_hz": 0.0,
    "trigger": "timer",
    "execution_providers": ["cuda", "cpu"],
    "max_obs_age_s": 0.5,
    "joint_state_timeout_s": 2.0,
    "adaptation_enabled": True,
    "adapt_every_n_steps": 0,
    "adaptation_guard": True,
    "guard_max_drop": -1.0,
    "adapt_beyond_validated_steps": False,
    "max_ee_speed_mps": 0.0,
    "max_grip_force_n": 0.0,
    "max_ee_velocity_step_mps": 0.0,
    "max_grip_force_step_n": 0.0,
    "max_joint_speed": 0.0,
    "max_joint_velocity_step": 0.0,
    "command_frame_id": "world",
    "executor": "events",
    "record_path": "",
    "seed": -1,
}
OPTIONAL_PARAMETERS = ("robot_joint_names", "trusted_keys")
"""String-array parameters declared without a default (unset: not used)."""
PARAMETER_HELP = {
    "bundle_path": "exported bundle directory; read at configure and by ~/reload_bundle",
    "control_rate_hz": "control loop rate in Hz, 0 = the bundle's rate; read at configure and reload",
    "trigger": "timer: a control step every 1/control_rate_hz; joint_states: one per joint state received, with "
    "watchdog steps every max(1/control_rate_hz, max_obs_age_s/4) while they stop; read at configure",
    "execution_providers": "onnxruntime providers by preference (cuda, tensorrt, cpu); read at configure and reload",
    "max_obs_age_s": "an input older than this (by header stamp) makes the node hold, > 0",
    "joint_state_timeout_s": "configure waits this long for a joint state to check the joint contract, >= 0 "
    "(0 = check on the first joint state)",
    "adaptation_enabled": "collect transitions and adapt online",
    "adapt_every_n_steps": "also adapt every N transitions, >= 0 (0 = only at episode end)",
    "adaptation_guard": "roll back an adaptation that makes the bundle's declared signal (return or success) worse "
    "than the window before it by more than the allowed drop, and stop adapting until the next task",
    "guard_max_drop": "allowed drop of the guard's signal per episode, >= 0, or -1 for the bundle's "
    "adaptation.guard.max_drop (a bundle that declares no guard is guarded only when this is set)",
    "adapt_beyond_validated_steps": "keep adapting after the number of adaptation steps meta-training validated "
    "(adaptation.guard.validated_steps)",
    "max_ee_speed_mps": "cap on the end-effector speed in m/s, >= 0 (0 = the bundle's bounds)",
    "max_grip_force_n": "cap on the grip force magnitude in N, >= 0 (0 = the bundle's bounds)",
    "max_ee_velocity_step_mps": "largest end-effector velocity change per tick in m/s, >= 0 (0 = no rate limit)",
    "max_grip_force_step_n": "largest grip force change per tick in N, >= 0 (0 = no rate limit)",
    "max_joint_speed": "joint-space bundles: cap on each joint velocity, or position change per second, in rad/s "
    "or m/s, >= 0 (0 = the bundle's bounds / no limit)",
    "max_joint_velocity_step": "joint_velocity bundles: largest joint velocity change per tick, >= 0 (0 = off)",
    "command_frame_id": "frame_id written into cmd_twist headers",
    "executor": "rclpy executor: events (EventsExecutor, lowest overhead) or single_threaded; read-only",
    "record_path": "MCAP file to record inputs, commands, ticks and diagnostics into from each activation "
    "(empty = off); `metarl-robot replay FILE` reproduces the commands; read at activate",
    "seed": "seed of the policy's exploration noise, >= 0, or -1 for fresh entropy; a recording stores the one "
    "used; read at configure",
    "robot_joint_names": "optional: the robot's joints; configure fails unless the bundle's joints are among them",
    "trusted_keys": "optional: paths of the ed25519 public keys (PEM) of trusted bundle signers; when set, "
    "unsigned or wrongly signed bundles are refused; read-only",
}
READ_ONLY = frozenset({"executor", "trusted_keys"})
RANGES: dict[str, tuple[float, float]] = {
    "control_rate_hz": (0.0, MAX_CONTROL_RATE_HZ),
    "max_obs_age_s": (0.0, 60.0),
    "joint_state_timeout_s": (0.0, 60.0),
    "adapt_every_n_steps": (0, 1_000_000),
    "guard_max_drop": (-1.0, 1e9),
    "seed": (-1, 2**31 - 1),
    **{name: (0.0, 1e6) for name in LIMITS},
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
    if name in RANGES:
        low, high = RANGES[name]
        if not (math.isfinite(value) and low <= value <= high) or (name == "max_obs_age_s" and value == low):
            opening = "(" if name == "max_obs_age_s" else "["
            return f"{name} must be in {opening}{low:g}, {high:g}], got {value}: {PARAMETER_HELP[name]}"
    if name == "guard_max_drop" and -1.0 < value < 0.0:
        return f"guard_max_drop must be >= 0, or -1 for the bundle's threshold; got {value}"
    if name == "trigger" and value not in TRIGGERS:
        return f"trigger must be one of {list(TRIGGERS)}, got {value!r}"
    if name == "executor" and value not in EXECUTORS:
        return f"executor must be one of {list(EXECUTORS)}, got {value!r}"
    if name == "execution_providers":
        try:
            resolve_provider(list(value))
        except ProviderError as err:
            return f"execution_providers: {err}"
    if name in OPTIONAL_PARAMETERS and value is not None:
        if any(not j for j in value) or len(set(value)) != len(value):
            return f"{name} must be distinct non-empty strings, got {list(value)}"
    return None
