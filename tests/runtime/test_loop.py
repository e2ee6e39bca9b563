"""The control loop without ROS: input checks, holds and recovery, clamping and rate limits, joint mapping,
transitions, the adaptation schedule and diagnostics, first piece by piece, then tick by tick on real
exported bundles (a context bundle and a gradient bundle of the grasp interface)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.contract import ActionSpec, JointStateSample, PoseSample, RobotContract, RobotInputs
from metarl_robot.runtime import AdaptationSchedule
from metarl_robot.runtime.loop import (
    LEVEL_ERROR,
    LEVEL_OK,
    LEVEL_WARN,
    CommandFilter,
    Hold,
    HoldKind,
    LoopSettings,
    LoopStats,
    ObservationAssembler,
    RobotLoop,
    SafetyLimits,
    TransitionRecorder,
    diagnostic_level,
)

from .conftest import INTERFACE, JOINT_NAMES
from .gradient_fixtures import exported_gradient_bundle

NOW = 100.0
PANDA_JOINTS = tuple(JOINT_NAMES)
FINGERS = PANDA_JOINTS[-2:]


def grasp_manifest() -> dict:
    """The robot contract part of a grasp bundle's manifest."""
    return {
        "observation": {"dim": 10, "layout": copy.deepcopy(INTERFACE["observation_layout"])},
        "action": {**copy.deepcopy(INTERFACE["action"]), "dim": 4, "joint_names": list(PANDA_JOINTS)},
        "control_rate_hz": 10.0,
    }


def joint_state(names=PANDA_JOINTS, stamp=NOW, **overrides) -> JointStateSample:
    """A joint state whose values encode the joint: position = index + 0.1, effort = -(index + 1)."""
    base = {name: i for i, name in enumerate(PANDA_JOINTS)}
    fields = {
        "position": [base[n] + 0.1 for n in names],
        "velocity": [0.0 for _ in names],
        "effort": [-(base[n] + 1.0) for n in names],
        **overrides,
    }
    return JointStateSample.create(names, stamp_s=stamp, **fields)


def poses(stamp=NOW) -> dict[str, PoseSample]:
    return {
        "ee_pose": PoseSample.create([0.4, 0.0, 0.3], [1, 0, 0, 0], stamp),
        "object_pose": PoseSample.create([0.5, 0.1, 0.02], [0, 0, 0, 1], stamp),
    }


def inputs(stamp=NOW, **joint_overrides) -> RobotInputs:
    return RobotInputs(joint_state(stamp=stamp, **joint_overrides), poses(stamp))


class RecordingLog:
    """A logger that keeps ``(level, message)`` pairs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))


# ======================================================================== the pieces of a tick


@pytest.fixture
def assembler() -> ObservationAssembler:
    return ObservationAssembler.from_manifest(grasp_manifest(), max_obs_age_s=0.5)


def test_observation_follows_layout(assembler):
    obs = assembler.assemble(NOW, joint_state(), poses())
    assert obs.dtype == np.float32 and obs.shape == (10,) == (assembler.obs_dim,)
    np.testing.assert_allclose(obs[:3], [0.4, 0.0, 0.3])
    np.testing.assert_allclose(obs[3:6], [0.5, 0.1, 0.02], rtol=1e-6)
    np.testing.assert_allclose(obs[6:8], [7.1, 8.1], rtol=1e-6)  # finger positions, mapped by name
    np.testing.assert_allclose(obs[8:10], [-8.0, -9.0])
    assert assembler.required_joints == FINGERS
    assert assembler.pose_sources == ("ee_pose", "object_pose")
    assert assembler.stamp_s == NOW


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


def test_a_value_outside_the_manifests_bounds_holds_naming_the_joint_and_the_range():
    manifest = grasp_manifest()
    low, high = [-100.0] * 10, [100.0] * 10
    manifest["observation"]["bounds"] = {"low": low, "high": high}
    contract = RobotContract.from_manifest(manifest)
    assert contract.observation_bounds == (tuple(low), tuple(high))
    assembler = ObservationAssembler(contract.observation, 1.0, contract.observation_bounds)
    assert isinstance(assembler.assemble(NOW, joint_state(), poses()), np.ndarray)
    position = list(joint_state().position)
    position[PANDA_JOINTS.index("panda_finger_joint2")] = 1e30
    hold = assembler.assemble(NOW, joint_state(position=position), poses())
    assert isinstance(hold, Hold) and hold.kind is HoldKind.IMPLAUSIBLE
    assert hold.detail.startswith("joint_states.position of panda_finger_joint2 is 1e+30, outside the plausible range [-100, 100]")
    assert diagnostic_level(hold, None, 0.01, 0.1)[0] == LEVEL_ERROR
    far = poses()
    far["object_pose"] = PoseSample.create([0.5, -250.0, 0.02], [0, 0, 0, 1], NOW)
    hold = assembler.assemble(NOW, joint_state(), far)
    assert hold.kind is HoldKind.IMPLAUSIBLE and hold.detail.startswith("object_pose.position[1] is -250")
    manifest["observation"]["bounds"] = {"low": high, "high": low}
    with pytest.raises(ValueError, match="low < high"):
        RobotContract.from_manifest(manifest)


def test_wrong_sizes_hold(assembler):
    hold = assembler.assemble(NOW, joint_state(effort=[1.0, 2.0]), poses())
    assert hold.kind is HoldKind.BAD_SIZE and "effort" in hold.detail
    duplicated = joint_state(list(PANDA_JOINTS[:-1]) + ["panda_finger_joint1"])
    assert assembler.assemble(NOW, duplicated, poses()).kind is HoldKind.BAD_SIZE
    short_pose = {**poses(), "ee_pose": PoseSample.create([0.4, 0.0], [0, 0, 0, 1], NOW)}
    assert assembler.assemble(NOW, joint_state(), short_pose).kind is HoldKind.BAD_SIZE


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
    js = joint_state()
    ahead = JointStateSample.create(PANDA_JOINTS, js.position, js.velocity, js.effort,
                                    stamp_s=NOW + 0.3 - 0.7, received_s=NOW - 0.7)
    hold = assembler.assemble(NOW, ahead, poses())
    assert hold.kind is HoldKind.STALE and "received" in hold.detail, hold
    arrived = JointStateSample.create(PANDA_JOINTS, js.position, js.velocity, js.effort,
                                      stamp_s=NOW + 0.3, received_s=NOW)
    assert isinstance(assembler.assemble(NOW, arrived, poses()), np.ndarray)


def test_missing_input_holds(assembler):
    assert assembler.assemble(NOW, None, poses()).kind is HoldKind.NO_DATA
    assert assembler.assemble(NOW, joint_state(), {"ee_pose": poses()["ee_pose"]}).kind is HoldKind.NO_DATA


def test_twist_and_yaw_inputs_are_checked_like_poses():
    from metarl_robot.contract import ObservationLayout, TwistSample

    layout = ObservationLayout.parse([
        {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
        {"name": "ee_velocity", "source": "ee_twist", "field": "linear", "size": 3},
        {"name": "object_yaw", "source": "object_pose", "field": "yaw_sin_cos", "size": 2},
    ])
    reach = ObservationAssembler(layout, max_obs_age_s=0.5)
    assert reach.twist_sources == ("ee_twist",)
    assert reach.assemble(NOW, None, poses(), {}).kind is HoldKind.NO_DATA
    twist = TwistSample.create([0.1, 0.0, -0.1], [0.0, 0.0, 0.0], NOW - 0.01)
    obs = reach.assemble(NOW, None, poses(), {"ee_twist": twist})
    np.testing.assert_array_equal(obs, np.float32([0.4, 0.0, 0.3, 0.1, 0.0, -0.1, 0.0, 1.0]))
    assert reach.stamp_s == NOW
    old = TwistSample.create([0.1, 0.0, -0.1], [0.0, 0.0, 0.0], NOW - 1.0)
    assert reach.assemble(NOW, None, poses(), {"ee_twist": old}).kind is HoldKind.STALE
    short = TwistSample.create([0.1, 0.0], [0.0, 0.0, 0.0], NOW)
    assert reach.assemble(NOW, None, poses(), {"ee_twist": short}).kind is HoldKind.BAD_SIZE
    spinning = {**poses(), "object_pose": PoseSample.create([0, 0, 0], [0, 0, np.nan, 1], NOW)}
    hold = reach.assemble(NOW, None, spinning, {"ee_twist": twist})
    assert hold.kind is HoldKind.NON_FINITE and "yaw_sin_cos" in hold.detail


def test_layout_errors_name_the_entry():
    from metarl_robot.contract import LayoutError

    manifest = grasp_manifest()
    manifest["observation"]["layout"][2]["size"] = 3
    with pytest.raises(LayoutError, match="finger_position"):
        ObservationAssembler.from_manifest(manifest, 0.5)
    manifest = grasp_manifest()
    manifest["observation"]["layout"][0]["field"] = "twist"
    with pytest.raises(LayoutError, match="ee_position"):
        ObservationAssembler.from_manifest(manifest, 0.5)


# (The joint contract check and the action block's validation are tested in tests/test_contract.py.)


@pytest.fixture
def spec() -> ActionSpec:
    return ActionSpec.from_manifest(grasp_manifest()["action"])


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
    with pytest.raises(ValueError, match="max_grip_force_n"):
        SafetyLimits(max_grip_force_n=float("nan"))


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


def test_gradient_cadence_adapts_when_its_episodes_are_complete():
    schedule = AdaptationSchedule("episodes", every_n_steps=5, episodes_per_step=3)
    assert [schedule.at_episode_end(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert not AdaptationSchedule("step", 0).at_episode_end()
    assert not schedule.after_step(100)
    assert not schedule.at_episode_end(2) and schedule.at_episode_end(3)


def test_diagnostic_levels():
    assert diagnostic_level(None, None, 0.1, 0.1)[0] == LEVEL_OK
    for fault in (HoldKind.STALE, HoldKind.NON_FINITE, HoldKind.BAD_SIZE, HoldKind.MISSING_JOINT):
        assert diagnostic_level(Hold(fault, "x"), None, 0.1, 0.1)[0] == LEVEL_ERROR
    assert diagnostic_level(Hold(HoldKind.NO_DATA, "x"), None, 0.1, 0.1)[0] == LEVEL_WARN
    level, message = diagnostic_level(Hold(HoldKind.JOINT_CONTRACT, "missing ['j1']"), None, 0.1, 0.1)
    assert level == LEVEL_ERROR and "j1" in message
    assert diagnostic_level(None, "reload failed", 0.1, 0.1)[0] == LEVEL_WARN
    assert diagnostic_level(None, None, 0.2, 0.1)[0] == LEVEL_WARN


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_obs_age_s"):
        LoopSettings(max_obs_age_s=0.0)
    with pytest.raises(ValueError, match="adapt_every_n_steps"):
        LoopSettings(adapt_every_n_steps=-1)


# ============================================================================= tick by tick


@pytest.fixture
def log() -> RecordingLog:
    return RecordingLog()


@pytest.fixture
def loop(bundle_dir, log) -> RobotLoop:
    """The context grasp bundle of conftest.py in a loop, started."""
    loop = RobotLoop.load(bundle_dir, ["cpu"], LoopSettings(), logger=log)
    loop.start()
    return loop


def expected_command(loop: RobotLoop, robot: RobotInputs) -> np.ndarray:
    """What the policy asks for on ``robot``'s inputs, clipped to the bundle's bounds."""
    obs = loop.contract.observation.assemble_inputs(robot)
    action = loop.contract.action
    return np.clip(loop.controller.act(obs).astype(np.float64), action.low, action.high)


def test_load_reads_the_contract_and_reward_topic(loop, bundle_dir):
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    assert loop.contract == RobotContract.from_manifest(manifest)
    assert loop.control_rate_hz == 10.0 and loop.reward_topic == "reward"
    assert loop.execution_provider == "CPUExecutionProvider" and loop.bundle_path == str(bundle_dir)
    assert RobotLoop.load(bundle_dir, ["cpu"], control_rate_hz=50.0).control_period_s == pytest.approx(0.02)


def test_tick_is_idle_until_started_then_holds_until_data_arrives(bundle_dir, log):
    loop = RobotLoop.load(bundle_dir, ["cpu"], logger=log)
    assert loop.tick(NOW, inputs()) is None and loop.stats.ticks == 1
    level, message, values = loop.status()
    assert level == LEVEL_OK and message == "inactive: not commanding" and values["hold_reason"] == ""
    loop.start()
    held = loop.tick(NOW, RobotInputs())
    assert held.hold.kind is HoldKind.NO_DATA and held.known.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(held.values[:3], 0.0)
    level, message, values = loop.status()
    assert level == LEVEL_WARN and message.startswith("holding: no_data") and values["hold_ticks"] == "1"
    assert log.lines == [("warning", f"holding: {held.hold}")]


def test_tick_sends_the_clamped_policy_command_stamped_with_its_newest_input(loop):
    robot = RobotInputs(joint_state(stamp=NOW - 0.2), {**poses(NOW - 0.1), "ee_pose": poses(NOW - 0.05)["ee_pose"]})
    sent = []
    command = loop.tick(NOW, robot, sent.append)
    assert sent == [command] and command.hold is None and command.known.all()
    np.testing.assert_array_equal(command.values, expected_command(loop, robot))
    assert command.stamp_s == NOW - 0.05
    values = loop.status()[2]
    assert float(values["inference_latency_p50_ms"]) > 0 and values["control_ticks"] == "1"
    assert values["adaptation_family"] == "context" and values["buffer_len"] == "0"


def test_stale_and_non_finite_inputs_hold_and_commanding_resumes(loop, log):
    loop.tick(NOW, inputs())
    held = loop.tick(NOW + 1.0, inputs())  # the same samples, a second later
    assert held.hold.kind is HoldKind.STALE and loop.status()[0] == LEVEL_ERROR
    np.testing.assert_array_equal(held.values[:3], 0.0)
    effort = list(joint_state().effort)
    effort[-1] = np.inf
    non_finite = loop.tick(NOW + 1.0, inputs(NOW + 1.0, effort=effort)).hold
    assert non_finite.kind is HoldKind.NON_FINITE and "panda_finger_joint2" in non_finite.detail
    resumed = loop.tick(NOW + 1.1, inputs(NOW + 1.1))
    assert resumed.hold is None and loop.hold is None and loop.status()[:2] == (LEVEL_OK, "running")
    assert log.lines == [("warning", f"holding: {held.hold}"), ("warning", f"holding: {non_finite}"),
                         ("info", f"resuming after hold ({non_finite})")]
    assert loop.stats.holds == 2


def test_deployer_limits_and_rate_limits_apply_to_ticks(loop):
    loop.apply_settings(LoopSettings(limits=SafetyLimits(max_ee_velocity_step_mps=0.01, max_grip_force_n=5.0)))
    first = loop.tick(NOW, inputs())
    assert np.linalg.norm(first.values[:3]) <= 0.01 + 1e-12 and abs(first.values[3]) <= 5.0
    second = loop.tick(NOW + 0.1, inputs(NOW + 0.1))
    assert np.linalg.norm(second.values[:3] - first.values[:3]) <= 0.01 + 1e-12
    held = loop.tick(NOW + 5.0, inputs(NOW + 0.1))
    assert held.hold.kind is HoldKind.STALE and held.values[3] == second.values[3]  # the grip is kept


def test_policy_error_holds(loop, monkeypatch):
    def broken(obs):
        raise ValueError("policy graph returned a non-finite command")

    monkeypatch.setattr(loop.controller, "act", broken)
    held = loop.tick(NOW, inputs())
    assert held.hold.kind is HoldKind.POLICY_ERROR and "non-finite" in held.hold.detail


def test_joint_contract_breach_holds_until_a_new_loop(bundle_dir, log):
    loop = RobotLoop.load(bundle_dir, ["cpu"], logger=log)
    arm_only = [j for j in PANDA_JOINTS if "finger" not in j]
    problem = loop.check_joints(arm_only)
    assert "panda_finger_joint1" in problem and loop.joints_checked
    level, message, values = loop.status()  # reported while inactive too
    assert level == LEVEL_ERROR and "joint_contract" in message and "panda_finger_joint2" in values["hold_reason"]
    loop.start()
    assert loop.tick(NOW, inputs()).hold.kind is HoldKind.JOINT_CONTRACT
    assert log.lines[0][0] == "error"


def test_transitions_reach_the_controller_and_an_episode_end_adapts(loop):
    for k in range(3):
        loop.tick(NOW + 0.1 * k, inputs(NOW + 0.1 * k))
        loop.add_reward(1.0)
    assert loop.status()[2]["buffer_len"] == "2"  # the third closes at the next tick
    loop.end_episode(True, NOW + 0.25, inputs(NOW + 0.25))
    adapted_at_send = []
    loop.tick(NOW + 0.3, inputs(NOW + 0.3), lambda command: adapted_at_send.append(loop.adaptation_steps))
    assert adapted_at_send == [0], "the adaptation step must run after the command is sent"
    values = loop.status()[2]
    assert values["buffer_len"] == "3" and values["adaptation_steps"] == "1" == values["adaptations_since_reset"]
    assert values["episodes"] == "1" == values["episode_successes"] and values["rewards_missing"] == "0"
    assert float(values["adapt_latency_p99_ms"]) > 0
    assert loop.reset_adaptation() == 1
    values = loop.status()[2]
    assert values["buffer_len"] == "0" and values["adaptations_since_reset"] == "0" and values["adaptation_steps"] == "1"


def test_adapt_every_n_steps_and_frozen_adaptation(loop):
    loop.apply_settings(LoopSettings(adapt_every_n_steps=2))
    for k in range(5):
        loop.tick(NOW + 0.1 * k, inputs(NOW + 0.1 * k))
    assert loop.adaptation_steps == 2  # transitions closed at ticks 2..5: adapted after the 2nd and 4th
    loop.apply_settings(LoopSettings(adapt_every_n_steps=2, adaptation_enabled=False))
    for k in range(5, 10):
        loop.tick(NOW + 0.1 * k, inputs(NOW + 0.1 * k))
    loop.end_episode(False, NOW + 1.0, inputs(NOW + 1.0))
    loop.tick(NOW + 1.0, inputs(NOW + 1.0))
    values = loop.status()[2]
    assert loop.adaptation_steps == 2 and values["adaptation_enabled"] == "false" and values["buffer_len"] == "4"


def test_a_hold_drops_the_open_transition(loop):
    loop.tick(NOW, inputs())
    loop.add_reward(1.0)
    loop.tick(NOW + 5.0, inputs())  # stale: no next observation, the transition did not happen
    loop.tick(NOW + 5.0, inputs(NOW + 5.0))
    assert loop.status()[2]["buffer_len"] == "0"


def test_stop_sends_one_hold_and_start_resumes(loop):
    first = loop.tick(NOW, inputs())
    stopped = loop.stop("deactivated")
    assert stopped.hold.kind is HoldKind.INACTIVE and stopped.values[3] == first.values[3]
    assert loop.stop("again") is None and loop.tick(NOW, inputs()) is None
    loop.start()
    assert loop.tick(NOW, inputs()).hold is None


def test_a_reloaded_loop_continues_the_rate_limits_and_counters(bundle_dir, loop):
    limits = LoopSettings(limits=SafetyLimits(max_ee_velocity_step_mps=0.01))
    loop.apply_settings(limits)
    loop.tick(NOW, inputs())
    last = loop.tick(NOW + 0.1, inputs(NOW + 0.1))
    new = RobotLoop.load(bundle_dir, ["cpu"], limits, stats=loop.stats)
    assert loop.interface_differs(new) is None
    new.resume_from(loop)
    command = new.tick(NOW + 0.2, inputs(NOW + 0.2))
    assert np.linalg.norm(command.values[:3] - last.values[:3]) <= 0.01 + 1e-12
    assert new.status()[2]["control_ticks"] == "3" and new.active

    joint_action = {"mode": "joint_velocity", "names": ["j1", "j2", "j3", "grip_force"], "low": [-1, -1, -1, 0],
                    "high": [1, 1, 1, 5], "joint_names": ["panda_joint1", "panda_joint2", "panda_joint3"]}
    other = RobotContract(loop.contract.observation, ActionSpec.from_manifest(joint_action), 10.0)
    assert "action mode" in loop.interface_differs(RobotLoop(loop.controller, other))
    assert "reward topic" in loop.interface_differs(RobotLoop(loop.controller, loop.contract, reward_topic="r2"))


def test_joint_position_first_command_starts_from_the_measured_joints(bundle_dir):
    joints = ["panda_joint1", "panda_joint2", "panda_joint3", "panda_joint4"]
    action = {"mode": "joint_position", "names": joints, "low": [-5] * 4, "high": [5] * 4, "joint_names": joints}
    base = RobotLoop.load(bundle_dir, ["cpu"])
    contract = RobotContract(base.contract.observation, ActionSpec.from_manifest(action), 10.0)
    loop = RobotLoop(base.controller, contract, LoopSettings(limits=SafetyLimits(max_joint_speed=0.5)))
    assert contract.observed_joints == (*FINGERS, *joints)
    loop.start()
    command = loop.tick(NOW, inputs())
    measured = np.array([0.1, 1.1, 2.1, 3.1])  # joint_state(): position = index + 0.1
    assert np.all(np.abs(command.values - measured) <= 0.05 + 1e-12)


def test_position_delta_commands_become_targets_from_the_measured_joints(bundle_dir):
    """A displacement bundle: the robot is sent measured position + displacement; a hold is a zero
    displacement (stay where the joints are); without a joint state nothing is sent."""
    joints = ["panda_joint1", "panda_joint2", "panda_joint3", "panda_joint4"]
    action = {"mode": "position_delta", "names": joints, "low": [-0.05] * 4, "high": [0.05] * 4, "joint_names": joints}
    base = RobotLoop.load(bundle_dir, ["cpu"])
    contract = RobotContract(base.contract.observation, ActionSpec.from_manifest(action), 10.0)
    loop = RobotLoop(base.controller, contract, LoopSettings())
    loop.start()
    measured = np.array([0.1, 1.1, 2.1, 3.1])  # joint_state(): position = index + 0.1
    command = loop.tick(NOW, inputs())
    assert command.hold is None and command.known[:4].all()
    assert np.all(np.abs(command.values[:4] - measured) <= 0.05 + 1e-12)
    assert np.any(np.abs(command.values[:4] - measured) > 1e-6), "the policy's displacement is applied"
    held = loop.tick(NOW + 5.0, inputs(stamp=NOW + 5.0 - 10.0))  # stale inputs: hold
    assert held.hold is not None and held.hold.kind is HoldKind.STALE
    np.testing.assert_allclose(held.values[:4], measured)


def test_gradient_bundle_adapts_once_its_episodes_are_complete_and_explores_only_while_learning(tmp_path_factory):
    bundle = exported_gradient_bundle(tmp_path_factory, "maml")
    manifest = json.loads((bundle / "manifest.json").read_text())
    episodes_per_step = manifest["adaptation"]["episodes_per_step"]
    loop = RobotLoop.load(bundle, ["cpu"])
    loop.start()
    t = NOW
    for episode in range(episodes_per_step):
        for _ in range(3):
            loop.tick(t, inputs(t))
            loop.add_reward(0.5)
            t += 0.1
        loop.end_episode(False, t, inputs(t))
        assert loop.adaptation_steps == 0
        loop.tick(t, inputs(t))
        t += 0.1
    values = loop.status()[2]
    assert loop.adaptation_steps == 1 and values["adaptation_family"] == "gradient"
    assert values["episodes_per_step"] == str(episodes_per_step) and values["episodes_ready"] == "0"
    robot = inputs(t)
    exploring = [loop.tick(t, robot).values for _ in range(2)]
    assert not np.array_equal(*exploring), "a learning gradient controller explores"
    loop.apply_settings(LoopSettings(adaptation_enabled=False))
    frozen = [loop.tick(t, robot).values for _ in range(2)]
    np.testing.assert_array_equal(*frozen)


def test_stats_outlive_a_loop(bundle_dir):
    stats = LoopStats()
    first = RobotLoop.load(bundle_dir, ["cpu"], stats=stats)
    first.start()
    first.tick(NOW, inputs())
    first.end_episode(True, NOW, inputs())
    second = RobotLoop.load(bundle_dir, ["cpu"], stats=stats)
    values = second.status()[2]
    assert values["control_ticks"] == "1" and values["episodes"] == "1" and values["adaptation_steps"] == "0"


def test_the_loop_runs_with_torch_and_ros_blocked(bundle_dir):
    code = (
        "import sys\n"
        "for name in ('torch', 'rclpy', 'pybullet', 'sim', 'ros_nodes'):\n"
        "    sys.modules[name] = None\n"
        "from metarl_robot.contract import JointStateSample, PoseSample, RobotInputs\n"
        "from metarl_robot.runtime import RobotLoop\n"
        "loop = RobotLoop.load(sys.argv[1], ['cpu'])\n"
        "loop.start()\n"
        "names = ['panda_finger_joint1', 'panda_finger_joint2']\n"
        "robot = RobotInputs(JointStateSample.create(names, [0.01, 0.01], [], [0, 0], 5.0),\n"
        "                    {s: PoseSample.create([0.5, 0, 0.1], [0, 0, 0, 1], 5.0) for s in ('ee_pose', 'object_pose')})\n"
        "command = loop.tick(5.0, robot)\n"
        "assert command.hold is None, command.hold\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code, str(bundle_dir)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_trusted_keys_refuse_an_unsigned_bundle_and_load_a_signed_one(bundle_copy, tmp_path):
    from metarl_robot.runtime import BundleError, load_bundle
    from metarl_robot.runtime.integrity import generate_key_pair, sign_bundle

    private, public = generate_key_pair(tmp_path / "keys")
    with pytest.raises(BundleError, match="not signed"):
        RobotLoop.load(bundle_copy, ["cpu"], trusted_keys=[str(public)])
    sign_bundle(load_bundle(bundle_copy), private)
    assert RobotLoop.load(bundle_copy, ["cpu"], trusted_keys=[str(public)]).contract.action.dim == 4


class _OrderController:
    """Logs the order of act() and observe() calls; a constant command."""

    def __init__(self, obs_dim: int, act_dim: int, may_follow: bool, log: list) -> None:
        self.obs_dim, self.act_dim, self.log = obs_dim, act_dim, log
        self.observe_may_follow_act = may_follow
        self.episodes_ready = 0

    def act(self, obs):
        self.log.append("act")
        return np.zeros(self.act_dim, np.float32)

    def observe(self, *transition) -> None:
        self.log.append("observe")

    def adapt(self):
        return None

    def schedule(self, every_n_steps: int = 0) -> AdaptationSchedule:
        return AdaptationSchedule("episode", every_n_steps, 1)

    def set_learning(self, enabled: bool) -> None:
        pass

    def reset(self, seed=None) -> None:
        pass

    def status(self) -> dict:
        return {}


@pytest.mark.parametrize("may_follow", [False, True])
def test_a_transition_is_recorded_before_act_unless_the_controller_allows_after_the_send(may_follow):
    """A recurrent memory reads the last transition in its next act(), so it is recorded first; a
    controller that only stores transitions lets the loop record them after the command is out."""
    contract = RobotContract.from_manifest(grasp_manifest())
    log: list = []
    loop = RobotLoop(_OrderController(10, 4, may_follow, log), contract, LoopSettings())
    loop.start()
    loop.tick(NOW, inputs(), lambda command: log.append("send"))
    log.clear()
    loop.tick(NOW + 0.1, inputs(stamp=NOW + 0.1), lambda command: log.append("send"))
    assert log == (["act", "send", "observe"] if may_follow else ["observe", "act", "send"])
