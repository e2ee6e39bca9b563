"""The robot contract (metarl_robot.contract): layouts, the one observation assembly, actions, control rate."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.contract import (
    JointStateSample,
    LayoutError,
    ObservationLayout,
    PoseSample,
    RobotContract,
    RobotInputs,
    TwistSample,
    ActionSpec,
    check_joint_contract,
    is_robot_layout,
    read_control_rate_hz,
    yaw_sin_cos,
)

FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + FINGERS
GRASP_LAYOUT = [
    {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
    {"name": "object_position", "source": "object_pose", "field": "position", "size": 3},
    {"name": "finger_position", "source": "joint_states", "field": "position", "joints": FINGERS, "size": 2},
    {"name": "finger_effort", "source": "joint_states", "field": "effort", "joints": FINGERS, "size": 2},
]
GRASP_ACTION = {
    "mode": "cartesian_velocity",
    "names": ["ee_vx", "ee_vy", "ee_vz", "grip_force"],
    "units": ["m/s", "m/s", "m/s", "N"],
    "scale": [0.15, 0.15, 0.15, 60.0],
    "low": [-0.15, -0.15, -0.15, -60.0],
    "high": [0.15, 0.15, 0.15, 60.0],
}
GRASP_INTERFACE = {
    "robot": "franka_panda",
    "control_rate_hz": 10.0,
    "joint_names": PANDA_JOINTS,
    "observation_layout": GRASP_LAYOUT,
    "action": GRASP_ACTION,
}


def joint_state(names=PANDA_JOINTS) -> JointStateSample:
    """Values encode the joint: position = index + 0.1, velocity = index / 10, effort = -(index + 1)."""
    index = {name: i for i, name in enumerate(PANDA_JOINTS)}
    return JointStateSample.create(
        names, [index[n] + 0.1 for n in names], [index[n] / 10 for n in names], [-(index[n] + 1.0) for n in names]
    )


POSES = {
    "ee_pose": PoseSample.create([0.4, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0]),
    "object_pose": PoseSample.create([0.5, 0.1, 0.02], [0.0, 0.0, 0.38268343, 0.92387953]),
}


# ------------------------------------------------------------------------------------------ layout


def test_grasp_layout_assembles_by_name_in_float32():
    layout = ObservationLayout.parse(GRASP_LAYOUT)
    assert layout.dim == 10 and layout.required_joints == tuple(FINGERS)
    assert layout.pose_sources == ("ee_pose", "object_pose") and layout.twist_sources == ()
    assert layout.joint_fields == ("position", "effort") and layout.needs_joint_states
    obs = layout.assemble(joint_state(), POSES)
    expected = np.concatenate([[0.4, 0.0, 0.3], [0.5, 0.1, 0.02], [7.1, 8.1], [-8.0, -9.0]]).astype(np.float32)
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs, expected)
    shuffled = list(reversed(PANDA_JOINTS)) + ["camera_pan"]
    extra = JointStateSample.create(
        shuffled, [*joint_state(PANDA_JOINTS[::-1]).position, 5.0], [0.0] * 10, [*joint_state(PANDA_JOINTS[::-1]).effort, 1]
    )
    np.testing.assert_array_equal(layout.assemble(extra, POSES), obs)
    np.testing.assert_array_equal(layout.assemble_inputs(RobotInputs(joint_state(), dict(POSES))), obs)


def test_pose_and_twist_fields():
    layout = ObservationLayout.parse([
        {"name": "q", "source": "object_pose", "field": "orientation", "size": 4},
        {"name": "yaw", "source": "object_pose", "field": "yaw_sin_cos", "size": 2},
        {"name": "v", "source": "ee_twist", "field": "linear", "size": 3},
        {"name": "w", "source": "ee_twist", "field": "angular", "size": 3},
    ])
    assert not layout.needs_joint_states and layout.twist_sources == ("ee_twist",)
    twist = TwistSample.create([0.1, -0.2, 0.3], [1.0, 2.0, 3.0])
    obs = layout.assemble(None, POSES, {"ee_twist": twist})
    np.testing.assert_allclose(obs[4:6], [math.sin(math.pi / 4), math.cos(math.pi / 4)], rtol=1e-6)
    np.testing.assert_array_equal(obs[6:], np.float32([0.1, -0.2, 0.3, 1.0, 2.0, 3.0]))
    x, y, z, w = POSES["object_pose"].orientation_xyzw
    yaw = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    np.testing.assert_array_equal(yaw_sin_cos((x, y, z, w)), [math.sin(yaw), math.cos(yaw)])


def test_assembly_says_what_is_missing():
    layout = ObservationLayout.parse(GRASP_LAYOUT)
    with pytest.raises(ValueError, match="joint state"):
        layout.assemble(None, POSES)
    with pytest.raises(ValueError, match="panda_finger_joint2"):
        layout.assemble(joint_state(PANDA_JOINTS[:-1]), POSES)
    with pytest.raises(ValueError, match="object_pose"):
        layout.assemble(joint_state(), {"ee_pose": POSES["ee_pose"]})
    short = JointStateSample.create(PANDA_JOINTS, joint_state().position, (), [1.0])
    with pytest.raises(ValueError, match="effort has 1 values"):
        layout.assemble(short, POSES)


@pytest.mark.parametrize(
    "change, match",
    [
        ({2: {"size": 3}}, "finger_position"),
        ({0: {"field": "twist"}}, "ee_position"),
        ({2: {"field": "torque"}}, "finger_position"),
        ({2: {"joints": []}}, "finger_position"),
        ({2: {"joints": ["a", "a"]}}, "duplicates"),
        ({0: {"joints": ["a", "b", "c"]}}, "only joint_states"),
        ({0: {"source": "ee pose"}}, "topic name"),
        ({0: {"size": "three"}}, "not an integer"),
        ({1: {"field": "linear"}}, "'object_position'.*pose and as a twist|twist and as a pose"),
    ],
)
def test_layout_errors_name_the_entry(change, match):
    layout = [dict(entry) for entry in GRASP_LAYOUT]
    for index, fields in change.items():
        layout[index].update(fields)
    if "twist" in match:  # a second entry reads object_pose as a pose: one source cannot be both
        layout.append({"name": "object_orientation", "source": "object_pose", "field": "orientation", "size": 4})
    with pytest.raises(LayoutError, match=match):
        ObservationLayout.parse(layout)


def test_manifest_dim_must_match_and_robot_layouts_are_recognised():
    with pytest.raises(LayoutError, match="observation.dim is 11"):
        ObservationLayout.from_manifest({"observation": {"dim": 11, "layout": GRASP_LAYOUT}})
    with pytest.raises(LayoutError, match="no 'observation'"):
        ObservationLayout.from_manifest({})
    assert ObservationLayout.from_manifest({"observation": {"dim": 10, "layout": GRASP_LAYOUT}}).dim == 10
    assert is_robot_layout(GRASP_LAYOUT)
    bandit = [{"name": "previous_reward", "source": "reward", "field": "value", "size": 1}]
    assert not is_robot_layout(bandit) and not is_robot_layout([])


def test_joint_contract():
    assert check_joint_contract(FINGERS, PANDA_JOINTS) is None
    message = check_joint_contract(PANDA_JOINTS, PANDA_JOINTS[:7] + ["gripper_left"])
    assert "panda_finger_joint1" in message and "panda_finger_joint2" in message and "gripper_left" in message
    assert check_joint_contract(FINGERS, FINGERS + ["extra"]) is None
    assert "extra" in check_joint_contract(FINGERS, FINGERS + ["extra"], allow_extra=False)


# ----------------------------------------------------------------------------------------- actions


def test_action_spec_reads_every_field():
    spec = ActionSpec.from_manifest({**GRASP_ACTION, "joint_names": PANDA_JOINTS})
    assert spec.dim == 4 and spec.units == ("m/s", "m/s", "m/s", "N")
    assert spec.linear_indices == (0, 1, 2) and spec.linear_axes == ("x", "y", "z") and spec.grip_index == 3
    assert spec.velocity_indices == (0, 1, 2) and spec.commanded_joints == ()
    np.testing.assert_array_equal(spec.scale, [0.15, 0.15, 0.15, 60.0])
    planar = ActionSpec.from_manifest({"mode": "cartesian_velocity", "names": ["ee_vx", "ee_vy"], "low": [-1, -1],
                                       "high": [1, 1]})
    assert planar.linear_axes == ("x", "y") and planar.grip_index is None and planar.scale is None
    twist = ActionSpec.from_manifest({"mode": "cartesian_velocity", "names": ["ee_wz", "ee_vy"], "low": [-1, -1],
                                      "high": [1, 1]})
    assert twist.linear_indices == (1,) and twist.angular_indices == (0,) and twist.angular_axes == ("z",)
    joint = ActionSpec.from_manifest({"mode": "joint_velocity", "names": ["vx", "vy", "grip_force"],
                                      "low": [-1, -1, 0], "high": [1, 1, 5], "joint_names": ["x", "y"]})
    assert joint.joint_indices == (0, 1) and joint.velocity_indices == (0, 1) and joint.commanded_joints == ("x", "y")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"mode": "torque"}, "mode"),
        ({"names": ["ee_vx", "ee_vy", "ee_vz"]}, "action.dim|low/high"),
        ({"dim": 5}, "action.dim is 5"),
        ({"names": ["ee_vx", "ee_vx", "ee_vz", "grip_force"]}, "duplicates"),
        ({"names": ["ee_wx", "ee_wy", "ee_wz", "grip_force"]}, "none of"),
        ({"names": ["ee_vx", "ee_vy", "ee_vz", "suction"]}, "suction"),
        ({"high": [0.15, 0.15, 0.15, math.inf]}, "finite"),
        ({"low": [1.0, -0.15, -0.15, -60.0]}, "low <= high"),
        ({"units": ["m/s"]}, "units"),
        ({"scale": [0.15, 0.15, 0.0, 60.0]}, "scale"),
        ({"mode": "joint_position", "joint_names": ["a"]}, "joint_names lists 1"),
    ],
)
def test_action_errors_name_the_key(change, match):
    with pytest.raises(LayoutError, match=match):
        ActionSpec.from_manifest({**GRASP_ACTION, **change})


def test_control_rate():
    assert read_control_rate_hz(10) == 10.0
    for bad in (0.0, -1.0, math.inf, math.nan, "10", True, None):
        with pytest.raises(LayoutError, match="control_rate_hz"):
            read_control_rate_hz(bad)


def test_contract_from_an_interface_and_a_manifest_agree():
    from_interface = RobotContract.from_interface(GRASP_INTERFACE)
    manifest = {
        "observation": {"dim": 10, "layout": GRASP_LAYOUT},
        "action": {**GRASP_ACTION, "dim": 4, "joint_names": PANDA_JOINTS},
        "control_rate_hz": 10.0,
    }
    from_manifest = RobotContract.from_manifest(manifest)
    assert from_interface.observation == from_manifest.observation
    assert from_interface.action.joint_names == tuple(PANDA_JOINTS) == from_manifest.action.joint_names
    assert from_interface.control_rate_hz == 10.0 and from_interface.control_period_s == 0.1
    assert from_interface.observed_joints == tuple(FINGERS)
    point = RobotContract.from_interface({
        "control_rate_hz": 20.0, "joint_names": ["x", "y"],
        "observation_layout": [{"name": "p", "source": "joint_states", "field": "position", "joints": ["y"], "size": 1}],
        "action": {"mode": "joint_velocity", "names": ["vx", "vy"], "low": [-1, -1], "high": [1, 1]},
    })
    assert point.observed_joints == ("y", "x")
    with pytest.raises(LayoutError, match="control_rate_hz"):
        RobotContract.from_manifest({**manifest, "control_rate_hz": math.inf})


def test_contract_imports_with_numpy_only():
    code = (
        "import sys\n"
        "for name in ('torch', 'pybullet', 'rclpy', 'onnxruntime', 'gymnasium', 'sim', 'ros_nodes'):\n"
        "    sys.modules[name] = None\n"
        "import metarl_robot.contract\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
