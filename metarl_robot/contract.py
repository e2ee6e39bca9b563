"""The robot contract: what a policy reads from a robot, what it sends back and how often. Numpy only.

A bundle's manifest (and the ``interface`` of every env that can be exported) states three things:

* the **observation layout** (:class:`ObservationLayout`): which slices of the observation vector come
  from which joint state field (joints looked up by name), pose field or twist field.
  :meth:`ObservationLayout.assemble` is the one function that builds the observation vector from those
  samples: the simulated scenes build their observations with it from the joint states and poses they
  publish, and the robot-side control loop (:mod:`metarl_robot.runtime.loop`) builds them with it
  from what the robot publishes, so the two cannot drift apart;
* the **action specification** (:class:`ActionSpec`): mode, names, units, bounds, scale, joint names
  and which dimension is what (linear velocity, angular velocity, grip force, joints);
* the **control rate** in Hz.

:class:`RobotContract` bundles the three, read from a manifest or an env interface.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ACTION_MODES",
    "CARTESIAN_VELOCITY",
    "GRIP_FORCE_NAME",
    "JOINT_FIELDS",
    "JOINT_POSITION",
    "JOINT_SOURCE",
    "JOINT_VELOCITY",
    "POSE_FIELDS",
    "POSITION_DELTA",
    "TWIST_FIELDS",
    "ActionSpec",
    "JointStateSample",
    "LayoutEntry",
    "LayoutError",
    "ObservationLayout",
    "PoseSample",
    "RobotContract",
    "RobotInputs",
    "TwistSample",
    "check_joint_contract",
    "is_robot_layout",
    "read_control_rate_hz",
    "yaw_sin_cos",
]

JOINT_SOURCE = "joint_states"
"""The layout source read from a joint state (``sensor_msgs/JointState`` on ROS)."""
JOINT_FIELDS = ("position", "velocity", "effort")
POSE_FIELDS: Mapping[str, int] = {"position": 3, "orientation": 4, "yaw_sin_cos": 2}
"""Fields of a pose source (``geometry_msgs/PoseStamped``) and their sizes; ``yaw_sin_cos`` is the sine
and cosine of the rotation about the world vertical, computed from the orientation."""
TWIST_FIELDS: Mapping[str, int] = {"linear": 3, "angular": 3}
"""Fields of a twist source (``geometry_msgs/TwistStamped``) and their sizes."""
JOINT, POSE, TWIST = "joint", "pose", "twist"
"""The kinds of layout source."""

CARTESIAN_VELOCITY = "cartesian_velocity"
JOINT_VELOCITY = "joint_velocity"
JOINT_POSITION = "joint_position"
POSITION_DELTA = "position_delta"
"""Joint displacements per control step: the loop sends measured position + displacement as a
``joint_position`` target (a hold is a zero displacement: stay where the joints are)."""
ACTION_MODES = (CARTESIAN_VELOCITY, JOINT_VELOCITY, JOINT_POSITION, POSITION_DELTA)
"""Action modes a robot can be commanded in (an env may use others; such a bundle cannot drive a robot)."""
LINEAR_VELOCITY_NAMES = {"ee_vx": "x", "ee_vy": "y", "ee_vz": "z"}
ANGULAR_VELOCITY_NAMES = {"ee_wx": "x", "ee_wy": "y", "ee_wz": "z"}
GRIP_FORCE_NAME = "grip_force"

_SOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class LayoutError(ValueError):
    """A manifest's observation layout, action block or control rate cannot be served; the message names
    the entry."""


# ------------------------------------------------------------------------------------------- samples


def _vector(values: Iterable[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


@dataclasses.dataclass(frozen=True)
class JointStateSample:
    """One joint state: parallel arrays keyed by ``names`` (``velocity``/``effort`` may be empty)."""

    names: tuple[str, ...]
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray
    stamp_s: float = 0.0
    """Header stamp: when it was measured, on the sender's clock (0: not stamped)."""
    received_s: float = math.nan
    """When it arrived, on the receiver's clock (``nan``: take the stamp)."""

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
        """Build a sample from any sequences (message fields, lists, arrays) as float64 arrays."""
        return cls(tuple(names), _vector(position), _vector(velocity), _vector(effort), float(stamp_s), float(received_s))


@dataclasses.dataclass(frozen=True)
class PoseSample:
    """One stamped pose: ``position`` in metres, ``orientation_xyzw`` a quaternion."""

    position: np.ndarray
    orientation_xyzw: np.ndarray
    stamp_s: float = 0.0
    received_s: float = math.nan

    @classmethod
    def create(
        cls,
        position: Iterable[float],
        orientation_xyzw: Iterable[float],
        stamp_s: float = 0.0,
        received_s: float = math.nan,
    ) -> PoseSample:
        return cls(_vector(position), _vector(orientation_xyzw), float(stamp_s), float(received_s))


@dataclasses.dataclass(frozen=True)
class TwistSample:
    """One stamped twist: ``linear`` velocity in m/s, ``angular`` velocity in rad/s."""

    linear: np.ndarray
    angular: np.ndarray
    stamp_s: float = 0.0
    received_s: float = math.nan

    @classmethod
    def create(
        cls, linear: Iterable[float], angular: Iterable[float], stamp_s: float = 0.0, received_s: float = math.nan
    ) -> TwistSample:
        return cls(_vector(linear), _vector(angular), float(stamp_s), float(received_s))


@dataclasses.dataclass
class RobotInputs:
    """The latest sample of every input a layout may read: what a robot publishes (or a scene would)."""

    joint_state: JointStateSample | None = None
    poses: dict[str, PoseSample] = dataclasses.field(default_factory=dict)
    """Pose samples by source (topic) name."""
    twists: dict[str, TwistSample] = dataclasses.field(default_factory=dict)
    """Twist samples by source (topic) name."""


def yaw_sin_cos(orientation_xyzw: Sequence[float]) -> np.ndarray:
    """``[sin(yaw), cos(yaw)]`` of a quaternion's rotation about the world vertical."""
    x, y, z, w = orientation_xyzw
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    return np.array([math.sin(yaw), math.cos(yaw)])


# -------------------------------------------------------------------------------- observation layout


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """One slice of the observation vector: ``size`` values of ``field`` of ``source``."""

    name: str
    source: str
    field: str
    size: int
    joints: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``joint``, ``pose`` or ``twist``: what kind of sample the source is."""
        if self.source == JOINT_SOURCE:
            return JOINT
        return POSE if self.field in POSE_FIELDS else TWIST

    @classmethod
    def parse(cls, entry: Mapping[str, Any], index: int) -> LayoutEntry:
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
            return cls(name, source, field, size, joints)
        if not _SOURCE_NAME.match(source):
            raise LayoutError(f"{where}: source {source!r} is not a valid topic name")
        sizes = POSE_FIELDS if field in POSE_FIELDS else TWIST_FIELDS if field in TWIST_FIELDS else None
        if sizes is None:
            raise LayoutError(
                f"{where}: field {field!r} of source {source!r} is neither a pose field {list(POSE_FIELDS)} "
                f"nor a twist field {list(TWIST_FIELDS)}"
            )
        if size != sizes[field]:
            raise LayoutError(f"{where}: {field} has {sizes[field]} values, size says {size}")
        if joints:
            raise LayoutError(f"{where}: only joint_states entries take 'joints'")
        return cls(name, source, field, size)


class ObservationLayout:
    """A validated observation layout and the one function that assembles observations from it.

    Attributes: ``entries``, ``dim`` (the observation size), ``required_joints`` (every joint the
    layout names, in order), ``pose_sources`` and ``twist_sources`` (source names in order),
    ``needs_joint_states`` and ``joint_fields`` (the joint state fields the layout reads).
    """

    def __init__(self, entries: Sequence[LayoutEntry]) -> None:
        if not entries:
            raise LayoutError("observation layout is empty")
        self.entries = tuple(entries)
        self.dim = sum(entry.size for entry in self.entries)
        kinds: dict[str, str] = {}
        for entry in self.entries:
            if kinds.setdefault(entry.source, entry.kind) != entry.kind:
                raise LayoutError(
                    f"observation layout: source {entry.source!r} is read both as a {kinds[entry.source]} and as a "
                    f"{entry.kind} (entry {entry.name!r}); a source is one kind of sample"
                )
        self.required_joints: tuple[str, ...] = tuple(dict.fromkeys(j for e in self.entries for j in e.joints))
        self.pose_sources: tuple[str, ...] = tuple(s for s, kind in kinds.items() if kind == POSE)
        self.twist_sources: tuple[str, ...] = tuple(s for s, kind in kinds.items() if kind == TWIST)
        self.needs_joint_states = JOINT in kinds.values()
        self.joint_fields: tuple[str, ...] = tuple(dict.fromkeys(e.field for e in self.entries if e.kind == JOINT))
        self._steps = tuple((entry.kind, entry.source, entry.field) for entry in self.entries)
        self._plan: tuple[tuple[str, ...], tuple[list[str], list[str], tuple[np.ndarray | None, ...]]] | None = None

    @classmethod
    def parse(cls, layout: Any) -> ObservationLayout:
        """Validate a list of layout entries (the manifest's ``observation.layout``, an interface's
        ``observation_layout``); raises :class:`LayoutError` naming the bad entry."""
        if not isinstance(layout, Sequence) or isinstance(layout, str) or not layout:
            raise LayoutError("observation.layout must be a non-empty list of entries")
        return cls([LayoutEntry.parse(entry, i) for i, entry in enumerate(layout)])

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ObservationLayout:
        """Read ``manifest["observation"]["layout"]``, checking it adds up to ``observation.dim`` if given."""
        observation = manifest.get("observation")
        if not isinstance(observation, Mapping):
            raise LayoutError("manifest has no 'observation' block")
        layout = cls.parse(observation.get("layout"))
        declared = observation.get("dim")
        if declared is not None and int(declared) != layout.dim:
            raise LayoutError(f"observation.layout sizes add up to {layout.dim} but observation.dim is {declared}")
        return layout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObservationLayout) and other.entries == self.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"ObservationLayout({[entry.name for entry in self.entries]}, dim={self.dim})"

    def joint_plan(self, names: tuple[str, ...]) -> tuple[list[str], list[str], tuple[np.ndarray | None, ...]]:
        """For a joint state's names: names given more than once, required joints it lacks, and per
        entry the indices that gather the entry's joints (``None`` for other entries; all ``None`` when
        joints are missing). Cached: a robot sends the same names every time."""
        if self._plan is None or self._plan[0] != names:
            index = {name: i for i, name in enumerate(names)}
            duplicates = sorted({name for name in names if names.count(name) > 1}) if len(index) < len(names) else []
            missing = [j for j in self.required_joints if j not in index]
            gather = tuple(
                np.array([index[j] for j in entry.joints], dtype=np.intp) if entry.joints and not missing else None
                for entry in self.entries
            )
            self._plan = (names, (duplicates, missing, gather))
        return self._plan[1]

    def assemble(
        self,
        joint_state: JointStateSample | None = None,
        poses: Mapping[str, PoseSample] | None = None,
        twists: Mapping[str, TwistSample] | None = None,
    ) -> np.ndarray:
        """The float32 observation vector from a joint state and the pose and twist samples by source.

        Joints are looked up by name, so their order and any extra joints do not matter. Values are
        gathered in float64 and cast to float32 once. Raises ``ValueError`` naming what is missing
        or malformed; it does not check ages or finiteness (the control loop does, before calling it).
        """
        gather: tuple[np.ndarray | None, ...] = ()
        if self.needs_joint_states:
            if joint_state is None:
                raise ValueError("the observation layout needs a joint state and none was given")
            duplicates, missing, gather = self.joint_plan(tuple(joint_state.names))
            if duplicates or missing:
                raise ValueError(f"joint state names {duplicates} more than once or lacks {missing}")
        parts = []
        for i, (kind, source, field) in enumerate(self._steps):
            if kind == JOINT:
                values = getattr(joint_state, field)
                if len(values) != len(joint_state.names):  # type: ignore[union-attr]
                    raise ValueError(f"joint state {field} has {len(values)} values for {len(joint_state.names)} names")
                parts.append(values[gather[i]])
                continue
            samples = poses if kind == POSE else twists
            sample = None if samples is None else samples.get(source)
            if sample is None:
                raise ValueError(f"the observation layout needs a {kind} sample of {source!r} and none was given")
            if kind == TWIST:
                parts.append(sample.linear if field == "linear" else sample.angular)
            elif field == "position":
                parts.append(sample.position)
            elif field == "orientation":
                parts.append(sample.orientation_xyzw)
            else:
                parts.append(yaw_sin_cos(sample.orientation_xyzw))
        return np.concatenate(parts).astype(np.float32)

    def assemble_inputs(self, inputs: RobotInputs) -> np.ndarray:
        """:meth:`assemble` from a :class:`RobotInputs`."""
        return self.assemble(inputs.joint_state, inputs.poses, inputs.twists)


def is_robot_layout(layout: Any) -> bool:
    """Whether a layout reads only joint states, poses and twists, i.e. a robot can serve it (the
    reference tasks' layouts also read task, reward or previous-action sources)."""
    try:
        ObservationLayout.parse(layout)
    except LayoutError:
        return False
    return True


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


# ------------------------------------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True, eq=False)
class ActionSpec:
    """The ``action`` block: what each command dimension means, in which unit, within which bounds.

    ``linear_indices``/``linear_axes`` (Cartesian bundles) say which dimensions are the end-effector's
    linear velocity along which world axis, ``angular_indices``/``angular_axes`` its angular velocity,
    ``grip_index`` the grip force (or ``None``), ``joint_indices`` the joint dimensions of joint-space
    bundles, in ``joint_names`` order. ``scale`` maps a normalised action in [-1, 1] to physical units
    (``None`` when the block does not state it).
    """

    mode: str
    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    joint_names: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    scale: np.ndarray | None = None
    linear_indices: tuple[int, ...] = ()
    linear_axes: tuple[str, ...] = ()
    angular_indices: tuple[int, ...] = ()
    angular_axes: tuple[str, ...] = ()
    grip_index: int | None = None
    joint_indices: tuple[int, ...] = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionSpec):
            return NotImplemented
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
                if mine is None or theirs is None or not np.array_equal(mine, theirs):
                    return False
            elif mine != theirs:
                return False
        return True

    def __hash__(self) -> int:
        return hash((self.mode, self.names, self.joint_names))

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def velocity_indices(self) -> tuple[int, ...]:
        """Dimensions that a hold command sets to zero (velocities); the others keep their last value."""
        if self.mode == CARTESIAN_VELOCITY:
            return self.linear_indices + self.angular_indices
        if self.mode in (JOINT_VELOCITY, POSITION_DELTA):
            return self.joint_indices
        return ()

    @property
    def commanded_joints(self) -> tuple[str, ...]:
        """Joints the commands address by name (joint-space bundles; none for Cartesian ones)."""
        return () if self.mode == CARTESIAN_VELOCITY else self.joint_names

    @classmethod
    def from_manifest(cls, action: Mapping[str, Any]) -> ActionSpec:
        """Validate an ``action`` block; raises :class:`LayoutError` naming the bad key."""
        if not isinstance(action, Mapping):
            raise LayoutError("manifest has no 'action' block")
        mode = str(action.get("mode", ""))
        if mode not in ACTION_MODES:
            raise LayoutError(f"action.mode {mode!r} is not supported; expected one of {list(ACTION_MODES)}")
        names = tuple(str(n) for n in action.get("names") or ())
        dim = int(action.get("dim", len(names)))
        if len(names) != dim or dim == 0:
            raise LayoutError(f"action.names has {len(names)} entries but action.dim is {dim}")
        if len(set(names)) != dim:
            raise LayoutError(f"action.names {list(names)} contain duplicates")
        try:
            low = _vector(action["low"])
            high = _vector(action["high"])
        except KeyError as err:
            raise LayoutError(f"action block lacks {err.args[0]!r}") from None
        except (TypeError, ValueError):
            raise LayoutError(f"action.low/high must be lists of numbers, got {action['low']!r} / {action['high']!r}")
        if low.shape != (dim,) or high.shape != (dim,):
            raise LayoutError(f"action.low/high need {dim} values, got {low.size} and {high.size}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise LayoutError(f"action.low {low.tolist()} / high {high.tolist()} must be finite with low <= high")
        units = tuple(str(u) for u in action.get("units") or ())
        if units and len(units) != dim:
            raise LayoutError(f"action.units has {len(units)} entries for {dim} dimensions")
        scale = None
        if action.get("scale") is not None:
            scale = _vector(action["scale"])
            if scale.shape != (dim,) or not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
                raise LayoutError(f"action.scale {scale.tolist()} must hold {dim} finite positive values")
        joint_names = tuple(str(j) for j in action.get("joint_names") or ())
        index = {name: i for i, name in enumerate(names)}
        common = dict(mode=mode, names=names, low=low, high=high, joint_names=joint_names, units=units, scale=scale,
                      grip_index=index.get(GRIP_FORCE_NAME))
        if mode == CARTESIAN_VELOCITY:
            linear = [n for n in names if n in LINEAR_VELOCITY_NAMES]
            if not linear:
                raise LayoutError(f"cartesian_velocity action has none of {list(LINEAR_VELOCITY_NAMES)}")
            known = set(LINEAR_VELOCITY_NAMES) | set(ANGULAR_VELOCITY_NAMES) | {GRIP_FORCE_NAME}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise LayoutError(f"cartesian_velocity action has dimension(s) {unknown} a robot cannot be sent")
            angular = [n for n in names if n in ANGULAR_VELOCITY_NAMES]
            return cls(
                **common,
                linear_indices=tuple(index[n] for n in linear),
                linear_axes=tuple(LINEAR_VELOCITY_NAMES[n] for n in linear),
                angular_indices=tuple(index[n] for n in angular),
                angular_axes=tuple(ANGULAR_VELOCITY_NAMES[n] for n in angular),
            )
        joint_indices = tuple(i for i, n in enumerate(names) if n != GRIP_FORCE_NAME)
        if len(joint_indices) != len(joint_names):
            raise LayoutError(
                f"{mode} action has {len(joint_indices)} joint dimension(s) but joint_names lists {len(joint_names)}"
            )
        return cls(**common, joint_indices=joint_indices)


def read_control_rate_hz(value: Any, where: str = "control_rate_hz") -> float:
    """A control rate as a finite positive float; raises :class:`LayoutError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LayoutError(f"{where} must be a number in Hz, got {value!r}")
    rate = float(value)
    if not (math.isfinite(rate) and rate > 0):
        raise LayoutError(f"{where} must be finite and positive, got {value!r}")
    return rate


# ------------------------------------------------------------------------------------------ contract


@dataclasses.dataclass(frozen=True)
class RobotContract:
    """Observation layout, action specification and control rate of one policy on one robot."""

    observation: ObservationLayout
    action: ActionSpec
    control_rate_hz: float
    observation_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """``(low, high)`` per observation value: outside them an input is implausible for this policy
    (the manifest's ``observation.bounds``; ``None`` for bundles without them)."""

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RobotContract:
        """Read a bundle manifest's ``observation`` (with its ``bounds`` when present), ``action`` and
        ``control_rate_hz``."""
        layout = ObservationLayout.from_manifest(manifest)
        bounds = (manifest.get("observation") or {}).get("bounds")
        read = None
        if bounds is not None:
            try:
                low = tuple(float(v) for v in bounds["low"])
                high = tuple(float(v) for v in bounds["high"])
            except (KeyError, TypeError, ValueError):
                raise LayoutError("manifest 'observation.bounds' needs 'low' and 'high' lists of numbers") from None
            if len(low) != layout.dim or len(high) != layout.dim or not all(a < b for a, b in zip(low, high)):
                raise LayoutError(f"manifest 'observation.bounds' needs {layout.dim} values each with low < high")
            read = (low, high)
        return cls(
            layout,
            ActionSpec.from_manifest(manifest.get("action")),  # type: ignore[arg-type]
            read_control_rate_hz(manifest.get("control_rate_hz")),
            read,
        )

    @classmethod
    def from_interface(cls, interface: Mapping[str, Any]) -> RobotContract:
        """Read an env's ``interface`` (``observation_layout``, ``action``, ``joint_names``,
        ``control_rate_hz``), the form an exported manifest is written from."""
        action = dict(interface.get("action") or {})
        action.setdefault("joint_names", list(interface.get("joint_names") or ()))
        return cls(
            ObservationLayout.parse(interface.get("observation_layout")),
            ActionSpec.from_manifest(action),
            read_control_rate_hz(interface.get("control_rate_hz"), "interface.control_rate_hz"),
        )

    @property
    def observed_joints(self) -> tuple[str, ...]:
        """Joints a robot's joint state must carry: those the layout reads and those commands address."""
        return tuple(dict.fromkeys(self.observation.required_joints + self.action.commanded_joints))

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz
