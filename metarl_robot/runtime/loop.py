"""One control loop, free of ROS: :meth:`RobotLoop.tick` turns the robot's latest inputs into a command.

A tick checks the inputs (present, fresh, finite, well-formed, joints by name, the joint contract),
assembles the observation with the robot contract (:mod:`metarl_robot.contract`), asks the controller
for a command, clamps and rate-limits it (:class:`CommandFilter`), or builds a hold command instead
(:class:`Hold`: zero velocity, gripper force unchanged). It pairs each command with the rewards that
followed it and the next observation (:class:`TransitionRecorder`), feeds those transitions to the
controller and adapts when the controller's schedule says so, after the command is out. It keeps the
latency and period statistics and the diagnostic status.

:class:`RobotLoop` talks to its controller only through :class:`~metarl_robot.runtime.base.Controller`,
so it runs every method family alike. Numpy and the standard library only; the ROS 2 node
(``ros_nodes/policy_node.py``) wires topics, parameters and services to it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from metarl_robot.contract import (
    JOINT_POSITION,
    POSITION_DELTA,
    JOINT_SOURCE,
    JOINT_VELOCITY,
    ActionSpec,
    JointStateSample,
    LayoutError,
    ObservationLayout,
    PoseSample,
    RobotContract,
    RobotInputs,
    TwistSample,
    check_joint_contract,
)
from metarl_robot.runtime.base import Controller, LatencyStats
from metarl_robot.runtime.bundle import BundleError
from metarl_robot.runtime.guard import AdaptationGuard, GuardSettings, GuardSpec

__all__ = [
    "LEVEL_ERROR",
    "LEVEL_OK",
    "LEVEL_WARN",
    "WAITING_HOLDS",
    "ClosedStep",
    "CommandFilter",
    "Hold",
    "HoldKind",
    "LoopSettings",
    "LoopStats",
    "ObservationAssembler",
    "RobotLoop",
    "SafeCommand",
    "SafetyLimits",
    "Transition",
    "TransitionRecorder",
    "diagnostic_level",
]

# diagnostic_msgs/DiagnosticStatus levels, repeated here so the runtime needs no ROS import.
LEVEL_OK, LEVEL_WARN, LEVEL_ERROR = 0, 1, 2

_logger = logging.getLogger("metarl_robot.runtime.loop")


class Logger(Protocol):
    """Where the loop reports hold changes and errors: a :class:`logging.Logger` or an rclpy logger."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


# ------------------------------------------------------------------------------------------- holds


class HoldKind(str, enum.Enum):
    """Why a tick sends a hold command instead of the policy's command."""

    NO_DATA = "no_data"
    """An input the layout needs has not been received yet."""
    STALE = "stale"
    """An input is older than ``max_obs_age_s``, stamped in the future, unstamped, or stopped arriving."""
    MISSING_JOINT = "missing_joint"
    """The latest joint state lacks a joint the layout names."""
    NON_FINITE = "non_finite"
    """An input holds NaN or infinity."""
    IMPLAUSIBLE = "implausible"
    """An input lies outside the bounds the manifest gives for it (far beyond anything seen in training)."""
    BAD_SIZE = "bad_size"
    """An input has the wrong number of values (or duplicate joint names)."""
    JOINT_CONTRACT = "joint_contract"
    """The robot's joints do not match the bundle's contract; needs a reconfigure or reload."""
    POLICY_ERROR = "policy_error"
    """The policy raised or returned an unusable command."""
    INACTIVE = "inactive"
    """The loop is not active (deactivated or shutting down)."""


WAITING_HOLDS = frozenset({HoldKind.NO_DATA, HoldKind.INACTIVE})
"""Hold kinds that mean waiting (diagnostic level WARN); every other hold is a fault (ERROR): the robot
sent stale, non-finite, malformed or incomplete data, its joints break the contract, or the policy failed."""


@dataclasses.dataclass(frozen=True)
class Hold:
    """A typed reason to hold: ``kind`` for code, ``detail`` for people."""

    kind: HoldKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}"


# ------------------------------------------------------------------------------ checked observation


class ObservationAssembler:
    """The observation from the latest inputs, or the :class:`Hold` that stops it.

    Checks that every input the layout reads is present, no older than ``max_obs_age_s`` (by its
    header stamp against ``now_s``, and by when it arrived), stamped, well-formed and finite; then
    assembles the vector with :meth:`ObservationLayout.assemble`, the robot contract's one assembly.
    """

    def __init__(self, layout: ObservationLayout, max_obs_age_s: float,
                 bounds: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        self.layout = layout
        self.max_obs_age_s = float(max_obs_age_s)
        self.bounds = None if bounds is None else (np.asarray(bounds[0], np.float32), np.asarray(bounds[1], np.float32))
        """``(low, high)`` plausibility bounds of the observation, or ``None``."""
        self.stamp_s = math.nan
        """Header stamp of the newest input in the last observation :meth:`assemble` returned."""

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], max_obs_age_s: float) -> ObservationAssembler:
        return cls(ObservationLayout.from_manifest(manifest), max_obs_age_s)

    @property
    def obs_dim(self) -> int:
        return self.layout.dim

    @property
    def required_joints(self) -> tuple[str, ...]:
        return self.layout.required_joints

    @property
    def pose_sources(self) -> tuple[str, ...]:
        return self.layout.pose_sources

    @property
    def twist_sources(self) -> tuple[str, ...]:
        return self.layout.twist_sources

    def assemble(
        self,
        now_s: float,
        joint_state: JointStateSample | None,
        poses: Mapping[str, PoseSample | None],
        twists: Mapping[str, TwistSample | None] | None = None,
    ) -> np.ndarray | Hold:
        """The float32 observation vector, or the first :class:`Hold` reason found.

        Runs every control tick, so the common case is cheap: presence, age and sizes are checked
        per input, finiteness once on the assembled vector; only a fault pays for finding its cause.
        """
        layout, stamp_s = self.layout, -math.inf
        if layout.needs_joint_states:
            hold = self._check_joint_state(now_s, joint_state)
            if hold is not None:
                return hold
            stamp_s = joint_state.stamp_s  # type: ignore[union-attr]
        twists = twists or {}
        for sources, samples, check in ((layout.pose_sources, poses, self._check_pose),
                                        (layout.twist_sources, twists, self._check_twist)):
            for source in sources:
                sample = samples.get(source)
                hold = check(now_s, source, sample)
                if hold is not None:
                    return hold
                stamp_s = max(stamp_s, sample.stamp_s)  # type: ignore[union-attr]
        obs = layout.assemble(joint_state, poses, twists)  # type: ignore[arg-type]
        if not np.isfinite(obs).all():
            return self._non_finite(obs)
        bounds = self.bounds
        if bounds is not None and ((obs < bounds[0]).any() or (obs > bounds[1]).any()):
            return self._implausible(obs)
        self.stamp_s = stamp_s
        return obs

    def _check_age(self, now_s: float, sample: Any, what: str) -> Hold | None:
        """Stale by its header stamp, or by when it arrived: a sender whose clock runs ahead of this
        loop's still goes stale when it stops sending."""
        limit = self.max_obs_age_s
        age_s = now_s - sample.stamp_s
        if sample.stamp_s == 0.0:
            return Hold(HoldKind.STALE, f"{what} has no header stamp (0); stamp inputs with the time they were measured")
        if age_s > limit:
            return Hold(HoldKind.STALE, f"{what} is {age_s:.3f} s old (max_obs_age_s={limit:g})")
        if -age_s > limit:
            return Hold(HoldKind.STALE, f"{what} is stamped {-age_s:.3f} s in the future: the sender's clock and "
                        f"this node's disagree by more than max_obs_age_s={limit:g}; synchronise them (chrony/PTP)")
        if now_s - sample.received_s > limit:
            return Hold(HoldKind.STALE, f"no {what} received for {now_s - sample.received_s:.3f} s "
                        f"(max_obs_age_s={limit:g})")
        return None

    def _check_joint_state(self, now_s: float, sample: JointStateSample | None) -> Hold | None:
        if sample is None:
            return Hold(HoldKind.NO_DATA, "no joint_states received yet")
        stale = self._check_age(now_s, sample, "joint_states")
        if stale is not None:
            return stale
        duplicates, missing, _ = self.layout.joint_plan(sample.names)
        if duplicates:
            return Hold(HoldKind.BAD_SIZE, f"joint_states names joints {duplicates} more than once")
        n = len(sample.names)
        for field in self.layout.joint_fields:
            values = getattr(sample, field)
            if len(values) != n:
                return Hold(HoldKind.BAD_SIZE, f"joint_states.{field} has {len(values)} values for {n} names")
        if missing:
            return Hold(HoldKind.MISSING_JOINT, f"joint_states lacks joint(s) {missing}")
        return None

    def _check_pose(self, now_s: float, source: str, sample: PoseSample | None) -> Hold | None:
        if sample is None:
            return Hold(HoldKind.NO_DATA, f"no {source} received yet")
        stale = self._check_age(now_s, sample, source)
        if stale is not None:
            return stale
        if sample.position.shape != (3,) or sample.orientation_xyzw.shape != (4,):
            return Hold(HoldKind.BAD_SIZE, f"{source} needs 3 position and 4 orientation values")
        return None

    def _check_twist(self, now_s: float, source: str, sample: TwistSample | None) -> Hold | None:
        if sample is None:
            return Hold(HoldKind.NO_DATA, f"no {source} received yet")
        stale = self._check_age(now_s, sample, source)
        if stale is not None:
            return stale
        if sample.linear.shape != (3,) or sample.angular.shape != (3,):
            return Hold(HoldKind.BAD_SIZE, f"{source} needs 3 linear and 3 angular values")
        return None

    def _implausible(self, obs: np.ndarray) -> Hold:
        """The hold for a value outside the bounds, naming the input, field (and joint) and the range."""
        low, high = self.bounds  # type: ignore[misc]
        start = 0
        for entry in self.layout.entries:
            span = slice(start, start + entry.size)
            start += entry.size
            bad = np.flatnonzero((obs[span] < low[span]) | (obs[span] > high[span]))
            if bad.size:
                i = int(bad[0])
                if entry.source == JOINT_SOURCE:
                    what = f"joint_states.{entry.field} of {entry.joints[i]}"
                else:
                    what = f"{entry.source}.{entry.field}[{i}]"
                j = span.start + i
                return Hold(HoldKind.IMPLAUSIBLE, f"{what} is {float(obs[j]):.6g}, outside the plausible range "
                            f"[{float(low[j]):.4g}, {float(high[j]):.4g}] this policy was trained for (manifest "
                            "observation.bounds); check the sensor and its units")
        return Hold(HoldKind.IMPLAUSIBLE, "the observation lies outside the manifest's observation.bounds")

    def _non_finite(self, obs: np.ndarray) -> Hold:
        """The hold for an assembled vector with a NaN or infinity, naming the input and joints."""
        start = 0
        for entry in self.layout.entries:
            bad = ~np.isfinite(obs[start:start + entry.size])
            start += entry.size
            if bad.any():
                if entry.source == JOINT_SOURCE:
                    joints = [j for j, b in zip(entry.joints, bad, strict=True) if b]
                    return Hold(HoldKind.NON_FINITE, f"joint_states.{entry.field} is not finite for {joints}")
                return Hold(HoldKind.NON_FINITE, f"{entry.source} holds a non-finite {entry.field}")
        return Hold(HoldKind.NON_FINITE, "the observation holds a non-finite value")


# ---------------------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class SafetyLimits:
    """Deployer limits applied on top of the bundle's own bounds; ``0`` switches a limit off."""

    max_ee_speed_mps: float = 0.0
    """Cap on the norm of the commanded end-effector linear velocity."""
    max_grip_force_n: float = 0.0
    """Cap on the magnitude of the commanded gripper force."""
    max_ee_velocity_step_mps: float = 0.0
    """Largest change of the linear velocity vector from one control tick to the next."""
    max_grip_force_step_n: float = 0.0
    """Largest change of the gripper force from one control tick to the next."""
    max_joint_speed: float = 0.0
    """Joint-space bundles: cap on each joint's commanded velocity (``joint_velocity``) or on each
    joint's commanded position change per second, from its last command or measured position
    (``joint_position``); rad/s or m/s."""
    max_joint_velocity_step: float = 0.0
    """``joint_velocity`` bundles: largest change of a joint's velocity command per control tick."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{field.name} must be a finite number >= 0 (0 = off), got {value}")


@dataclasses.dataclass(frozen=True)
class SafeCommand:
    """A command ready to send: ``values`` in the bundle's action order and physical units.

    ``known[i]`` is false only in a hold issued before any command set dimension ``i`` (a gripper
    force never commanded yet): such a dimension must not be sent, so the device keeps whatever it
    is doing. ``hold`` is the reason for a hold command, ``None`` for a policy command, whose
    ``stamp_s`` is the header stamp of the newest input it was computed from (``nan`` for holds).
    """

    values: np.ndarray
    known: np.ndarray
    hold: Hold | None = None
    stamp_s: float = math.nan


class CommandFilter:
    """Clamps commands to the bundle's bounds and the deployer's limits, then rate-limits them.

    Rate limits compare with the last command this filter issued, holds included, so the robot
    ramps up again after a hold; before the first command the robot is taken to be at rest.
    Stopping (a hold) is never rate-limited.
    """

    def __init__(self, spec: ActionSpec, limits: SafetyLimits = SafetyLimits(), control_period_s: float = 0.0) -> None:
        self.spec = spec
        self.control_period_s = float(control_period_s)
        """Used to turn ``max_joint_speed`` into a position step for ``joint_position`` bundles."""
        self._linear = np.array(spec.linear_indices, dtype=np.intp)
        self._joints = np.array(spec.joint_indices, dtype=np.intp)
        self._all_known = np.ones(spec.dim, dtype=bool)
        self._all_known.flags.writeable = False  # shared by every command: never modified in place
        self.reset()
        self.set_limits(limits)

    def set_limits(self, limits: SafetyLimits) -> None:
        """Apply new deployer limits from the next command on."""
        self.limits = limits
        low, high = self.spec.low.copy(), self.spec.high.copy()
        grip = self.spec.grip_index
        if grip is not None and limits.max_grip_force_n > 0:
            high[grip] = min(high[grip], limits.max_grip_force_n)
            low[grip] = min(max(low[grip], -limits.max_grip_force_n), high[grip])
        if limits.max_ee_speed_mps > 0:
            for i in self.spec.linear_indices:
                low[i] = max(low[i], -limits.max_ee_speed_mps)
                high[i] = min(high[i], limits.max_ee_speed_mps)
        if limits.max_joint_speed > 0 and self.spec.mode == JOINT_VELOCITY:
            for i in self.spec.joint_indices:
                low[i] = max(low[i], -limits.max_joint_speed)
                high[i] = min(high[i], limits.max_joint_speed)
        self.low, self.high = low, high

    def resume_from(self, previous: CommandFilter) -> None:
        """Continue from another filter's last command (e.g. after a bundle reload) if the actions match."""
        if previous.spec.names == self.spec.names:
            self._last, self._last_known = previous._last.copy(), previous._last_known.copy()

    @property
    def has_commanded_joints(self) -> bool:
        """Whether every joint dimension has a last command (rate limits then start from it)."""
        return bool(self._last_known[self._joints].all())

    def reset(self) -> None:
        """Forget the last command: velocities are taken to be zero, other dimensions unknown."""
        self._last = np.zeros(self.spec.dim)
        self._last_known = np.zeros(self.spec.dim, dtype=bool)
        self._last_known[list(self.spec.velocity_indices)] = True

    def filter(
        self, raw: Sequence[float] | np.ndarray, joint_positions: np.ndarray | None = None, stamp_s: float = math.nan
    ) -> SafeCommand:
        """Clamp and rate-limit a policy command; raises ``ValueError`` if it is malformed.

        ``joint_positions`` (measured, in the bundle's joint order) is where a ``joint_position``
        bundle's first command is rate-limited from, before any command was sent.
        """
        cmd = np.asarray(raw, dtype=np.float64).reshape(-1)
        if cmd.shape != (self.spec.dim,):
            raise ValueError(f"policy command has {cmd.size} values, the bundle's action has {self.spec.dim}")
        if not np.all(np.isfinite(cmd)):
            raise ValueError(f"policy command {cmd.tolist()} is not finite")
        cmd = np.clip(cmd, self.low, self.high)
        limits = self.limits
        if not (limits.max_ee_speed_mps or limits.max_ee_velocity_step_mps or limits.max_joint_velocity_step
                or limits.max_grip_force_step_n or (limits.max_joint_speed and self.spec.mode == JOINT_POSITION)):
            self._last, self._last_known = cmd, self._all_known  # no limit beyond the bounds: done
            return SafeCommand(cmd.copy(), self._all_known, None, stamp_s)
        linear = self._linear
        if linear.size and limits.max_ee_speed_mps > 0:
            cmd[linear] = _limit_norm(cmd[linear], limits.max_ee_speed_mps)
        if linear.size and limits.max_ee_velocity_step_mps > 0 and self._last_known[linear].all():
            step = _limit_norm(cmd[linear] - self._last[linear], limits.max_ee_velocity_step_mps)
            cmd[linear] = self._last[linear] + step
        joints = self._joints
        if joints.size and limits.max_joint_velocity_step > 0 and self.spec.mode == JOINT_VELOCITY:
            step = limits.max_joint_velocity_step
            cmd[joints] = self._last[joints] + np.clip(cmd[joints] - self._last[joints], -step, step)
        if joints.size and limits.max_joint_speed > 0 and self.spec.mode == JOINT_POSITION and self.control_period_s > 0:
            if self._last_known[joints].all():
                reference = self._last[joints]
            elif joint_positions is not None:
                reference = np.asarray(joint_positions, dtype=np.float64).reshape(-1)
            else:
                raise ValueError("the first joint_position command needs the measured joint positions to be rate-limited")
            step = limits.max_joint_speed * self.control_period_s
            cmd[joints] = reference + np.clip(cmd[joints] - reference, -step, step)
        grip = self.spec.grip_index
        if grip is not None and limits.max_grip_force_step_n > 0 and self._last_known[grip]:
            step_n = limits.max_grip_force_step_n
            cmd[grip] = self._last[grip] + np.clip(cmd[grip] - self._last[grip], -step_n, step_n)
        cmd = np.clip(cmd, self.low, self.high)
        self._last, self._last_known = cmd, self._all_known
        return SafeCommand(cmd.copy(), self._all_known, None, stamp_s)

    def hold(self, reason: Hold) -> SafeCommand:
        """Zero every velocity dimension; keep every other dimension (gripper force) at its last value."""
        values, known = self._last.copy(), self._last_known.copy()
        velocity = list(self.spec.velocity_indices)
        values[velocity] = 0.0
        known[velocity] = True
        self._last, self._last_known = values.copy(), known.copy()
        return SafeCommand(values, known, reason)


def _limit_norm(vector: np.ndarray, max_norm: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector * (max_norm / norm) if norm > max_norm else vector


# ------------------------------------------------------------------------------------- transitions


@dataclasses.dataclass(frozen=True)
class Transition:
    """What adaptation learns from: ``command`` applied at ``obs``, then ``reward`` and ``next_obs``."""

    obs: np.ndarray
    command: np.ndarray
    reward: float
    next_obs: np.ndarray
    done: bool


class ClosedStep(NamedTuple):
    """Result of :meth:`TransitionRecorder.close`: the finished transition (if usable) and episode end."""

    transition: Transition | None
    episode_ended: bool


class TransitionRecorder:
    """Pairs each policy command with the reward that followed it and the next observation.

    Per control tick the loop calls :meth:`close` with the fresh observation (``None`` while holding)
    and, when it acts, :meth:`open` with the observation and the command it sent. Rewards arriving in
    between are summed into the open transition. An episode end is recorded when it arrives and
    closes the open transition as ``done`` at the next tick, so a reward published just before the
    episode end is still counted; its ``next_obs`` is the observation seen when the end arrived.
    A transition whose command was overridden by a hold is dropped: it did not happen.
    """

    def __init__(self) -> None:
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._reward = 0.0
        self._num_rewards = 0
        self._episode_ended = False
        self._terminal_obs: np.ndarray | None = None
        self.rewards_missing = 0
        """Transitions closed without any reward received (recorded with reward 0)."""

    @property
    def has_open_transition(self) -> bool:
        return self._pending is not None

    def add_reward(self, reward: float) -> None:
        """Add a reward to the open transition; ignored when none is open or it is not finite."""
        if self._pending is not None and math.isfinite(reward):
            self._reward += float(reward)
            self._num_rewards += 1

    def end_episode(self, terminal_obs: np.ndarray | None) -> None:
        """Record that the episode ended; ``terminal_obs`` is the latest observation, if there is one."""
        self._episode_ended = True
        if self._pending is not None and terminal_obs is not None:
            self._terminal_obs = np.array(terminal_obs, copy=True)

    def close(self, next_obs: np.ndarray | None) -> ClosedStep:
        """Finish the open transition with ``next_obs`` (``None``: no valid observation this tick)."""
        ended, self._episode_ended = self._episode_ended, False
        terminal, self._terminal_obs = self._terminal_obs, None
        pending, self._pending = self._pending, None
        reward, num_rewards = self._reward, self._num_rewards
        self._reward, self._num_rewards = 0.0, 0
        if pending is None:
            return ClosedStep(None, ended)
        following = terminal if (ended and terminal is not None) else next_obs
        if following is None:
            return ClosedStep(None, ended)
        if num_rewards == 0:
            self.rewards_missing += 1
        obs, command = pending
        return ClosedStep(Transition(obs, command, reward, np.array(following, copy=True), ended), ended)

    def open(self, obs: np.ndarray, command: np.ndarray) -> None:
        """Start a transition: ``command`` was just sent for ``obs``."""
        self._pending = (np.array(obs, copy=True), np.array(command, copy=True))
        self._reward, self._num_rewards = 0.0, 0

    def reset(self) -> None:
        """Drop the open transition and any recorded episode end (new task, new bundle)."""
        self._pending, self._terminal_obs = None, None
        self._reward, self._num_rewards, self._episode_ended = 0.0, 0, False


# ------------------------------------------------------------------------------------- diagnostics


def diagnostic_level(
    hold: Hold | None,
    last_error: str | None,
    loop_period_p99_s: float,
    control_period_s: float,
) -> tuple[int, str]:
    """Overall ``(level, message)`` of the loop's diagnostic status.

    ERROR while holding because of bad data (stale, non-finite, wrong size, missing joints), a broken
    joint contract or a failing policy; WARN while waiting for the first data, after a recoverable
    error (e.g. a rejected reload) or when the control loop's 99th percentile period exceeds 1.5
    control periods; OK otherwise.
    """
    if hold is not None and hold.kind not in WAITING_HOLDS:
        return LEVEL_ERROR, f"holding: {hold}"
    if hold is not None:
        return LEVEL_WARN, f"holding: {hold}"
    if last_error:
        return LEVEL_WARN, last_error
    if math.isfinite(loop_period_p99_s) and loop_period_p99_s > 1.5 * control_period_s:
        return LEVEL_WARN, (
            f"control loop p99 period {loop_period_p99_s * 1e3:.1f} ms exceeds 1.5 x {control_period_s * 1e3:.1f} ms"
        )
    return LEVEL_OK, "running"


def _format_ms(seconds: float) -> str:
    return "nan" if math.isnan(seconds) else f"{seconds * 1e3:.3f}"


# -------------------------------------------------------------------------------------------- loop


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What a deployer may change while the loop runs."""

    max_obs_age_s: float = 0.5
    """An input older than this (by header stamp), stamped further in the future, unstamped, or not
    received for this long makes the loop hold."""
    limits: SafetyLimits = SafetyLimits()
    adaptation_enabled: bool = True
    """Record transitions and adapt; off freezes the adapted state (``Controller.set_learning``)."""
    adapt_every_n_steps: int = 0
    """Passed to ``Controller.schedule``: also adapt every N transitions (cadence permitting)."""
    guard: GuardSettings = GuardSettings()
    """The adaptation guard: roll back adaptations that make the declared signal worse
    (:mod:`metarl_robot.runtime.guard`)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_obs_age_s) and self.max_obs_age_s > 0):
            raise ValueError(f"max_obs_age_s must be finite and > 0, got {self.max_obs_age_s}")
        if self.adapt_every_n_steps < 0:
            raise ValueError(f"adapt_every_n_steps must be >= 0, got {self.adapt_every_n_steps}")


class LoopStats:
    """Counters and timings that outlive one bundle: a reload or reconfigure passes them on."""

    def __init__(self) -> None:
        self.ticks = 0
        self.holds = 0
        self.episodes = 0
        self.successes = 0
        self.adaptations_since_reset = 0
        self.rewards_missing = 0
        self.loop_period = LatencyStats()
        """Time between the starts of consecutive ticks."""
        self.step_latency = LatencyStats()
        """Time from the start of a tick to its command sent (adaptation excluded)."""
        self.last_tick_s: float | None = None
        """``time.perf_counter()`` at the start of the last tick; ``None`` until a tick after :meth:`RobotLoop.start`."""


class RobotLoop:
    """The control loop of one controller on one robot; :meth:`tick` is its one step.

    ``controller`` is any :class:`~metarl_robot.runtime.base.Controller`; ``contract`` says how to
    read the robot and command it. ``control_rate_hz`` overrides the contract's rate (0: keep it).
    ``stats`` carries counters over from an earlier loop. :meth:`load` builds a loop from a bundle.

    Between :meth:`start` and :meth:`stop` every :meth:`tick` returns a command: the policy's, clamped
    and rate-limited, or a hold. Rewards (:meth:`add_reward`) and episode ends (:meth:`end_episode`)
    may arrive at any time in between.
    """

    def __init__(
        self,
        controller: Controller,
        contract: RobotContract,
        settings: LoopSettings = LoopSettings(),
        *,
        control_rate_hz: float = 0.0,
        reward_topic: str = "reward",
        stats: LoopStats | None = None,
        logger: Logger | None = None,
        bundle_path: str = "",
        execution_provider: str = "",
    ) -> None:
        if contract.observation.dim != controller.obs_dim:
            raise LayoutError(
                f"observation layout has {contract.observation.dim} values, the policy takes {controller.obs_dim}"
            )
        if contract.action.dim != controller.act_dim:
            raise LayoutError(
                f"action block has {contract.action.dim} dimensions, the policy returns {controller.act_dim}"
            )
        rate = float(control_rate_hz) or contract.control_rate_hz
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"control_rate_hz must be finite and > 0, got {control_rate_hz}")
        self.controller = controller
        self.contract = contract
        self.control_rate_hz = rate
        self.reward_topic = reward_topic
        self.bundle_path = bundle_path
        self.execution_provider = execution_provider
        self.stats = stats if stats is not None else LoopStats()
        self.log: Logger = logger if logger is not None else _logger
        self.assembler = ObservationAssembler(contract.observation, settings.max_obs_age_s, contract.observation_bounds)
        self.filter = CommandFilter(contract.action, settings.limits, 1.0 / rate)
        self.recorder = TransitionRecorder()
        self.act_latency = LatencyStats()
        """Duration of ``controller.act`` calls that returned a command."""
        self.adapt_latency = LatencyStats()
        """Duration of ``controller.adapt`` calls that succeeded."""
        self.adaptation_steps = 0
        """Successful ``controller.adapt`` calls since this loop was built."""
        self.active = False
        self.hold: Hold | None = None
        """The hold of the last tick, ``None`` while commanding."""
        self.contract_hold: Hold | None = None
        """Set when the robot's joints broke the contract; cleared only by a new loop."""
        self.joints_checked = False
        self.last_error: str | None = None
        """The last recoverable error (dropped transition, failed adaptation, rejected reload)."""
        self._steps_since_adapt = 0
        self._last_drop_log_s = -math.inf
        manifest = getattr(controller, "manifest", None)
        self.declared_guard = GuardSpec.from_adaptation(manifest["adaptation"]) if manifest else None
        """The guard the bundle declares (``adaptation.guard``), ``None`` if none."""
        self.guard = AdaptationGuard(None)  # apply_settings gives it the spec in force
        self.apply_settings(settings)

    @classmethod
    def load(
        cls,
        bundle_path: str | Path,
        providers: Sequence[str] | None = None,
        settings: LoopSettings = LoopSettings(),
        *,
        control_rate_hz: float = 0.0,
        trusted_keys: Sequence[str | Path] = (),
        stats: LoopStats | None = None,
        logger: Logger | None = None,
        seed: int | None = None,
    ) -> RobotLoop:
        """Load the bundle at ``bundle_path`` (``metarl_robot.runtime.load_controller``; with
        ``trusted_keys``, PEM public key paths, it must be signed by one of them), check its contract
        against its graphs, warm it up and wrap it in a loop. ``seed`` seeds the controller's exploration
        noise (``None``: fresh entropy).

        Raises ``BundleError`` (bad bundle, bad signature), ``ProviderError``, ``LayoutError`` (a
        contract a robot cannot serve) or ``ValueError`` (a cadence the schedule does not know).
        """
        from metarl_robot.runtime import load_controller  # the package imports this module

        if not str(bundle_path):
            raise BundleError("bundle_path is empty; set it to an exported bundle directory")
        controller = load_controller(
            bundle_path, None if providers is None else list(providers), trusted_keys=list(trusted_keys) or None,
            seed=seed,
        )
        manifest = controller.manifest
        reward_source = manifest["adaptation"]["reward_source"]  # load_controller checked it is there
        if reward_source.get("type", "topic") != "topic":
            raise LayoutError(
                f"adaptation.reward_source.type {reward_source.get('type')!r} is not supported; the control loop "
                "reads rewards from a topic"
            )
        loop = cls(
            controller, RobotContract.from_manifest(manifest), settings,
            control_rate_hz=control_rate_hz, reward_topic=str(reward_source.get("topic", "reward")), stats=stats,
            logger=logger, bundle_path=str(bundle_path), execution_provider=controller.provider,
        )
        controller.warmup()
        return loop

    # ----------------------------------------------------------------------------------- settings
    def apply_settings(self, settings: LoopSettings) -> None:
        """Use new deployer settings from the next tick on."""
        self.schedule = self.controller.schedule(settings.adapt_every_n_steps)
        self.settings = settings
        self.filter.set_limits(settings.limits)
        self.assembler.max_obs_age_s = settings.max_obs_age_s
        self.guard.spec = settings.guard.resolve(self.declared_guard)
        self.guard.beyond_validated = settings.guard.beyond_validated
        if self.guard.spec is None:
            self.guard.stopped = None
        self.controller.set_learning(settings.adaptation_enabled)

    @property
    def learning(self) -> bool:
        """Transitions are recorded and adaptations run: enabled by the deployer and not stopped by the guard."""
        return self.settings.adaptation_enabled and self.guard.stopped is None

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def interface_differs(self, other: RobotLoop) -> str | None:
        """Why ``other`` cannot replace this loop on the same topics, or ``None``."""
        mine, theirs = self.contract, other.contract
        if theirs.action.mode != mine.action.mode:
            return f"action mode changes from {mine.action.mode} to {theirs.action.mode}"
        if (theirs.action.grip_index is None) != (mine.action.grip_index is None):
            return "the gripper dimension appears or disappears"
        for kind in ("pose_sources", "twist_sources"):
            before, after = getattr(mine.observation, kind), getattr(theirs.observation, kind)
            if before != after:
                return f"{kind[:-8]} inputs change from {before} to {after}"
        if other.reward_topic != self.reward_topic:
            return f"reward topic changes from {self.reward_topic!r} to {other.reward_topic!r}"
        return None

    def resume_from(self, previous: RobotLoop) -> None:
        """Take over from ``previous`` (a reload): rate limits continue from its last command."""
        self.filter.resume_from(previous.filter)
        self.hold = previous.hold
        self.active = previous.active

    def check_joints(self, names: Sequence[str]) -> str | None:
        """Check a joint state's names against the contract; on a mismatch hold until a new loop."""
        self.joints_checked = True
        problem = check_joint_contract(self.contract.observed_joints, names)
        if problem is not None:
            self.contract_hold = Hold(HoldKind.JOINT_CONTRACT, problem)
            self.log.error(f"{problem}; holding until the bundle is reloaded or reconfigured")
        return problem

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start commanding: the next tick acts."""
        self.recorder.reset()
        self.stats.last_tick_s = None
        self.active = True

    def stop(self, reason: str) -> SafeCommand | None:
        """Stop commanding; returns the hold command to send (``None`` if the loop was not active)."""
        command = self.filter.hold(Hold(HoldKind.INACTIVE, reason)) if self.active else None
        self.active = False
        self.recorder.reset()
        return command

    # --------------------------------------------------------------------------------------- tick
    def observe(self, now_s: float, inputs: RobotInputs) -> np.ndarray | Hold:
        """The observation from ``inputs`` at ``now_s``, or why there is none."""
        if self.contract_hold is not None:
            return self.contract_hold
        return self.assembler.assemble(now_s, inputs.joint_state, inputs.poses, inputs.twists)

    def tick(
        self, now_s: float, inputs: RobotInputs, send: Callable[[SafeCommand], Any] | None = None
    ) -> SafeCommand | None:
        """One control step at ``now_s`` (the clock input stamps are measured against) with the
        latest ``inputs``: the command to send, a hold, or ``None`` while the loop is not active.

        ``send``, when given, is called with the command as soon as it is ready; an adaptation step
        that falls due runs after it, so it never delays the command.
        """
        start = time.perf_counter()
        stats = self.stats
        if stats.last_tick_s is not None:
            stats.loop_period.record(start - stats.last_tick_s)
        stats.last_tick_s = start
        stats.ticks += 1
        if not self.active:
            return None
        obs = self.observe(now_s, inputs)
        fresh = obs if isinstance(obs, np.ndarray) else None
        missing = self.recorder.rewards_missing
        closed = self.recorder.close(fresh)
        stats.rewards_missing += self.recorder.rewards_missing - missing
        learn = self.learning
        # Before act(): a controller may pair a transition with the action it last sent, or read it in
        # the next act (a recurrent memory). One whose observe() only stores the transition says so
        # (``observe_may_follow_act``), and the loop records it after the command is out.
        late = learn and getattr(self.controller, "observe_may_follow_act", False)
        if learn and not late:
            self._record(closed.transition)
        command = self._hold_with(obs) if fresh is None else self._act(fresh, inputs.joint_state)  # type: ignore[arg-type]
        if self.contract.action.mode == POSITION_DELTA:
            command = self._delta_to_target(command, inputs.joint_state)
        if send is not None:
            send(command)
        stats.step_latency.record(time.perf_counter() - start)
        if late:
            self._record(closed.transition)
        if learn:
            self._maybe_adapt(closed.episode_ended)
        return command

    def _act(self, obs: np.ndarray, joint_state: JointStateSample | None) -> SafeCommand:
        try:
            measured = None
            if self.contract.action.mode == JOINT_POSITION and not self.filter.has_commanded_joints:
                measured = self._measured_joint_positions(joint_state)
            start = time.perf_counter()
            raw = self.controller.act(obs)
            self.act_latency.record(time.perf_counter() - start)
            command = self.filter.filter(raw, measured, self.assembler.stamp_s)
        except ValueError as err:
            return self._hold_with(Hold(HoldKind.POLICY_ERROR, str(err)))
        self.recorder.open(obs, command.values)
        if self.hold is not None:
            self.log.info(f"resuming after hold ({self.hold})")
            self.hold = None
        return command

    def _delta_to_target(self, command: SafeCommand, joint_state: JointStateSample | None) -> SafeCommand:
        """A ``position_delta`` command as the joint-position target the robot is sent: measured position
        plus displacement (a hold's displacement is zero). Without a measured position nothing is known."""
        spec = self.contract.action
        joints = list(spec.joint_indices)
        values, known = command.values.copy(), command.known.copy()
        measured = self._measured_joint_positions(joint_state)
        if measured is None:
            known[joints] = False
        else:
            values[joints] = measured + values[joints]
        return dataclasses.replace(command, values=values, known=known)

    def _measured_joint_positions(self, sample: JointStateSample | None) -> np.ndarray | None:
        names = self.contract.action.joint_names
        if sample is None or len(sample.position) != len(sample.names):
            return None
        index = {name: i for i, name in enumerate(sample.names)}
        if any(name not in index for name in names):
            return None
        return sample.position[[index[name] for name in names]]

    def _hold_with(self, reason: Hold) -> SafeCommand:
        command = self.filter.hold(reason)
        self.stats.holds += 1
        if self.hold is None or self.hold.kind != reason.kind:
            self.log.warning(f"holding: {reason}")
        self.hold = reason
        return command

    def _record(self, transition: Transition | None) -> None:
        if transition is None:
            return
        try:
            self.controller.observe(
                transition.obs, transition.command, transition.reward, transition.next_obs, transition.done
            )
            self._steps_since_adapt += 1
        except ValueError as err:
            self.last_error = f"dropped a transition: {err}"
            now = time.monotonic()
            if now - self._last_drop_log_s >= 5.0:
                self._last_drop_log_s = now
                self.log.warning(self.last_error)

    def _maybe_adapt(self, episode_ended: bool) -> None:
        schedule = self.schedule
        at_end = episode_ended and schedule.at_episode_end(self.controller.episodes_ready)
        if not (at_end or schedule.after_step(self._steps_since_adapt)):
            return
        self._steps_since_adapt = 0
        guard = self.guard
        rollbacks = guard.rollbacks
        if not guard.permits(self.controller):
            self._guard_stopped(rolled_back=guard.rollbacks != rollbacks)
            return
        start = time.perf_counter()
        try:
            self.controller.adapt()
        except ValueError as err:
            guard.adapt_failed()
            self.last_error = f"adaptation failed: {err}"
            self.log.warning(self.last_error)
        else:
            guard.adapted()
            self.adapt_latency.record(time.perf_counter() - start)
            self.adaptation_steps += 1
            self.stats.adaptations_since_reset += 1

    def _guard_stopped(self, rolled_back: bool) -> None:
        """The guard rolled an adaptation back, or the validated steps have run: no more transitions or
        adaptations for this task. The controller acts as it did while the guard measured it (a gradient
        bundle keeps its exploration noise: the return it was judged on was earned with it)."""
        self.recorder.reset()
        if rolled_back:
            self.last_error = self.guard.last_event
            self.log.warning(self.guard.last_event)
        else:
            self.log.info(self.guard.last_event)

    # ----------------------------------------------------------------------------- events, services
    def add_reward(self, reward: float) -> None:
        """A reward for the command last sent (rewards until the next tick add up)."""
        self.recorder.add_reward(reward)
        self.guard.add_reward(reward)

    def end_episode(self, success: bool, now_s: float, inputs: RobotInputs) -> None:
        """The episode ended: its last transition closes as ``done`` at the next tick."""
        self.stats.episodes += 1
        self.stats.successes += int(bool(success))
        guard = self.guard
        guard.end_episode(success)
        # Judge the last adaptation as soon as its window is as long as the one before it: waiting for
        # the next adaptation to fall due would wait forever while the robot holds (held ticks are not
        # recorded, so the controller's episodes never fill).
        if self.learning and guard.judgeable and guard.judge(self.controller):
            self._guard_stopped(rolled_back=True)
        if self.active:
            obs = self.observe(now_s, inputs)
            self.recorder.end_episode(obs if isinstance(obs, np.ndarray) else None)

    def reset_adaptation(self) -> int:
        """A new task: the controller goes back to its prior and the open transition is dropped.
        Returns the number of adaptations since the previous reset."""
        adaptations = self.stats.adaptations_since_reset
        self.controller.reset()
        self.recorder.reset()
        self.guard.reset()
        self.stats.adaptations_since_reset = 0
        self._steps_since_adapt = 0
        return adaptations

    # -------------------------------------------------------------------------------------- status
    def status(self) -> tuple[int, str, dict[str, str]]:
        """``(level, message, key/values)`` describing the loop, its controller and its counters."""
        stats, active = self.stats, self.active
        level, message = diagnostic_level(
            self.hold if active else self.contract_hold,
            self.last_error,
            stats.loop_period.p99_s if active else math.nan,
            self.control_period_s,
        )
        if not active and level == LEVEL_OK:
            message = "inactive: not commanding"
        hold = self.hold if active and self.hold else self.contract_hold
        values = {
            "bundle_path": self.bundle_path,
            "execution_provider": self.execution_provider,
            "control_rate_hz": f"{self.control_rate_hz:g}",
            "inference_latency_p50_ms": _format_ms(self.act_latency.p50_s),
            "inference_latency_p99_ms": _format_ms(self.act_latency.p99_s),
            "step_latency_p50_ms": _format_ms(stats.step_latency.p50_s),
            "step_latency_p99_ms": _format_ms(stats.step_latency.p99_s),
            "loop_period_p50_ms": _format_ms(stats.loop_period.p50_s),
            "loop_period_p99_ms": _format_ms(stats.loop_period.p99_s),
            "adapt_latency_p99_ms": _format_ms(self.adapt_latency.p99_s),
            "adaptation_enabled": str(self.settings.adaptation_enabled).lower(),
            "adaptation_steps": str(self.adaptation_steps),
            "adaptations_since_reset": str(stats.adaptations_since_reset),
            **self.controller.status(),
            **self.guard.status(),
            "episodes": str(stats.episodes),
            "episode_successes": str(stats.successes),
            "control_ticks": str(stats.ticks),
            "hold_ticks": str(stats.holds),
            "rewards_missing": str(stats.rewards_missing),
            "hold_reason": str(hold) if hold else "",
            "last_error": self.last_error or "",
        }
        return level, message, values
