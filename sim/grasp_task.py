"""The "grasp" task family: parameters, validation, the feasible grip-force window, the default distribution.

A grasp task describes one fragile object on the table. Its parameters are hidden from the policy, and the
grip force that works depends on them: heavy or slippery objects slip out of a weak grip when lifted,
fragile ones are crushed by a strong one. ``grasp_force_window`` is the model of that trade-off that the
oracle controller and the documentation use; the simulator itself only applies physics.
"""

from __future__ import annotations

import math
from pathlib import Path

from metarl_robot.tasks import Choice, TaskDistribution, TaskError, TaskSpec, Uniform

FAMILY = "grasp"
SHAPES = ("box", "cylinder", "sphere")

MAX_EE_SPEED_M_S = 0.15
"""Largest commanded end-effector speed per axis (action scale V)."""
MAX_GRIP_FORCE_N = 60.0
"""Largest squeezing force a finger applies (action scale F)."""
MAX_PRIMITIVE_SIZE_M = 0.07
"""Largest primitive the open gripper (8 cm between the pads) can enclose with some clearance."""
FINGER_LATERAL_FRICTION = 1.0
"""Friction coefficient of the finger pads; Bullet multiplies it with the object's coefficient."""
GRAVITY_M_S2 = 9.81
LIFT_ACCELERATION_M_S2 = 1.5
"""Upper bound of the vertical acceleration the arm reaches when a lift starts (see ``GraspScene``)."""
HOLD_SAFETY_FACTOR = 1.0
"""Margin of the holding-force model over the ideal Coulomb limit, calibrated in simulation."""

REQUIRED_PARAMS = ("object_mass_kg", "object_size_m", "lateral_friction", "crush_force_n")
OPTIONAL_PARAMS = ("object_shape", "object_urdf")
PARAM_HELP = {
    "object_shape": f"one of {', '.join(SHAPES)} (omit it when object_urdf is given)",
    "object_size_m": "box edge or cylinder/sphere diameter in metres; a scaling factor for object_urdf",
    "object_mass_kg": "object mass in kilograms, > 0",
    "lateral_friction": "object friction coefficient, > 0 (the finger pads have 1.0)",
    "crush_force_n": "squeezing force in newtons above which the object breaks, > 0",
    "object_urdf": "path to a URDF file used instead of a primitive shape",
}


def _positive_number(task: TaskSpec, name: str) -> float:
    value = task.params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"{name}={value!r} must be a number: {PARAM_HELP[name]}")
    if value <= 0:
        raise TaskError(f"{name}={value!r} must be > 0: {PARAM_HELP[name]}")
    return float(value)


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
        _positive_number(task, name)
    urdf = task.params.get("object_urdf")
    shape = task.params.get("object_shape")
    if urdf is not None:
        if shape is not None:
            raise TaskError(
                f"object_shape={shape!r} and object_urdf={urdf!r} exclude each other: drop object_shape"
            )
        if not isinstance(urdf, str) or not urdf.endswith(".urdf"):
            raise TaskError(f"object_urdf={urdf!r} must be the path of a .urdf file")
        if not Path(urdf).is_file():
            raise TaskError(
                f"object_urdf={urdf!r} does not exist; give an absolute path or one relative to the task file"
            )
        return
    if shape is None:
        raise TaskError(f"missing grasp parameter 'object_shape': {PARAM_HELP['object_shape']}")
    if shape not in SHAPES:
        raise TaskError(f"object_shape={shape!r} is unknown: use {PARAM_HELP['object_shape']}")
    size = float(task.params["object_size_m"])
    if size > MAX_PRIMITIVE_SIZE_M:
        raise TaskError(
            f"object_size_m={size} does not fit the open gripper: use at most {MAX_PRIMITIVE_SIZE_M} m"
        )


GRASP_VALIDATORS = {FAMILY: validate_grasp_task}
"""Validators to pass to :func:`metarl_robot.tasks.load_task_file`."""


def min_hold_force_n(mass_kg: float, lateral_friction: float) -> float:
    """Squeezing force per finger below which a lifted object slips out.

    Two pads each press with force ``F``; friction holds the object while ``2 * mu * F`` exceeds its
    weight plus the inertial load of the lift, ``m * (g + a)``.
    """
    mu = lateral_friction * FINGER_LATERAL_FRICTION
    return HOLD_SAFETY_FACTOR * mass_kg * (GRAVITY_M_S2 + LIFT_ACCELERATION_M_S2) / (2.0 * mu)


def grasp_force_window(task: TaskSpec) -> tuple[float, float]:
    """``(min_hold_force_n, crush_force_n)``: grip forces strictly inside succeed.

    The window is empty (first value >= second) for tasks no grip force solves.
    """
    validate_grasp_task(task)
    return (
        min_hold_force_n(float(task["object_mass_kg"]), float(task["lateral_friction"])),
        float(task["crush_force_n"]),
    )


def oracle_grip_force_n(task: TaskSpec) -> float:
    """The grip force an oracle that knows the task picks: the geometric middle of the feasible window.

    For an empty window it picks the holding force (clipped to the actuator), which crushes the object.
    """
    low, high = grasp_force_window(task)
    force = math.sqrt(low * high) if low < high else low
    return min(force, MAX_GRIP_FORCE_N)


DEFAULT_FACTORS = {
    "object_shape": Choice(("box", "cylinder"), test_values=("sphere",)),
    "object_size_m": Uniform(0.03, 0.06),
    "object_mass_kg": Uniform(0.05, 1.0, log=True),
    "lateral_friction": Uniform(0.3, 1.0),
    "crush_force_n": Uniform(3.0, 60.0, log=True),
}
"""Ranges of :func:`default_grasp_distribution`; the test split holds out spheres."""


def default_grasp_distribution(seed: int = 0, num_train: int = 64, num_test: int = 16) -> TaskDistribution:
    """Boxes and cylinders for training, spheres (held out) for testing.

    Both splits draw ``object_size_m`` uniformly from [0.03, 0.06] m, ``object_mass_kg`` log-uniformly
    from [0.05, 1.0] kg, ``lateral_friction`` uniformly from [0.3, 1.0] and ``crush_force_n``
    log-uniformly from [3, 60] N. The holding force then spans about 0.3 to 19 N, so about 92% of the
    tasks have a non-empty force window while the best single grip force suits only about two thirds.
    """
    return TaskDistribution(FAMILY, DEFAULT_FACTORS, seed=seed, num_train=num_train, num_test=num_test)
