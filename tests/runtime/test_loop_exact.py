"""The control loop's exact answers: the diagnostics' keys and formats, what ``RobotLoop.load`` reads
from the manifest, constructor checks, each rate limit in both directions and at its boundary, and the
holds' kinds and messages. Written from the survivors of a mutation run over ``runtime/loop.py``
(docs/testing.md): each test pins a value the ROS node and the robot rely on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.contract import ActionSpec, LayoutError, RobotContract, RobotInputs
from metarl_robot.runtime import BundleError, ProviderError
from metarl_robot.runtime.integrity import write_manifest
from metarl_robot.runtime.loop import (
    LEVEL_OK,
    CommandFilter,
    HoldKind,
    LoopSettings,
    ObservationAssembler,
    RobotLoop,
    SafetyLimits,
)

from .gradient_fixtures import exported_gradient_bundle
from .test_loop import NOW, _joint_spec, _OrderController, grasp_manifest, inputs, joint_state, poses

STATUS_KEYS = [
    "bundle_path", "execution_provider", "control_rate_hz", "inference_latency_p50_ms", "inference_latency_p99_ms",
    "step_latency_p50_ms", "step_latency_p99_ms", "loop_period_p50_ms", "loop_period_p99_ms", "adapt_latency_p99_ms",
    "adaptation_enabled", "adaptation_steps", "adaptations_since_reset", "adaptation_family", "buffer_len", "guard", "episodes",
    "episode_successes", "control_ticks", "hold_ticks", "rewards_missing", "hold_reason", "last_error",
]
"""The diagnostics every deployment dashboard reads (docs/ros.md), in the order they are published."""


def _edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest.pop("digest")
    write_manifest(path, manifest)


def test_a_loaded_loop_reports_every_diagnostic_key_in_order(bundle_dir):
    loop = RobotLoop.load(bundle_dir, ["cpu"], control_rate_hz=12.5)
    level, message, values = loop.status()
    assert (level, message) == (LEVEL_OK, "inactive: not commanding")
    assert list(values) == STATUS_KEYS
    assert values["bundle_path"] == str(bundle_dir) and values["execution_provider"] == "CPUExecutionProvider"
    assert values["control_rate_hz"] == "12.5"
    assert all(values[k] == "nan" for k in STATUS_KEYS[3:10])
    assert [values[k] for k in ("adaptation_enabled", "adaptation_steps", "adaptations_since_reset", "episodes",
                                "episode_successes", "control_ticks", "hold_ticks", "rewards_missing")] == \
        ["true", "0", "0", "0", "0", "0", "0", "0"]
    assert (values["hold_reason"], values["last_error"]) == ("", "")
    assert values["guard"] == "off"  # the test bundle declares no guard and no guard_max_drop is set
    assert loop.active is False and loop.joints_checked is False and loop.last_error is None


def test_latencies_are_reported_in_milliseconds_with_three_decimals(bundle_dir):
    loop = RobotLoop.load(bundle_dir, ["cpu"])
    loop.start()
    for k in range(3):
        loop.tick(NOW + 0.1 * k, inputs(NOW + 0.1 * k))
    values = loop.status()[2]
    for key in STATUS_KEYS[3:9]:
        assert values[key] != "nan" and float(values[key]) > 0 and len(values[key].split(".")[1]) == 3, key
    p50 = loop.stats.loop_period.p50_s
    assert values["loop_period_p50_ms"] == f"{p50 * 1e3:.3f}" and 0 < p50 < 60
    assert 0 < loop.stats.step_latency.p50_s < 60 and loop.stats.last_tick_s > 0
    assert values["control_ticks"] == "3" and loop.status()[:2] == (LEVEL_OK, "running")


def test_a_stopped_loop_reports_the_contract_hold_not_the_last_tick(bundle_dir):
    loop = RobotLoop.load(bundle_dir, ["cpu"])
    loop.start()
    held = loop.tick(NOW, RobotInputs())
    loop.stop("test")
    level, message, values = loop.status()
    assert held.hold is not None and values["hold_reason"] == "" and (level, message) == (LEVEL_OK, "inactive: not commanding")


def test_a_failed_reload_is_reported_while_running(bundle_dir):
    loop = RobotLoop.load(bundle_dir, ["cpu"])
    loop.start()
    loop.tick(NOW, inputs())
    loop.last_error = "reload rejected: x"
    assert loop.status()[1] == "reload rejected: x" and loop.status()[2]["last_error"] == "reload rejected: x"


def test_load_refuses_an_empty_path_with_the_fix():
    with pytest.raises(BundleError) as err:
        RobotLoop.load("", ["cpu"])
    assert str(err.value) == "bundle_path is empty; set it to an exported bundle directory"


def test_load_passes_the_providers_and_the_seed_on(tmp_path_factory):
    bundle_dir = exported_gradient_bundle(tmp_path_factory, "maml")  # a family that explores on the robot
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        RobotLoop.load(bundle_dir, ["cuda"])
    obs = np.linspace(-1, 1, 10).astype(np.float32)
    a = RobotLoop.load(bundle_dir, ["cpu"], seed=3).controller.act(obs)
    b = RobotLoop.load(bundle_dir, ["cpu"], seed=3).controller.act(obs)
    c = RobotLoop.load(bundle_dir, ["cpu"], seed=4).controller.act(obs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_load_reads_the_reward_topic_and_refuses_other_reward_sources(bundle_copy):
    _edit_manifest(bundle_copy, lambda m: m["adaptation"]["reward_source"].update(topic="grasp/reward"))
    assert RobotLoop.load(bundle_copy, ["cpu"]).reward_topic == "grasp/reward"
    _edit_manifest(bundle_copy, lambda m: m["adaptation"]["reward_source"].pop("topic"))
    assert RobotLoop.load(bundle_copy, ["cpu"]).reward_topic == "reward"
    _edit_manifest(bundle_copy, lambda m: m["adaptation"].update(reward_source={"type": "simulator"}))
    with pytest.raises(LayoutError) as err:
        RobotLoop.load(bundle_copy, ["cpu"])
    assert str(err.value) == ("adaptation.reward_source.type 'simulator' is not supported; the control loop reads "
                              "rewards from a topic")


def test_a_loop_built_by_hand_has_plain_defaults_and_checks_its_rate(bundle_dir):
    base = RobotLoop.load(bundle_dir, ["cpu"])
    loop = RobotLoop(base.controller, base.contract)
    assert (loop.reward_topic, loop.bundle_path, loop.execution_provider) == ("reward", "", "")
    assert RobotLoop(base.controller, base.contract, control_rate_hz=0.5).control_period_s == 2.0
    for bad in (-1.0, math.inf):
        with pytest.raises(ValueError) as err:
            RobotLoop(base.controller, base.contract, control_rate_hz=bad)
        assert str(err.value) == f"control_rate_hz must be finite and > 0, got {bad}"


def test_a_contract_the_policy_cannot_serve_is_refused_with_both_sizes(bundle_dir):
    base = RobotLoop.load(bundle_dir, ["cpu"])
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    wider = json.loads(json.dumps(manifest))
    wider["observation"]["layout"].append({"name": "extra", "source": "ee_pose", "field": "position", "size": 3})
    wider["observation"]["dim"] += 3
    wider["observation"].pop("bounds", None)
    wider["observation"].pop("normalization", None)
    with pytest.raises(LayoutError) as err:
        RobotLoop(base.controller, RobotContract.from_manifest(wider))
    assert str(err.value) == "observation layout has 13 values, the policy takes 10"


def test_the_loop_holds_on_an_observation_outside_the_manifest_bounds(bundle_dir):
    loop = RobotLoop.load(bundle_dir, ["cpu"])
    loop.start()
    far = {**poses(), "ee_pose": type(poses()["ee_pose"]).create([40.0, 0.0, 0.3], [1, 0, 0, 0], NOW)}
    held = loop.tick(NOW, RobotInputs(joint_state(), far))
    assert held.hold.kind is HoldKind.IMPLAUSIBLE and held.hold.detail.startswith("ee_pose.position[0] is 40, outside")


# ------------------------------------------------------------------------------ plausibility holds


def _assembler(low, high) -> ObservationAssembler:
    return ObservationAssembler(ObservationAssembler.from_manifest(grasp_manifest(), 0.5).layout, 0.5, (low, high))


def test_values_on_the_bounds_are_plausible_and_beyond_them_are_not():
    obs = ObservationAssembler.from_manifest(grasp_manifest(), 0.5).assemble(NOW, joint_state(), poses())
    exact = _assembler(obs.copy(), obs.copy())
    assert isinstance(exact.assemble(NOW, joint_state(), poses()), np.ndarray)
    low = obs.copy()
    low[7] = np.nextafter(obs[7], np.float32(np.inf))
    hold = _assembler(low, obs.copy()).assemble(NOW, joint_state(), poses())
    assert hold.kind is HoldKind.IMPLAUSIBLE
    assert str(hold).endswith(
        f"joint_states.position of panda_finger_joint2 is {float(obs[7]):.6g}, outside the plausible range "
        f"[{float(low[7]):.4g}, {float(obs[7]):.4g}] this policy was trained for (manifest observation.bounds); "
        "check the sensor and its units")


def test_the_fallback_holds_name_their_kind_and_reason():
    # a value past the layout's entries (no entry to blame): reached only by a vector longer than the layout
    assembler = _assembler(np.zeros(11, np.float32), np.ones(11, np.float32))
    obs = np.full(11, 0.5, np.float32)
    obs[10] = 5.0
    fallback = assembler._implausible(obs)
    assert fallback.kind is HoldKind.IMPLAUSIBLE
    assert fallback.detail == "the observation lies outside the manifest's observation.bounds"
    obs[10] = np.nan
    fallback = assembler._non_finite(obs)
    assert fallback.kind is HoldKind.NON_FINITE and fallback.detail == "the observation holds a non-finite value"


def test_a_non_finite_joint_value_names_exactly_the_bad_joints():
    assembler = ObservationAssembler.from_manifest(grasp_manifest(), 0.5)
    position = list(joint_state().position)
    position[-2] = np.nan
    hold = assembler.assemble(NOW, joint_state(position=position), poses())
    assert hold.kind is HoldKind.NON_FINITE
    assert hold.detail == "joint_states.position is not finite for ['panda_finger_joint1']"


# ------------------------------------------------------------------------------------ the filter


@pytest.fixture
def spec() -> ActionSpec:
    return ActionSpec.from_manifest(grasp_manifest()["action"])


def test_a_command_is_taken_flat_in_float64_and_stamped(spec):
    filt = CommandFilter(spec)
    command = filt.filter(np.array([[0.01, -0.02], [0.03, 5.0]], np.float32), stamp_s=12.5)
    assert command.values.dtype == np.float64 and command.values.shape == (4,)
    np.testing.assert_allclose(command.values, [0.01, -0.02, 0.03, 5.0], rtol=1e-7)
    assert command.known.dtype == bool and command.known.tolist() == [True] * 4 and command.stamp_s == 12.5
    assert command.hold is None
    with pytest.raises(ValueError, match="read-only"):
        command.known[0] = False
    assert filt._linear.dtype == np.intp and filt._joints.dtype == np.intp
    limited = CommandFilter(spec, SafetyLimits(max_grip_force_step_n=1.0)).filter([0, 0, 0, 1.0], stamp_s=3.0)
    assert limited.stamp_s == 3.0 and limited.known.tolist() == [True] * 4 and limited.hold is None


def test_limits_clip_both_bounds(spec):
    filt = CommandFilter(spec, SafetyLimits(max_grip_force_step_n=1000.0))
    np.testing.assert_allclose(filt.filter([-1.0, 1.0, -1.0, -500.0]).values, [-0.15, 0.15, -0.15, -60.0])
    np.testing.assert_allclose(filt.filter([1.0, -1.0, 1.0, 500.0]).values, [0.15, -0.15, 0.15, 60.0])


def test_the_grip_force_ramps_down_as_well_as_up(spec):
    filt = CommandFilter(spec, SafetyLimits(max_grip_force_step_n=2.0))
    assert filt.filter([0, 0, 0, 10.0]).values[3] == 10.0  # unknown before: taken as is
    assert filt.filter([0, 0, 0, 20.0]).values[3] == 12.0
    assert filt.filter([0, 0, 0, 0.0]).values[3] == 10.0
    small = CommandFilter(spec, SafetyLimits(max_grip_force_step_n=0.5))
    small.filter([0, 0, 0, 10.0])
    assert small.filter([0, 0, 0, 20.0]).values[3] == 10.5  # a step below 1 N is a limit too


def test_joint_velocity_steps_are_limited_in_both_directions():
    filt = CommandFilter(_joint_spec("joint_velocity"), SafetyLimits(max_joint_velocity_step=0.2))
    np.testing.assert_allclose(filt.filter([-1.5, 1.5]).values, [-0.2, 0.2])
    np.testing.assert_allclose(filt.filter([1.5, -1.5]).values, [0.0, 0.0])
    unlimited = CommandFilter(_joint_spec("joint_velocity"), SafetyLimits(max_ee_velocity_step_mps=0.01))
    np.testing.assert_allclose(unlimited.filter([-1.5, 1.5]).values, [-1.5, 1.5])  # no joint step limit set
    speed_only = CommandFilter(_joint_spec("joint_velocity"), SafetyLimits(max_joint_speed=0.5))
    np.testing.assert_allclose(speed_only.filter([-1.5, 1.5]).values, [-0.5, 0.5])


def test_joint_position_limits_apply_to_position_bundles_only_and_both_ways():
    filt = CommandFilter(_joint_spec("joint_position"), SafetyLimits(max_joint_speed=1.0), control_period_s=0.01)
    np.testing.assert_allclose(filt.filter([-1.0, 1.0], joint_positions=[[0.5], [0.0]]).values, [0.49, 0.01])
    np.testing.assert_allclose(filt.filter([2.0, -2.0]).values, [0.5, 0.0])
    with pytest.raises(ValueError) as err:
        CommandFilter(_joint_spec("joint_position"), SafetyLimits(max_joint_speed=1.0), 0.01).filter([1.0, 1.0])
    assert str(err.value) == "the first joint_position command needs the measured joint positions to be rate-limited"
    no_period = CommandFilter(_joint_spec("joint_position"), SafetyLimits(max_joint_speed=1.0), control_period_s=0.0)
    np.testing.assert_allclose(no_period.filter([1.0, -1.0]).values, [1.0, -1.0])
    velocity = CommandFilter(_joint_spec("joint_velocity"), SafetyLimits(max_grip_force_step_n=1.0))
    np.testing.assert_allclose(velocity.filter([1.5, -1.5]).values, [1.5, -1.5])


# ----------------------------------------------------------------- a scripted controller, tick by tick


class Scripted(_OrderController):
    """A controller whose commands are given, which keeps what it observes and may refuse it (the rest
    of the controller protocol as test_loop.py's stand-in has it)."""

    def __init__(self, obs_dim: int, commands, refuse: bool = False) -> None:
        self.obs_dim, self.act_dim = obs_dim, len(commands[0])
        self.commands, self.refuse, self.seen = list(commands), refuse, []
        self.episodes_ready = 0

    def act(self, obs):
        return np.asarray(self.commands.pop(0) if len(self.commands) > 1 else self.commands[0], np.float32)

    def observe(self, *transition) -> None:
        if self.refuse:
            raise ValueError("reward is not finite")
        self.seen.append(transition)


NAV = {
    "observation": {"dim": 2, "layout": [{"name": "position", "source": "joint_states", "field": "position",
                                          "joints": ["x", "y"], "size": 2}]},
    "action": {"mode": "position_delta", "dim": 2, "names": ["dx", "dy"], "low": [-0.1, -0.1], "high": [0.1, 0.1],
               "joint_names": ["x", "y"]},
    "control_rate_hz": 10.0,
}


def _nav_state(x, y, stamp=NOW):
    from metarl_robot.contract import JointStateSample

    return RobotInputs(JointStateSample.create(["x", "y"], position=[x, y], velocity=[0, 0], effort=[0, 0],
                                               stamp_s=stamp), {})


def test_a_position_delta_command_is_the_measured_position_plus_the_step():
    loop = RobotLoop(Scripted(2, [[0.05, -0.5]]), RobotContract.from_manifest(NAV))
    loop.start()
    command = loop.tick(NOW, _nav_state(0.3, -0.2))
    np.testing.assert_allclose(command.values, [0.35, -0.3])  # the step is clipped to 0.1 first
    assert command.known.tolist() == [True, True] and command.hold is None
    stale = loop.tick(NOW + 5.0, _nav_state(0.3, -0.2))  # a hold: stay where the joints are
    assert stale.hold.kind is HoldKind.STALE
    np.testing.assert_allclose(stale.values, [0.3, -0.2])
    assert stale.known.tolist() == [True, True]
    blind = loop.tick(NOW + 5.1, RobotInputs())  # nothing measured: nothing can be sent
    assert blind.hold.kind is HoldKind.NO_DATA and blind.known.tolist() == [False, False]


def test_a_dropped_transition_is_reported_and_logged_at_most_every_five_seconds(monkeypatch):
    from .test_loop import RecordingLog

    log = RecordingLog()
    loop = RobotLoop(Scripted(2, [[0.0, 0.0]], refuse=True), RobotContract.from_manifest(NAV), logger=log)
    clock = iter([1000.0, 1004.9, 1005.0, 1009.0])
    monkeypatch.setattr("metarl_robot.runtime.loop.time.monotonic", lambda: next(clock))
    loop.start()
    for k in range(5):
        loop.add_reward(1.0)
        loop.tick(NOW + 0.1 * k, _nav_state(0.0, 0.0, NOW + 0.1 * k))
    assert loop.last_error == "dropped a transition: reward is not finite"
    assert log.lines == [("warning", "dropped a transition: reward is not finite")] * 2  # at 1000 and 1005


def test_rewards_missing_counts_each_transition_closed_without_a_reward():
    loop = RobotLoop(Scripted(2, [[0.0, 0.0]]), RobotContract.from_manifest(NAV))
    loop.start()
    loop.tick(NOW, _nav_state(0, 0))
    for k in range(1, 4):
        loop.tick(NOW + 0.1 * k, _nav_state(0, 0, NOW + 0.1 * k))
    assert loop.stats.rewards_missing == 3
    loop.add_reward(0.5)
    loop.tick(NOW + 0.4, _nav_state(0, 0, NOW + 0.4))
    assert loop.stats.rewards_missing == 3 and loop.controller.seen[-1][2] == 0.5


def test_stopping_holds_with_the_reason_given():
    loop = RobotLoop(Scripted(2, [[0.05, 0.05]]), RobotContract.from_manifest(NAV))
    assert loop.stop("not started") is None
    loop.start()
    loop.tick(NOW, _nav_state(0, 0))
    command = loop.stop("deactivated by the lifecycle manager")
    assert command.hold.kind is HoldKind.INACTIVE and command.hold.detail == "deactivated by the lifecycle manager"
    assert loop.active is False and loop.tick(NOW + 0.1, _nav_state(0, 0, NOW + 0.1)) is None


def test_interface_changes_are_named_exactly(bundle_dir):
    base = RobotLoop.load(bundle_dir, ["cpu"])
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    gripless = json.loads(json.dumps(manifest))
    action = gripless["action"]
    action["names"][3], action["units"][3] = "ee_wz", "rad/s"
    other = RobotLoop(base.controller, RobotContract.from_manifest(gripless))
    assert base.interface_differs(other) == "the gripper dimension appears or disappears"
    moved = json.loads(json.dumps(manifest))
    moved["observation"]["layout"][1]["source"] = "target_pose"
    other = RobotLoop(base.controller, RobotContract.from_manifest(moved))
    assert base.interface_differs(other) == "pose inputs change from ('ee_pose', 'object_pose') to ('ee_pose', 'target_pose')"
    assert base.interface_differs(RobotLoop(base.controller, base.contract, reward_topic="r2")) == \
        "reward topic changes from 'reward' to 'r2'"
    assert base.interface_differs(RobotLoop(base.controller, base.contract)) is None


# ------------------------------------------------------------------------------- ages and levels


def test_an_input_exactly_max_obs_age_old_is_still_fresh_and_stale_messages_are_exact():
    assembler = ObservationAssembler.from_manifest(grasp_manifest(), 0.5)
    assert isinstance(assembler.assemble(NOW, joint_state(stamp=NOW - 0.5), poses(NOW - 0.5)), np.ndarray)
    assert isinstance(assembler.assemble(NOW, joint_state(stamp=NOW + 0.5), poses(NOW)), np.ndarray)
    assert assembler.assemble(NOW, joint_state(stamp=NOW - 0.75), poses()).detail == \
        "joint_states is 0.750 s old (max_obs_age_s=0.5)"
    assert assembler.assemble(NOW, joint_state(stamp=NOW + 0.75), poses()).detail == (
        "joint_states is stamped 0.750 s in the future: the sender's clock and this node's disagree by more than "
        "max_obs_age_s=0.5; synchronise them (chrony/PTP)")
    from metarl_robot.contract import JointStateSample

    js = joint_state()
    late = JointStateSample.create(js.names, js.position, js.velocity, js.effort, stamp_s=NOW, received_s=NOW - 0.75)
    assert assembler.assemble(NOW, late, poses()).detail == "no joint_states received for 0.750 s (max_obs_age_s=0.5)"
    on_time = JointStateSample.create(js.names, js.position, js.velocity, js.effort, stamp_s=NOW, received_s=NOW - 0.5)
    assert isinstance(assembler.assemble(NOW, on_time, poses()), np.ndarray)


def test_missing_and_malformed_inputs_name_themselves():
    assembler = ObservationAssembler.from_manifest(grasp_manifest(), 0.5)
    assert assembler.assemble(NOW, None, poses()).detail == "no joint_states received yet"
    assert assembler.assemble(NOW, joint_state(), {"ee_pose": poses()["ee_pose"]}).detail == "no object_pose received yet"
    names = [*joint_state().names[:-1], joint_state().names[0]]
    doubled = assembler.assemble(NOW, joint_state(names=names[:-1] + ["panda_joint1"]), poses())
    assert doubled.kind is HoldKind.BAD_SIZE and doubled.detail.startswith("joint_states names joints ")


def test_the_loop_period_warning_starts_above_one_and_a_half_periods():
    from metarl_robot.runtime.loop import LEVEL_WARN, _format_ms, diagnostic_level

    assert diagnostic_level(None, None, 0.15, 0.1) == (LEVEL_OK, "running")
    assert diagnostic_level(None, None, 0.1502, 0.1) == (
        LEVEL_WARN, "control loop p99 period 150.2 ms exceeds 1.5 x 100.0 ms")
    assert (_format_ms(0.0012345), _format_ms(float("nan"))) == ("1.234", "nan")


# ---------------------------------------------------------------------------------- transitions


def test_a_transition_keeps_copies_and_sums_only_finite_rewards_after_its_command():
    from metarl_robot.runtime.loop import TransitionRecorder

    rec = TransitionRecorder()
    rec.add_reward(7.0)  # nothing open
    obs, command = np.zeros(2, np.float32), np.ones(1)
    rec.open(obs, command)
    obs[0], command[0] = 5.0, 9.0  # the caller's arrays change afterwards
    rec.add_reward(0.25)
    rec.add_reward(float("nan"))
    following = np.full(2, 2.0, np.float32)
    step = rec.close(following)
    following[0] = -1.0
    t = step.transition
    assert t.obs.tolist() == [0.0, 0.0] and t.command.tolist() == [1.0] and t.next_obs.tolist() == [2.0, 2.0]
    assert t.reward == 0.25 and rec.rewards_missing == 0
    rec.open(obs, command)
    rec.add_reward(float("inf"))
    assert rec.close(following).transition.reward == 0.0 and rec.rewards_missing == 1
    rec.open(obs, command)
    rec.add_reward(1.0)
    rec.reset()
    rec.open(obs, command)
    assert rec.close(following).transition.reward == 0.0 and rec.rewards_missing == 2


def test_an_episode_end_without_an_open_transition_keeps_no_terminal_observation():
    from metarl_robot.runtime.loop import TransitionRecorder

    rec = TransitionRecorder()
    rec.end_episode(np.full(2, 3.0, np.float32))  # nothing open: nothing to end
    rec.open(np.zeros(2, np.float32), np.ones(1))
    step = rec.close(np.full(2, 4.0, np.float32))
    assert step.episode_ended and step.transition.next_obs.tolist() == [4.0, 4.0]
    terminal = np.full(2, 6.0, np.float32)
    rec.open(np.zeros(2, np.float32), np.ones(1))
    rec.end_episode(terminal)
    terminal[0] = 0.0
    assert rec.close(np.full(2, 8.0, np.float32)).transition.next_obs.tolist() == [6.0, 6.0]


# --------------------------------------------------------------------- counters, failures, clamps


class Failing(Scripted):
    """Adapts by raising, as an adapt graph that returned nothing usable does."""

    def __init__(self, *args, fail: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail, self.adapted = fail, 0

    def adapt(self):
        if self.fail:
            raise ValueError("adapt graph returned a non-finite context")
        self.adapted += 1

    def schedule(self, every_n_steps: int = 0):
        from metarl_robot.runtime import AdaptationSchedule

        return AdaptationSchedule("step", every_n_steps, 1)


def test_episode_ends_count_episodes_and_successes_and_close_on_the_latest_observation():
    loop = RobotLoop(Scripted(2, [[0.0, 0.0]]), RobotContract.from_manifest(NAV))
    loop.start()
    loop.tick(NOW, _nav_state(0.0, 0.0))
    loop.end_episode(True, NOW + 0.05, _nav_state(0.5, 0.25, NOW + 0.05))
    loop.tick(NOW + 0.1, _nav_state(9.0, 9.0, NOW + 0.1))
    loop.end_episode(False, NOW + 0.15, _nav_state(0.0, 0.0, NOW + 0.15))
    assert (loop.stats.episodes, loop.stats.successes) == (2, 1)
    obs, _, _, next_obs, done = loop.controller.seen[0]
    assert done and next_obs.tolist() == [0.5, 0.25]  # the observation when the end arrived


def test_a_failed_adaptation_is_reported_and_logged_and_a_good_one_counted():
    from .test_loop import RecordingLog

    log = RecordingLog()
    loop = RobotLoop(Failing(2, [[0.0, 0.0]]), RobotContract.from_manifest(NAV), LoopSettings(adapt_every_n_steps=2),
                     logger=log)
    loop.start()
    for k in range(4):
        loop.add_reward(1.0)
        loop.tick(NOW + 0.1 * k, _nav_state(0, 0, NOW + 0.1 * k))
    assert loop.last_error == "adaptation failed: adapt graph returned a non-finite context"
    assert log.lines == [("warning", "adaptation failed: adapt graph returned a non-finite context")]
    assert loop.adaptation_steps == 0 and loop.stats.adaptations_since_reset == 0
    loop.controller.fail = False
    for k in range(4, 8):
        loop.add_reward(1.0)
        loop.tick(NOW + 0.1 * k, _nav_state(0, 0, NOW + 0.1 * k))
    assert loop.controller.adapted == 2 and loop.stats.adaptations_since_reset == 2 and loop.adaptation_steps == 2
    assert 0 < loop.adapt_latency.p50_s < 10


def test_the_step_schedule_counts_transitions_from_zero():
    loop = RobotLoop(Failing(2, [[0.0, 0.0]], fail=False), RobotContract.from_manifest(NAV),
                     LoopSettings(adapt_every_n_steps=3))
    loop.start()
    for k in range(3):  # the first tick closes no transition: two transitions after three ticks
        loop.tick(NOW + 0.1 * k, _nav_state(0, 0, NOW + 0.1 * k))
    assert loop.controller.adapted == 0
    loop.tick(NOW + 0.3, _nav_state(0, 0, NOW + 0.3))
    assert loop.controller.adapted == 1
    assert loop.reset_adaptation() == 1 and loop.stats.adaptations_since_reset == 0
    for k in range(4, 6):
        loop.tick(NOW + 0.1 * k, _nav_state(0, 0, NOW + 0.1 * k))
    assert loop.controller.adapted == 1  # counting starts again after a reset


def test_an_inactive_loop_does_not_warn_about_its_old_loop_period(bundle_dir):
    loop = RobotLoop.load(bundle_dir, ["cpu"])
    for _ in range(5):
        loop.stats.loop_period.record(1.0)  # far beyond 1.5 control periods
    assert loop.status()[:2] == (LEVEL_OK, "inactive: not commanding")
    loop.start()
    loop.stats.last_tick_s = None
    assert loop.status()[0] != LEVEL_OK


def test_rate_limited_commands_are_clamped_again_to_new_limits(spec):
    filt = CommandFilter(spec, SafetyLimits(max_grip_force_step_n=5.0))
    filt.filter([0, 0, 0, 60.0])
    filt.set_limits(SafetyLimits(max_grip_force_step_n=5.0, max_grip_force_n=20.0))
    assert filt.filter([0, 0, 0, 60.0]).values[3] == 20.0  # 55 after the step limit, then the new cap
    low = CommandFilter(spec, SafetyLimits(max_grip_force_step_n=5.0))
    low.filter([0, 0, 0, -60.0])
    low.set_limits(SafetyLimits(max_grip_force_step_n=5.0, max_grip_force_n=20.0))
    assert low.filter([0, 0, 0, -60.0]).values[3] == -20.0


def test_a_joint_position_step_is_measured_from_the_reference_not_added_to_it():
    filt = CommandFilter(_joint_spec("joint_position"), SafetyLimits(max_joint_speed=1.0), control_period_s=0.01)
    np.testing.assert_allclose(filt.filter([0.495, 0.003], joint_positions=[0.5, 0.0]).values, [0.495, 0.003])
