"""The policy node's ROS-free logic: observation assembly, joint contract, command safety, transitions."""

import sys

import numpy as np
import pytest

from ros_nodes.policy_logic import (
    LEVEL_ERROR,
    LEVEL_OK,
    LEVEL_WARN,
    ActionSpec,
    AdaptationSchedule,
    CommandFilter,
    Hold,
    HoldKind,
    JointStateSample,
    LayoutError,
    ObservationAssembler,
    PoseSample,
    SafetyLimits,
    TransitionRecorder,
    check_joint_contract,
    diagnostic_level,
)

from .conftest import FINGERS, PANDA_JOINTS, grasp_manifest

NOW = 100.0


def joint_state(names=PANDA_JOINTS, stamp=NOW, **overrides) -> JointStateSample:
    """A joint state whose values encode the joint: position = index + 0.1, effort = -(index + 1)."""
    base = {name: i for i, name in enumerate(PANDA_JOINTS)}
    position = [base[n] + 0.1 for n in names]
    velocity = [0.0 for _ in names]
    effort = [-(base[n] + 1.0) for n in names]
    fields = {"position": position, "velocity": velocity, "effort": effort, **overrides}
    return JointStateSample.create(names, stamp_s=stamp, **fields)


def poses(stamp=NOW):
    return {
        "ee_pose": PoseSample.create([0.4, 0.0, 0.3], [1, 0, 0, 0], stamp),
        "object_pose": PoseSample.create([0.5, 0.1, 0.02], [0, 0, 0, 1], stamp),
    }


@pytest.fixture
def assembler() -> ObservationAssembler:
    return ObservationAssembler.from_manifest(grasp_manifest(), max_obs_age_s=0.5)


def test_logic_module_imports_without_rclpy():
    import subprocess
    from pathlib import Path

    import ros_nodes

    code = "import sys; sys.modules['rclpy'] = None; import ros_nodes.policy_logic"
    repo_root = Path(ros_nodes.__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_observation_follows_layout(assembler):
    obs = assembler.assemble(NOW, joint_state(), poses())
    assert obs.dtype == np.float32 and obs.shape == (10,) == (assembler.obs_dim,)
    np.testing.assert_allclose(obs[:3], [0.4, 0.0, 0.3])
    np.testing.assert_allclose(obs[3:6], [0.5, 0.1, 0.02], rtol=1e-6)
    np.testing.assert_allclose(obs[6:8], [7.1, 8.1], rtol=1e-6)  # finger positions, mapped by name
    np.testing.assert_allclose(obs[8:10], [-8.0, -9.0])
    assert assembler.required_joints == FINGERS
    assert assembler.pose_sources == ("ee_pose", "object_pose")


def test_joints_are_mapped_by_name_not_position(assembler):
    shuffled = list(PANDA_JOINTS)
    np.random.default_rng(3).shuffle(shuffled)
    assert shuffled != list(PANDA_JOINTS)
    reference = assembler.assemble(NOW, joint_state(), poses())
    np.testing.assert_array_equal(assembler.assemble(NOW, joint_state(shuffled), poses()), reference)
    # Only the layout's joints matter: extra joints from another device change nothing.
    base = joint_state(shuffled)
    extra = JointStateSample.create(
        [*shuffled, "camera_pan"],
        position=[*base.position, 5.0],
        velocity=[*base.velocity, 0.0],
        effort=[*base.effort, 1.0],
        stamp_s=NOW,
    )
    np.testing.assert_array_equal(assembler.assemble(NOW, extra, poses()), reference)


def test_missing_joint_holds_and_names_it(assembler):
    names = [n for n in PANDA_JOINTS if n != "panda_finger_joint2"]
    hold = assembler.assemble(NOW, joint_state(names), poses())
    assert isinstance(hold, Hold) and hold.kind is HoldKind.MISSING_JOINT
    assert "panda_finger_joint2" in hold.detail


@pytest.mark.parametrize("field", ["position", "effort"])
def test_non_finite_joint_value_holds(assembler, field):
    values = list(getattr(joint_state(), field))
    values[PANDA_JOINTS.index("panda_finger_joint1")] = float("nan")
    hold = assembler.assemble(NOW, joint_state(**{field: values}), poses())
    assert isinstance(hold, Hold) and hold.kind is HoldKind.NON_FINITE
    assert "panda_finger_joint1" in hold.detail


def test_non_finite_value_of_an_unused_joint_is_ignored(assembler):
    position = list(joint_state().position)
    position[0] = float("inf")
    assert isinstance(assembler.assemble(NOW, joint_state(position=position), poses()), np.ndarray)


def test_non_finite_pose_holds(assembler):
    bad = poses()
    bad["object_pose"] = PoseSample.create([np.nan, 0, 0], [0, 0, 0, 1], NOW)
    hold = assembler.assemble(NOW, joint_state(), bad)
    assert hold.kind is HoldKind.NON_FINITE and "object_pose" in hold.detail


def test_wrong_sizes_hold(assembler):
    hold = assembler.assemble(NOW, joint_state(effort=[1.0, 2.0]), poses())
    assert hold.kind is HoldKind.BAD_SIZE and "effort" in hold.detail
    duplicated = joint_state(list(PANDA_JOINTS[:-1]) + ["panda_finger_joint1"])
    assert assembler.assemble(NOW, duplicated, poses()).kind is HoldKind.BAD_SIZE


def test_velocity_may_be_empty_when_the_layout_does_not_use_it(assembler):
    assert isinstance(assembler.assemble(NOW, joint_state(velocity=[]), poses()), np.ndarray)


@pytest.mark.parametrize("stale", ["joint_states", "ee_pose", "object_pose"])
def test_stale_input_holds(assembler, stale):
    old = NOW - 0.6
    js = joint_state(stamp=old if stale == "joint_states" else NOW)
    ps = poses()
    if stale != "joint_states":
        ps[stale] = PoseSample.create([0, 0, 0], [0, 0, 0, 1], old)
    hold = assembler.assemble(NOW, js, ps)
    assert hold.kind is HoldKind.STALE and stale in hold.detail
    assert isinstance(assembler.assemble(NOW, joint_state(stamp=NOW - 0.4), poses(NOW - 0.4)), np.ndarray)


def test_unstamped_future_stamped_and_stopped_inputs_hold(assembler):
    hold = assembler.assemble(NOW, joint_state(stamp=0.0), poses())
    assert hold.kind is HoldKind.STALE and "no header stamp" in hold.detail
    hold = assembler.assemble(NOW, joint_state(stamp=NOW + 2.0), poses())
    assert hold.kind is HoldKind.STALE and "future" in hold.detail and "synchronise" in hold.detail
    # A sender whose clock runs 0.3 s ahead: fresh by its stamp, but nothing has arrived for 0.7 s.
    ahead = JointStateSample.create(PANDA_JOINTS, joint_state().position, joint_state().velocity,
                                    joint_state().effort, stamp_s=NOW + 0.3 - 0.7, received_s=NOW - 0.7)
    hold = assembler.assemble(NOW, ahead, poses())
    assert hold.kind is HoldKind.STALE and "received" in hold.detail, hold
    arrived = JointStateSample.create(PANDA_JOINTS, joint_state().position, joint_state().velocity,
                                      joint_state().effort, stamp_s=NOW + 0.3, received_s=NOW)
    assert isinstance(assembler.assemble(NOW, arrived, poses()), np.ndarray)


def test_missing_input_holds(assembler):
    assert assembler.assemble(NOW, None, poses()).kind is HoldKind.NO_DATA
    assert assembler.assemble(NOW, joint_state(), {"ee_pose": poses()["ee_pose"]}).kind is HoldKind.NO_DATA


def test_layout_errors_name_the_entry():
    manifest = grasp_manifest()
    manifest["observation"]["layout"][2]["size"] = 3
    with pytest.raises(LayoutError, match="finger_position"):
        ObservationAssembler.from_manifest(manifest, 0.5)
    manifest = grasp_manifest()
    manifest["observation"]["layout"][0]["field"] = "twist"
    with pytest.raises(LayoutError, match="ee_position"):
        ObservationAssembler.from_manifest(manifest, 0.5)


# ------------------------------------------------------------------------------------ joint contract


def test_joint_contract():
    assert check_joint_contract(FINGERS, PANDA_JOINTS) is None
    message = check_joint_contract(PANDA_JOINTS, PANDA_JOINTS[:7] + ("gripper_left", "gripper_right"))
    assert "panda_finger_joint1" in message and "panda_finger_joint2" in message
    assert "gripper_left" in message
    assert check_joint_contract(FINGERS, FINGERS + ("extra",)) is None
    strict = check_joint_contract(FINGERS, FINGERS + ("extra",), allow_extra=False)
    assert strict is not None and "extra" in strict


# ------------------------------------------------------------------------------------------- commands


@pytest.fixture
def spec() -> ActionSpec:
    return ActionSpec.from_manifest(grasp_manifest()["action"])


def test_action_spec_reads_the_manifest(spec):
    assert spec.linear_indices == (0, 1, 2) and spec.grip_index == 3
    assert spec.velocity_indices == (0, 1, 2)
    joint = ActionSpec.from_manifest(
        {"mode": "joint_velocity", "dim": 2, "names": ["vx", "vy"], "low": [-1, -1], "high": [1, 1],
         "joint_names": ["x", "y"]}
    )
    assert joint.joint_indices == (0, 1) and joint.velocity_indices == (0, 1)
    with pytest.raises(LayoutError, match="mode"):
        ActionSpec.from_manifest({**grasp_manifest()["action"], "mode": "torque"})


def test_clamp_to_bundle_bounds(spec):
    cmd = CommandFilter(spec).filter([1.0, -1.0, 0.05, 500.0])
    np.testing.assert_allclose(cmd.values, [0.15, -0.15, 0.05, 60.0])
    assert cmd.known.all() and cmd.hold is None


def test_tighter_user_limits(spec):
    limits = SafetyLimits(max_ee_speed_mps=0.1, max_grip_force_n=20.0)
    cmd = CommandFilter(spec, limits).filter([0.15, 0.15, 0.0, 50.0])
    assert np.linalg.norm(cmd.values[:3]) == pytest.approx(0.1)
    np.testing.assert_allclose(cmd.values[:3] / np.linalg.norm(cmd.values[:3]), [2**-0.5, 2**-0.5, 0])
    assert cmd.values[3] == 20.0
    assert CommandFilter(spec, limits).filter([0, 0, 0, -50.0]).values[3] == -20.0


def test_rate_limit(spec):
    filt = CommandFilter(spec, SafetyLimits(max_ee_velocity_step_mps=0.02, max_grip_force_step_n=10.0))
    first = filt.filter([0.1, 0.0, 0.0, 30.0])  # from rest: velocity ramps, unknown force does not
    np.testing.assert_allclose(first.values, [0.02, 0.0, 0.0, 30.0])
    second = filt.filter([0.1, 0.0, 0.0, -30.0])
    np.testing.assert_allclose(second.values, [0.04, 0.0, 0.0, 20.0])
    np.testing.assert_allclose(filt.filter([0.03, 0, 0, 20.0]).values, [0.03, 0, 0, 20.0])
    with pytest.raises(ValueError, match="not finite"):
        filt.filter([np.nan, 0, 0, 0])
    with pytest.raises(ValueError, match="3 values"):
        filt.filter([0, 0, 0])


def test_hold_zeroes_velocity_and_keeps_the_grip(spec):
    filt = CommandFilter(spec, SafetyLimits(max_ee_velocity_step_mps=0.05))
    filt.filter([0.0, 0.0, 0.0, 0.0])
    filt.filter([0.05, 0.05, 0.05, 25.0])
    reason = Hold(HoldKind.STALE, "joint_states is 1.0 s old")
    held = filt.hold(reason)
    np.testing.assert_allclose(held.values, [0, 0, 0, 25.0])
    assert held.known.all() and held.hold is reason
    np.testing.assert_allclose(filt.hold(reason).values, [0, 0, 0, 25.0])  # repeated holds keep it
    # after a hold the velocity ramps up from zero again
    np.testing.assert_allclose(filt.filter([0.15, 0, 0, 25.0]).values, [0.05, 0, 0, 25.0])


def test_a_new_filter_can_resume_from_the_old_one(spec):
    old = CommandFilter(spec)
    old.filter([0.1, 0.0, 0.0, 25.0])
    new = CommandFilter(spec, SafetyLimits(max_ee_velocity_step_mps=0.02))
    new.resume_from(old)
    np.testing.assert_allclose(new.hold(Hold(HoldKind.STALE, "x")).values, [0, 0, 0, 25.0])
    resumed = CommandFilter(spec, SafetyLimits(max_ee_velocity_step_mps=0.02))
    resumed.resume_from(old)
    np.testing.assert_allclose(resumed.filter([0.0, 0.0, 0.0, 25.0]).values, [0.08, 0, 0, 25.0])


def test_hold_before_any_command_leaves_the_gripper_alone(spec):
    held = CommandFilter(spec).hold(Hold(HoldKind.NO_DATA, "no joint_states received yet"))
    np.testing.assert_allclose(held.values[:3], 0.0)
    assert held.known.tolist() == [True, True, True, False]


# -------------------------------------------------------------------------------------- transitions


def test_transitions_pair_command_with_following_reward():
    rec = TransitionRecorder()
    o0, o1, o2 = (np.full(2, i, dtype=np.float32) for i in range(3))
    rec.add_reward(5.0)  # before any command: belongs to nothing
    assert rec.close(o0) == (None, False)
    rec.open(o0, np.array([1.0]))
    rec.add_reward(0.5)
    rec.add_reward(0.25)
    step = rec.close(o1)
    assert not step.episode_ended
    t = step.transition
    np.testing.assert_array_equal(t.obs, o0)
    np.testing.assert_array_equal(t.next_obs, o1)
    assert t.reward == 0.75 and not t.done
    rec.open(o1, np.array([2.0]))
    rec.add_reward(1.0)
    rec.end_episode(o2)
    rec.add_reward(0.5)  # published before the episode end, delivered after: still counted
    done = rec.close(np.full(2, 9.0, dtype=np.float32))
    assert done.episode_ended and done.transition.done and done.transition.reward == 1.5
    np.testing.assert_array_equal(done.transition.next_obs, o2)
    assert rec.rewards_missing == 0


def test_hold_drops_the_open_transition_but_not_a_finished_episode():
    rec = TransitionRecorder()
    obs = np.zeros(2, dtype=np.float32)
    rec.open(obs, np.array([1.0]))
    assert rec.close(None) == (None, False)
    rec.open(obs, np.array([1.0]))
    rec.end_episode(obs + 1)
    step = rec.close(None)
    assert step.episode_ended and step.transition.done and rec.rewards_missing == 1


def test_adaptation_schedule():
    episodic = AdaptationSchedule("episode", 0)
    assert episodic.at_episode_end() and not episodic.after_step(100)
    assert AdaptationSchedule("episode", 5).after_step(5)
    assert not AdaptationSchedule("episode", 5).after_step(4)
    assert AdaptationSchedule("step", 0).after_step(1)
    with pytest.raises(ValueError):
        AdaptationSchedule("weekly", 0)


def test_diagnostic_levels():
    assert diagnostic_level(None, None, 0.1, 0.1)[0] == LEVEL_OK
    for fault in (HoldKind.STALE, HoldKind.NON_FINITE, HoldKind.BAD_SIZE, HoldKind.MISSING_JOINT):
        assert diagnostic_level(Hold(fault, "x"), None, 0.1, 0.1)[0] == LEVEL_ERROR
    assert diagnostic_level(Hold(HoldKind.NO_DATA, "x"), None, 0.1, 0.1)[0] == LEVEL_WARN
    level, message = diagnostic_level(Hold(HoldKind.JOINT_CONTRACT, "missing ['j1']"), None, 0.1, 0.1)
    assert level == LEVEL_ERROR and "j1" in message
    assert diagnostic_level(None, "reload failed", 0.1, 0.1)[0] == LEVEL_WARN
    assert diagnostic_level(None, None, 0.2, 0.1)[0] == LEVEL_WARN


def _joint_spec(mode: str) -> ActionSpec:
    return ActionSpec.from_manifest(
        {"mode": mode, "dim": 2, "names": ["j1", "j2"], "low": [-2.0, -2.0], "high": [2.0, 2.0],
         "joint_names": ["j1", "j2"]}
    )


def test_joint_velocity_speed_cap_and_rate_limit():
    filt = CommandFilter(_joint_spec("joint_velocity"), SafetyLimits(max_joint_speed=0.5, max_joint_velocity_step=0.2))
    np.testing.assert_allclose(filt.filter([1.5, -0.1]).values, [0.2, -0.1])  # from rest, 0.2 per tick
    np.testing.assert_allclose(filt.filter([1.5, -0.1]).values, [0.4, -0.1])
    np.testing.assert_allclose(filt.filter([1.5, -0.1]).values, [0.5, -0.1])  # capped at 0.5
    np.testing.assert_allclose(filt.hold(Hold(HoldKind.STALE, "x")).values, [0.0, 0.0])


def test_joint_position_steps_are_limited_from_the_measured_position():
    filt = CommandFilter(_joint_spec("joint_position"), SafetyLimits(max_joint_speed=1.0), control_period_s=0.01)
    assert not filt.has_commanded_joints
    with pytest.raises(ValueError, match="measured joint positions"):
        filt.filter([1.0, 1.0])
    first = filt.filter([1.0, -1.0], joint_positions=np.array([0.5, 0.0]))
    np.testing.assert_allclose(first.values, [0.51, -0.01])  # 1 rad/s x 10 ms from where the joints are
    np.testing.assert_allclose(filt.filter([1.0, -1.0]).values, [0.52, -0.02])
    # A hold keeps position commands where they were (no velocity dimensions to zero).
    np.testing.assert_allclose(filt.hold(Hold(HoldKind.STALE, "x")).values, [0.52, -0.02])


def test_gradient_cadence_adapts_when_its_episodes_are_complete():
    schedule = AdaptationSchedule("episodes", every_n_steps=5, episodes_per_step=3)
    assert not schedule.after_step(100)
    assert not schedule.at_episode_end(2) and schedule.at_episode_end(3)
