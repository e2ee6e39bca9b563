"""A Franka Panda grasping a fragile object on a table, in PyBullet and in physical units.

:class:`GraspScene` knows nothing about Gymnasium: the Gymnasium env and the ROS 2 sim-robot node both
drive it with Cartesian end-effector velocities and a grip force, and read joint states and poses back.
:data:`INTERFACE` is the robot contract (joints, rate, observation layout, action scaling) that exported
policy bundles carry, so the same observation can be assembled from ROS topics on the real robot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from metarl_robot.tasks import TaskError, TaskSpec
from sim.grasp_task import (
    FINGER_LATERAL_FRICTION,
    GRAVITY_M_S2,
    MAX_EE_SPEED_M_S,
    MAX_GRIP_FORCE_N,
    validate_grasp_task,
)

CONTROL_RATE_HZ = 10.0
ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
JOINT_NAMES = ARM_JOINTS + FINGER_JOINTS

INTERFACE = {
    "robot": "franka_panda",
    "control_rate_hz": CONTROL_RATE_HZ,
    "frame_id": "world",
    "joint_names": list(JOINT_NAMES),
    "observation_layout": [
        {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
        {"name": "object_position", "source": "object_pose", "field": "position", "size": 3},
        {
            "name": "finger_position",
            "source": "joint_states",
            "field": "position",
            "joints": list(FINGER_JOINTS),
            "size": 2,
        },
        {
            "name": "finger_effort",
            "source": "joint_states",
            "field": "effort",
            "joints": list(FINGER_JOINTS),
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
"""The robot contract written into exported bundles (JSON-serialisable)."""

OBSERVATION_SIZE = sum(item["size"] for item in INTERFACE["observation_layout"])

# Geometry in the world frame: the robot base stands at the origin on the table top (z = 0).
OBJECT_HOME_XY = (0.5, 0.0)
OBJECT_XY_NOISE_M = 0.02
HOME_EE_POSITION = (0.5, 0.0, 0.14)
EE_DOWN_ORIENTATION = (1.0, 0.0, 0.0, 0.0)  # grasp frame z axis down: the fingers close along world y
WORKSPACE_LOW = (0.3, -0.2, 0.01)
WORKSPACE_HIGH = (0.7, 0.2, 0.4)
_PARKING_POSITION = (5.0, 5.0, 5.0)
MAX_TARGET_LEAD_M = 0.03
"""How far the commanded end-effector position may run ahead of a blocked end effector."""

SUCCESS_LIFT_M = 0.08
FINGER_OPEN_POSITION_M = 0.04
FINGER_SPEED_M_S = 0.1
FINGER_SQUEEZE_SPEED_M_S = 1.0
FINGER_OPEN_FORCE_N = 20.0
SETTLE_TIME_S = 0.05
SOLVER_ITERATIONS = 20
ARM_POSITION_GAIN = 0.2
IK_DAMPING = 0.01
NULL_SPACE_GAIN = 0.1
REST_POSE = (0.0, 0.2, 0.0, -2.3, 0.0, 2.5, 0.785)

OBJECT_COLOUR = (0.95, 0.75, 0.2, 1.0)
CRUSHED_COLOUR = (0.85, 0.1, 0.1, 1.0)
TABLE_COLOUR = (0.55, 0.45, 0.35, 1.0)


def assemble_observation(
    joint_state: tuple[Sequence[str], np.ndarray, np.ndarray, np.ndarray],
    ee_pose: tuple[np.ndarray, np.ndarray],
    object_pose: tuple[np.ndarray, np.ndarray],
    layout: Sequence[Mapping] = INTERFACE["observation_layout"],
) -> np.ndarray:
    """The float32 observation described by ``layout``, from a joint state and two (position, quaternion) poses."""
    names, position, velocity, effort = joint_state
    joint_fields = {"position": position, "velocity": velocity, "effort": effort}
    index = {name: i for i, name in enumerate(names)}
    poses = {"ee_pose": ee_pose, "object_pose": object_pose}
    parts = []
    for item in layout:
        if item["source"] == "joint_states":
            values = joint_fields[item["field"]]
            parts.append([values[index[joint]] for joint in item["joints"]])
        else:
            position_part, orientation_part = poses[item["source"]]
            parts.append(position_part if item["field"] == "position" else orientation_part)
    return np.concatenate([np.asarray(part, dtype=np.float64) for part in parts]).astype(np.float32)


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
    norm = float(np.linalg.norm(vector))
    if norm < 1e-12:
        return np.zeros(3)
    return vector * (2.0 * math.atan2(norm, w) / norm)


def _cubic_reference(
    q0: np.ndarray, qd0: np.ndarray, q1: np.ndarray, qd1: np.ndarray, duration: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and velocities at ``steps`` even intervals of the cubic from (q0, qd0) to (q1, qd1)."""
    s = (np.arange(1, steps + 1) / steps)[:, None]
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    d00, d10, d01, d11 = 6 * s**2 - 6 * s, 3 * s**2 - 4 * s + 1, -6 * s**2 + 6 * s, 3 * s**2 - 2 * s
    position = h00 * q0 + h10 * duration * qd0 + h01 * q1 + h11 * duration * qd1
    velocity = (d00 * q0 + d01 * q1) / duration + d10 * qd0 + d11 * qd1
    return position, velocity


class GraspScene:
    """A Panda on a table with one task-defined object, driven at :attr:`control_rate_hz`.

    Commands are physical: end-effector velocities in m/s (clipped to ``MAX_EE_SPEED_M_S`` per axis)
    and a grip force in N. Within a control period the end-effector velocity ramps linearly from the
    previous command to the new one (at most 1.5 m/s^2 from rest), the gripper points down, and both
    fingers close at 0.1 m/s until they press with the commanded force. The scene owns its PyBullet
    client, so several scenes can live in one process.
    """

    control_rate_hz: float = CONTROL_RATE_HZ

    def __init__(self, task: TaskSpec, *, gui: bool = False, time_step: float = 1.0 / 240.0) -> None:
        validate_grasp_task(task)
        substeps = 1.0 / (CONTROL_RATE_HZ * time_step) if time_step > 0 else 0.0
        if substeps < 1 or abs(substeps - round(substeps)) > 1e-6:
            raise ValueError(
                f"time_step={time_step} must divide the control period 1/{CONTROL_RATE_HZ:g} s into whole substeps"
            )
        self.time_step = float(time_step)
        self.substeps = int(round(substeps))
        self._bullet = bullet_client.BulletClient(connection_mode=pybullet.GUI if gui else pybullet.DIRECT)
        self._closed = False
        self._bullet.setAdditionalSearchPath(pybullet_data.getDataPath())
        self._bullet.setPhysicsEngineParameter(
            fixedTimeStep=self.time_step,
            numSolverIterations=SOLVER_ITERATIONS,
            deterministicOverlappingPairs=1,
        )
        self._bullet.setGravity(0.0, 0.0, -GRAVITY_M_S2)
        self._build_table()
        self._build_robot()

        self._task = task
        self._built_task: TaskSpec | None = None
        self._object = -1
        self._object_colours: dict[int, tuple[float, ...]] = {}
        self._object_rest_z = 0.0
        self._home_state = -1
        self._rest_height_m = 0.0
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
        b = self._bullet
        self._robot = b.loadURDF("franka_panda/panda.urdf", useFixedBase=True)
        joints, links = {}, {}
        for j in range(b.getNumJoints(self._robot)):
            info = b.getJointInfo(self._robot, j)
            joints[info[1].decode()] = info
            links[info[12].decode()] = j
        self._joints = [joints[name][0] for name in JOINT_NAMES]
        self._arm_joints = self._joints[:7]
        self._finger_joints = self._joints[7:]
        self._arm_lower = np.array([joints[name][8] for name in ARM_JOINTS])
        self._arm_upper = np.array([joints[name][9] for name in ARM_JOINTS])
        self._arm_max_force = [joints[name][10] for name in ARM_JOINTS]
        self._ee_link = links["panda_grasptarget"]
        for link in self._finger_joints:
            b.changeDynamics(self._robot, link, lateralFriction=FINGER_LATERAL_FRICTION)
        self._home_q = self._solve_home_pose()

    def _solve_home_pose(self) -> np.ndarray:
        q = np.asarray(REST_POSE)
        for _ in range(50):
            self._set_joints(q)
            q, _ = self._solve_motion(np.asarray(HOME_EE_POSITION), np.zeros(3))
        self._set_joints(q)
        return q

    def _set_joints(self, arm_q: np.ndarray, finger_position: float = FINGER_OPEN_POSITION_M) -> None:
        for joint, value in zip(self._joints, [*arm_q, finger_position, finger_position]):
            self._bullet.resetJointState(self._robot, joint, float(value), 0.0)

    def _build_object(self, task: TaskSpec) -> None:
        """Replace the object with ``task``'s and save the world at home as the reset state."""
        b = self._bullet
        if self._object >= 0:
            b.removeBody(self._object)
            self._object = -1
        if self._home_state >= 0:
            b.removeState(self._home_state)
            self._home_state = -1
        self._built_task = None
        size = float(task["object_size_m"])
        mass = float(task["object_mass_kg"])
        urdf = task.get("object_urdf")
        if urdf is not None:
            try:
                self._object = b.loadURDF(str(urdf), basePosition=(*OBJECT_HOME_XY, 1.0), globalScaling=size)
            except pybullet.error as err:
                raise TaskError(f"object_urdf={urdf!r} could not be loaded by PyBullet: {err}") from None
        else:
            radius = size / 2.0
            shape = task["object_shape"]
            if shape == "box":
                collision = b.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[radius] * 3)
                visual = b.createVisualShape(pybullet.GEOM_BOX, halfExtents=[radius] * 3, rgbaColor=OBJECT_COLOUR)
            elif shape == "cylinder":
                collision = b.createCollisionShape(pybullet.GEOM_CYLINDER, radius=radius, height=size)
                visual = b.createVisualShape(
                    pybullet.GEOM_CYLINDER, radius=radius, length=size, rgbaColor=OBJECT_COLOUR
                )
            else:
                collision = b.createCollisionShape(pybullet.GEOM_SPHERE, radius=radius)
                visual = b.createVisualShape(pybullet.GEOM_SPHERE, radius=radius, rgbaColor=OBJECT_COLOUR)
            self._object = b.createMultiBody(
                baseMass=mass,
                baseCollisionShapeIndex=collision,
                baseVisualShapeIndex=visual,
                basePosition=(*OBJECT_HOME_XY, 1.0),
            )
        links = [-1, *range(b.getNumJoints(self._object))]
        b.changeDynamics(self._object, -1, mass=mass)
        for link in links:
            b.changeDynamics(
                self._object,
                link,
                lateralFriction=float(task["lateral_friction"]),
                spinningFriction=0.001,
                rollingFriction=0.0001,
            )
        self._object_colours = {}
        for shape_data in b.getVisualShapeData(self._object):
            self._object_colours.setdefault(shape_data[1], tuple(shape_data[7]))
        base_z = b.getBasePositionAndOrientation(self._object)[0][2]
        bottom = min(b.getAABB(self._object, link)[0][2] for link in links)
        self._object_rest_z = base_z - bottom
        b.resetBasePositionAndOrientation(self._object, (*OBJECT_HOME_XY, self._object_rest_z), (0, 0, 0, 1))
        b.resetBaseVelocity(self._object, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        self._set_joints(self._home_q)
        self._home_state = b.saveState()
        self._built_task = task

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

    def _reset_controller(self, ee_position: np.ndarray) -> None:
        self._velocity_command = np.zeros(3)
        self._grip_command_n = 0.0
        self._target_position = ee_position
        self._target_velocity = np.zeros(3)
        self._target_q = self._home_q.copy()
        self._target_qd = np.zeros(7)
        self._crushed = False
        self._grasped = False
        self._finger_command: tuple[float, float] | None = None
        self._squeeze_force_n = 0.0
        self._status: dict = {}

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
        offset = rng.uniform(-OBJECT_XY_NOISE_M, OBJECT_XY_NOISE_M, size=2)
        b.resetBasePositionAndOrientation(
            self._object,
            (OBJECT_HOME_XY[0] + offset[0], OBJECT_HOME_XY[1] + offset[1], self._object_rest_z),
            (0.0, 0.0, 0.0, 1.0),
        )
        for link, colour in self._object_colours.items():
            b.changeVisualShape(self._object, link, rgbaColor=colour)
        self._grip_command_n = 0.0
        self._finger_command = None
        self._drive_fingers()
        for _ in range(max(1, round(SETTLE_TIME_S / self.time_step))):
            self._drive_arm(self._home_q, np.zeros(7))
            b.stepSimulation()
        self._reset_controller(self.ee_pose()[0])
        self._rest_height_m = float(self.object_pose()[0][2])
        self._status = self._compute_status(crushed_now=False)

    def apply_command(self, command: np.ndarray) -> None:
        """Set ``[ee_vx, ee_vy, ee_vz]`` (m/s) and the grip force (N; <= 0 opens) until the next command."""
        command = np.asarray(command, dtype=np.float64).reshape(-1)
        if command.shape != (4,) or not np.all(np.isfinite(command)):
            raise ValueError(f"command must be 4 finite numbers [vx, vy, vz, grip_force_n], got {command!r}")
        self._velocity_command = np.clip(command[:3], -MAX_EE_SPEED_M_S, MAX_EE_SPEED_M_S)
        self._grip_command_n = float(min(command[3], MAX_GRIP_FORCE_N))

    def step_control(self) -> None:
        """Advance the physics one control period (``substeps`` steps of ``time_step``)."""
        self._check_open()
        if self._built_task is None:
            raise RuntimeError("call GraspScene.reset() before step_control()")
        b = self._bullet
        period = 1.0 / CONTROL_RATE_HZ
        velocity = self._velocity_command.copy()
        target = self._target_position + 0.5 * period * (self._target_velocity + velocity)
        reachable = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        ee_position = self.ee_pose()[0]
        reachable = ee_position + np.clip(reachable - ee_position, -MAX_TARGET_LEAD_M, MAX_TARGET_LEAD_M)
        velocity[reachable != target] = 0.0
        end_q, end_qd = self._solve_motion(reachable, velocity)
        reference_q, reference_qd = _cubic_reference(
            self._target_q, self._target_qd, end_q, end_qd, period, self.substeps
        )
        squeeze_sum = 0.0
        for q, qd in zip(reference_q, reference_qd):
            self._drive_fingers()
            self._drive_arm(q, qd)
            b.stepSimulation()
            squeeze_sum += self._finger_squeeze_n()
        self._target_position, self._target_velocity = reachable, velocity
        self._target_q, self._target_qd = end_q, end_qd
        # The period average, not the peak, decides crushing: single-substep impact spikes do not count.
        self._squeeze_force_n = squeeze_sum / self.substeps
        crushed_now = not self._crushed and self._squeeze_force_n > float(self._built_task["crush_force_n"])
        if crushed_now:
            self._crushed = True
            for link in self._object_colours:
                b.changeVisualShape(self._object, link, rgbaColor=CRUSHED_COLOUR)
        self._status = self._compute_status(crushed_now)

    def _solve_motion(self, target: np.ndarray, ee_velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arm joints reaching ``target`` with the gripper down, and joint velocities moving at ``ee_velocity``.

        One damped least-squares step from the measured state with a null-space pull towards the rest
        pose; the next control period corrects what the linearisation leaves.
        """
        q = self.joint_state()[1][:7]
        position, orientation = self.ee_pose()
        linear, angular = self._bullet.calculateJacobian(
            self._robot, self._ee_link, [0.0, 0.0, 0.0], [*q, 0.0, 0.0], [0.0] * 9, [0.0] * 9
        )
        jacobian = np.vstack([np.asarray(linear)[:, :7], np.asarray(angular)[:, :7]])
        inverse = jacobian.T @ np.linalg.inv(jacobian @ jacobian.T + IK_DAMPING**2 * np.eye(6))
        error = np.concatenate([target - position, _rotation_error(EE_DOWN_ORIENTATION, orientation)])
        null_space = np.eye(7) - inverse @ jacobian
        end_q = q + inverse @ error + NULL_SPACE_GAIN * null_space @ (np.asarray(REST_POSE) - q)
        end_qd = inverse @ np.concatenate([ee_velocity, np.zeros(3)])
        return np.clip(end_q, self._arm_lower, self._arm_upper), end_qd

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

    def _drive_arm(self, q: np.ndarray, qd: np.ndarray) -> None:
        self._bullet.setJointMotorControlArray(
            self._robot,
            self._arm_joints,
            pybullet.POSITION_CONTROL,
            targetPositions=q.tolist(),
            targetVelocities=qd.tolist(),
            forces=self._arm_max_force,
            positionGains=[ARM_POSITION_GAIN] * 7,
            velocityGains=[1.0] * 7,
        )

    def _finger_squeeze_n(self) -> float:
        """This substep's squeezing force: the weaker finger's total normal force on the object."""
        left, right = self._finger_joints
        normal = {left: 0.0, right: 0.0}
        for contact in self._bullet.getContactPoints(bodyA=self._robot, bodyB=self._object):
            if contact[3] in normal:
                normal[contact[3]] += contact[9]
        squeeze = min(normal.values())
        self._grasped = squeeze > 0.0
        return squeeze

    # ------------------------------------------------------------------------------------ status

    def _compute_status(self, crushed_now: bool) -> dict:
        ee = self.ee_pose()[0]
        obj = self.object_pose()[0]
        distance = float(np.linalg.norm(ee - obj))
        lift = float(obj[2] - self._rest_height_m)
        success = lift >= SUCCESS_LIFT_M and not self._crushed
        approach = 1.0 - math.tanh(10.0 * distance)
        if self._crushed:
            reward = 0.2 * approach - (2.0 if crushed_now else 0.0)
        else:
            lifted = min(max(lift / SUCCESS_LIFT_M, 0.0), 1.0) if self._grasped else 0.0
            reward = 0.2 * approach + 0.3 * self._grasped + 0.5 * lifted + (1.0 if success else 0.0)
        return {
            "reward": float(reward),
            "success": bool(success),
            "crushed": bool(self._crushed),
            "lift_height_m": lift,
            "grip_force_n": float(self._squeeze_force_n),
            "commanded_grip_force_n": max(self._grip_command_n, 0.0),
            "grasped": bool(self._grasped),
            "ee_object_distance_m": distance,
        }

    def status(self) -> dict:
        """Outcome of the last control period (or of the reset).

        ``reward``; ``success`` (lifted >= 8 cm and not crushed); ``crushed`` (sticky for the episode);
        ``lift_height_m`` above the rest height; ``grip_force_n``, the squeezing force averaged over the
        period; ``commanded_grip_force_n``; ``grasped`` (both fingers touch the object);
        ``ee_object_distance_m``.
        """
        return dict(self._status)

    # ------------------------------------------------------------------------------------ sensing

    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Names, positions (rad | m), velocities (rad/s | m/s) and efforts (N m | N) of the nine joints.

        Effort is the force or torque the joint motor applied in the last physics step, signed along
        the joint axis: a squeezing finger reports a negative effort (it pushes towards closed), an
        opening finger pressed against its limit a positive one.
        """
        states = self._bullet.getJointStates(self._robot, self._joints)
        position = np.array([s[0] for s in states])
        velocity = np.array([s[1] for s in states])
        effort = np.array([s[3] for s in states])
        return list(JOINT_NAMES), position, velocity, effort

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Grasp-frame (between the fingertips) position in m and quaternion (x, y, z, w), world frame."""
        state = self._bullet.getLinkState(self._robot, self._ee_link, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Object base position in m and quaternion (x, y, z, w), world frame."""
        position, orientation = self._bullet.getBasePositionAndOrientation(self._object)
        return np.array(position), np.array(orientation)

    def observation(self) -> np.ndarray:
        """The float32 (10,) observation laid out by ``INTERFACE["observation_layout"]``."""
        return assemble_observation(self.joint_state(), self.ee_pose(), self.object_pose())

    @property
    def bullet(self) -> bullet_client.BulletClient:
        """The scene's own PyBullet client."""
        return self._bullet

    @property
    def body_ids(self) -> dict[str, int]:
        """PyBullet body ids of ``robot``, ``table`` and ``object``."""
        return {"robot": self._robot, "table": self._table, "object": self._object}

    def render_rgb(self, width: int = 320, height: int = 240) -> np.ndarray:
        """A uint8 ``(height, width, 3)`` image from a fixed camera, rendered headless by TinyRenderer."""
        self._check_open()
        b = self._bullet
        view = b.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=(*OBJECT_HOME_XY, 0.1),
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
            raise RuntimeError("this GraspScene is closed")
