"""The MAML paper's (Finn et al., 2017) half-cheetah meta-RL tasks in PyBullet: run at a goal velocity, or
run forwards or backwards.

The robot is a planar half cheetah built in code with the geometry, masses, joint ranges, joint springs
and motor gears of the MuJoCo ``half_cheetah.xml`` model that rllab (MAML's code) and Gymnasium use:
a torso on a slider-slider-hinge root (x, z, pitch) with a back and a front leg of three hinges each,
torque-driven. It is built rather than loaded from ``pybullet_data/mjcf/half_cheetah.xml`` because
PyBullet's MJCF import of that file places every link's centre of mass on its joint and gives each
foot 10 kg, which makes a different animal.

Each env owns a PyBullet client in DIRECT mode, so several envs can live in one process. Episodes are
bit-for-bit reproducible: the same task and ``reset(seed)`` give the same trajectory whatever the env
did before (the world is restored from a saved state after every body is separated from the ground,
so no cached contact survives a reset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from metarl_robot.contract import JointStateSample, ObservationLayout, RobotInputs
from metarl_robot.envs import TaskEnv
from metarl_robot.tasks import TaskDistribution, TaskError, TaskSpec, Uniform

__all__ = [
    "DIRECTION_FAMILY",
    "VELOCITY_FAMILY",
    "CHEETAH_INTERFACE",
    "HalfCheetahDirEnv",
    "HalfCheetahVelEnv",
    "cheetah_direction_distribution",
    "cheetah_gait_demonstrator",
    "cheetah_velocity_distribution",
    "sinusoidal_gait",
    "validate_direction_task",
    "validate_velocity_task",
]

VELOCITY_FAMILY = "cheetah_velocity"
DIRECTION_FAMILY = "cheetah_direction"
GOAL_VELOCITY_RANGE_M_S = (0.0, 2.0)

ROOT_JOINTS = ("rootx", "rootz", "rooty")
LEG_JOINTS = ("bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot")
GEAR_NM = (120.0, 90.0, 60.0, 120.0, 60.0, 30.0)
"""Torque of each leg motor at action 1 (the MuJoCo model's motor gears with ctrlrange [-1, 1])."""
JOINT_RANGE_RAD = ((-0.52, 1.05), (-0.785, 0.785), (-0.4, 0.785), (-1.0, 0.7), (-1.2, 0.87), (-0.5, 0.5))
JOINT_STIFFNESS_NM_RAD = (240.0, 180.0, 120.0, 180.0, 120.0, 60.0)
"""Passive springs pulling each leg joint towards 0 rad, as in the MuJoCo model."""
JOINT_DAMPING_NMS_RAD = (6.0, 4.5, 3.0, 4.5, 3.0, 1.5)
TOTAL_MASS_KG = 14.0
TORSO_HEIGHT_M = 0.7
"""Height of the torso's frame at root z = 0 (the model's initial pose)."""
CAPSULE_RADIUS_M = 0.046
FRICTION = 0.4
"""Coulomb friction between the cheetah and the ground."""

MODEL_STEP_S = 0.01
"""The MuJoCo model's time step; ``frame_skip`` counts these."""
SUBSTEPS_PER_MODEL_STEP = 4
"""Bullet steps per model step: the joint springs are applied explicitly and need 2.5 ms steps to stay stable."""
PHYSICS_STEP_S = MODEL_STEP_S / SUBSTEPS_PER_MODEL_STEP
FRAME_SKIP = 5
"""Model steps per control step by default: a control period of 0.05 s (20 Hz)."""
CONTROL_COST_WEIGHT = 0.05
"""``0.5 * 0.1 * ||a||^2`` on the normalised action, as in MAML's rllab envs."""
RESET_POSITION_STD = 0.01
RESET_VELOCITY_STD = 0.1
OBSERVATION_SIZE = 17

# Bodies of the model: (name, parent, joint position in the parent's frame, capsules), where a capsule is
# (centre in the body frame, rotation about y in rad of its axis from z, half length of its cylinder).
_BODIES: tuple[tuple[str, str | None, tuple[float, float], tuple[tuple[tuple[float, float], float, float], ...]], ...] = (
    ("torso", None, (0.0, 0.0), (((0.0, 0.0), math.pi / 2, 0.5), ((0.6, 0.1), 0.87, 0.15))),
    ("bthigh", "torso", (-0.5, 0.0), (((0.1, -0.13), -3.8, 0.145),)),
    ("bshin", "bthigh", (0.16, -0.25), (((-0.14, -0.07), -2.03, 0.15),)),
    ("bfoot", "bshin", (-0.28, -0.14), (((0.03, -0.097), -0.27, 0.094),)),
    ("fthigh", "torso", (0.5, 0.0), (((-0.07, -0.12), 0.52, 0.133),)),
    ("fshin", "fthigh", (-0.14, -0.24), (((0.065, -0.09), -0.6, 0.106),)),
    ("ffoot", "fshin", (0.13, -0.18), (((0.045, -0.07), -0.6, 0.07),)),
)

_OBSERVATION_LAYOUT = [
    {"name": "root_position", "source": "joint_states", "field": "position", "joints": ["rootz", "rooty"], "size": 2},
    {"name": "joint_position", "source": "joint_states", "field": "position", "joints": list(LEG_JOINTS), "size": 6},
    {"name": "root_velocity", "source": "joint_states", "field": "velocity", "joints": list(ROOT_JOINTS), "size": 3},
    {"name": "joint_velocity", "source": "joint_states", "field": "velocity", "joints": list(LEG_JOINTS), "size": 6},
]

_LAYOUT = ObservationLayout.parse(_OBSERVATION_LAYOUT)
_JOINT_NAMES = ROOT_JOINTS + LEG_JOINTS

CHEETAH_INTERFACE = {
    "robot": "half_cheetah",
    "control_rate_hz": 1.0 / (FRAME_SKIP * MODEL_STEP_S),
    "frame_id": "world",
    "joint_names": list(ROOT_JOINTS + LEG_JOINTS),
    "observation_layout": _OBSERVATION_LAYOUT,
    "action": {
        "mode": "joint_effort",
        "names": list(LEG_JOINTS),
        "units": ["N m"] * 6,
        "scale": list(GEAR_NM),
        "low": [-g for g in GEAR_NM],
        "high": list(GEAR_NM),
    },
}
"""The robot contract at the default ``frame_skip``: root z (m, from the initial 0.7 m) and pitch (rad),
leg joint angles (rad), root velocities (m/s, m/s, rad/s), leg joint velocities (rad/s); actions are
leg torques (N m), normalised by the gears."""


# -------------------------------------------------------------------------------------- tasks


def cheetah_velocity_distribution(
    seed: int = 0, num_train: int = 64, num_test: int = 16, num_validation: int = 0
) -> TaskDistribution:
    """Goal velocities uniform in [0, 2] m/s (MAML's setup); splits are independent draws."""
    return TaskDistribution(
        VELOCITY_FAMILY,
        {"goal_velocity": Uniform(*GOAL_VELOCITY_RANGE_M_S)},
        seed=seed,
        num_train=num_train,
        num_test=num_test,
        num_validation=num_validation,
    )


class _DirectionDistribution(TaskDistribution):
    """The two direction tasks, alternating +1, -1, +1, ... in every split (so any split of two or more
    tasks holds both). There is nothing to hold out: test tasks are the train tasks."""

    def __init__(self, *, seed: int, num_train: int, num_test: int, num_validation: int) -> None:
        super().__init__(
            DIRECTION_FAMILY, {}, seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation
        )

    def _draw(self, rng: np.random.Generator, n: int, split: str) -> list[TaskSpec]:
        return [TaskSpec(DIRECTION_FAMILY, {"direction": 1 if i % 2 == 0 else -1}, f"{split}-{i:04d}") for i in range(n)]

    def validate(self, task: TaskSpec) -> None:
        validate_direction_task(task)


def cheetah_direction_distribution(
    seed: int = 0, num_train: int = 2, num_test: int = 2, num_validation: int = 0
) -> TaskDistribution:
    """Run forwards (``direction=1``) or backwards (``direction=-1``): only these two tasks exist, and
    every split lists them alternately, starting with forwards. ``seed`` changes nothing (kept for the
    common signature)."""
    return _DirectionDistribution(seed=seed, num_train=num_train, num_test=num_test, num_validation=num_validation)


def _check_params(task: TaskSpec, family: str, name: str, what: str) -> float:
    if task.family != family:
        raise TaskError(f"family={task.family!r}: this env runs family {family!r} only")
    unknown = sorted(set(task.params) - {name})
    if unknown:
        raise TaskError(f"unknown {family} parameter(s) {unknown}; allowed: {name}")
    if name not in task.params:
        raise TaskError(f"missing {family} parameter {name!r}: {what}")
    value = task.params[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"{name}={value!r} must be a number: {what}")
    return float(value)


def validate_velocity_task(task: TaskSpec) -> None:
    """Raise :class:`TaskError` naming the bad field unless ``task`` is a ``cheetah_velocity`` task.

    Goal velocities outside the training range [0, 2] m/s (negative ones too) are allowed."""
    _check_params(task, VELOCITY_FAMILY, "goal_velocity", "the goal forward velocity in m/s")


def validate_direction_task(task: TaskSpec) -> None:
    """Raise :class:`TaskError` naming the bad field unless ``task`` is a ``cheetah_direction`` task."""
    direction = _check_params(task, DIRECTION_FAMILY, "direction", "+1 (run forwards) or -1 (backwards)")
    if direction not in (1.0, -1.0):
        raise TaskError(f"direction={task.params['direction']!r} must be +1 (run forwards) or -1 (backwards)")


# -------------------------------------------------------------------------------------- model


def _capsule_mass_and_inertia(half_length: float, density: float) -> tuple[float, float]:
    """Mass and moment of inertia about an axis through the centre, perpendicular to the capsule's axis."""
    r, length = CAPSULE_RADIUS_M, 2.0 * half_length
    cylinder = density * math.pi * r**2 * length
    spheres = density * 4.0 / 3.0 * math.pi * r**3
    inertia = cylinder * (length**2 / 12.0 + r**2 / 4.0)
    inertia += spheres * (2.0 * r**2 / 5.0 + length**2 / 4.0 + 3.0 * length * r / 8.0)
    return cylinder + spheres, inertia


def _body_inertials() -> dict[str, tuple[float, tuple[float, float], float]]:
    """Per body: mass (kg), centre of mass (x, z) in the body frame, pitch inertia about it (kg m^2).

    Masses follow the capsules' volumes at one density, scaled so the robot weighs ``TOTAL_MASS_KG``
    (what MuJoCo's ``inertiafromgeom`` with ``settotalmass`` does).
    """
    raw = {}
    for name, _, _, capsules in _BODIES:
        parts = [(*_capsule_mass_and_inertia(half, 1000.0), centre) for centre, _, half in capsules]
        mass = sum(m for m, _, _ in parts)
        com = tuple(sum(m * c[k] for m, _, c in parts) / mass for k in range(2))
        inertia = sum(i + m * ((c[0] - com[0]) ** 2 + (c[1] - com[1]) ** 2) for m, i, c in parts)
        raw[name] = (mass, com, inertia)
    scale = TOTAL_MASS_KG / sum(m for m, _, _ in raw.values())
    return {name: (m * scale, com, i * scale) for name, (m, com, i) in raw.items()}


def _about_y(angle: float) -> tuple[float, float, float, float]:
    return (0.0, math.sin(angle / 2.0), 0.0, math.cos(angle / 2.0))


class _CheetahWorld:
    """The half cheetah on a plane in its own PyBullet client: torque in, joint state out."""

    def __init__(self) -> None:
        self.bullet = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        b = self.bullet
        b.setAdditionalSearchPath(pybullet_data.getDataPath())
        b.setPhysicsEngineParameter(fixedTimeStep=PHYSICS_STEP_S, deterministicOverlappingPairs=1)
        b.setGravity(0.0, 0.0, -9.81)
        self.ground = b.loadURDF("plane.urdf")
        b.changeDynamics(self.ground, -1, lateralFriction=1.0)
        self.robot = self._build_robot()
        self.joints = list(range(b.getNumJoints(self.robot)))
        self.leg_joints = self.joints[3:]
        b.setJointMotorControlArray(self.robot, self.joints, pybullet.VELOCITY_CONTROL, forces=[0.0] * len(self.joints))
        self.home_state = b.saveState()
        self.stiffness = np.asarray(JOINT_STIFFNESS_NM_RAD)
        self.damping = np.asarray(JOINT_DAMPING_NMS_RAD)
        self.gear = np.asarray(GEAR_NM)

    def _build_robot(self) -> int:
        b = self.bullet
        inertials = _body_inertials()
        index = {name: i for i, (name, *_rest) in enumerate(_BODIES)}
        # Two massless root links (x slider, z slider) carry the torso, whose link is the pitch hinge.
        masses, collisions, visuals, positions = [0.0, 0.0], [-1, -1], [-1, -1], [(0.0, 0.0, 0.0)] * 2
        inertial_positions, parents = [(0.0, 0.0, 0.0)] * 2, [0, 1]
        joint_types = [pybullet.JOINT_PRISMATIC, pybullet.JOINT_PRISMATIC]
        axes = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
        inertias = [(0.0, 0.0, 0.0)] * 2
        for name, parent, (jx, jz), capsules in _BODIES:
            mass, (cx, cz), pitch_inertia = inertials[name]
            frames = [(c[0], 0.0, c[1]) for c, _, _ in capsules]
            orientations = [_about_y(angle) for _, angle, _ in capsules]
            lengths = [2.0 * half for _, _, half in capsules]
            count = len(capsules)
            collisions.append(
                b.createCollisionShapeArray(
                    [pybullet.GEOM_CAPSULE] * count,
                    radii=[CAPSULE_RADIUS_M] * count,
                    lengths=lengths,
                    collisionFramePositions=frames,
                    collisionFrameOrientations=orientations,
                )
            )
            colour = [0.8, 0.6, 0.4, 1.0] if name in ("torso", "bthigh", "fthigh") else [0.9, 0.6, 0.6, 1.0]
            visuals.append(
                b.createVisualShapeArray(
                    [pybullet.GEOM_CAPSULE] * count,
                    radii=[CAPSULE_RADIUS_M] * count,
                    lengths=lengths,
                    visualFramePositions=frames,
                    visualFrameOrientations=orientations,
                    rgbaColors=[colour] * count,
                )
            )
            masses.append(mass)
            positions.append((jx, 0.0, jz))
            inertial_positions.append((cx, 0.0, cz))
            # Only the pitch inertia matters in the plane; the other two axes get the same value.
            inertias.append((pitch_inertia, pitch_inertia, pitch_inertia))
            parents.append(2 if parent is None else 3 + index[parent])
            joint_types.append(pybullet.JOINT_REVOLUTE)
            axes.append((0.0, 1.0, 0.0))
        count = len(masses)
        robot = b.createMultiBody(
            baseMass=0.0,
            basePosition=(0.0, 0.0, TORSO_HEIGHT_M),
            linkMasses=masses,
            linkCollisionShapeIndices=collisions,
            linkVisualShapeIndices=visuals,
            linkPositions=positions,
            linkOrientations=[(0.0, 0.0, 0.0, 1.0)] * count,
            linkInertialFramePositions=inertial_positions,
            linkInertialFrameOrientations=[(0.0, 0.0, 0.0, 1.0)] * count,
            linkParentIndices=parents,
            linkJointTypes=joint_types,
            linkJointAxis=axes,
        )
        for link, inertia in enumerate(inertias):
            if masses[link] > 0:
                b.changeDynamics(robot, link, localInertiaDiagonal=inertia, lateralFriction=FRICTION)
        for link, (low, high) in zip(range(3, count), JOINT_RANGE_RAD):
            b.changeDynamics(robot, link, jointLowerLimit=low, jointUpperLimit=high)
        for link in range(count):
            b.changeDynamics(robot, link, linearDamping=0.0, angularDamping=0.0, jointDamping=0.0)
        return robot

    def reset(self, positions: np.ndarray, velocities: np.ndarray) -> None:
        """Restore the initial world, then set the nine joints (root x, z, pitch, legs)."""
        b = self.bullet
        # Lift the robot far off the ground so Bullet drops every cached contact before the restore.
        b.resetJointState(self.robot, 1, 100.0, 0.0)
        b.performCollisionDetection()
        b.restoreState(self.home_state)
        for joint, q, qd in zip(self.joints, positions, velocities):
            b.resetJointState(self.robot, joint, float(q), float(qd))

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        states = self.bullet.getJointStates(self.robot, self.joints)
        return np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def step(self, action: np.ndarray, model_steps: int) -> None:
        """Hold the normalised ``action`` for ``model_steps`` model steps, with the joint springs and dampers."""
        b = self.bullet
        for _ in range(model_steps * SUBSTEPS_PER_MODEL_STEP):
            states = b.getJointStates(self.robot, self.leg_joints)
            q = np.array([s[0] for s in states])
            qd = np.array([s[1] for s in states])
            torque = self.gear * action - self.stiffness * q - self.damping * qd
            b.setJointMotorControlArray(self.robot, self.leg_joints, pybullet.TORQUE_CONTROL, forces=torque.tolist())
            b.stepSimulation()

    def torso_velocity(self) -> np.ndarray:
        """Linear velocity (m/s) of the torso's centre of mass."""
        return np.asarray(self.bullet.getLinkState(self.robot, 2, computeLinkVelocity=1)[6])

    def render(self, width: int, height: int) -> np.ndarray:
        b = self.bullet
        x = float(self.joint_state()[0][0])
        view = b.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=(x, 0.0, 0.4), distance=3.0, yaw=0.0, pitch=-10.0, roll=0.0, upAxisIndex=2
        )
        projection = b.computeProjectionMatrixFOV(fov=50.0, aspect=width / height, nearVal=0.05, farVal=20.0)
        _, _, rgba, _, _ = b.getCameraImage(width, height, view, projection, renderer=pybullet.ER_TINY_RENDERER)
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def close(self) -> None:
        self.bullet.disconnect()


# ---------------------------------------------------------------------------------------- envs


class _HalfCheetahEnv(TaskEnv):
    """Shared body of the two task envs; subclasses define the family and the task reward."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1.0 / (FRAME_SKIP * MODEL_STEP_S)))}
    demonstrator = "sim.half_cheetah:cheetah_gait_demonstrator"
    """A fixed gait, not an expert: what ``metarl-robot gif --policy oracle`` shows for the cheetah."""
    family = ""

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        max_episode_steps: int = 200,
        frame_skip: int = FRAME_SKIP,
        render_mode: str | None = None,
    ) -> None:
        self._check_render_mode(render_mode)
        if max_episode_steps < 1 or frame_skip < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps} and frame_skip={frame_skip} must be >= 1")
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps)
        self.frame_skip = int(frame_skip)
        self.dt = self.frame_skip * MODEL_STEP_S
        self.interface = {**CHEETAH_INTERFACE, "control_rate_hz": 1.0 / self.dt}
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBSERVATION_SIZE,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(LEG_JOINTS),), np.float32)
        self._task = self._default_task()
        if task is not None:
            self.set_task(task)
        self._world = _CheetahWorld()
        self._closed = False
        self._elapsed_steps = 0

    def _default_task(self) -> TaskSpec:
        raise NotImplementedError

    def _validate(self, task: TaskSpec) -> None:
        raise NotImplementedError

    def _task_reward(self, forward_velocity: float) -> float:
        raise NotImplementedError

    def validate_task(self, task: TaskSpec) -> None:
        self._validate(task)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """The initial pose with N(0, 0.01) joint-position and N(0, 0.1) joint-velocity noise (rllab's);
        ``options={"task": TaskSpec}`` switches the task first."""
        if self._closed:
            raise RuntimeError("this env is closed")
        self._start_reset(seed, options)
        size = len(ROOT_JOINTS) + len(LEG_JOINTS)
        positions = self.np_random.normal(0.0, RESET_POSITION_STD, size)
        velocities = self.np_random.normal(0.0, RESET_VELOCITY_STD, size)
        self._world.reset(positions, velocities)
        self._elapsed_steps = 0
        return self._observe(), {"x_position_m": float(self._world.joint_state()[0][0])}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(len(LEG_JOINTS)), -1.0, 1.0)
        self._world.step(action, self.frame_skip)
        self._elapsed_steps += 1
        forward_velocity = float(self._world.torso_velocity()[0])
        control_cost = CONTROL_COST_WEIGHT * float(np.sum(action**2))
        reward = self._task_reward(forward_velocity) - control_cost
        info = {
            "forward_velocity_m_s": forward_velocity,
            "control_cost": control_cost,
            "x_position_m": float(self._world.joint_state()[0][0]),
        }
        return self._observe(), reward, False, self._elapsed_steps >= self.max_episode_steps, info

    def robot_inputs(self) -> RobotInputs:
        """What the robot would publish: a joint state of the root and leg joints (no efforts)."""
        q, qd = self._world.joint_state()
        return RobotInputs(JointStateSample(_JOINT_NAMES, q, qd, np.zeros(0)))

    def _observe(self) -> np.ndarray:
        return _LAYOUT.assemble_inputs(self.robot_inputs())  # the robot contract's assembly

    def render(self):
        """A 240x160 side view following the torso, rendered headless by TinyRenderer."""
        if self.render_mode != "rgb_array":
            return None
        return self._world.render(240, 160)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._world.close()


class HalfCheetahVelEnv(_HalfCheetahEnv):
    """Run at the task's goal velocity (MAML's HalfCheetahEnvRand).

    ============  ===============================================================================
    observation   17 floats: root z (m, 0 at the initial 0.7 m) and pitch (rad), six leg joint
                  angles (rad), root x, z and pitch velocities, six leg joint velocities
    action        ``Box(-1, 1, (6,))``: leg torques ``action * gear`` (120, 90, 60, 120, 60, 30 N m)
    reward        ``-|v_x - goal_velocity| - 0.05 * ||action||^2``, v_x the torso's forward velocity
    truncated     after ``max_episode_steps`` (200) control steps of ``frame_skip`` x 0.01 s
    ============  ===============================================================================
    """

    family = VELOCITY_FAMILY

    def _default_task(self) -> TaskSpec:
        return cheetah_velocity_distribution().train_tasks[0]

    def _validate(self, task: TaskSpec) -> None:
        validate_velocity_task(task)

    def _task_reward(self, forward_velocity: float) -> float:
        return -abs(forward_velocity - float(self._task["goal_velocity"]))


class HalfCheetahDirEnv(_HalfCheetahEnv):
    """Run forwards or backwards (MAML's HalfCheetahEnvRandDirec).

    Observation, action and horizon as :class:`HalfCheetahVelEnv`; reward
    ``direction * v_x - 0.05 * ||action||^2``.
    """

    family = DIRECTION_FAMILY

    def _default_task(self) -> TaskSpec:
        return cheetah_direction_distribution().train_tasks[0]

    def _validate(self, task: TaskSpec) -> None:
        validate_direction_task(task)

    def _task_reward(self, forward_velocity: float) -> float:
        return float(self._task["direction"]) * forward_velocity


# --------------------------------------------------------------------------------------- gaits

GAIT_FREQUENCY_HZ = 2.37
GAIT_AMPLITUDE = 0.6
GAIT_PHASES_RAD = (2.2, 3.0, 0.6, 3.4, 5.8, 3.5)


def sinusoidal_gait(time_s: float) -> np.ndarray:
    """A fixed open-loop gait: normalised leg torques ``0.6 * sin(2 pi 2.37 Hz t + phase_j)``.

    It runs forwards at about 1.3 m/s over a 200-step episode at the default ``frame_skip`` without
    tipping over (found by a small random search over phases and frequency).
    """
    phase = 2.0 * math.pi * GAIT_FREQUENCY_HZ * time_s
    return (GAIT_AMPLITUDE * np.sin(phase + np.asarray(GAIT_PHASES_RAD))).astype(np.float32)


# Feedback gaits: each leg torque is sin(phi + phase_j), where phi is the phase angle of the front thigh's
# oscillation read from the observation, atan2(-velocity / frequency, angle - centre). The gait therefore
# needs no clock and keeps itself going. Each entry: (frequency rad/s, centre rad, phases rad).
_FORWARD_GAIT = (12.94, -0.02, (0.01, 4.31, 5.44, 5.4, 5.5, 1.23))
_BACKWARD_GAIT = (12.0, -0.29, (0.41, 6.06, 4.06, 5.95, 2.2, 4.75))
# Mean forward speed (m/s, steps 50..200 of an episode, default frame_skip) against the gait's amplitude.
_FORWARD_SPEEDS = (
    (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    (0.0, 0.21, 0.54, 0.81, 1.07, 1.36, 1.66, 1.87, 2.16, 2.53),
)
_BACKWARD_SPEEDS = (
    (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    (0.0, 0.69, 1.19, 1.7, 2.13, 2.57, 3.01, 3.45, 3.94),
)
_FRONT_THIGH = LEG_JOINTS.index("fthigh")


def _feedback_gait(obs: np.ndarray, gait: tuple[float, float, tuple[float, ...]], amplitude: float) -> np.ndarray:
    frequency, centre, phases = gait
    angle, velocity = obs[2 + _FRONT_THIGH], obs[11 + _FRONT_THIGH]
    phi = math.atan2(-velocity / frequency, angle - centre)
    return amplitude * np.sin(phi + np.asarray(phases))


def cheetah_gait_demonstrator(obs: np.ndarray, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """Normalised actions ``[N, 6]`` of a fixed feedback gait chosen for each task: not an expert.

    Direction tasks get the forward or the backward gait at full amplitude (about 2.5 and 3.9 m/s);
    velocity tasks get the amplitude that, by a table measured in this simulator, gives a mean speed near
    the goal (the speed swings within each stride, so the velocity reward stays well below 0).
    """
    obs = np.asarray(obs, dtype=np.float64).reshape(len(tasks), OBSERVATION_SIZE)
    actions = []
    for o, task in zip(obs, tasks):
        if task.family == DIRECTION_FAMILY:
            gait, amplitude = (_FORWARD_GAIT if float(task["direction"]) > 0 else _BACKWARD_GAIT), 1.0
        else:
            goal = float(task["goal_velocity"])
            gait, (amplitudes, speeds) = (_FORWARD_GAIT, _FORWARD_SPEEDS) if goal >= 0 else (_BACKWARD_GAIT, _BACKWARD_SPEEDS)
            amplitude = float(np.interp(abs(goal), speeds, amplitudes))
        actions.append(_feedback_gait(o, gait, amplitude))
    return np.clip(np.asarray(actions), -1.0, 1.0).astype(np.float32)
