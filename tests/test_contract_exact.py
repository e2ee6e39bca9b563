"""The robot contract's exact answers (from the survivors of a mutation run over ``contract.py``,
docs/testing.md): the yaw of any quaternion, every refusal's whole message, equality of action blocks,
the cached joint plan, and the sample constructors' fields."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metarl_robot.contract import (
    ActionSpec,
    JointStateSample,
    LayoutEntry,
    LayoutError,
    ObservationLayout,
    PoseSample,
    RobotInputs,
    TwistSample,
    check_joint_contract,
    yaw_sin_cos,
)


def _yaw_from_matrix(x, y, z, w) -> float:
    """The heading of the body x axis, from the rotation matrix of a unit quaternion."""
    r00 = 1 - 2 * (y * y + z * z)
    r10 = 2 * (x * y + w * z)
    return math.atan2(r10, r00)


@pytest.mark.parametrize("quaternion", [(0.1, 0.2, 0.3, 0.9), (-0.4, 0.3, 0.5, 0.7), (0.5, 0.5, 0.5, 0.5)])
def test_yaw_of_a_tilted_quaternion_is_the_heading_of_its_x_axis(quaternion):
    q = np.asarray(quaternion) / np.linalg.norm(quaternion)
    yaw = _yaw_from_matrix(*q)
    np.testing.assert_allclose(yaw_sin_cos(q), [math.sin(yaw), math.cos(yaw)], atol=1e-12)


LAYOUT_ERRORS = [
    ("not a mapping", "observation.layout[2]: expected a mapping, got str"),
    ({"name": "a", "size": 3}, "observation.layout[2]: missing key(s) ['source', 'field']"),
    ({"name": "p", "source": "ee_pose", "field": "position", "size": 4},
     "observation.layout[2] ('p'): position has 3 values, size says 4"),
]


@pytest.mark.parametrize("entry,message", LAYOUT_ERRORS)
def test_layout_entry_refusals_name_the_entry(entry, message):
    with pytest.raises(LayoutError) as err:
        LayoutEntry.parse(entry, 2)
    assert str(err.value) == message


def test_layout_entries_keep_their_names_and_the_layout_its_checks():
    joint = LayoutEntry.parse({"name": "fingers", "source": "joint_states", "field": "position", "size": 1,
                               "joints": ["f"]}, 0)
    pose = LayoutEntry.parse({"name": "ee", "source": "ee_pose", "field": "position", "size": 3}, 1)
    assert (joint.name, pose.name) == ("fingers", "ee")
    for bad in ([], "ee_pose", None):
        with pytest.raises(LayoutError) as err:
            ObservationLayout.parse(bad)
        assert str(err.value) == "observation.layout must be a non-empty list of entries"
    with pytest.raises(LayoutError) as err:
        ObservationLayout.parse([{"name": "x"}, {"name": "y"}])
    assert str(err.value).startswith("observation.layout[0]: ")
    with pytest.raises(LayoutError) as err:
        ObservationLayout([])
    assert str(err.value) == "observation layout is empty"
    with pytest.raises(LayoutError) as err:
        ObservationLayout.from_manifest({"action": {}})
    assert str(err.value) == "manifest has no 'observation' block"
    layout = ObservationLayout([pose])
    assert layout != [pose] and layout == ObservationLayout([pose]) and hash(layout) == hash(ObservationLayout([pose]))
    assert hash(layout) != hash(ObservationLayout([joint]))


def test_the_joint_plan_follows_the_names_it_is_given():
    layout = ObservationLayout.parse([{"name": "q", "source": "joint_states", "field": "position", "size": 2,
                                       "joints": ["a", "b"]}])
    assert layout.joint_plan(("a", "b"))[:2] == ([], [])
    assert layout.joint_plan(("b", "a"))[2][0].tolist() == [1, 0]
    assert layout.joint_plan(("b", "a", "a"))[:2] == (["a"], [])
    assert layout.joint_plan(("a", "c"))[:2] == ([], ["b"])
    state = JointStateSample.create(["b", "a"], position=[2.0, 1.0], velocity=[0, 0], effort=[0, 0], stamp_s=1.0)
    np.testing.assert_array_equal(layout.assemble_inputs(RobotInputs(state, {})), np.float32([1.0, 2.0]))
    with pytest.raises(ValueError) as err:
        layout.assemble(None)
    assert str(err.value) == "the observation layout needs a joint state and none was given"


def test_a_pose_or_twist_layout_without_samples_says_which():
    layout = ObservationLayout.parse([{"name": "v", "source": "ee_twist", "field": "linear", "size": 3}])
    with pytest.raises(ValueError) as err:
        layout.assemble(None, None, None)
    assert str(err.value) == "the observation layout needs a twist sample of 'ee_twist' and none was given"
    twist = TwistSample.create([0.1, 0.2, 0.3], [0, 0, 0], stamp_s=2.0, received_s=3.0)
    np.testing.assert_allclose(layout.assemble_inputs(RobotInputs(None, {}, {"ee_twist": twist})), [0.1, 0.2, 0.3],
                               rtol=1e-6)


def test_samples_keep_every_field_given_and_default_to_unstamped():
    state = JointStateSample.create(["a"], position=[1.0], velocity=[2.0], effort=[3.0])
    assert state.velocity.tolist() == [2.0] and state.stamp_s == 0.0 and state.velocity.dtype == np.float64
    pose = PoseSample.create([[1.0, 2.0, 3.0]], [0, 0, 0, 1], 4.0, received_s=5.0)
    assert pose.position.tolist() == [1.0, 2.0, 3.0] and pose.received_s == 5.0
    assert PoseSample.create([0, 0, 0], [0, 0, 0, 1]).stamp_s == 0.0
    twist = TwistSample.create([0, 0, 0], [0, 0, 1], 1.0, received_s=1.5)
    assert twist.received_s == 1.5 and TwistSample.create([0, 0, 0], [0, 0, 0]).stamp_s == 0.0


def _action(**overrides):
    return {"mode": "joint_velocity", "names": ["j1"], "low": [-1.0], "high": [1.0], "joint_names": ["j1"],
            **overrides}


def test_action_block_refusals_are_whole_sentences():
    assert ActionSpec.from_manifest(_action()).dim == 1  # one dimension is a valid action
    with pytest.raises(LayoutError) as err:
        ActionSpec.from_manifest(None)
    assert str(err.value) == "manifest has no 'action' block"
    with pytest.raises(LayoutError) as err:
        ActionSpec.from_manifest({"names": ["j1"]})
    assert str(err.value).startswith("action.mode '' is not supported")
    with pytest.raises(LayoutError) as err:
        ActionSpec.from_manifest({k: v for k, v in _action().items() if k != "high"})
    assert str(err.value) == "action block lacks 'high'"
    with pytest.raises(LayoutError) as err:
        ActionSpec.from_manifest(_action(low=["a"]))
    assert str(err.value) == "action.low/high must be lists of numbers, got ['a'] / [1.0]"
    with pytest.raises(LayoutError) as err:
        ActionSpec.from_manifest(_action(low=[-1.0, -1.0]))
    assert str(err.value) == "action.low/high need 1 values, got 2 and 1"
    with pytest.raises(LayoutError) as err:
        ActionSpec.from_manifest(_action(high=[1.0, 1.0]))
    assert str(err.value) == "action.low/high need 1 values, got 1 and 2"


def test_action_blocks_are_equal_only_when_every_field_is():
    spec = ActionSpec.from_manifest(_action())
    assert spec == ActionSpec.from_manifest(_action()) and hash(spec) == hash(ActionSpec.from_manifest(_action()))
    assert spec != ActionSpec.from_manifest(_action(low=[-0.5]))
    assert spec != ActionSpec.from_manifest(_action(scale=[1.0]))
    assert ActionSpec.from_manifest(_action(scale=[1.0])) != spec
    assert spec != "joint_velocity"


def test_the_joint_contract_message_lists_both_sides():
    assert check_joint_contract(["a", "b"], ["b", "c"]) == (
        "joint contract mismatch: robot is missing joint(s) ['a'] that the bundle needs; robot reports joint(s) "
        "['c'] that the bundle does not use")
    assert check_joint_contract(["a"], ["a", "c"]) is None
    assert check_joint_contract(["a"], ["a", "c"], allow_extra=False) == (
        "joint contract mismatch: robot reports joint(s) ['c'] that the bundle does not use")
