"""A robot arm on a table in PyBullet, in physical units: the scenes behind the grasp, reach and push envs.

:class:`ArmScene` is a table and an arm with a parallel-jaw gripper (Franka Panda, Kuka iiwa or xArm6,
see :mod:`sim.robots`) whose grasp frame follows Cartesian velocity commands with the gripper pointing
down. :class:`GraspScene` adds one task-defined object and everything a grasp needs: a grip force
command, crushing, slipping and tilting. Neither knows Gymnasium: the Gymnasium envs and the ROS 2
sim-robot node both drive them with commands and read back what a robot publishes
(:meth:`ArmScene.robot_inputs`: the joint state and poses). The observation is assembled from those by
the robot contract (:mod:`metarl_robot.contract`), the same function that assembles it on a robot.
:func:`robot_interface` is the contract (joints, rate, observation layout, action scaling) that
exported policy bundles carry.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Mapping, Sequence
from time import perf_counter
import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from metarl_robot.contract import JointStateSample, ObservationLayout, PoseSample, RobotInputs
from metarl_robot.tasks import TaskError, TaskSpec
from sim.grasp_task import (
    DEFAULT_DYNAMICS,
    FINGER_LATERAL_FRICTION,
    GRAVITY_M_S2,
    MAX_EE_SPEED_M_S,
    MAX_GRIP_FORCE_N,
    MAX_TILT_RAD,
    mesh_extent_m,
    random_urdf_mesh,
    validate_grasp_task,
)
from sim.robots import FINGER_OPEN_POSITION_M, ROBOTS, RobotSpec, robot_spec, robot_urdf

CONTROL_RATE_HZ = 10.0
DEFAULT_ROBOT = "franka_panda"


def robot_interface(spec: RobotSpec | str = DEFAULT_ROBOT) -> dict:
    """The robot contract of the grasp scene with ``spec``'s joints (JSON-serialisable)."""
    spec = robot_spec(spec) if isinstance(spec, str) else spec
    return {
        "robot": spec.name,
        "control_rate_hz": CONTROL_RATE_HZ,
        "frame_id": "world",
        "joint_names": list(spec.joint_names),
        "observation_layout": [
            {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
            {"name": "object_position", "source": "object_pose", "field": "position", "size": 3},
            {
                "name": "finger_position",
                "source": "joint_states",
                "field": "position",
                "joints": list(spec.finger_joints),
                "size": 2,
            },
            {
                "name": "finger_effort",
                "source": "joint_states",
                "field": "effort",
                "joints": list(spec.finger_joints),
                "size": 2,
            },
        ],
        "action": {
            "mode": "cartesian_velocity",
            "names": ["ee_vx", "ee_vy", "ee_vz", "grip_force"],
            "units": ["m/s", "m/s", "m/s", "N"],
            "scale": [MAX_EE_SPEED_M_S] * 3 + [MAX_GRIP_FORCE_N],
            "low": [-MAX_EE_SPEED_M_S] * 3 + [-MAX_GRIP_FORCE_N],
            "high": [MAX_EE_SPEED_M_S] * 3 + [MAX_GRIP_FORCE_N],
        },
    }


INTERFACE = robot_interface(DEFAULT_ROBOT)
"""The Panda's robot contract, written into exported grasp bundles."""

FINGER_JOINTS = ROBOTS[DEFAULT_ROBOT].finger_joints
JOINT_NAMES = ROBOTS[DEFAULT_ROBOT].joint_names
OBSERVATION_SIZE = sum(item["size"] for item in INTERFACE["observation_layout"])

# Geometry in the world frame: the robot base stands at the origin on the table top (z = 0).
OBJECT_HOME_XY = (0.5, 0.0)
OBJECT_XY_NOISE_M = 0.02
HOME_EE_POSITION = (0.5, 0.0, 0.14)
EE_DOWN_ORIENTATION = (1.0, 0.0, 0.0, 0.0)  # grasp frame z axis down: the fingers close along world y
WORKSPACE_LOW = (0.3, -0.2, 0.01)
WORKSPACE_HIGH = (0.7, 0.2, 0.4)
_WORKSPACE_LOW, _WORKSPACE_HIGH = np.asarray(WORKSPACE_LOW), np.asarray(WORKSPACE_HIGH)
_PARKING_POSITION = (5.0, 5.0, 5.0)
MAX_TARGET_LEAD_M = 0.03
"""How far the commanded end-effector position may run ahead of a blocked end effector."""

SUCCESS_LIFT_M = 0.08
FINGER_SPEED_M_S = 0.1
FINGER_SQUEEZE_SPEED_M_S = 1.0
FINGER_OPEN_FORCE_N = 20.0
SETTLE_TIME_S = 0.05
SETTLE_OBJECT_MAX_S = 1.5
"""Longest time a new object is simulated alone to find its resting pose."""
SOLVER_ITERATIONS = 20
ARM_POSITION_GAIN = 0.05
"""Position gain of the arm joint motors: soft enough that a reference held for several physics steps
does not jerk a grasped object."""
ARM_UPDATE_SUBSTEPS = 6
"""Physics steps between updates of the arm's joint reference (and samples of the squeeze force)."""
IK_DAMPING = 0.01
HOME_SOLVER_ITERATIONS = 100
HOME_TOLERANCE_M = 0.002
"""The home pose must put the grasp frame this close to ``home_ee_position``."""
_IK_DAMPING_MATRIX = IK_DAMPING**2 * np.eye(6)
NULL_SPACE_GAIN = 0.1

OBJECT_COLOUR = (0.95, 0.75, 0.2, 1.0)
CRUSHED_COLOUR = (0.85, 0.1, 0.1, 1.0)
TABLE_COLOUR = (0.55, 0.45, 0.35, 1.0)


def assemble_observation(
    joint_state: tuple[Sequence[str], np.ndarray, np.ndarray, np.ndarray],
    ee_pose: tuple[np.ndarray, np.ndarray],
    object_pose: tuple[np.ndarray, np.ndarray],
    layout: Sequence[Mapping] = INTERFACE["observation_layout"],
) -> np.ndarray:
    """The float32 observation described by ``layout``, from a joint state and two (position, quaternion)
    poses, assembled by the robot contract (:meth:`metarl_robot.contract.ObservationLayout.assemble`)."""
    poses = {"ee_pose": PoseSample.create(*ee_pose), "object_pose": PoseSample.create(*object_pose)}
    return ObservationLayout.parse(layout).assemble(JointStateSample.create(*joint_state), poses)


def _clamp(x: np.ndarray, low, high) -> np.ndarray:
    """``np.clip`` without its Python-level dispatch (a few microseconds a call in the control loop)."""
    return np.minimum(np.maximum(x, low), high)


def _rotation_error(desired: Sequence[float], actual: Sequence[float]) -> np.ndarray:
    """Rotation vector (rad, world frame) turning quaternion ``actual`` into ``desired`` (x, y, z, w)."""
    x1, y1, z1, w1 = desired
    x2, y2, z2, w2 = -actual[0], -actual[1], -actual[2], actual[3]
    w = w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2
    vector = np.array(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )
    if w < 0.0:
        w, vector = -w, -vector
    norm = math.sqrt(float(vector @ vector))
    if norm < 1e-12:
        return np.zeros(3)
    return vector * (2.0 * math.atan2(norm, w) / norm)


def _hermite_basis(duration: float, steps: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrices mapping ``[q0, qd0, q1, qd1]`` to positions and velocities of the cubic from (q0, qd0) to
    (q1, qd1) over ``duration``, sampled in the middle of each window of ``every`` physics steps.

    Each sample is held as the joint reference for its window, so sampling mid-window makes the
    tracking error average out instead of lagging by half a window.
    """
    s = ((np.arange(every, steps + 1, every) - every / 2.0) / steps)[:, None]
    position = np.hstack([2 * s**3 - 3 * s**2 + 1, (s**3 - 2 * s**2 + s) * duration, -2 * s**3 + 3 * s**2, (s**3 - s**2) * duration])
    velocity = np.hstack([(6 * s**2 - 6 * s) / duration, 3 * s**2 - 4 * s + 1, (-6 * s**2 + 6 * s) / duration, 3 * s**2 - 2 * s])
    return position, velocity


def _tilt_rad(quaternion: Sequence[float], rest_up: Sequence[float]) -> float:
    """Angle between a body's z axis now and the direction it pointed at rest."""
    x, y, z, w = quaternion
    up = (2.0 * (x * z + w * y), 2.0 * (y * z - w * x), 1.0 - 2.0 * (x * x + y * y))
    cosine = up[0] * rest_up[0] + up[1] * rest_up[1] + up[2] * rest_up[2]
    return math.acos(max(-1.0, min(1.0, cosine)))


class _BulletClient(bullet_client.BulletClient):
    """A PyBullet client that binds each function to its client id once, not on every call.

    ``BulletClient`` builds a new ``functools.partial`` at every attribute access; in the control loop
    that costs as much as a tenth of the physics, so the bound functions are kept on the instance.
    """

    def __getattr__(self, name: str):
        attribute = super().__getattr__(name)
        if name != "disconnect" and callable(attribute):
            self.__dict__[name] = attribute
        return attribute


class ArmScene:
    """A table and an arm whose grasp frame follows Cartesian velocity commands, gripper pointing down.

    Commands are physical: grasp-frame velocities in m/s (clipped to ``MAX_EE_SPEED_M_S`` per axis).
    Within a control period the velocity ramps linearly from the previous command to the new one (at
    most 1.5 m/s^2 from rest): a damped least-squares step gives the joint targets at the end of the
    period and a cubic joint reference, refreshed every ``ARM_UPDATE_SUBSTEPS`` physics steps, leads
    the position-controlled joints there. Commands may be delayed by ``latency_steps`` periods. The
    scene owns its PyBullet client, so several scenes can live in one process.
    """

    control_rate_hz: float = CONTROL_RATE_HZ
    home_ee_position: tuple[float, float, float] = HOME_EE_POSITION
    """Where the grasp frame starts every episode (m)."""
    home_finger_position_m: float = FINGER_OPEN_POSITION_M
    """Finger opening at the home pose."""

    def __init__(self, *, robot: str = DEFAULT_ROBOT, gui: bool = False, time_step: float = 1.0 / 240.0) -> None:
        self.spec = robot_spec(robot)
        substeps = 1.0 / (CONTROL_RATE_HZ * time_step) if time_step > 0 else 0.0
        if substeps < 1 or abs(substeps - round(substeps)) > 1e-6:
            raise ValueError(
                f"time_step={time_step} must divide the control period 1/{CONTROL_RATE_HZ:g} s into whole substeps"
            )
        self.time_step = float(time_step)
        self.substeps = int(round(substeps))
        self._update_every = math.gcd(self.substeps, ARM_UPDATE_SUBSTEPS)
        self._basis = _hermite_basis(1.0 / CONTROL_RATE_HZ, self.substeps, self._update_every)
        self._bullet = _BulletClient(connection_mode=pybullet.GUI if gui else pybullet.DIRECT)
        self._closed = False
        self._bullet.setAdditionalSearchPath(pybullet_data.getDataPath())
        self._bullet.setPhysicsEngineParameter(
            fixedTimeStep=self.time_step,
            numSolverIterations=SOLVER_ITERATIONS,
            deterministicOverlappingPairs=1,
        )
        self._bullet.setGravity(0.0, 0.0, -GRAVITY_M_S2)
        self.physics_time_s = 0.0
        """Wall-clock seconds spent inside ``stepSimulation`` (for the overhead benchmark)."""
        self._build_table()
        self._build_robot()
        self._latency_steps = 0
        self._position_gain = ARM_POSITION_GAIN
        self._reset_controller(np.asarray(HOME_EE_POSITION, dtype=np.float64))

    # ------------------------------------------------------------------------------ construction

    def _build_table(self) -> None:
        b = self._bullet
        half_extents = (0.5, 0.5, 0.02)
        self._table = b.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=b.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half_extents),
            baseVisualShapeIndex=b.createVisualShape(
                pybullet.GEOM_BOX, halfExtents=half_extents, rgbaColor=TABLE_COLOUR
            ),
            basePosition=(0.4, 0.0, -half_extents[2]),
        )
        b.changeDynamics(self._table, -1, lateralFriction=1.0)

    def _build_robot(self) -> None:
        b, spec = self._bullet, self.spec
        self._robot = b.loadURDF(robot_urdf(spec), useFixedBase=True)
        joints, links = {}, {}
        for j in range(b.getNumJoints(self._robot)):
            info = b.getJointInfo(self._robot, j)
            joints[info[1].decode()] = info
            links[info[12].decode()] = j
        self._joints = [joints[name][0] for name in spec.joint_names]
        self._num_arm = len(spec.arm_joints)
        self._arm_joints = self._joints[: self._num_arm]
        self._finger_joints = self._joints[self._num_arm :]
        self._arm_lower = np.array([joints[name][8] for name in spec.arm_joints])
        self._arm_upper = np.array([joints[name][9] for name in spec.arm_joints])
        self._arm_max_force = [joints[name][10] for name in spec.arm_joints]
        self._arm_damping = [joints[name][6] for name in spec.arm_joints]
        self._ee_link = links[spec.grasp_link]
        self._rest_pose = np.asarray(spec.rest_pose, dtype=np.float64)
        self._zero_joints = [0.0] * len(self._joints)
        for link in self._finger_joints:
            b.changeDynamics(self._robot, link, lateralFriction=FINGER_LATERAL_FRICTION)
        self._home_q = self._solve_home_pose()

    def _solve_home_pose(self) -> np.ndarray:
        """Arm joints that put the grasp frame at ``home_ee_position``, gripper down, from the rest pose."""
        q = self._rest_pose.copy()
        target = np.asarray(self.home_ee_position, dtype=np.float64)
        for _ in range(HOME_SOLVER_ITERATIONS):
            self._set_joints(q, self.home_finger_position_m)
            self._sense()
            q, _ = self._solve_motion(target, np.zeros(3))
        self._set_joints(q, self.home_finger_position_m)
        self._sense()
        error = float(np.linalg.norm(self._ee_position - target))
        if error > HOME_TOLERANCE_M:
            raise ValueError(
                f"robot={self.spec.name!r} cannot put its grasp frame at {self.home_ee_position} m, where "
                f"{type(self).__name__} episodes start: the closest it gets is {error * 100:.1f} cm away"
            )
        return q

    def _drive_arm_at(self, q: np.ndarray) -> None:
        """Hold the arm joints at ``q``."""
        self._bullet.setJointMotorControlArray(
            self._robot,
            self._arm_joints,
            pybullet.POSITION_CONTROL,
            targetPositions=q.tolist(),
            targetVelocities=[0.0] * self._num_arm,
            forces=self._arm_max_force,
            positionGains=[self._position_gain] * self._num_arm,
            velocityGains=[1.0] * self._num_arm,
        )

    def _set_joints(self, arm_q: np.ndarray, finger_position: float = FINGER_OPEN_POSITION_M) -> None:
        for joint, value in zip(self._joints, [*arm_q, finger_position, finger_position]):
            self._bullet.resetJointState(self._robot, joint, float(value), 0.0)

    # ------------------------------------------------------------------------------- dynamics

    def set_arm_dynamics(self, *, joint_damping: float | None, actuator_gain: float, latency_steps: int) -> None:
        """Arm joint damping (N m s/rad; None: the URDF's), position-gain multiplier and command delay."""
        for joint, original in zip(self._arm_joints, self._arm_damping):
            self._bullet.changeDynamics(
                self._robot, joint, jointDamping=float(original if joint_damping is None else joint_damping)
            )
        self._position_gain = ARM_POSITION_GAIN * float(actuator_gain)
        self._latency_steps = int(latency_steps)

    # ----------------------------------------------------------------------------------- control

    def _reset_controller(self, ee_position: np.ndarray) -> None:
        self._velocity_command = np.zeros(3)
        self._target_position = ee_position
        self._target_velocity = np.zeros(3)
        self._target_q = self._home_q.copy()
        self._target_qd = np.zeros(self._num_arm)
        self._pending: collections.deque = collections.deque()

    def _queue_command(self, command: np.ndarray) -> np.ndarray:
        """Delay ``command`` by the latency; returns the command that acts now."""
        self._pending.append(command)
        if len(self._pending) > self._latency_steps:
            return self._pending.popleft()
        return self._idle_command()

    def _idle_command(self) -> np.ndarray:
        return np.zeros(3)

    def apply_command(self, command: np.ndarray) -> None:
        """Set the grasp-frame velocity ``[vx, vy, vz]`` (m/s) until the next command."""
        command = np.asarray(command, dtype=np.float64).reshape(-1)
        if command.shape != (3,) or not np.all(np.isfinite(command)):
            raise ValueError(f"command must be 3 finite numbers [vx, vy, vz], got {command!r}")
        self._velocity_command = _clamp(self._queue_command(command), -MAX_EE_SPEED_M_S, MAX_EE_SPEED_M_S)

    def _step_arm(self, on_sample=None) -> None:
        """Advance the physics one control period towards the commanded grasp-frame velocity.

        ``on_sample()`` runs after every arm update (every ``ARM_UPDATE_SUBSTEPS`` physics steps).
        """
        self._check_open()
        b = self._bullet
        period = 1.0 / CONTROL_RATE_HZ
        velocity = self._velocity_command.copy()
        target = self._target_position + 0.5 * period * (self._target_velocity + velocity)
        reachable = _clamp(target, _WORKSPACE_LOW, _WORKSPACE_HIGH)
        ee_position = self._ee_position
        reachable = ee_position + _clamp(reachable - ee_position, -MAX_TARGET_LEAD_M, MAX_TARGET_LEAD_M)
        velocity[reachable != target] = 0.0
        end_q, end_qd = self._solve_motion(reachable, velocity)
        knots = np.stack([self._target_q, self._target_qd, end_q, end_qd])
        reference_q, reference_qd = self._basis[0] @ knots, self._basis[1] @ knots
        gains = [self._position_gain] * self._num_arm
        ones = [1.0] * self._num_arm
        step, clock = b.stepSimulation, perf_counter
        physics = 0.0
        for q, qd in zip(reference_q, reference_qd):
            b.setJointMotorControlArray(
                self._robot, self._arm_joints, pybullet.POSITION_CONTROL, targetPositions=q.tolist(),
                targetVelocities=qd.tolist(), forces=self._arm_max_force, positionGains=gains, velocityGains=ones,
            )
            start = clock()
            for _ in range(self._update_every):
                step()
            physics += clock() - start
            if on_sample is not None:
                on_sample()
        self.physics_time_s += physics
        self._target_position, self._target_velocity = reachable, velocity
        self._target_q, self._target_qd = end_q, end_qd
        self._sense()

    def _solve_motion(self, target: np.ndarray, ee_velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arm joints reaching ``target`` with the gripper down, and joint velocities moving at ``ee_velocity``.

        One damped least-squares step from the sensed state with a null-space pull towards the rest
        pose; the next control period corrects what the linearisation leaves.
        """
        q = self._joint_position[: self._num_arm]
        linear, angular = self._bullet.calculateJacobian(
            self._robot, self._ee_link, [0.0, 0.0, 0.0], self._joint_position.tolist(), self._zero_joints, self._zero_joints
        )
        n = self._num_arm
        jacobian = np.array(linear + angular)[:, :n]
        # (J J^T + l^2 I) is symmetric, so solving it against J gives the transposed damped pseudo-inverse.
        inverse = np.linalg.solve(jacobian @ jacobian.T + _IK_DAMPING_MATRIX, jacobian).T
        error = np.concatenate([target - self._ee_position, _rotation_error(EE_DOWN_ORIENTATION, self._ee_orientation)])
        end_q = q + inverse @ error + NULL_SPACE_GAIN * (self._rest_pose - q - inverse @ (jacobian @ (self._rest_pose - q)))
        end_qd = inverse[:, :3] @ ee_velocity
        return _clamp(end_q, self._arm_lower, self._arm_upper), end_qd

    # ------------------------------------------------------------------------------------ sensing

    def _sense(self) -> None:
        """Read joint states and the grasp frame once; sensing getters return these until the next step."""
        b = self._bullet
        states = b.getJointStates(self._robot, self._joints)
        self._joint_position = np.array([s[0] for s in states])
        self._joint_velocity = np.array([s[1] for s in states])
        self._joint_effort = np.array([s[3] for s in states])
        link = b.getLinkState(self._robot, self._ee_link, computeForwardKinematics=True)
        self._ee_position = np.array(link[4])
        self._ee_orientation = np.array(link[5])

    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Names, positions (rad | m), velocities (rad/s | m/s) and efforts (N m | N) of arm and finger joints.

        Effort is the force or torque the joint motor applied in the last physics step, signed along
        the joint axis: a squeezing finger reports a negative effort (it pushes towards closed), an
        opening finger pressed against its limit a positive one.
        """
        return list(self.spec.joint_names), self._joint_position.copy(), self._joint_velocity.copy(), self._joint_effort.copy()

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Grasp-frame (between the fingertips) position in m and quaternion (x, y, z, w), world frame."""
        return self._ee_position.copy(), self._ee_orientation.copy()

    def robot_inputs(self) -> RobotInputs:
        """What this robot publishes after the last control period (``ros_nodes.sim_robot_node`` publishes
        it): the joint state (:meth:`joint_state`) and the poses by topic name, ``ee_pose`` here."""
        names, position, velocity, effort = self.joint_state()
        joint_state = JointStateSample(tuple(names), position, velocity, effort)
        return RobotInputs(joint_state, {"ee_pose": PoseSample(*self.ee_pose())})

    @functools.cached_property
    def observation_layout(self) -> ObservationLayout:
        """The interface's ``observation_layout``, validated by the robot contract."""
        return ObservationLayout.parse(self.interface["observation_layout"])

    def observation(self) -> np.ndarray:
        """The float32 observation laid out by the interface's ``observation_layout``, assembled by the
        robot contract from :meth:`robot_inputs`, exactly as the control loop assembles it on a robot."""
        return self.observation_layout.assemble_inputs(self.robot_inputs())

    @property
    def bullet(self) -> bullet_client.BulletClient:
        """The scene's own PyBullet client."""
        return self._bullet

    def render_rgb(self, width: int = 320, height: int = 240, target: Sequence[float] | None = None) -> np.ndarray:
        """A uint8 ``(height, width, 3)`` image from a fixed camera, rendered headless by TinyRenderer."""
        self._check_open()
        b = self._bullet
        view = b.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=tuple(target) if target is not None else (*OBJECT_HOME_XY, 0.1),
            distance=0.6,
            yaw=50.0,
            pitch=-30.0,
            roll=0.0,
            upAxisIndex=2,
        )
        projection = b.computeProjectionMatrixFOV(fov=60.0, aspect=width / height, nearVal=0.01, farVal=3.0)
        _, _, rgba, _, _ = b.getCameraImage(width, height, view, projection, renderer=pybullet.ER_TINY_RENDERER)
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()

    def close(self) -> None:
        """Disconnect the PyBullet client; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._bullet.disconnect()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")


class GraspScene(ArmScene):
    """An arm on a table with one task-defined object to grasp, driven at :attr:`control_rate_hz`.

    Commands are physical: grasp-frame velocities in m/s and a grip force in N (see :class:`ArmScene`).
    Both fingers close at 0.1 m/s until they press with the commanded force, clipped to the task's
    gripper force limit. The task's dynamics (friction, restitution, centre of mass, joint damping,
    actuator gain, command latency) are applied when the task is built into the world at a reset.
    """

    def __init__(
        self, task: TaskSpec, *, robot: str = DEFAULT_ROBOT, gui: bool = False, time_step: float = 1.0 / 240.0
    ) -> None:
        validate_grasp_task(task)
        self._object = -1
        super().__init__(robot=robot, gui=gui, time_step=time_step)
        self._task = task
        self._built_task: TaskSpec | None = None
        self._object_colours: dict[int, tuple[float, ...]] = {}
        self._object_rest_z = 0.0
        self._object_frame_offset = (0.0, 0.0, 0.0)
        self._object_rest_orientation = (0.0, 0.0, 0.0, 1.0)
        self._object_rest_up = np.array([0.0, 0.0, 1.0])
        self._home_state = -1
        self._rest_height_m = 0.0
        self._force_limit_n = MAX_GRIP_FORCE_N
        self._reset_grasp_state()
        self._sense()

    # ------------------------------------------------------------------------------ construction

    def _object_shapes(self, task: TaskSpec) -> tuple[int, int]:
        """Collision and visual shape of ``task``'s primitive or mesh object, centred on its link frame."""
        b = self._bullet
        size = float(task["object_size_m"])
        length = float(task.get("object_length_m", size))
        radius = size / 2.0
        mesh = task.get("random_urdf")
        if mesh is not None:
            path = random_urdf_mesh(int(mesh))
            extent, centre = mesh_extent_m(path)
            scale = size / float(max(extent))
            kwargs = {"fileName": path, "meshScale": [scale] * 3}
            offset = (-centre * scale).tolist()
            return (
                b.createCollisionShape(pybullet.GEOM_MESH, collisionFramePosition=offset, **kwargs),
                b.createVisualShape(pybullet.GEOM_MESH, visualFramePosition=offset, rgbaColor=OBJECT_COLOUR, **kwargs),
            )
        shape = task["object_shape"]
        if shape == "box":
            half = [length / 2.0, radius, radius]
            return (
                b.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half),
                b.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=OBJECT_COLOUR),
            )
        if shape == "cylinder":
            return (
                b.createCollisionShape(pybullet.GEOM_CYLINDER, radius=radius, height=length),
                b.createVisualShape(pybullet.GEOM_CYLINDER, radius=radius, length=length, rgbaColor=OBJECT_COLOUR),
            )
        if shape == "capsule":
            # Lying along x: the axis of a Bullet capsule is its z axis, so turn it by 90 deg about y.
            along_x = pybullet.getQuaternionFromEuler((0.0, math.pi / 2.0, 0.0))
            shaft = max(length - size, 1e-4)
            return (
                b.createCollisionShape(pybullet.GEOM_CAPSULE, radius=radius, height=shaft, collisionFrameOrientation=along_x),
                b.createVisualShape(
                    pybullet.GEOM_CAPSULE, radius=radius, length=shaft, visualFrameOrientation=along_x, rgbaColor=OBJECT_COLOUR
                ),
            )
        return (
            b.createCollisionShape(pybullet.GEOM_SPHERE, radius=radius),
            b.createVisualShape(pybullet.GEOM_SPHERE, radius=radius, rgbaColor=OBJECT_COLOUR),
        )

    def _build_object(self, task: TaskSpec) -> None:
        """Replace the object with ``task``'s, apply the task's dynamics, save the world at home."""
        b = self._bullet
        if self._object >= 0:
            b.removeBody(self._object)
            self._object = -1
        if self._home_state >= 0:
            b.removeState(self._home_state)
            self._home_state = -1
        self._built_task = None
        params = {**DEFAULT_DYNAMICS, **task.params}
        mass = float(params["object_mass_kg"])
        urdf = task.get("object_urdf")
        if urdf is not None:
            try:
                self._object = b.loadURDF(
                    str(urdf), basePosition=(*OBJECT_HOME_XY, 1.0), globalScaling=float(task["object_size_m"])
                )
            except pybullet.error as err:
                raise TaskError(f"object_urdf={urdf!r} could not be loaded by PyBullet: {err}") from None
        else:
            collision, visual = self._object_shapes(task)
            self._object = b.createMultiBody(
                baseMass=mass,
                baseCollisionShapeIndex=collision,
                baseVisualShapeIndex=visual,
                basePosition=(*OBJECT_HOME_XY, 1.0),
                baseInertialFramePosition=(float(params["com_offset_m"]), 0.0, 0.0),
            )
        links = [-1, *range(b.getNumJoints(self._object))]
        b.changeDynamics(self._object, -1, mass=mass)
        for link in links:
            b.changeDynamics(
                self._object,
                link,
                lateralFriction=float(params["lateral_friction"]),
                spinningFriction=float(params["spinning_friction"]),
                rollingFriction=float(params["rolling_friction"]),
                restitution=float(params["restitution"]),
            )
        # Built objects report their geometric centre (the centre of mass may be offset from it); a URDF
        # object reports its inertial frame, as its link frame may lie anywhere (a bottle's at its base).
        self._object_frame_offset = (
            (0.0, 0.0, 0.0) if urdf is not None else tuple(b.getDynamicsInfo(self._object, -1)[3])
        )
        self._object_colours = {}
        for shape_data in b.getVisualShapeData(self._object):
            self._object_colours.setdefault(shape_data[1], tuple(shape_data[7]))
        b.resetBasePositionAndOrientation(self._object, (*OBJECT_HOME_XY, 1.0), (0, 0, 0, 1))
        frame_z = self._object_frame()[0][2]
        bottom = min(b.getAABB(self._object, link)[0][2] for link in links)
        self._object_rest_z = frame_z - bottom
        self._object_rest_orientation = (0.0, 0.0, 0.0, 1.0)
        self._place_object(np.zeros(2))
        b.resetBaseVelocity(self._object, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        self._set_joints(self._home_q)
        self._settle_object()
        self.set_arm_dynamics(
            joint_damping=params.get("joint_damping"),
            actuator_gain=float(params["actuator_gain"]),
            latency_steps=int(params["action_latency_steps"]),
        )
        self._force_limit_n = min(float(params["gripper_force_limit_n"]), MAX_GRIP_FORCE_N)
        self._home_state = b.saveState()
        self._built_task = task

    def _settle_object(self) -> None:
        """Let the object find its resting pose on the table (a mesh may topple, a sphere roll), then
        keep that pose, at the home position, as the one every episode starts from."""
        b = self._bullet
        self._drive_arm_at(self._home_q)
        for _ in range(round(SETTLE_OBJECT_MAX_S / self.time_step) // 10):
            for _ in range(10):
                b.stepSimulation()
            linear, angular = b.getBaseVelocity(self._object)
            if max(map(abs, linear)) < 1e-3 and max(map(abs, angular)) < 1e-2:
                break
        position, orientation = self._object_frame()
        self._object_rest_z = float(position[2])
        self._object_rest_orientation = tuple(float(v) for v in orientation)
        rotation = np.asarray(b.getMatrixFromQuaternion(orientation)).reshape(3, 3)
        self._object_rest_up = rotation[:, 2].copy()
        self._place_object(np.zeros(2))
        b.resetBaseVelocity(self._object, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        self._set_joints(self._home_q)

    def _place_object(self, offset_xy: np.ndarray) -> None:
        """Put the object's frame at the home position plus ``offset_xy``, in its resting pose on the table."""
        frame = np.array([OBJECT_HOME_XY[0] + offset_xy[0], OBJECT_HOME_XY[1] + offset_xy[1], self._object_rest_z])
        # The base pose PyBullet sets is the centre of mass: shift it by the rotated frame offset.
        orientation = self._object_rest_orientation
        rotation = np.asarray(self._bullet.getMatrixFromQuaternion(orientation)).reshape(3, 3)
        self._bullet.resetBasePositionAndOrientation(
            self._object, frame + rotation @ self._object_frame_offset, orientation
        )

    def _object_frame(self) -> tuple[np.ndarray, np.ndarray]:
        position, orientation = self._bullet.getBasePositionAndOrientation(self._object)
        if not any(self._object_frame_offset):
            return np.array(position), np.array(orientation)
        offset, _ = self._bullet.multiplyTransforms((0.0, 0.0, 0.0), orientation, self._object_frame_offset, (0.0, 0.0, 0.0, 1.0))
        return np.subtract(position, offset), np.array(orientation)

    # ------------------------------------------------------------------------------------ task

    @property
    def task(self) -> TaskSpec:
        """The task set last; the world holds it from the next :meth:`reset` on."""
        return self._task

    def set_task(self, task: TaskSpec) -> None:
        """Validate ``task`` (raising :class:`TaskError`) and build it into the world at the next :meth:`reset`."""
        validate_grasp_task(task)
        self._task = task

    # ----------------------------------------------------------------------------------- control

    def _reset_grasp_state(self) -> None:
        self._grip_command_n = 0.0
        self._crushed = False
        self._grasped = False
        self._finger_command: tuple[float, float] | None = None
        self._squeeze_force_n = 0.0
        self._squeeze_samples: list[float] = []
        self._status: dict = {}

    def _idle_command(self) -> np.ndarray:
        return np.zeros(4)

    def reset(self, rng: np.random.Generator) -> None:
        """Arm at home with the gripper open; the object rests on the table within ±2 cm of (0.5, 0)."""
        self._check_open()
        if self._built_task != self._task:
            self._build_object(self._task)
        b = self._bullet
        # Separate every body first so that Bullet drops its cached contacts (and their warm-start
        # impulses): otherwise an episode would depend on how the previous one ended.
        b.resetBasePositionAndOrientation(self._object, _PARKING_POSITION, (0.0, 0.0, 0.0, 1.0))
        self._set_joints(self._home_q)
        b.performCollisionDetection()
        b.restoreState(self._home_state)
        self._place_object(rng.uniform(-OBJECT_XY_NOISE_M, OBJECT_XY_NOISE_M, size=2))
        for link, colour in self._object_colours.items():
            b.changeVisualShape(self._object, link, rgbaColor=colour)
        self._reset_grasp_state()
        self._drive_fingers()
        for _ in range(max(1, round(SETTLE_TIME_S / self.time_step))):
            self._drive_arm_at(self._home_q)
            b.stepSimulation()
        self._sense()
        self._reset_controller(self._ee_position)
        self._rest_height_m = float(self._object_position[2])
        self._status = self._compute_status(crushed_now=False)

    def apply_command(self, command: np.ndarray) -> None:
        """Set ``[ee_vx, ee_vy, ee_vz]`` (m/s) and the grip force (N; <= 0 opens) until the next command.

        With a task latency of k control periods, the command takes effect k periods later.
        """
        command = np.asarray(command, dtype=np.float64).reshape(-1)
        if command.shape != (4,) or not np.all(np.isfinite(command)):
            raise ValueError(f"command must be 4 finite numbers [vx, vy, vz, grip_force_n], got {command!r}")
        acting = self._queue_command(command)
        self._velocity_command = _clamp(acting[:3], -MAX_EE_SPEED_M_S, MAX_EE_SPEED_M_S)
        self._grip_command_n = float(min(acting[3], self._force_limit_n))

    def step_control(self) -> None:
        """Advance the physics one control period (``substeps`` steps of ``time_step``)."""
        self._check_open()
        if self._built_task is None:
            raise RuntimeError("call GraspScene.reset() before step_control()")
        self._squeeze_samples = []
        self._step_arm(on_sample=self._sample_fingers)
        # The period average, not the peak, decides crushing: single-step impact spikes do not count.
        self._squeeze_force_n = sum(self._squeeze_samples) / len(self._squeeze_samples)
        crushed_now = not self._crushed and self._squeeze_force_n > float(self._built_task["crush_force_n"])
        if crushed_now:
            self._crushed = True
            for link in self._object_colours:
                self._bullet.changeVisualShape(self._object, link, rgbaColor=CRUSHED_COLOUR)
        self._status = self._compute_status(crushed_now)

    def _sample_fingers(self) -> None:
        self._squeeze_samples.append(self._finger_squeeze_n())
        self._drive_fingers()

    def _drive_fingers(self) -> None:
        """Open, close at ``FINGER_SPEED_M_S``, or, once both pads touch the object, squeeze.

        Squeezing drives the motors towards a speed they cannot reach, so they saturate at the grip
        force within the first solver iterations: the pads press with exactly the commanded force.
        """
        if self._grip_command_n <= 0.0:
            command = (FINGER_SPEED_M_S, FINGER_OPEN_FORCE_N)
        elif self._grasped:
            command = (-FINGER_SQUEEZE_SPEED_M_S, self._grip_command_n)
        else:
            command = (-FINGER_SPEED_M_S, self._grip_command_n)
        if command == self._finger_command:
            return
        self._finger_command = command
        velocity, force = command
        self._bullet.setJointMotorControlArray(
            self._robot,
            self._finger_joints,
            pybullet.VELOCITY_CONTROL,
            targetVelocities=[velocity, velocity],
            forces=[force, force],
        )

    def _finger_squeeze_n(self) -> float:
        """This physics step's squeezing force: the weaker finger's total normal force on the object."""
        left, right = self._finger_joints
        normal = {left: 0.0, right: 0.0}
        for contact in self._bullet.getContactPoints(bodyA=self._robot, bodyB=self._object):
            if contact[3] in normal:
                normal[contact[3]] += contact[9]
        squeeze = min(normal.values())
        self._grasped = squeeze > 0.0
        return squeeze

    # ------------------------------------------------------------------------------------ status

    def _sense(self) -> None:
        super()._sense()
        if self._object >= 0:
            self._object_position, self._object_orientation = self._object_frame()
        else:
            self._object_position, self._object_orientation = np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])

    def _compute_status(self, crushed_now: bool) -> dict:
        ee, obj = self._ee_position, self._object_position
        distance = float(np.linalg.norm(ee - obj))
        lift = float(obj[2] - self._rest_height_m)
        tilt = _tilt_rad(self._object_orientation, self._object_rest_up)
        level = tilt <= MAX_TILT_RAD
        success = lift >= SUCCESS_LIFT_M and not self._crushed and level
        approach = 1.0 - math.tanh(10.0 * distance)
        if self._crushed:
            reward = 0.2 * approach - (2.0 if crushed_now else 0.0)
        else:
            lifted = min(max(lift / SUCCESS_LIFT_M, 0.0), 1.0) if (self._grasped and level) else 0.0
            reward = 0.2 * approach + 0.3 * self._grasped + 0.5 * lifted + (1.0 if success else 0.0)
        return {
            "reward": float(reward),
            "success": bool(success),
            "crushed": bool(self._crushed),
            "lift_height_m": lift,
            "tilt_rad": tilt,
            "grip_force_n": float(self._squeeze_force_n),
            "commanded_grip_force_n": max(self._grip_command_n, 0.0),
            "grasped": bool(self._grasped),
            "ee_object_distance_m": distance,
        }

    def status(self) -> dict:
        """Outcome of the last control period (or of the reset).

        ``reward``; ``success`` (lifted >= 8 cm, not crushed, tilted at most ``MAX_TILT_RAD``);
        ``crushed`` (sticky for the episode); ``lift_height_m`` above the rest height; ``tilt_rad``;
        ``grip_force_n``, the squeezing force averaged over the period; ``commanded_grip_force_n``
        (after the force limit); ``grasped`` (both fingers touch the object); ``ee_object_distance_m``.
        """
        return dict(self._status)

    # ------------------------------------------------------------------------------------ sensing

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Position in m and quaternion (x, y, z, w) of the object's frame, world frame.

        For primitives and meshes the frame is the geometric centre, what a pose estimator reports; the
        centre of mass, ``com_offset_m`` away from it, stays hidden. For a URDF object it is the URDF's
        inertial frame.
        """
        return self._object_position.copy(), self._object_orientation.copy()

    def robot_inputs(self) -> RobotInputs:
        """The joint state and the ``ee_pose`` and ``object_pose`` poses (see :meth:`ArmScene.robot_inputs`)."""
        inputs = super().robot_inputs()
        inputs.poses["object_pose"] = PoseSample(*self.object_pose())
        return inputs

    @property
    def interface(self) -> dict:
        """This scene's robot contract (see :func:`robot_interface`)."""
        return robot_interface(self.spec)

    @property
    def body_ids(self) -> dict[str, int]:
        """PyBullet body ids of ``robot``, ``table`` and ``object``."""
        return {"robot": self._robot, "table": self._table, "object": self._object}


__all__ = [
    "ArmScene",
    "CONTROL_RATE_HZ",
    "GraspScene",
    "INTERFACE",
    "OBSERVATION_SIZE",
    "assemble_observation",
    "robot_interface",
]
