"""Reach and push: goal-directed meta-RL tasks for an arm on a table, under randomised arm dynamics.

Both families hide a goal from the policy, which has to infer it from rewards (as in the MAML-style
goal tasks), and randomise the arm's dynamics (joint damping, actuator gain, command latency,
observation noise), so that one fixed controller does not fit every task.

* ``reach`` (:class:`PandaReachEnv`, ``metarl/PandaReach-v0``): move the grasp frame to a hidden point.
* ``push`` (:class:`PandaPushEnv`, ``metarl/PandaPush-v0``): push a cube of hidden size, mass and
  friction across the table to a hidden goal with the closed gripper, at a fixed height.

The scenes subclass :class:`sim.scene.ArmScene`, so arm control (Cartesian grasp-frame velocity through
damped least-squares IK, latency, damping, gain) is the one the grasp env uses. ``robot`` picks the arm
(``franka_panda``, ``kuka_iiwa``, ``xarm6``). ``docs/panda_tasks.md`` has the tables and measured
demonstrator success rates.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet

from metarl_robot.contract import PoseSample, RobotInputs, TwistSample
from metarl_robot.tasks import Choice, Factor, TaskDistribution, TaskError, TaskSpec, Uniform, factor_from_config
from sim.grasp_task import MAX_EE_SPEED_M_S, PARAM_HELP
from sim.robots import robot_spec
from sim.scene_env import SceneEnv
from sim.scene import (
    _PARKING_POSITION,
    CONTROL_RATE_HZ,
    DEFAULT_ROBOT,
    OBJECT_COLOUR,
    SETTLE_TIME_S,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    ArmScene,
)

__all__ = [
    "ARM_FACTORS",
    "VALIDATORS",
    "CheckedDistribution",
    "PUSH_FACTORS",
    "PUSH_FAMILY",
    "REACH_FACTORS",
    "REACH_FAMILY",
    "PandaPushEnv",
    "PandaReachEnv",
    "PushScene",
    "ReachScene",
    "push_demonstrator",
    "push_distribution",
    "push_factors",
    "push_interface",
    "reach_demonstrator",
    "reach_distribution",
    "reach_factors",
    "reach_interface",
    "run_policy",
    "validate_push_task",
    "validate_reach_task",
]

REACH_FAMILY = "reach"
PUSH_FAMILY = "push"

REACH_SUCCESS_M = 0.02
"""A reach succeeds while the grasp frame is within this distance of the goal."""
REACH_HORIZON = 50
PUSH_SUCCESS_M = 0.03
"""A push succeeds while the cube's centre is within this distance (in the table plane) of the goal."""
PUSH_HORIZON = 60
GRIPPER_DISTANCE_WEIGHT = 0.1
"""Weight of the grasp-frame-to-cube distance in the push reward."""

PUSH_HEIGHT_M = 0.02
"""Height of the grasp frame while pushing: the Panda's closed fingertips pass about 1 cm above the
table and its hand 5.5 cm above it, so the fingers meet every cube (4-6 cm) below its top."""
PUSH_START_EE_POSITION = (0.35, 0.0, PUSH_HEIGHT_M)
"""Where the grasp frame starts a push episode: 10 cm behind the cube's home position, at push height."""
BOX_HOME_XY = (0.45, 0.0)
BOX_XY_NOISE_M = 0.01
"""The cube starts within ±1 cm of :data:`BOX_HOME_XY` in x and y, drawn at reset."""
BOX_YAW_NOISE_RAD = 0.2
"""... and turned by up to ±0.2 rad about the vertical."""
MAX_BOX_SIZE_M = 0.08
FINGER_CLOSED_M = 0.0
FINGER_HOLD_FORCE_N = 20.0
"""Force of the finger motors holding the gripper closed (both scenes)."""

GOAL_COLOUR = (0.15, 0.75, 0.25, 1.0)
REACH_MARKER_RADIUS_M = 0.012
PUSH_MARKER_HEIGHT_M = 0.001

ARM_PARAMS = ("joint_damping", "actuator_gain", "action_latency_steps", "obs_noise_std")
"""Optional arm-dynamics parameters shared by both families (defaults: URDF damping, gain 1, no
latency, no noise)."""
REACH_PARAMS = ("goal_x", "goal_y", "goal_z")
PUSH_PARAMS = ("object_size_m", "object_mass_kg", "lateral_friction", "goal_x", "goal_y")

_AXES = {"goal_x": 0, "goal_y": 1, "goal_z": 2}
HELP = {
    **{name: PARAM_HELP[name] for name in ARM_PARAMS},
    **{
        name: f"goal {name[-1]} in m (world frame), inside the workspace "
        f"[{WORKSPACE_LOW[axis]:g}, {WORKSPACE_HIGH[axis]:g}]"
        for name, axis in _AXES.items()
    },
    "object_size_m": f"cube edge in m, 0 < size <= {MAX_BOX_SIZE_M:g}",
    "object_mass_kg": "cube mass in kg, > 0",
    "lateral_friction": "cube friction coefficient against table and fingers, > 0 (both have 1.0)",
}

# ------------------------------------------------------------------------------------ validation


def _number(task: TaskSpec, name: str, *, low: float, high: float | None = None, strict: bool = False) -> float:
    value = task.params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"{name}={value!r} must be a number: {HELP[name]}")
    value = float(value)
    if value < low or (strict and value == low):
        raise TaskError(f"{name}={value!r} must be {'>' if strict else '>='} {low:g}: {HELP[name]}")
    if high is not None and value > high:
        raise TaskError(f"{name}={value!r} must be <= {high:g}: {HELP[name]}")
    return value


def _validate(task: TaskSpec, family: str, required: tuple[str, ...], env_name: str) -> None:
    if task.family != family:
        raise TaskError(f"family={task.family!r}: {env_name} runs family {family!r} only")
    allowed = required + ARM_PARAMS
    unknown = sorted(set(task.params) - set(allowed))
    if unknown:
        raise TaskError(f"unknown {family} parameter(s) {unknown}; allowed: {', '.join(allowed)}")
    for name in required:
        if name not in task.params:
            raise TaskError(f"missing {family} parameter {name!r}: {HELP[name]}")
    for name, axis in _AXES.items():
        if name in task.params:
            _number(task, name, low=WORKSPACE_LOW[axis], high=WORKSPACE_HIGH[axis])
    bounds = {"joint_damping": (0.0, None), "actuator_gain": (0.1, 5.0), "obs_noise_std": (0.0, None)}
    for name, (low, high) in bounds.items():
        if name in task.params:
            _number(task, name, low=low, high=high)
    if "action_latency_steps" in task.params:
        steps = task.params["action_latency_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 10:
            raise TaskError(f"action_latency_steps={steps!r} is invalid: {HELP['action_latency_steps']}")


def validate_reach_task(task: TaskSpec) -> None:
    """Raise :class:`TaskError` naming the offending field if ``task`` is not a valid reach task."""
    _validate(task, REACH_FAMILY, REACH_PARAMS, "the reach scene")


def validate_push_task(task: TaskSpec) -> None:
    """Raise :class:`TaskError` naming the offending field if ``task`` is not a valid push task."""
    _validate(task, PUSH_FAMILY, PUSH_PARAMS, "the push scene")
    _number(task, "object_size_m", low=0.0, high=MAX_BOX_SIZE_M, strict=True)
    _number(task, "object_mass_kg", low=0.0, strict=True)
    _number(task, "lateral_friction", low=0.0, strict=True)


VALIDATORS = {REACH_FAMILY: validate_reach_task, PUSH_FAMILY: validate_push_task}
"""Validators to pass to :func:`metarl_robot.tasks.load_task_file`."""

# --------------------------------------------------------------------------------- distributions

ARM_FACTORS: dict[str, Factor] = {
    "joint_damping": Uniform(0.0, 0.5),
    "actuator_gain": Uniform(0.7, 1.3),
    "action_latency_steps": Choice((0, 1)),
    "obs_noise_std": Uniform(0.0, 0.002),
}
"""Arm dynamics both families randomise."""

REACH_FACTORS: dict[str, Factor] = {
    "goal_x": Uniform(0.35, 0.65),
    "goal_y": Uniform(-0.15, 0.15),
    "goal_z": Uniform(0.05, 0.3),
    **ARM_FACTORS,
}
"""Factors of :func:`reach_distribution` and their default ranges."""

PUSH_FACTORS: dict[str, Factor] = {
    "object_size_m": Uniform(0.04, 0.06),
    "object_mass_kg": Uniform(0.1, 1.0, log=True),
    "lateral_friction": Uniform(0.2, 1.0),
    "goal_x": Uniform(0.5, 0.65),
    "goal_y": Uniform(-0.12, 0.12),
    **ARM_FACTORS,
}
"""Factors of :func:`push_distribution` and their default ranges."""


def _factors(family: str, defaults: Mapping[str, Factor], overrides: Mapping[str, Any] | None) -> dict[str, Factor]:
    factors = dict(defaults)
    for name, spec in (overrides or {}).items():
        if name not in defaults:
            raise TaskError(f"{family} factor {name!r} is unknown; factors: {', '.join(defaults)}")
        factors[name] = factor_from_config(name, spec)
    return factors


def reach_factors(overrides: Mapping[str, Any] | None = None) -> dict[str, Factor]:
    """:data:`REACH_FACTORS` with ``overrides`` (YAML forms: ``[low, high]``, ``{low, high, log}``,
    ``{choice: [...]}``, or one value to switch a factor off at that value)."""
    return _factors(REACH_FAMILY, REACH_FACTORS, overrides)


def push_factors(overrides: Mapping[str, Any] | None = None) -> dict[str, Factor]:
    """:data:`PUSH_FACTORS` with ``overrides``, in the forms :func:`reach_factors` takes."""
    return _factors(PUSH_FAMILY, PUSH_FACTORS, overrides)


class CheckedDistribution(TaskDistribution):
    """A :class:`TaskDistribution` whose tasks pass a family validator (so a bad override fails when
    the distribution is made, naming the field, not when an env is reset)."""

    def __init__(
        self, family: str, factors: Mapping[str, Factor], validator: Callable[[TaskSpec], None], **kwargs: Any
    ) -> None:
        self._validator = validator
        super().__init__(family, factors, **kwargs)

    def _draw(self, rng: np.random.Generator, n: int, split: str) -> list[TaskSpec]:
        tasks = super()._draw(rng, n, split)
        for task in tasks:
            self._validator(task)
        return tasks

    def validate(self, task: TaskSpec) -> None:
        self._validator(task)
        super().validate(task)


def reach_distribution(
    seed: int = 0,
    num_train: int = 64,
    num_test: int = 16,
    num_validation: int = 0,
    factors: Mapping[str, Any] | None = None,
) -> CheckedDistribution:
    """Reach goals uniform in x ∈ [0.35, 0.65], y ∈ [-0.15, 0.15], z ∈ [0.05, 0.3] m under the
    :data:`ARM_FACTORS` dynamics; the splits are independent draws. ``factors`` overrides entries of
    :data:`REACH_FACTORS`, e.g. ``{"action_latency_steps": 0, "obs_noise_std": 0.0}``."""
    return CheckedDistribution(
        REACH_FAMILY, reach_factors(factors), validate_reach_task,
        seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation,
    )


def push_distribution(
    seed: int = 0,
    num_train: int = 64,
    num_test: int = 16,
    num_validation: int = 0,
    factors: Mapping[str, Any] | None = None,
) -> CheckedDistribution:
    """Cubes of 4–6 cm, 0.1–1 kg (log-uniform), friction 0.2–1.0, pushed to goals in
    x ∈ [0.5, 0.65], y ∈ [-0.12, 0.12] m under the :data:`ARM_FACTORS` dynamics; the splits are
    independent draws. ``factors`` overrides entries of :data:`PUSH_FACTORS`."""
    return CheckedDistribution(
        PUSH_FAMILY, push_factors(factors), validate_push_task,
        seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation,
    )


# ----------------------------------------------------------------------------------- interfaces


def _interface(robot: str, layout: list[dict], axes: Sequence[str]) -> dict:
    spec = robot_spec(robot)
    return {
        "robot": spec.name,
        "control_rate_hz": CONTROL_RATE_HZ,
        "frame_id": "world",
        "joint_names": list(spec.joint_names),
        "observation_layout": layout,
        "action": {
            "mode": "cartesian_velocity",
            "names": [f"ee_v{axis}" for axis in axes],
            "units": ["m/s"] * len(axes),
            "scale": [MAX_EE_SPEED_M_S] * len(axes),
            "low": [-MAX_EE_SPEED_M_S] * len(axes),
            "high": [MAX_EE_SPEED_M_S] * len(axes),
        },
    }


def reach_interface(robot: str = DEFAULT_ROBOT) -> dict:
    """Robot contract of the reach env: grasp-frame position and linear velocity in, velocity out."""
    layout = [
        {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
        {"name": "ee_velocity", "source": "ee_twist", "field": "linear", "size": 3},
    ]
    return _interface(robot, layout, "xyz")


def push_interface(robot: str = DEFAULT_ROBOT) -> dict:
    """Robot contract of the push env: grasp-frame and cube positions and the cube's yaw in, planar
    grasp-frame velocity out (the height is held by the scene)."""
    layout = [
        {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
        {"name": "object_position", "source": "object_pose", "field": "position", "size": 3},
        {"name": "object_yaw", "source": "object_pose", "field": "yaw_sin_cos", "size": 2},
    ]
    return _interface(robot, layout, "xy")


# ---------------------------------------------------------------------------------------- scenes


class _GoalScene(ArmScene):
    """An arm whose gripper is held closed, a task with a goal, and the reset that makes episodes
    independent of what happened before.

    Task-dependent bodies are rebuilt only when the task changes; the world is then saved with them
    parked (its home state). Every reset separates the bodies, lets Bullet drop their cached contacts,
    restores the home state and then places the bodies, so an episode depends on its task and seed only.
    """

    home_finger_position_m = FINGER_CLOSED_M

    def __init__(
        self,
        task: TaskSpec,
        *,
        robot: str = DEFAULT_ROBOT,
        goal_marker: bool = False,
        gui: bool = False,
        time_step: float = 1.0 / 240.0,
    ) -> None:
        self._validate_task(task)
        super().__init__(robot=robot, gui=gui, time_step=time_step)
        self._task = task
        self._built_task: TaskSpec | None = None
        self._home_state = -1
        self._marker = -1
        if goal_marker:
            # A body without a collision shape: it shows in renders and takes no part in the physics.
            self._marker = self._bullet.createMultiBody(
                baseMass=0.0,
                baseCollisionShapeIndex=-1,
                baseVisualShapeIndex=self._marker_shape(),
                basePosition=_PARKING_POSITION,
            )
        self._goal = np.zeros(3)
        self._status: dict = {}

    # -------------------------------------------------------------------------- hooks per family

    def _validate_task(self, task: TaskSpec) -> None:
        raise NotImplementedError

    def _marker_shape(self) -> int:
        """The visual shape that marks the goal in renders."""
        raise NotImplementedError

    def _goal_of(self, task: TaskSpec) -> np.ndarray:
        raise NotImplementedError

    def _build_bodies(self, task: TaskSpec) -> None:
        """Replace the task's bodies (none by default)."""

    def _park_bodies(self) -> None:
        """Move the task's bodies out of reach of everything else."""

    def _place_bodies(self, rng: np.random.Generator) -> None:
        """Put the task's bodies where an episode starts, drawing from ``rng``."""

    def _compute_status(self) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ construction

    def _sense(self) -> None:
        super()._sense()
        link = self._bullet.getLinkState(self._robot, self._ee_link, computeLinkVelocity=1, computeForwardKinematics=1)
        self._ee_velocity = np.array(link[6])
        self._ee_angular_velocity = np.array(link[7])

    def _build(self, task: TaskSpec) -> None:
        b = self._bullet
        if self._home_state >= 0:
            b.removeState(self._home_state)
            self._home_state = -1
        self._built_task = None
        self._build_bodies(task)
        params = task.params
        self.set_arm_dynamics(
            joint_damping=params.get("joint_damping"),
            actuator_gain=float(params.get("actuator_gain", 1.0)),
            latency_steps=int(params.get("action_latency_steps", 0)),
        )
        self._separate()
        self._home_state = b.saveState()
        self._built_task = task

    def _separate(self) -> None:
        self._park_bodies()
        self._set_joints(self._home_q, FINGER_CLOSED_M)
        self._bullet.performCollisionDetection()

    # ------------------------------------------------------------------------------------- task

    @property
    def task(self) -> TaskSpec:
        """The task set last; the world holds it from the next :meth:`reset` on."""
        return self._task

    def set_task(self, task: TaskSpec) -> None:
        """Validate ``task`` (raising :class:`TaskError`) and build it into the world at the next :meth:`reset`."""
        self._validate_task(task)
        self._task = task

    @property
    def goal(self) -> np.ndarray:
        """The goal of the task in the world (m): a grasp-frame position, or a cube position on the table."""
        return self._goal.copy()

    # ---------------------------------------------------------------------------------- episodes

    def reset(self, rng: np.random.Generator) -> None:
        """Arm at its home pose with the gripper closed, task bodies placed from ``rng``."""
        self._check_open()
        if self._built_task != self._task:
            self._build(self._task)
        b = self._bullet
        self._separate()
        b.restoreState(self._home_state)
        self._place_bodies(rng)
        self._goal = self._goal_of(self._task)
        if self._marker >= 0:
            b.resetBasePositionAndOrientation(self._marker, self._marker_position(), (0.0, 0.0, 0.0, 1.0))
        b.setJointMotorControlArray(
            self._robot,
            self._finger_joints,
            pybullet.POSITION_CONTROL,
            targetPositions=[FINGER_CLOSED_M] * 2,
            forces=[FINGER_HOLD_FORCE_N] * 2,
        )
        for _ in range(max(1, round(SETTLE_TIME_S / self.time_step))):
            self._drive_arm_at(self._home_q)
            b.stepSimulation()
        self._sense()
        self._reset_controller(self._ee_position)
        self._status = self._compute_status()

    def _marker_position(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self._goal)

    def step_control(self) -> None:
        """Advance the physics one control period under the last command."""
        self._check_open()
        if self._built_task is None:
            raise RuntimeError(f"call {type(self).__name__}.reset() before step_control()")
        self._step_arm()
        self._status = self._compute_status()

    def status(self) -> dict:
        """Outcome of the last control period (or of the reset): ``reward``, ``success`` and distances in m."""
        return dict(self._status)

    def ee_velocity(self) -> np.ndarray:
        """Linear velocity of the grasp frame (m/s, world frame) after the last control period."""
        return self._ee_velocity.copy()

    def robot_inputs(self) -> RobotInputs:
        """The joint state, ``ee_pose`` and the grasp frame's twist ``ee_twist`` (linear m/s, angular
        rad/s, world frame); see :meth:`ArmScene.robot_inputs`."""
        inputs = super().robot_inputs()
        inputs.twists["ee_twist"] = TwistSample(self.ee_velocity(), self._ee_angular_velocity.copy())
        return inputs

    @property
    def body_ids(self) -> dict[str, int]:
        """PyBullet body ids of ``robot`` and ``table``."""
        return {"robot": self._robot, "table": self._table}


class ReachScene(_GoalScene):
    """The arm alone; a task is a hidden grasp-frame goal plus arm dynamics.

    The grasp frame starts every episode at (0.5, 0, 0.14) m. The goal marker, when asked for, is a
    sphere without a collision shape: it shows in renders and takes no part in the physics.
    """

    def _validate_task(self, task: TaskSpec) -> None:
        validate_reach_task(task)

    def _marker_shape(self) -> int:
        return self._bullet.createVisualShape(pybullet.GEOM_SPHERE, radius=REACH_MARKER_RADIUS_M, rgbaColor=GOAL_COLOUR)

    def _goal_of(self, task: TaskSpec) -> np.ndarray:
        return np.array([float(task["goal_x"]), float(task["goal_y"]), float(task["goal_z"])])

    def _compute_status(self) -> dict:
        distance = float(np.linalg.norm(self._ee_position - self._goal))
        return {"reward": -distance, "success": distance < REACH_SUCCESS_M, "goal_distance_m": distance}

    @property
    def interface(self) -> dict:
        return reach_interface(self.spec.name)


class PushScene(_GoalScene):
    """The arm and one cube; a task is the cube's size, mass and friction, a hidden goal on the table
    and arm dynamics.

    The grasp frame starts at (0.35, 0, 0.02) m and stays at that height: :meth:`apply_command` takes
    a planar velocity. The cube starts near (0.45, 0). The goal marker, when asked for, is a flat disc
    of the success radius without a collision shape.
    """

    home_ee_position = PUSH_START_EE_POSITION

    def __init__(self, task: TaskSpec, **kwargs) -> None:
        self._box = -1
        self._box_position = np.zeros(3)
        self._box_orientation = np.array([0.0, 0.0, 0.0, 1.0])
        super().__init__(task, **kwargs)

    def _validate_task(self, task: TaskSpec) -> None:
        validate_push_task(task)

    def _marker_shape(self) -> int:
        return self._bullet.createVisualShape(
            pybullet.GEOM_CYLINDER, radius=PUSH_SUCCESS_M, length=PUSH_MARKER_HEIGHT_M, rgbaColor=GOAL_COLOUR
        )

    def _goal_of(self, task: TaskSpec) -> np.ndarray:
        return np.array([float(task["goal_x"]), float(task["goal_y"]), 0.0])

    def _marker_position(self) -> tuple[float, float, float]:
        return (float(self._goal[0]), float(self._goal[1]), PUSH_MARKER_HEIGHT_M / 2.0)

    def _build_bodies(self, task: TaskSpec) -> None:
        b = self._bullet
        if self._box >= 0:
            b.removeBody(self._box)
        half = [float(task["object_size_m"]) / 2.0] * 3
        self._box = b.createMultiBody(
            baseMass=float(task["object_mass_kg"]),
            baseCollisionShapeIndex=b.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half),
            baseVisualShapeIndex=b.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=OBJECT_COLOUR),
            basePosition=_PARKING_POSITION,
        )
        b.changeDynamics(self._box, -1, lateralFriction=float(task["lateral_friction"]))

    def _park_bodies(self) -> None:
        self._bullet.resetBasePositionAndOrientation(self._box, _PARKING_POSITION, (0.0, 0.0, 0.0, 1.0))

    def _place_bodies(self, rng: np.random.Generator) -> None:
        offset = rng.uniform(-BOX_XY_NOISE_M, BOX_XY_NOISE_M, size=2)
        yaw = float(rng.uniform(-BOX_YAW_NOISE_RAD, BOX_YAW_NOISE_RAD))
        position = (BOX_HOME_XY[0] + offset[0], BOX_HOME_XY[1] + offset[1], float(self._task["object_size_m"]) / 2.0)
        orientation = pybullet.getQuaternionFromEuler((0.0, 0.0, yaw))
        self._bullet.resetBasePositionAndOrientation(self._box, position, orientation)
        self._bullet.resetBaseVelocity(self._box, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))

    def apply_command(self, command: np.ndarray) -> None:
        """Set the grasp-frame velocity ``[vx, vy]`` (m/s) in the table plane until the next command.

        The vertical velocity is always 0, so the grasp frame's reference height stays the start height.
        """
        command = np.asarray(command, dtype=np.float64).reshape(-1)
        if command.shape != (2,) or not np.all(np.isfinite(command)):
            raise ValueError(f"command must be 2 finite numbers [vx, vy], got {command!r}")
        super().apply_command(np.append(command, 0.0))

    def _sense(self) -> None:
        super()._sense()
        if self._box >= 0:
            position, orientation = self._bullet.getBasePositionAndOrientation(self._box)
            self._box_position, self._box_orientation = np.array(position), np.array(orientation)

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Position in m and quaternion (x, y, z, w) of the cube's centre, world frame."""
        return self._box_position.copy(), self._box_orientation.copy()

    def robot_inputs(self) -> RobotInputs:
        """As :meth:`_GoalScene.robot_inputs`, plus the cube's pose ``object_pose``."""
        inputs = super().robot_inputs()
        inputs.poses["object_pose"] = PoseSample(*self.object_pose())
        return inputs

    def object_yaw(self) -> float:
        """The cube's rotation about the world vertical (rad)."""
        x, y, z, w = self._box_orientation
        return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))

    def _compute_status(self) -> dict:
        goal_distance = float(np.linalg.norm(self._box_position[:2] - self._goal[:2]))
        gripper_distance = float(np.linalg.norm(self._ee_position - self._box_position))
        return {
            "reward": -goal_distance - GRIPPER_DISTANCE_WEIGHT * gripper_distance,
            "success": goal_distance < PUSH_SUCCESS_M,
            "goal_distance_m": goal_distance,
            "gripper_object_distance_m": gripper_distance,
        }

    @property
    def interface(self) -> dict:
        return push_interface(self.spec.name)

    @property
    def body_ids(self) -> dict[str, int]:
        """PyBullet body ids of ``robot``, ``table`` and ``object`` (the cube)."""
        return {**super().body_ids, "object": self._box}


# ------------------------------------------------------------------------------------------ envs


class _GoalEnv(SceneEnv):
    """A :class:`SceneEnv` over a :class:`_GoalScene`: normalised actions, truncation only, task via ``set_task``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(CONTROL_RATE_HZ)}
    scene_class: type[_GoalScene]
    default_horizon: int
    observation_size: int

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        robot: str = DEFAULT_ROBOT,
    ) -> None:
        task = task if task is not None else self._default_task()
        horizon = self.default_horizon if max_episode_steps is None else int(max_episode_steps)
        self._init_scene_env(
            lambda: self.scene_class(task, robot=robot, goal_marker=render_mode == "rgb_array"),
            max_episode_steps=horizon,
            render_mode=render_mode,
        )
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (self.observation_size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(self._action_scale),), np.float32)

    @staticmethod
    def _default_task() -> TaskSpec:
        raise NotImplementedError


class PandaReachEnv(_GoalEnv):
    """Move the grasp frame to a hidden goal within ``max_episode_steps`` (50) control steps at 10 Hz.

    ============  ===============================================================================
    observation   grasp-frame position (m) and linear velocity (m/s), world frame, float32 (6)
    action        ``Box(-1, 1, (3,))``: grasp-frame velocity ``action * 0.15`` m/s per axis
    reward        ``-||ee_position - goal||`` (m) after the step
    terminated    never; truncated after ``max_episode_steps``
    info          ``success`` (within 2 cm of the goal after the step), ``goal_distance_m``, ``task_id``
    ============  ===============================================================================

    The observation noise is the task's ``obs_noise_std``. ``robot`` picks the arm.
    """

    scene_class = ReachScene
    default_horizon = REACH_HORIZON
    observation_size = 6
    demonstrator = "sim.panda_tasks:reach_demonstrator"
    """The task-aware policy ``metarl-robot gif --policy oracle`` and imitation warm starts use."""

    @staticmethod
    def _default_task() -> TaskSpec:
        return reach_distribution(num_train=1, num_test=0).train_tasks[0]


class PandaPushEnv(_GoalEnv):
    """Push a cube to a hidden goal on the table within ``max_episode_steps`` (60) control steps at 10 Hz.

    ============  ===============================================================================
    observation   grasp-frame position, cube position (m), sin and cos of the cube's yaw, float32 (8)
    action        ``Box(-1, 1, (2,))``: planar grasp-frame velocity ``action * 0.15`` m/s per axis
    reward        ``-||cube_xy - goal|| - 0.1 * ||ee_position - cube_position||`` (m) after the step
    terminated    never; truncated after ``max_episode_steps``
    info          ``success`` (cube within 3 cm of the goal after the step), ``goal_distance_m``,
                  ``gripper_object_distance_m``, ``task_id``
    ============  ===============================================================================

    The gripper is held closed and the grasp frame 2 cm above the table. ``robot`` picks the arm.
    """

    scene_class = PushScene
    default_horizon = PUSH_HORIZON
    observation_size = 8
    demonstrator = "sim.panda_tasks:push_demonstrator"
    """The task-aware policy ``metarl-robot gif --policy oracle`` and imitation warm starts use."""

    @staticmethod
    def _default_task() -> TaskSpec:
        return push_distribution(num_train=1, num_test=0).train_tasks[0]


# -------------------------------------------------------------------------------- demonstrators

REACH_GAIN_PER_S = 3.0
"""Proportional gain of the reach demonstrator: with one period of latency, 0.3 per period stays well damped."""


def reach_demonstrator(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Normalised actions ``[N, 3]``: a grasp-frame velocity proportional to the offset to each task's
    goal, scaled down as a whole (keeping its direction) where an axis would exceed full speed."""
    obs = np.asarray(obs, dtype=np.float64).reshape(len(tasks), -1)
    goals = np.array([[t["goal_x"], t["goal_y"], t["goal_z"]] for t in tasks], dtype=np.float64)
    action = REACH_GAIN_PER_S * (goals - obs[:, :3]) / MAX_EE_SPEED_M_S
    largest = np.maximum(np.abs(action).max(axis=1, keepdims=True), 1.0)
    return (action / largest).astype(np.float32)


PUSH_SPEED_M_S = 0.1
"""Pushing speed far from the goal; it falls off proportionally within :data:`PUSH_SLOWDOWN_M` of it."""
PUSH_SLOWDOWN_M = 0.05
PUSH_STOP_M = 0.01
"""The demonstrator stops pushing once the cube is this close to the goal."""
PUSH_HOLD_M = 0.02
"""... and holds still from this close on unless it is right behind the cube: near the goal the
direction to it is too uncertain to go around the cube for."""
FINGER_HALF_WIDTH_M = 0.03
"""Half the closed fingers' longest extent in the table plane (the Panda's span 6 cm along the axis
they close on)."""
ORBIT_CLEARANCE_M = 0.01
"""Gap kept between the fingers and the cube's corners while going around it."""
ALIGNED_RAD = 0.25
"""Largest angle, seen from the cube, between the fingers and the point behind it that pushes from."""
ORBIT_GAIN_PER_S = 4.0
LATERAL_GAIN_PER_S = 4.0


def _push_action(ee: np.ndarray, cube: np.ndarray, goal: np.ndarray, size: float) -> np.ndarray:
    """One planar velocity (m/s) of the push demonstrator; every position in the table plane (m)."""
    to_goal = goal - cube
    distance = float(np.linalg.norm(to_goal))
    if distance < PUSH_STOP_M:
        return np.zeros(2)
    forward = to_goal / distance
    left = np.array([-forward[1], forward[0]])
    offset = ee - cube
    radius = max(float(np.linalg.norm(offset)), 1e-6)
    # Angle, seen from the cube, from the point right behind it (opposite the goal) to the fingers,
    # counter-clockwise positive.
    angle = math.atan2(float(offset @ -left), float(offset @ -forward))
    aligned = abs(angle) <= ALIGNED_RAD
    if distance < PUSH_HOLD_M and not aligned:
        return np.zeros(2)
    if aligned:
        # Behind the cube: push it towards the goal, steering onto the line through cube and goal.
        speed = PUSH_SPEED_M_S * min(1.0, distance / PUSH_SLOWDOWN_M)
        return speed * forward - LATERAL_GAIN_PER_S * float(offset @ left) * left
    # Elsewhere: go around the cube on a circle that clears its corners, towards the point behind it.
    orbit = size / math.sqrt(2.0) + FINGER_HALF_WIDTH_M + ORBIT_CLEARANCE_M
    outward = offset / radius
    around = np.array([-outward[1], outward[0]])  # counter-clockwise
    tangential = min(PUSH_SPEED_M_S, ORBIT_GAIN_PER_S * abs(angle) * orbit)
    return ORBIT_GAIN_PER_S * (orbit - radius) * outward - math.copysign(tangential, angle) * around


def push_demonstrator(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Normalised actions ``[N, 2]``: go around the cube, clear of its corners, to the side opposite
    each task's goal, then push it along the line to the goal, slowing down near the goal and
    stopping within 1 cm of it. Stateless: the phase is read from the observation."""
    obs = np.asarray(obs, dtype=np.float64).reshape(len(tasks), -1)
    actions = np.zeros((len(tasks), 2))
    for i, (o, task) in enumerate(zip(obs, tasks)):
        goal = np.array([float(task["goal_x"]), float(task["goal_y"])])
        velocity = _push_action(o[0:2], o[3:5], goal, float(task["object_size_m"]))
        largest = max(float(np.abs(velocity).max()) / MAX_EE_SPEED_M_S, 1.0)
        actions[i] = velocity / MAX_EE_SPEED_M_S / largest
    return actions.astype(np.float32)


# ---------------------------------------------------------------------------------- measurement

ENVS = {"reach": (PandaReachEnv, reach_distribution), "push": (PandaPushEnv, push_distribution)}


def run_policy(env: _GoalEnv, tasks: Sequence[TaskSpec], policy: str = "demonstrator", *, seed: int = 0) -> list[dict]:
    """The last step's info of one episode per task (reset with ``seed``) under ``policy``: the env's
    ``demonstrator`` or ``random`` (uniform actions seeded by ``seed``)."""
    if policy not in ("demonstrator", "random"):
        raise ValueError(f"policy={policy!r}: use demonstrator or random")
    module_name, _, function = env.demonstrator.partition(":")
    demonstrate = getattr(importlib.import_module(module_name), function)
    outcomes = []
    for task in tasks:
        obs, info = env.reset(seed=seed, options={"task": task})
        env.action_space.seed(seed)
        truncated = False
        while not truncated:
            action = demonstrate(obs[None], [task])[0] if policy == "demonstrator" else env.action_space.sample()
            obs, _, _, truncated, info = env.step(action)
        outcomes.append(info)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Print the success of a policy on the first tasks of a split: ``python -m sim.panda_tasks push``."""
    parser = argparse.ArgumentParser(prog="python -m sim.panda_tasks", description=main.__doc__)
    parser.add_argument("family", choices=sorted(ENVS))
    parser.add_argument("--robot", default=DEFAULT_ROBOT)
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--num-tasks", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the task distribution and of every reset")
    parser.add_argument("--policy", default="demonstrator", choices=("demonstrator", "random"))
    args = parser.parse_args(argv)
    env_class, distribution = ENVS[args.family]
    tasks = distribution(seed=args.seed, **{f"num_{args.split}": args.num_tasks}).split(args.split)
    env = env_class(robot=args.robot)
    try:
        outcomes = run_policy(env, tasks, args.policy, seed=args.seed)
    finally:
        env.close()
    for task, info in zip(tasks, outcomes):
        print(f"{task.task_id}  success={info['success']!s:5}  goal_distance_m={info['goal_distance_m']:.3f}")
    successes = sum(info["success"] for info in outcomes)
    print(f"{args.family} {args.robot} {args.split} {args.policy}: {successes}/{len(outcomes)} succeeded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
