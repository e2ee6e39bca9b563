"""The "grasp" task family: parameters, validation, the feasible grip-force window, the task distributions.

A grasp task describes one object on the table and the dynamics of the robot that must lift it. Its
parameters are hidden from the policy, and what works depends on them: heavy or slippery objects slip
out of a weak grip when lifted, fragile ones are crushed by a strong one, and an object whose centre of
mass is off its geometric centre swings out of level unless it is grasped over its centre of mass.
``grasp_force_window`` is the model of the force trade-off that oracles and the documentation use; the
simulator itself only applies physics.

Two distributions: :func:`grasp_distribution` is the full suite (primitives and the 1000
``pybullet_data/random_urdfs`` meshes with fixed train / validation / test splits, and every dynamics
factor), each factor switchable from a config; :func:`default_grasp_distribution` is the small
force-window-only distribution the shipped demo policy was trained on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from metarl_robot.tasks import Choice, Factor, TaskDistribution, TaskError, TaskSpec, Uniform, factor_from_config

FAMILY = "grasp"
SHAPES = ("box", "cylinder", "sphere", "capsule")
COM_OFFSET_SHAPES = ("box", "capsule", "cylinder")
"""Shapes whose centre of mass may be offset: they rest on the table without rolling it elsewhere."""
LONG_SHAPES = ("box", "capsule")
"""Shapes that lie along x, so that a grasp point along x can be chosen."""

MAX_EE_SPEED_M_S = 0.15
"""Largest commanded end-effector speed per axis (action scale V)."""
MAX_GRIP_FORCE_N = 60.0
"""Largest squeezing force a finger applies (action scale F)."""
MAX_PRIMITIVE_SIZE_M = 0.07
"""Largest width the open gripper (8 cm between the pads) can enclose with some clearance."""
MAX_OBJECT_LENGTH_M = 0.16
"""Longest box or capsule (along x)."""
MAX_CYLINDER_HEIGHT_M = 0.09
"""Tallest cylinder: the open gripper starts 14 cm above the table."""
EPISODE_STEPS = 60
"""Control steps of one grasp attempt at 10 Hz (6 s). Doubled from 30 so that feedback within an attempt
fits: the pads first press around step 14, and a grip-force loop then needs room for about fourteen
raises below the narrowest force window (1.35x each) to span the suite's ~110x range of holding
forces while lifting (docs/grasp_env.md, "Episode length")."""
MAX_TILT_RAD = math.radians(20.0)
"""A lifted object must stay this close to level to count as a success."""
NUM_RANDOM_URDFS = 1000
RANDOM_URDF_SPLITS = {"train": range(0, 800), "validation": range(800, 900), "test": range(900, 1000)}
"""Fixed split of the ``random_urdfs`` meshes by their number: 000-799 train, 800-899 validation, 900-999 test."""
FINGER_LATERAL_FRICTION = 1.0
"""Friction coefficient of the finger pads; Bullet multiplies it with the object's coefficient."""
GRAVITY_M_S2 = 9.81
LIFT_ACCELERATION_M_S2 = 1.5
"""Upper bound of the vertical acceleration the arm reaches when a lift starts (see ``GraspScene``)."""
HOLD_SAFETY_FACTOR = 1.0
"""Margin of the holding-force model over the ideal Coulomb limit, calibrated in simulation."""

REQUIRED_PARAMS = ("object_mass_kg", "object_size_m", "lateral_friction", "crush_force_n")
OBJECT_PARAMS = ("object_shape", "object_urdf", "random_urdf")
DEFAULT_DYNAMICS: dict[str, float | int] = {
    "com_offset_m": 0.0,
    "spinning_friction": 0.001,
    "rolling_friction": 0.0001,
    "restitution": 0.0,
    "gripper_force_limit_n": MAX_GRIP_FORCE_N,
    "actuator_gain": 1.0,
    "action_latency_steps": 0,
    "obs_noise_std": 0.0,
}
"""Values of the optional dynamics parameters when a task leaves them out (``joint_damping``: the URDF's)."""
OPTIONAL_PARAMS = OBJECT_PARAMS + ("object_length_m", "joint_damping") + tuple(DEFAULT_DYNAMICS)

PARAM_HELP = {
    "object_shape": f"one of {', '.join(SHAPES)} (give exactly one of object_shape, object_urdf, random_urdf)",
    "object_urdf": "path to a URDF file used instead of a primitive shape",
    "random_urdf": f"number 0..{NUM_RANDOM_URDFS - 1} of a pybullet_data/random_urdfs mesh",
    "object_size_m": "width across the fingers in metres (box edge, cylinder/sphere/capsule diameter, a mesh's "
    "largest extent), 0 < size <= 0.07; a scaling factor for object_urdf",
    "object_length_m": f"box/capsule length along x or cylinder height in metres, size <= length <= {MAX_OBJECT_LENGTH_M}",
    "object_mass_kg": "object mass in kilograms, > 0",
    "lateral_friction": "object friction coefficient, > 0 (the finger pads have 1.0)",
    "crush_force_n": "squeezing force in newtons above which the object breaks, > 0",
    "com_offset_m": "centre of mass offset from the geometric centre along the object's x axis in metres, inside the object",
    "spinning_friction": "object torsional friction coefficient, >= 0",
    "rolling_friction": "object rolling friction coefficient, >= 0",
    "restitution": "object restitution (bounciness), 0..1",
    "gripper_force_limit_n": f"largest force each finger motor can apply in newtons, 0 < limit <= {MAX_GRIP_FORCE_N}",
    "joint_damping": "arm joint damping in N m s/rad, >= 0",
    "actuator_gain": "multiplier of the arm joints' position gain, 0.1..5",
    "action_latency_steps": "whole control periods between a command and its effect, 0..10",
    "obs_noise_std": "standard deviation of Gaussian noise added to every observation entry, >= 0",
}


def _number(task: TaskSpec, name: str, *, low: float | None = None, high: float | None = None, strict: bool = True) -> float:
    value = task.params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"{name}={value!r} must be a number: {PARAM_HELP[name]}")
    value = float(value)
    if low is not None and (value <= low if strict else value < low):
        raise TaskError(f"{name}={value!r} must be {'>' if strict else '>='} {low:g}: {PARAM_HELP[name]}")
    if high is not None and value > high:
        raise TaskError(f"{name}={value!r} must be <= {high:g}: {PARAM_HELP[name]}")
    return value


def _object_length(task: TaskSpec) -> float:
    return float(task.params.get("object_length_m", task.params["object_size_m"]))


def _half_extent_x(task: TaskSpec) -> float:
    """Half the object's extent along x, where its centre of mass may be moved."""
    shape = task.params.get("object_shape")
    if shape in ("box", "capsule"):
        return _object_length(task) / 2.0
    return float(task.params["object_size_m"]) / 2.0


def validate_grasp_task(task: TaskSpec) -> None:
    """Raise :class:`TaskError` naming the offending field if ``task`` is not a valid grasp task."""
    if task.family != FAMILY:
        raise TaskError(f"family={task.family!r}: the grasp simulator runs family {FAMILY!r} only")
    unknown = sorted(set(task.params) - set(REQUIRED_PARAMS) - set(OPTIONAL_PARAMS))
    if unknown:
        allowed = ", ".join(REQUIRED_PARAMS + OPTIONAL_PARAMS)
        raise TaskError(f"unknown grasp parameter(s) {unknown}; allowed: {allowed}")
    for name in REQUIRED_PARAMS:
        if name not in task.params:
            raise TaskError(f"missing grasp parameter {name!r}: {PARAM_HELP[name]}")
        _number(task, name, low=0.0)
    given = [name for name in OBJECT_PARAMS if name in task.params]
    if not given:
        raise TaskError(f"missing grasp parameter 'object_shape': {PARAM_HELP['object_shape']}")
    if len(given) > 1:
        raise TaskError(f"{' and '.join(given)} exclude each other: give exactly one of {', '.join(OBJECT_PARAMS)}")
    _validate_dynamics(task)
    if "object_urdf" in task.params:
        urdf = task.params["object_urdf"]
        if not isinstance(urdf, str) or not urdf.endswith(".urdf"):
            raise TaskError(f"object_urdf={urdf!r} must be the path of a .urdf file")
        if not Path(urdf).is_file():
            raise TaskError(
                f"object_urdf={urdf!r} does not exist; give an absolute path or one relative to the task file"
            )
        for name in ("object_length_m", "com_offset_m"):
            if name in task.params:
                raise TaskError(f"{name} is not supported with object_urdf (the URDF defines the object): drop {name}")
        scale = float(task.params["object_size_m"])
        width = urdf_width_m(urdf, scale)
        if width > MAX_PRIMITIVE_SIZE_M:
            # Bullet's bounding boxes carry a fixed margin, so the width is linear in the scale, not
            # proportional to it: measure at half the scale too and solve for the largest that fits.
            slope = (width - urdf_width_m(urdf, scale / 2.0)) / (scale / 2.0)
            fits = (MAX_PRIMITIVE_SIZE_M - (width - slope * scale)) / slope if slope > 0 else 0.0
            raise TaskError(
                f"object_urdf={urdf!r} is {width * 100:.1f} cm wide across the fingers at object_size_m={scale:g} (its scale); "
                f"the open gripper takes at most {MAX_PRIMITIVE_SIZE_M * 100:.0f} cm: use object_size_m <= {fits:.4g}"
            )
        return
    size = float(task.params["object_size_m"])
    if size > MAX_PRIMITIVE_SIZE_M:
        raise TaskError(f"object_size_m={size} does not fit the open gripper: use at most {MAX_PRIMITIVE_SIZE_M} m")
    if "random_urdf" in task.params:
        mesh = task.params["random_urdf"]
        if isinstance(mesh, bool) or not isinstance(mesh, int) or not 0 <= mesh < NUM_RANDOM_URDFS:
            raise TaskError(f"random_urdf={mesh!r} is invalid: {PARAM_HELP['random_urdf']}")
        if "object_length_m" in task.params:
            raise TaskError("object_length_m is not supported with random_urdf (the mesh's shape is fixed): drop it")
    else:
        shape = task.params["object_shape"]
        if shape not in SHAPES:
            raise TaskError(f"object_shape={shape!r} is unknown: use {PARAM_HELP['object_shape']}")
        if "object_length_m" in task.params:
            length = _number(task, "object_length_m", low=0.0, high=MAX_OBJECT_LENGTH_M)
            if shape == "cylinder" and length > MAX_CYLINDER_HEIGHT_M:
                raise TaskError(f"object_length_m={length} is too tall for a cylinder: use at most {MAX_CYLINDER_HEIGHT_M} m")
            if shape == "sphere" and abs(length - size) > 1e-9:
                raise TaskError(f"object_length_m={length} differs from object_size_m={size}: a sphere has one size; drop object_length_m")
            if length < size - 1e-9:
                raise TaskError(f"object_length_m={length} is shorter than object_size_m={size}: {PARAM_HELP['object_length_m']}")
    if "com_offset_m" in task.params:
        offset = _number(task, "com_offset_m")
        if task.params.get("object_shape") not in COM_OFFSET_SHAPES and offset != 0.0:
            raise TaskError(
                f"com_offset_m={offset} is supported for {', '.join(COM_OFFSET_SHAPES)} only (a sphere or mesh "
                "would roll it out of place): drop com_offset_m or set it to 0"
            )
        limit = _half_extent_x(task)
        if abs(offset) > limit:
            raise TaskError(f"com_offset_m={offset} lies outside the object: use at most ±{limit:.4g} m for this object")


def urdf_width_m(path: str, scale: float) -> float:
    """Width across the fingers (the y extent of all its links, at rest as the scene places it) of the
    URDF at ``path`` loaded with ``globalScaling=scale``, measured in a private PyBullet world."""
    resolved = Path(path).resolve()
    return _urdf_width_m(str(resolved), resolved.stat().st_mtime_ns, float(scale))


@functools.lru_cache(maxsize=64)
def _urdf_width_m(path: str, mtime_ns: int, scale: float) -> float:
    import pybullet

    client = pybullet.connect(pybullet.DIRECT)
    try:
        try:
            body = pybullet.loadURDF(path, globalScaling=scale, physicsClientId=client)
        except pybullet.error as err:
            raise TaskError(f"object_urdf={path!r} could not be loaded by PyBullet: {err}") from None
        links = [-1, *range(pybullet.getNumJoints(body, physicsClientId=client))]
        boxes = [pybullet.getAABB(body, link, physicsClientId=client) for link in links]
        return float(max(b[1][1] for b in boxes) - min(b[0][1] for b in boxes))
    finally:
        pybullet.disconnect(client)


def _validate_dynamics(task: TaskSpec) -> None:
    checks: dict[str, dict[str, Any]] = {
        "spinning_friction": {"low": 0.0, "strict": False},
        "rolling_friction": {"low": 0.0, "strict": False},
        "restitution": {"low": 0.0, "high": 1.0, "strict": False},
        "gripper_force_limit_n": {"low": 0.0, "high": MAX_GRIP_FORCE_N},
        "joint_damping": {"low": 0.0, "strict": False},
        "actuator_gain": {"low": 0.1, "high": 5.0, "strict": False},
        "obs_noise_std": {"low": 0.0, "strict": False},
    }
    for name, bounds in checks.items():
        if name in task.params:
            _number(task, name, **bounds)
    if "action_latency_steps" in task.params:
        steps = task.params["action_latency_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 10:
            raise TaskError(f"action_latency_steps={steps!r} is invalid: {PARAM_HELP['action_latency_steps']}")


GRASP_VALIDATORS = {FAMILY: validate_grasp_task}
"""Validators to pass to :func:`metarl_robot.tasks.load_task_file`."""


# ------------------------------------------------------------------------------------ meshes


def random_urdf_mesh(number: int) -> str:
    """Path of the ``.obj`` mesh of ``pybullet_data/random_urdfs/NNN``."""
    import pybullet_data

    return str(Path(pybullet_data.getDataPath()) / "random_urdfs" / f"{number:03d}" / f"{number:03d}.obj")


@functools.lru_cache(maxsize=None)
def mesh_extent_m(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned extent and centre of an ``.obj`` mesh's vertices, in the mesh's units."""
    vertices = [line.split()[1:4] for line in Path(path).read_text().splitlines() if line.startswith("v ")]
    if not vertices:
        raise TaskError(f"mesh {path!r} has no vertices")
    points = np.asarray(vertices, dtype=np.float64)
    low, high = points.min(0), points.max(0)
    return high - low, (high + low) / 2.0


# ------------------------------------------------------------------------------- force window


def min_hold_force_n(mass_kg: float, lateral_friction: float) -> float:
    """Squeezing force per finger below which a lifted object slips out.

    Two pads each press with force ``F``; friction holds the object while ``2 * mu * F`` exceeds its
    weight plus the inertial load of the lift, ``m * (g + a)``.
    """
    mu = lateral_friction * FINGER_LATERAL_FRICTION
    return HOLD_SAFETY_FACTOR * mass_kg * (GRAVITY_M_S2 + LIFT_ACCELERATION_M_S2) / (2.0 * mu)


def grasp_force_window(task: TaskSpec) -> tuple[float, float]:
    """``(min_hold_force_n, highest usable force)``: grip forces strictly inside succeed.

    The highest usable force is the crush force or the gripper's force limit, whichever is lower. The
    window is empty (first value >= second) for tasks no grip force solves.
    """
    validate_grasp_task(task)
    limit = float(task.params.get("gripper_force_limit_n", MAX_GRIP_FORCE_N))
    return (
        min_hold_force_n(float(task["object_mass_kg"]), float(task["lateral_friction"])),
        min(float(task["crush_force_n"]), limit),
    )


def oracle_grip_force_n(task: TaskSpec) -> float:
    """The grip force an oracle that knows the task picks: the geometric middle of the feasible window.

    For an empty window it picks the holding force (clipped to the actuator), which crushes the object
    or lets it slip.
    """
    low, high = grasp_force_window(task)
    force = math.sqrt(low * high) if low < high else low
    return min(force, MAX_GRIP_FORCE_N)


def oracle_grasp_offset_m(task: TaskSpec) -> float:
    """Where along x an oracle grasps, relative to the geometric centre: over the centre of mass of a
    box or capsule (a cylinder is grasped across its diameter)."""
    if task.params.get("object_shape") not in LONG_SHAPES:
        return 0.0
    return float(task.params.get("com_offset_m", 0.0))


# ------------------------------------------------------------------------------ distributions

DEFAULT_FACTORS = {
    "object_shape": Choice(("box", "cylinder"), test_values=("sphere",)),
    "object_size_m": Uniform(0.03, 0.06),
    "object_mass_kg": Uniform(0.05, 1.0, log=True),
    "lateral_friction": Uniform(0.3, 1.0),
    "crush_force_n": Uniform(3.0, 60.0, log=True),
}
"""Ranges of :func:`default_grasp_distribution`; the test split holds out spheres."""


def default_grasp_distribution(
    seed: int = 0, num_train: int = 64, num_test: int = 16, num_validation: int = 0
) -> TaskDistribution:
    """Boxes and cylinders for training, spheres (held out) for testing; only mass, friction and fragility vary.

    Both splits draw ``object_size_m`` uniformly from [0.03, 0.06] m, ``object_mass_kg`` log-uniformly
    from [0.05, 1.0] kg, ``lateral_friction`` uniformly from [0.3, 1.0] and ``crush_force_n``
    log-uniformly from [3, 60] N. This is the distribution of the shipped demo policy; the full suite
    is :func:`grasp_distribution`.
    """
    return TaskDistribution(
        FAMILY, DEFAULT_FACTORS, seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation
    )


SUITE_FACTORS: dict[str, Factor] = {
    "object_kind": Choice(("primitive", "mesh")),
    "object_shape": Choice(SHAPES),
    "random_urdf": Choice(
        tuple(RANDOM_URDF_SPLITS["train"]),
        test_values=tuple(RANDOM_URDF_SPLITS["test"]),
        validation_values=tuple(RANDOM_URDF_SPLITS["validation"]),
    ),
    "object_size_m": Uniform(0.035, 0.065),
    "length_ratio": Uniform(1.0, 2.4),
    "object_mass_kg": Uniform(0.05, 1.5, log=True),
    "lateral_friction": Uniform(0.25, 1.0),
    "crush_margin": Uniform(1.4, 4.0, log=True),
    "com_offset_fraction": Uniform(-0.7, 0.7),
    "spinning_friction": Uniform(0.0005, 0.005, log=True),
    "rolling_friction": Uniform(0.00005, 0.0005, log=True),
    "restitution": Uniform(0.0, 0.3),
    "gripper_force_limit_n": Uniform(40.0, 60.0),
    "joint_damping": Uniform(0.0, 0.5),
    "actuator_gain": Uniform(0.7, 1.3),
    "action_latency_steps": Choice((0, 1)),
    "obs_noise_std": Uniform(0.0, 0.002),
}
"""Factors of :func:`grasp_distribution` and their default ranges (see ``docs/grasp_env.md``).

Most map one-to-one to a task parameter. Four are drawn in their own terms and converted:
``object_kind`` picks a primitive (``object_shape``) or a ``random_urdfs`` mesh (``random_urdf``, split
by number); ``length_ratio`` times the size is the length of boxes and capsules and the height of
cylinders (capped at 16 cm); ``crush_margin`` times the force needed to hold the object is its crush
force, so fragility is relative to weight and slipperiness; ``com_offset_fraction`` times the object's
half-length along x is ``com_offset_m``.
"""

SUITE_DERIVED = ("object_kind", "length_ratio", "crush_margin", "com_offset_fraction")


class GraspDistribution(TaskDistribution):
    """The grasp suite: factors drawn as in :data:`SUITE_FACTORS`, converted into grasp task parameters."""

    def _draw(self, rng: np.random.Generator, n: int, split: str) -> list[TaskSpec]:
        tasks = []
        for raw in super()._draw(rng, n, split):
            task = TaskSpec(FAMILY, _suite_params(dict(raw.params)), raw.task_id)
            validate_grasp_task(task)
            tasks.append(task)
        return tasks

    def validate(self, task: TaskSpec) -> None:
        validate_grasp_task(task)


def _suite_params(raw: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in raw.items() if k not in SUITE_DERIVED + ("object_shape", "random_urdf")}
    size = float(raw["object_size_m"])
    kind = raw.get("object_kind", "primitive")
    if kind == "mesh":
        params["random_urdf"] = int(raw["random_urdf"])
        half_x = size / 2.0
    else:
        shape = raw["object_shape"]
        params["object_shape"] = shape
        if shape != "sphere":
            longest = MAX_CYLINDER_HEIGHT_M if shape == "cylinder" else MAX_OBJECT_LENGTH_M
            params["object_length_m"] = max(size, min(size * float(raw.get("length_ratio", 1.0)), longest))
        half_x = params.get("object_length_m", size) / 2.0 if shape in ("box", "capsule") else size / 2.0
    if "com_offset_fraction" in raw and params.get("object_shape") in COM_OFFSET_SHAPES:
        params["com_offset_m"] = float(raw["com_offset_fraction"]) * half_x
    if "crush_margin" in raw:
        hold = min_hold_force_n(float(raw["object_mass_kg"]), float(raw["lateral_friction"]))
        params["crush_force_n"] = float(raw["crush_margin"]) * hold
    return params


def suite_factors(overrides: Mapping[str, Any] | None = None) -> dict[str, Factor]:
    """:data:`SUITE_FACTORS` with ``overrides`` (YAML forms: ``[low, high]``, ``{low, high, log}``,
    ``{choice: [...]}``, or one value to switch a factor off at that value)."""
    factors = dict(SUITE_FACTORS)
    for name, spec in (overrides or {}).items():
        if name not in SUITE_FACTORS and name not in REQUIRED_PARAMS + OPTIONAL_PARAMS:
            raise TaskError(f"grasp factor {name!r} is unknown; factors: {', '.join(SUITE_FACTORS)}")
        if name == "crush_force_n":
            factors.pop("crush_margin", None)  # an explicit crush force replaces the relative one
        factors[name] = factor_from_config(name, spec)
    return factors


def grasp_distribution(
    seed: int = 0,
    num_train: int = 256,
    num_test: int = 64,
    num_validation: int = 32,
    factors: Mapping[str, Any] | None = None,
) -> GraspDistribution:
    """The full grasp suite: primitives and ``random_urdfs`` meshes under randomised dynamics.

    Meshes are split by number (000-799 train, 800-899 validation, 900-999 test); primitives appear in
    every split with fresh sizes and dynamics. ``factors`` overrides any entry of
    :data:`SUITE_FACTORS` (a single value switches that factor off), e.g.
    ``{"com_offset_fraction": 0.0, "action_latency_steps": 0, "object_kind": "primitive"}``.
    """
    return GraspDistribution(
        FAMILY, suite_factors(factors), seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation
    )
