"""The arms the PyBullet scenes can use, each with a parallel-jaw gripper and a grasp frame.

A :class:`RobotSpec` names what a scene needs from an arm: its URDF, arm and finger joints, the link
whose frame is the grasp point, and a rest pose that keeps the elbow up while the gripper points down.
The Franka Panda brings its own hand. The Kuka LBR iiwa and the UFactory xArm6 from ``pybullet_data``
have none, so :func:`robot_urdf` writes a URDF with a two-finger prismatic gripper of the Panda hand's
dimensions appended to their flange: every robot then closes its fingers along the grasp frame's y
axis, with the same stroke, pads and contact parameters, and one scene code path drives all three.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from pathlib import Path

import pybullet_data

FINGER_OPEN_POSITION_M = 0.04
"""Finger stroke: each finger travels from 0 (closed) to 0.04 m (open), as on the Panda hand."""


@dataclasses.dataclass(frozen=True)
class RobotSpec:
    """What a scene needs to know about one arm + gripper."""

    name: str
    urdf: str
    """Path relative to ``pybullet_data`` of the arm's URDF."""
    arm_joints: tuple[str, ...]
    finger_joints: tuple[str, str]
    grasp_link: str
    """Link whose frame is the grasp point: between the fingertips, z axis along the approach."""
    rest_pose: tuple[float, ...]
    """Arm joint angles (rad) of a comfortable gripper-down pose; the home pose is solved from it."""
    flange_link: str = ""
    """Link the project's gripper is mounted on; empty when the URDF has its own gripper."""
    flange_yaw_rad: float = 0.0
    """Rotation of the mounted gripper about the flange's z axis."""

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.arm_joints + self.finger_joints


ROBOTS: dict[str, RobotSpec] = {
    "franka_panda": RobotSpec(
        name="franka_panda",
        urdf="franka_panda/panda.urdf",
        arm_joints=tuple(f"panda_joint{i}" for i in range(1, 8)),
        finger_joints=("panda_finger_joint1", "panda_finger_joint2"),
        grasp_link="panda_grasptarget",
        rest_pose=(0.0, 0.2, 0.0, -2.3, 0.0, 2.5, 0.785),
    ),
    "kuka_iiwa": RobotSpec(
        name="kuka_iiwa",
        urdf="kuka_iiwa/model.urdf",
        arm_joints=tuple(f"lbr_iiwa_joint_{i}" for i in range(1, 8)),
        finger_joints=("gripper_finger_joint1", "gripper_finger_joint2"),
        grasp_link="gripper_grasp_target",
        rest_pose=(0.0, 0.6, 0.0, -1.4, 0.0, 1.1, 0.0),
        flange_link="lbr_iiwa_link_7",
    ),
    "xarm6": RobotSpec(
        name="xarm6",
        urdf="xarm/xarm6_robot.urdf",
        arm_joints=tuple(f"joint{i}" for i in range(1, 7)),
        finger_joints=("gripper_finger_joint1", "gripper_finger_joint2"),
        grasp_link="gripper_grasp_target",
        rest_pose=(0.0, 0.2, -1.0, 0.0, 0.8, 0.0),
        flange_link="link6",
    ),
}
"""The supported arms by name; ``franka_panda`` is the default everywhere."""


def robot_spec(name: str) -> RobotSpec:
    """The :class:`RobotSpec` called ``name``; the error lists the valid names."""
    try:
        return ROBOTS[name]
    except KeyError:
        raise ValueError(f"robot={name!r} is unknown; use one of {', '.join(ROBOTS)}") from None


# The gripper appended to arms without one. Dimensions follow the Panda hand: a palm 5.84 cm from the
# flange to the finger joints, 8 cm between open pads, the grasp frame 10.5 cm out from the flange.
# Contact parameters match the Panda finger pads so grasps behave alike across robots.
_GRIPPER_XML = """
  <joint name="gripper_mount" type="fixed">
    <parent link="{flange}"/>
    <child link="gripper_palm"/>
    <origin rpy="0 0 {yaw}" xyz="0 0 0"/>
  </joint>
  <link name="gripper_palm">
    <inertial><origin xyz="0 0 0.03"/><mass value="0.6"/>
      <inertia ixx="0.001" ixy="0" ixz="0" iyy="0.001" iyz="0" izz="0.001"/></inertial>
    <visual><origin xyz="0 0 0.03"/><geometry><box size="0.04 0.2 0.05"/></geometry>
      <material name="gripper_grey"><color rgba="0.3 0.3 0.32 1"/></material></visual>
    <collision><origin xyz="0 0 0.03"/><geometry><box size="0.04 0.2 0.05"/></geometry></collision>
  </link>
{fingers}
  <joint name="gripper_grasp_joint" type="fixed">
    <parent link="gripper_palm"/>
    <child link="gripper_grasp_target"/>
    <origin rpy="0 0 0" xyz="0 0 0.105"/>
  </joint>
  <link name="gripper_grasp_target">
    <inertial><mass value="0.001"/><inertia ixx="1e-7" ixy="0" ixz="0" iyy="1e-7" iyz="0" izz="1e-7"/></inertial>
  </link>
"""

_FINGER_XML = """
  <joint name="gripper_finger_joint{index}" type="prismatic">
    <parent link="gripper_palm"/>
    <child link="gripper_finger{index}"/>
    <origin rpy="0 0 0" xyz="0 0 0.0584"/>
    <axis xyz="0 {sign} 0"/>
    <limit effort="70" lower="0.0" upper="{stroke}" velocity="0.2"/>
  </joint>
  <link name="gripper_finger{index}">
    <contact><friction_anchor/><stiffness value="30000.0"/><damping value="1000.0"/>
      <spinning_friction value="0.1"/><lateral_friction value="1.0"/></contact>
    <inertial><origin xyz="0 {pad_y} 0.03"/><mass value="0.1"/>
      <inertia ixx="0.0001" ixy="0" ixz="0" iyy="0.0001" iyz="0" izz="0.0001"/></inertial>
    <visual><origin xyz="0 {pad_y} 0.03"/><geometry><box size="0.02 0.01 0.05"/></geometry>
      <material name="gripper_pad"><color rgba="0.15 0.15 0.15 1"/></material></visual>
    <collision><origin xyz="0 {pad_y} 0.03"/><geometry><box size="0.02 0.01 0.05"/></geometry></collision>
  </link>
"""


def _absolute_mesh_paths(text: str, folder: Path) -> str:
    """Rewrite ``filename="..."`` attributes to absolute paths so the URDF loads from any folder."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("package://"):
            relative = name[len("package://") :]
            candidates = [folder / relative, folder / relative.split("/", 1)[-1]]
        else:
            candidates = [folder / name]
        for candidate in candidates:
            if candidate.exists():
                return f'filename="{candidate}"'
        return match.group(0)

    return re.sub(r'filename="([^"]+)"', replace, text)


def robot_urdf(spec: RobotSpec) -> str:
    """Path of a URDF for ``spec`` that PyBullet can load: the original, or one with the gripper added.

    Generated files live in a per-user cache folder named by the content's hash, so processes that
    build the same robot concurrently write identical files and never see a partial one.
    """
    source = Path(pybullet_data.getDataPath()) / spec.urdf
    if not spec.flange_link:
        return str(source)
    text = _absolute_mesh_paths(source.read_text(), source.parent)
    text = re.sub(r"<gazebo>.*?</gazebo>", "", text, flags=re.S)
    # Inner pad faces sit on the finger joint origin (8 cm apart when open); pads are 1 cm thick.
    fingers = "".join(
        _FINGER_XML.format(index=i, sign=sign, stroke=FINGER_OPEN_POSITION_M, pad_y=sign * 0.005)
        for i, sign in ((1, 1), (2, -1))
    )
    gripper = _GRIPPER_XML.format(flange=spec.flange_link, yaw=spec.flange_yaw_rad, fingers=fingers)
    text = text.replace("</robot>", gripper + "</robot>")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"metarl_robot-{os.getuid()}" / "urdf"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}-{digest}.urdf"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
    return str(path)
