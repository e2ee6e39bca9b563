"""The policy node's decisions, free of ROS so they can be unit-tested without a DDS graph.

* :class:`ObservationAssembler` turns the latest sensor samples into the observation vector the
  bundle's manifest describes, mapping joints by name, or says why it cannot (a :class:`Hold`).
* :func:`check_joint_contract` compares the joints a bundle needs with the joints a robot reports.
* :class:`CommandFilter` clamps and rate-limits policy commands and builds hold commands (zero
  velocity, gripper force unchanged so a held object is never dropped).
* :class:`TransitionRecorder` pairs each command with the reward that followed it and the next
  observation, for online adaptation.
* :class:`AdaptationSchedule` and :func:`diagnostic_level` decide when to adapt and how healthy the
  node is.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from metarl_robot.runtime.schedule import CADENCES, AdaptationSchedule  # noqa: F401  (re-exported)

JOINT_SOURCE = "joint_states"
"""Layout source read from ``sensor_msgs/JointState``; every other source is a ``PoseStamped`` topic."""
JOINT_FIELDS = ("position", "velocity", "effort")
POSE_FIELD_SIZES = {"position": 3, "orientation": 4}

CARTESIAN_VELOCITY = "cartesian_velocity"
JOINT_VELOCITY = "joint_velocity"
JOINT_POSITION = "joint_position"
ACTION_MODES = (CARTESIAN_VELOCITY, JOINT_VELOCITY, JOINT_POSITION)
LINEAR_VELOCITY_NAMES = ("ee_vx", "ee_vy", "ee_vz")
ANGULAR_VELOCITY_NAMES = ("ee_wx", "ee_wy", "ee_wz")
GRIP_FORCE_NAME = "grip_force"

# diagnostic_msgs/DiagnosticStatus levels, repeated here so this module needs no ROS import.
LEVEL_OK, LEVEL_WARN, LEVEL_ERROR = 0, 1, 2

_SOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class LayoutError(ValueError):
    """A manifest's observation layout or action block cannot be served; the message names the entry."""


# ------------------------------------------------------------------------------------------- holds


class HoldKind(str, enum.Enum):
    """Why the node publishes a hold command instead of the policy's command."""

    NO_DATA = "no_data"
    """An input the layout needs has not been received yet."""
    STALE = "stale"
    """An input is older than ``max_obs_age_s``."""
    MISSING_JOINT = "missing_joint"
    """The latest joint state lacks a joint the layout names."""
    NON_FINITE = "non_finite"
    """An input holds NaN or infinity."""
    BAD_SIZE = "bad_size"
    """An input has the wrong number of values (or duplicate joint names)."""
    JOINT_CONTRACT = "joint_contract"
    """The robot's joints do not match the bundle's contract; needs a reconfigure or reload."""
    POLICY_ERROR = "policy_error"
    """The policy raised or returned an unusable command."""
    INACTIVE = "inactive"
    """The node is not active (deactivated or shutting down)."""


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


# ------------------------------------------------------------------------------------------ inputs


@dataclasses.dataclass(frozen=True)
class JointStateSample:
    """One joint state message: parallel arrays keyed by ``names`` (``velocity``/``effort`` may be empty)."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    stamp_s: float
    received_s: float = math.nan
    """When this node received it, on its own clock (``nan``: take the stamp)."""

    @classmethod
    def create(
        cls,
        names: Iterable[str],
        position: Iterable[float] = (),
        velocity: Iterable[float] = (),
        effort: Iterable[float] = (),
        stamp_s: float = 0.0,
        received_s: float = math.nan,
    ) -> JointStateSample:
        """Build a sample from any sequences (message fields, lists, arrays)."""
        as_array = lambda values: np.asarray(values, dtype=np.float64).reshape(-1)  # noqa: E731
        return cls(
            tuple(names), as_array(position), as_array(velocity), as_array(effort), float(stamp_s), float(received_s)
        )


@dataclasses.dataclass(frozen=True)
class PoseSample:
    """One stamped pose: ``position`` in metres, ``orientation_xyzw`` a quaternion."""

    position: np.ndarray
    orientation_xyzw: np.ndarray
    stamp_s: float
    received_s: float = math.nan
    """When this node received it, on its own clock (``nan``: take the stamp)."""

    @classmethod
    def create(
        cls, position: Iterable[float], orientation_xyzw: Iterable[float], stamp_s: float, received_s: float = math.nan
    ) -> PoseSample:
        return cls(
            np.asarray(position, dtype=np.float64).reshape(-1),
            np.asarray(orientation_xyzw, dtype=np.float64).reshape(-1),
            float(stamp_s),
            float(received_s),
        )


# ------------------------------------------------------------------------------ observation layout


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """One slice of the observation vector, as the manifest's ``observation.layout`` describes it."""

    name: str
    source: str
    field: str
    size: int
    joints: tuple[str, ...] = ()

    @classmethod
    def from_manifest(cls, entry: Mapping[str, Any], index: int) -> LayoutEntry:
        """Validate one layout entry; raises :class:`LayoutError` naming the entry and the fix."""
        where = f"observation.layout[{index}]"
        if not isinstance(entry, Mapping):
            raise LayoutError(f"{where}: expected a mapping, got {type(entry).__name__}")
        missing = [key for key in ("name", "source", "field", "size") if key not in entry]
        if missing:
            raise LayoutError(f"{where}: missing key(s) {missing}")
        name, source, field = str(entry["name"]), str(entry["source"]), str(entry["field"])
        where = f"observation.layout[{index}] ({name!r})"
        try:
            size = int(entry["size"])
        except (TypeError, ValueError):
            raise LayoutError(f"{where}: size {entry['size']!r} is not an integer") from None
        joints = tuple(str(j) for j in entry.get("joints") or ())
        if source == JOINT_SOURCE:
            if field not in JOINT_FIELDS:
                raise LayoutError(f"{where}: joint_states field {field!r} is not one of {list(JOINT_FIELDS)}")
            if not joints:
                raise LayoutError(f"{where}: a joint_states entry must list its 'joints' by name")
            if len(set(joints)) != len(joints):
                raise LayoutError(f"{where}: joints {list(joints)} contain duplicates")
            if size != len(joints):
                raise LayoutError(f"{where}: size {size} differs from the {len(joints)} joints listed")
        else:
            if not _SOURCE_NAME.match(source):
                raise LayoutError(f"{where}: source {source!r} is not a valid topic name")
            if field not in POSE_FIELD_SIZES:
                raise LayoutError(f"{where}: pose field {field!r} is not one of {sorted(POSE_FIELD_SIZES)}")
            if size != POSE_FIELD_SIZES[field]:
                raise LayoutError(f"{where}: pose {field} has {POSE_FIELD_SIZES[field]} values, size says {size}")
            if joints:
                raise LayoutError(f"{where}: only joint_states entries take 'joints'")
        return cls(name, source, field, size, joints)


def parse_layout(layout: Any) -> tuple[LayoutEntry, ...]:
    """Validate a manifest's ``observation.layout`` list."""
    if not isinstance(layout, Sequence) or isinstance(layout, str) or not layout:
        raise LayoutError("observation.layout must be a non-empty list of entries")
    return tuple(LayoutEntry.from_manifest(entry, i) for i, entry in enumerate(layout))


class ObservationAssembler:
    """Builds the observation vector from the latest inputs, or returns the :class:`Hold` that stops it.

    Joints are looked up by name in every joint state, so the publisher's joint order never matters.
    An input older than ``max_obs_age_s`` (by its header stamp against ``now_s``), one with missing
    joints, the wrong number of values or a non-finite value yields a hold instead of an observation.
    """

    def __init__(self, layout: Sequence[LayoutEntry], max_obs_age_s: float) -> None:
        if not layout:
            raise LayoutError("observation layout is empty")
        self.layout = tuple(layout)
        self.max_obs_age_s = float(max_obs_age_s)
        self.obs_dim = sum(entry.size for entry in self.layout)
        self.required_joints: tuple[str, ...] = tuple(
            dict.fromkeys(j for entry in self.layout for j in entry.joints)
        )
        self.pose_sources: tuple[str, ...] = tuple(
            dict.fromkeys(entry.source for entry in self.layout if entry.source != JOINT_SOURCE)
        )
        self.needs_joint_states = any(entry.source == JOINT_SOURCE for entry in self.layout)
        self._joint_fields_used = tuple(dict.fromkeys(e.field for e in self.layout if e.source == JOINT_SOURCE))
        self._plan_cache: tuple[tuple[str, ...], tuple[list[str], list[str], dict[str, np.ndarray]]] | None = None
        self.stamp_s = math.nan
        """Header stamp of the newest input in the last observation :meth:`assemble` returned."""

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], max_obs_age_s: float) -> ObservationAssembler:
        """Read ``manifest["observation"]["layout"]`` and check it adds up to ``observation.dim`` if given."""
        observation = manifest.get("observation")
        if not isinstance(observation, Mapping):
            raise LayoutError("manifest has no 'observation' block")
        assembler = cls(parse_layout(observation.get("layout")), max_obs_age_s)
        declared = observation.get("dim")
        if declared is not None and int(declared) != assembler.obs_dim:
            raise LayoutError(
                f"observation.layout sizes add up to {assembler.obs_dim} but observation.dim is {declared}"
            )
        return assembler

    def assemble(
        self,
        now_s: float,
        joint_state: JointStateSample | None,
        poses: Mapping[str, PoseSample | None],
    ) -> np.ndarray | Hold:
        """The float32 observation vector, or the first :class:`Hold` reason found.

        Runs every control tick, so the common case is cheap: presence, age and sizes are checked
        per input, finiteness once on the assembled vector; only a fault pays for finding its cause.
        """
        stamp_s = -math.inf
        parts: list[np.ndarray] = []
        if self.needs_joint_states:
            hold = self._check_joint_state(now_s, joint_state)
            if hold is not None:
                return hold
            stamp_s = joint_state.stamp_s
        for source in self.pose_sources:
            hold = self._check_pose(now_s, source, poses.get(source))
            if hold is not None:
                return hold
            stamp_s = max(stamp_s, poses[source].stamp_s)
        for entry in self.layout:
            if entry.source == JOINT_SOURCE:
                parts.append(getattr(joint_state, entry.field)[self._joint_plan(joint_state.names)[2][entry.name]])
            else:
                pose = poses[entry.source]
                parts.append(pose.position if entry.field == "position" else pose.orientation_xyzw)
        obs = np.concatenate(parts)
        if not np.isfinite(obs).all():
            return self._non_finite(obs)
        self.stamp_s = stamp_s
        return obs.astype(np.float32)

    # ---------------------------------------------------------------------------------- checks
    def _check_age(self, now_s: float, sample: JointStateSample | PoseSample, what: str) -> Hold | None:
        """Stale by its header stamp, or by when it arrived: a sender whose clock runs ahead of this
        node's still goes stale when it stops sending."""
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
        duplicates, missing, _ = self._joint_plan(sample.names)
        if duplicates:
            return Hold(HoldKind.BAD_SIZE, f"joint_states names joints {duplicates} more than once")
        n = len(sample.names)
        for field in self._joint_fields_used:
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

    def _non_finite(self, obs: np.ndarray) -> Hold:
        """The hold for an assembled vector with a NaN or infinity, naming the input and joints."""
        start = 0
        for entry in self.layout:
            bad = ~np.isfinite(obs[start:start + entry.size])
            start += entry.size
            if bad.any():
                if entry.source == JOINT_SOURCE:
                    joints = [j for j, b in zip(entry.joints, bad, strict=True) if b]
                    return Hold(HoldKind.NON_FINITE, f"joint_states.{entry.field} is not finite for {joints}")
                return Hold(HoldKind.NON_FINITE, f"{entry.source} holds a non-finite {entry.field}")
        return Hold(HoldKind.NON_FINITE, "the observation holds a non-finite value")

    def _joint_plan(self, names: tuple[str, ...]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
        """For a joint-state name list: duplicated names, required joints it lacks, and per layout entry
        the indices that gather its joints. Cached: a robot sends the same names every time."""
        if self._plan_cache is None or self._plan_cache[0] != names:
            index = {name: i for i, name in enumerate(names)}
            duplicates = sorted({name for name in names if names.count(name) > 1})
            missing = [j for j in self.required_joints if j not in index]
            gather = {} if missing else {
                entry.name: np.array([index[j] for j in entry.joints], dtype=np.intp)
                for entry in self.layout if entry.source == JOINT_SOURCE
            }
            self._plan_cache = (names, (duplicates, missing, gather))
        return self._plan_cache[1]


def check_joint_contract(
    bundle_joint_names: Iterable[str],
    robot_joint_names: Iterable[str],
    *,
    allow_extra: bool = True,
) -> str | None:
    """``None`` when the robot has every joint the bundle names, else a message naming the mismatch.

    Joints the robot reports but the bundle does not use are only an error when ``allow_extra`` is
    false (a joint state often carries joints of other devices); they are named in the message either
    way so a deployer sees the whole picture.
    """
    bundle = list(dict.fromkeys(bundle_joint_names))
    robot = list(dict.fromkeys(robot_joint_names))
    missing = [j for j in bundle if j not in robot]
    extra = [j for j in robot if j not in bundle]
    if not missing and (allow_extra or not extra):
        return None
    parts = []
    if missing:
        parts.append(f"robot is missing joint(s) {missing} that the bundle needs")
    if extra:
        parts.append(f"robot reports joint(s) {extra} that the bundle does not use")
    return "joint contract mismatch: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------- commands


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """The manifest's ``action`` block: what each command dimension means and its physical bounds."""

    mode: str
    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    joint_names: tuple[str, ...]
    linear_indices: tuple[int, ...] = ()
    angular_indices: tuple[int, ...] = ()
    grip_index: int | None = None
    joint_indices: tuple[int, ...] = ()

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def velocity_indices(self) -> tuple[int, ...]:
        """Dimensions that a hold command sets to zero (velocities); the others keep their last value."""
        if self.mode == CARTESIAN_VELOCITY:
            return self.linear_indices + self.angular_indices
        if self.mode == JOINT_VELOCITY:
            return self.joint_indices
        return ()

    @classmethod
    def from_manifest(cls, action: Mapping[str, Any]) -> ActionSpec:
        """Validate the ``action`` block; raises :class:`LayoutError` naming the bad key."""
        if not isinstance(action, Mapping):
            raise LayoutError("manifest has no 'action' block")
        mode = str(action.get("mode", ""))
        if mode not in ACTION_MODES:
            raise LayoutError(f"action.mode {mode!r} is not supported; expected one of {list(ACTION_MODES)}")
        names = tuple(str(n) for n in action.get("names") or ())
        dim = int(action.get("dim", len(names)))
        if len(names) != dim or dim == 0:
            raise LayoutError(f"action.names has {len(names)} entries but action.dim is {dim}")
        try:
            low = np.asarray(action["low"], dtype=np.float64).reshape(-1)
            high = np.asarray(action["high"], dtype=np.float64).reshape(-1)
        except KeyError as err:
            raise LayoutError(f"action block lacks {err.args[0]!r}") from None
        if low.shape != (dim,) or high.shape != (dim,):
            raise LayoutError(f"action.low/high need {dim} values, got {low.size} and {high.size}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise LayoutError(f"action.low {low.tolist()} / high {high.tolist()} must be finite with low <= high")
        joint_names = tuple(str(j) for j in action.get("joint_names") or ())
        index = {name: i for i, name in enumerate(names)}
        grip_index = index.get(GRIP_FORCE_NAME)
        if mode == CARTESIAN_VELOCITY:
            missing = [n for n in LINEAR_VELOCITY_NAMES if n not in index]
            if missing:
                raise LayoutError(f"cartesian_velocity action lacks dimension(s) {missing}")
            known = set(LINEAR_VELOCITY_NAMES) | set(ANGULAR_VELOCITY_NAMES) | {GRIP_FORCE_NAME}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise LayoutError(f"cartesian_velocity action has dimension(s) {unknown} this node cannot send")
            return cls(
                mode, names, low, high, joint_names,
                linear_indices=tuple(index[n] for n in LINEAR_VELOCITY_NAMES),
                angular_indices=tuple(index[n] for n in ANGULAR_VELOCITY_NAMES if n in index),
                grip_index=grip_index,
            )
        joint_indices = tuple(i for i, n in enumerate(names) if n != GRIP_FORCE_NAME)
        if len(joint_indices) != len(joint_names):
            raise LayoutError(
                f"{mode} action has {len(joint_indices)} joint dimension(s) but joint_names lists {len(joint_names)}"
            )
        return cls(mode, names, low, high, joint_names, grip_index=grip_index, joint_indices=joint_indices)


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
    """A command ready to publish: ``values`` in the bundle's action order and physical units.

    ``known[i]`` is false only in a hold issued before any command set dimension ``i`` (a gripper
    force never commanded yet): such a dimension must not be published, so the device keeps whatever
    it is doing. ``hold`` is the reason for a hold command, ``None`` for a policy command.
    """

    values: np.ndarray
    known: np.ndarray
    hold: Hold | None = None


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
        return bool(self._last_known[list(self.spec.joint_indices)].all())

    def reset(self) -> None:
        """Forget the last command: velocities are taken to be zero, other dimensions unknown."""
        self._last = np.zeros(self.spec.dim)
        self._last_known = np.zeros(self.spec.dim, dtype=bool)
        self._last_known[list(self.spec.velocity_indices)] = True

    def filter(self, raw: Sequence[float] | np.ndarray, joint_positions: np.ndarray | None = None) -> SafeCommand:
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
            return SafeCommand(cmd.copy(), self._all_known)
        linear = self._linear
        if linear.size and self.limits.max_ee_speed_mps > 0:
            cmd[linear] = _limit_norm(cmd[linear], self.limits.max_ee_speed_mps)
        if linear.size and self.limits.max_ee_velocity_step_mps > 0 and self._last_known[linear].all():
            step = _limit_norm(cmd[linear] - self._last[linear], self.limits.max_ee_velocity_step_mps)
            cmd[linear] = self._last[linear] + step
        joints = self._joints
        if joints.size and self.limits.max_joint_velocity_step > 0 and self.spec.mode == JOINT_VELOCITY:
            step = self.limits.max_joint_velocity_step
            cmd[joints] = self._last[joints] + np.clip(cmd[joints] - self._last[joints], -step, step)
        if joints.size and self.limits.max_joint_speed > 0 and self.spec.mode == JOINT_POSITION and self.control_period_s > 0:
            if self._last_known[joints].all():
                reference = self._last[joints]
            elif joint_positions is not None:
                reference = np.asarray(joint_positions, dtype=np.float64).reshape(-1)
            else:
                raise ValueError("the first joint_position command needs the measured joint positions to be rate-limited")
            step = self.limits.max_joint_speed * self.control_period_s
            cmd[joints] = reference + np.clip(cmd[joints] - reference, -step, step)
        grip = self.spec.grip_index
        if grip is not None and self.limits.max_grip_force_step_n > 0 and self._last_known[grip]:
            step_n = self.limits.max_grip_force_step_n
            cmd[grip] = self._last[grip] + np.clip(cmd[grip] - self._last[grip], -step_n, step_n)
        cmd = np.clip(cmd, self.low, self.high)
        self._last, self._last_known = cmd, self._all_known
        return SafeCommand(cmd.copy(), self._all_known)

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


# ------------------------------------------------------------------------------------- adaptation


@dataclasses.dataclass(frozen=True)
class Transition:
    """What the adaptation buffer stores: ``command`` applied at ``obs``, then ``reward`` and ``next_obs``."""

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

    Per control tick the node calls :meth:`close` with the fresh observation (``None`` while holding)
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


# ----------------------------------------------------------------------------------- diagnostics


def diagnostic_level(
    hold: Hold | None,
    last_error: str | None,
    loop_period_p99_s: float,
    control_period_s: float,
) -> tuple[int, str]:
    """Overall ``(level, message)`` for the node's diagnostic status.

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
