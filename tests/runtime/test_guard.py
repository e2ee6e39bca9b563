"""The adaptation guard (metarl_robot.runtime.guard): an adaptation that makes the declared signal
worse is rolled back, adaptation stops after the steps meta-training validated, and the control loop
reports both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.contract import JointStateSample, RobotInputs
from metarl_robot.runtime import BundleError, GuardSettings, LoopSettings, RobotLoop, load_bundle
from metarl_robot.runtime.guard import AdaptationGuard, GuardError, GuardSpec
from metarl_robot.runtime.integrity import write_manifest
from metarl_robot.runtime.loop import LEVEL_OK, LEVEL_WARN

from .gradient_fixtures import OVERSHOOT, VARIANTS, exported_gradient_bundle, make_gradient_checkpoint

NOW = 100.0


class Box:
    """A controller's adapted state, as get_state/set_state see it."""

    def __init__(self) -> None:
        self.state = {"params": np.zeros(3, np.float32)}

    def get_state(self):
        return {k: v.copy() for k, v in self.state.items()}

    def set_state(self, state):
        self.state = {k: np.asarray(v, np.float32).copy() for k, v in state.items()}


def window(guard: AdaptationGuard, returns, success=None) -> None:
    for i, value in enumerate(returns):
        guard.add_reward(value / 2)
        guard.add_reward(value / 2)
        guard.end_episode(bool(success[i]) if success is not None else False)


def adapt(guard: AdaptationGuard, box: Box, value: float) -> bool:
    """An adaptation is due: if the guard permits it, the controller moves its parameters to ``value``."""
    if not guard.permits(box):
        return False
    box.state["params"][:] = value
    guard.adapted()
    return True


# ------------------------------------------------------------------------------------------- the guard
def test_an_adaptation_that_lowers_the_return_by_more_than_the_allowed_drop_is_rolled_back():
    guard, box = AdaptationGuard(GuardSpec("return", max_drop=1.0, validated_steps=None)), Box()
    window(guard, [-10.0, -12.0])  # the prior's window: -11
    assert adapt(guard, box, 1.0) and guard.baseline == -11.0
    window(guard, [-8.0, -6.0])  # step 1 helped: -7
    assert adapt(guard, box, 2.0) and guard.baseline == -7.0 and guard.last_score == -7.0 and guard.steps == 2
    window(guard, [-8.0, -8.5])  # step 2: -8.25, 1.25 worse than -7 (more than 1.0)
    assert not guard.permits(box)
    assert box.state["params"].tolist() == [1.0, 1.0, 1.0]  # back to step 1's parameters
    assert guard.rollbacks == 1 and guard.steps == 1 and guard.last_score == -8.25
    assert guard.stopped == guard.last_event == (
        "rolled back adaptation 2: the return per episode fell from -7 to -8.25, more than the allowed drop of 1; "
        "adaptation stops until the next task")
    window(guard, [-1.0])
    assert not guard.permits(box) and box.state["params"].tolist() == [1.0, 1.0, 1.0]  # stopped until reset
    status = guard.status()
    assert status["guard"] == "stopped" and status["guard_rollbacks"] == "1" and status["guard_steps"] == "1"
    guard.reset()
    assert guard.stopped is None and guard.steps == 0 and guard.rollbacks == 1 and guard.baseline is None
    window(guard, [-3.0])
    assert adapt(guard, box, 5.0)


def test_a_drop_within_the_allowance_keeps_the_adaptation():
    guard, box = AdaptationGuard(GuardSpec("return", max_drop=1.0)), Box()
    window(guard, [-5.0])
    assert adapt(guard, box, 1.0)
    window(guard, [-6.0])  # exactly the allowed drop: kept
    assert adapt(guard, box, 2.0) and guard.rollbacks == 0 and guard.steps == 2
    window(guard, [-7.0 - 1e-9])  # just past it
    assert not guard.permits(box) and box.state["params"].tolist() == [1.0, 1.0, 1.0]


def test_adaptation_stops_after_the_validated_steps_and_the_last_one_is_still_judged():
    guard, box = AdaptationGuard(GuardSpec("return", max_drop=0.5, validated_steps=2)), Box()
    window(guard, [0.0])
    assert adapt(guard, box, 1.0)
    window(guard, [1.0])
    assert adapt(guard, box, 2.0)
    window(guard, [0.0])  # step 2 (the last validated) lost 1.0: rolled back, not merely stopped
    assert not guard.permits(box) and box.state["params"].tolist() == [1.0, 1.0, 1.0] and guard.rollbacks == 1

    guard, box = AdaptationGuard(GuardSpec("return", max_drop=0.5, validated_steps=2)), Box()
    for k in range(2):
        window(guard, [float(k)])
        assert adapt(guard, box, float(k + 1))
    window(guard, [2.0])
    assert not guard.permits(box) and box.state["params"].tolist() == [2.0, 2.0, 2.0] and guard.rollbacks == 0
    assert guard.stopped == ("meta-training validated 2 adaptation step(s) and all have run; adaptation stops until "
                             "the next task (set adapt_beyond_validated_steps to go on)")

    guard, box = AdaptationGuard(GuardSpec("return", max_drop=0.5, validated_steps=2), beyond_validated=True), Box()
    for k in range(4):
        window(guard, [float(k)])
        assert adapt(guard, box, float(k + 1))
    assert guard.steps == 4 and guard.stopped is None


def test_the_success_signal_scores_a_window_by_its_success_rate():
    guard, box = AdaptationGuard(GuardSpec("success", max_drop=0.25)), Box()
    window(guard, [-100.0] * 4, success=[1, 1, 0, 1])  # returns are ignored: 0.75
    assert adapt(guard, box, 1.0) and guard.baseline == 0.75
    window(guard, [100.0] * 4, success=[1, 0, 0, 1])  # 0.5: a drop of 0.25 is allowed
    assert adapt(guard, box, 2.0)
    window(guard, [100.0] * 4, success=[0, 0, 0, 0])  # 0: half the episodes lost
    assert not guard.permits(box) and box.state["params"].tolist() == [1.0, 1.0, 1.0]


def test_a_window_without_an_ended_episode_adapts_unjudged():
    guard, box = AdaptationGuard(GuardSpec("return", max_drop=0.0)), Box()
    guard.add_reward(-50.0)  # no episode ended yet
    assert adapt(guard, box, 1.0) and guard.baseline is None
    window(guard, [-100.0])  # nothing to compare with: no rollback
    assert adapt(guard, box, 2.0) and guard.rollbacks == 0
    assert guard.score() is None  # permits() starts a new window


def test_without_a_spec_the_guard_permits_everything_and_says_it_is_off():
    guard, box = AdaptationGuard(None), Box()
    window(guard, [0.0])
    assert adapt(guard, box, 1.0)
    window(guard, [-1e9])
    assert adapt(guard, box, 2.0) and guard.status() == {"guard": "off"}


@pytest.mark.parametrize(
    "section, message",
    [
        ({"signal": "reward"}, "adaptation.guard.signal must be one of ['return', 'success'], got 'reward'"),
        ({"max_drop": -1.0}, "adaptation.guard.max_drop must be a finite number >= 0, got -1.0"),
        ({"max_drop": float("nan")}, "adaptation.guard.max_drop must be a finite number >= 0, got nan"),
        ({"max_drop": True}, "adaptation.guard.max_drop must be a finite number >= 0, got True"),
        ({"validated_steps": 0}, "adaptation.guard.validated_steps must be an integer >= 1 or null, got 0"),
        ({"validated_steps": 2.0}, "adaptation.guard.validated_steps must be an integer >= 1 or null, got 2.0"),
        ({"max_drops": 1.0}, "adaptation.guard has unknown keys ['max_drops']; it takes signal, max_drop, validated_steps"),
        ([1.0], "adaptation.guard must be a mapping, got list"),
    ],
)
def test_a_bad_guard_section_is_refused_by_name(section, message):
    with pytest.raises(GuardError) as err:
        GuardSpec.from_adaptation({"guard": section})
    assert str(err.value) == message


def test_the_deployer_settings_pick_the_spec_in_force():
    declared = GuardSpec("success", max_drop=0.2, validated_steps=3)
    assert GuardSettings().resolve(declared) == declared
    assert GuardSettings().resolve(None) is None
    assert GuardSettings(enabled=False).resolve(declared) is None
    assert GuardSettings(max_drop=0.5).resolve(declared) == GuardSpec("success", 0.5, 3)
    assert GuardSettings(max_drop=0.0).resolve(None) == GuardSpec("return", 0.0, None)
    with pytest.raises(GuardError, match=r"guard_max_drop must be >= 0, or -1 for the bundle's threshold; got -0.5"):
        GuardSettings(max_drop=-0.5)


# ------------------------------------------------------------------------------------------- bundles
GUARD = OVERSHOOT.guard


@pytest.fixture(scope="module")
def overshooting_bundle(tmp_path_factory) -> Path:
    """A CAVIA bundle whose inner step is ten times too long, declaring a guard."""
    return exported_gradient_bundle(tmp_path_factory, "cavia_overshoot")


def test_export_carries_the_guard_into_the_manifest_and_load_checks_it(overshooting_bundle, tmp_path):
    assert load_bundle(overshooting_bundle).adaptation["guard"] == GUARD
    copy = Path(shutil.copytree(overshooting_bundle, tmp_path / "b"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["adaptation"]["guard"]["max_drop"] = -2
    write_manifest(copy / "manifest.json", manifest)
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert str(err.value) == (f"{copy / 'manifest.json'}: adaptation.guard.max_drop must be a finite number >= 0, "
                              "got -2; re-export the bundle")


def test_export_refuses_a_bad_guard_in_the_checkpoint(tmp_path):
    from metarl_robot.export import ExportError, export_bundle

    adaptation = {**VARIANTS["cavia"].adaptation(), "guard": {"signal": "reward"}}
    checkpoint = make_gradient_checkpoint(tmp_path / "c.safetensors", "cavia", adaptation=adaptation)
    with pytest.raises(ExportError) as err:
        export_bundle(checkpoint, tmp_path / "bundle")
    assert str(err.value) == (f"checkpoint {str(checkpoint)!r}: adaptation.guard.signal must be one of "
                              "['return', 'success'], got 'reward'")


GOAL = np.array([0.3, -0.2])


def drive(loop: RobotLoop, episodes: int, steps: int = 10) -> list[float]:
    """A point mass that goes where it is commanded (position_delta: the target), rewarded with minus
    its distance to GOAL, over ``episodes`` episodes from the origin; the return of each."""
    returns, now = [], NOW + 0.0
    for _ in range(episodes):
        position, total = np.zeros(2), 0.0
        for _ in range(steps):
            state = JointStateSample.create(["x", "y"], position=position.tolist(), velocity=[0, 0], effort=[0, 0],
                                            stamp_s=now)
            command = loop.tick(now, RobotInputs(state, {}))
            assert command.hold is None, command.hold
            position = np.asarray(command.values, dtype=np.float64)
            reward = -float(np.linalg.norm(position - GOAL))
            loop.add_reward(reward)
            total += reward
            now += 0.1
        end = JointStateSample.create(["x", "y"], position=position.tolist(), velocity=[0, 0], effort=[0, 0], stamp_s=now)
        loop.end_episode(False, now, RobotInputs(end, {}))
        returns.append(total)
    return returns


def window_means(returns: list[float], size: int) -> list[float]:
    return [float(np.mean(returns[i:i + size])) for i in range(0, len(returns), size)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_loop_rolls_back_an_overshooting_adaptation_and_holds_the_better_parameters(overshooting_bundle, seed):
    """An adaptation falls due at the first tick after a window's last episode ends (the episode's last
    transition closes there), after that tick's command is out; the guard judges the adaptation before
    it as soon as the window has as many episodes as the one before it."""
    size = OVERSHOOT.episodes_per_step
    loop = RobotLoop.load(overshooting_bundle, ["cpu"], seed=seed)
    prior = loop.controller.get_state()
    loop.start()
    before = drive(loop, size)  # the prior's window
    after = drive(loop, size)  # adapted at its first tick
    assert loop.adaptation_steps == 1 and loop.guard.baseline == pytest.approx(np.mean(before))
    assert np.mean(after) < np.mean(before) - GUARD["max_drop"], (before, after)  # the step overshot
    # Judged at the end of the window's last episode (as long as the window before it): rolled back.
    assert loop.guard.rollbacks == 1
    held = drive(loop, 2 * size)
    assert loop.guard.rollbacks == 1 and loop.adaptation_steps == 1  # and no adaptation since
    state = loop.controller.get_state()
    assert all(np.array_equal(state[k], prior[k]) for k in prior)  # the prior's parameters, bit for bit
    level, message, values = loop.status()
    assert level == LEVEL_WARN and message == loop.last_error == loop.guard.last_event
    assert values["guard"] == "stopped" and values["guard_rollbacks"] == "1" and values["guard_steps"] == "0"
    assert values["guard_event"] == (
        f"rolled back adaptation 1: the return per episode fell from {np.mean(before):.4g} to {np.mean(after):.4g}, "
        "more than the allowed drop of 0.3; adaptation stops until the next task")
    # The prior acts as it did while it was measured (exploring) and nothing is recorded any more.
    assert loop.learning is False and loop.controller.explore is True
    assert np.mean(held) > np.mean(after)

    assert loop.reset_adaptation() == 1  # a new task: adapting again
    assert loop.learning is True and loop.status()[2]["guard"] == "watching"


def test_without_the_guard_the_same_bundle_keeps_getting_worse(overshooting_bundle):
    size = OVERSHOOT.episodes_per_step
    guarded = RobotLoop.load(overshooting_bundle, ["cpu"], seed=0)
    free = RobotLoop.load(overshooting_bundle, ["cpu"], LoopSettings(guard=GuardSettings(enabled=False)), seed=0)
    results = {}
    for name, loop in (("guarded", guarded), ("free", free)):
        loop.start()
        results[name] = window_means(drive(loop, 5 * size), size)
    assert results["guarded"][:2] == results["free"][:2]  # the same until the guard acts
    assert free.adaptation_steps == 4 and guarded.adaptation_steps == 1  # the fifth falls due at the next tick
    assert free.status()[0] == LEVEL_OK and free.status()[2]["guard"] == "off"
    # Unguarded, every window after the first adaptation is worse than the prior's; guarded, every
    # window after the rollback beats every one of them.
    assert max(results["free"][1:]) < results["free"][0], results
    assert max(results["free"][1:]) < min(results["guarded"][2:]), results


def test_a_window_that_only_holds_is_still_judged_at_its_episode_ends():
    """A wrecked policy can drive the robot out of its trained range, and held ticks are not recorded,
    so the controller's episodes never fill and no adaptation falls due; the guard judges at the
    episode ends the robot reports all the same."""
    from metarl_robot.contract import RobotContract

    from .test_loop_exact import NAV, Scripted

    class Adapting(Scripted):
        def __init__(self):
            super().__init__(2, [[0.0, 0.0]])
            self.state = {"params": np.zeros(1, np.float32)}
            self.manifest = {"adaptation": {"guard": {"signal": "return", "max_drop": 1.0, "validated_steps": None}}}

        def get_state(self):
            return {"params": self.state["params"].copy()}

        def set_state(self, state):
            self.state = {"params": np.asarray(state["params"], np.float32)}

    controller = Adapting()
    loop = RobotLoop(controller, RobotContract.from_manifest(NAV))
    # As permits() and adapted() leave the guard after one adaptation from a two-episode window at -1:
    loop.guard.baseline, loop.guard._baseline_episodes, loop.guard.steps = -1.0, 2, 1
    loop.guard._saved = {"params": np.full(1, 7.0, np.float32)}
    loop.start()
    for k in range(2):  # two held episodes: no inputs, so every tick holds
        loop.tick(NOW + k, RobotInputs())
        loop.add_reward(-5.0)
        loop.end_episode(False, NOW + k, RobotInputs())
    assert loop.guard.rollbacks == 1 and controller.state["params"].tolist() == [7.0]
    assert loop.last_error.startswith("rolled back adaptation 1: the return per episode fell from -1 to -5")


def test_the_guard_reports_every_key_and_counts_rollbacks_over_tasks():
    from metarl_robot.runtime.guard import allowed_drop

    assert allowed_drop(2.0, 8) == pytest.approx(3.0 * 2.0 * (2.0 / 8) ** 0.5)  # three standard errors
    assert GuardSpec.from_adaptation({"guard": {"validated_steps": 1}}) == GuardSpec("return", 0.0, 1)
    guard, box = AdaptationGuard(GuardSpec("return", max_drop=0.5, validated_steps=2)), Box()
    assert guard.status() == {
        "guard": "watching", "guard_signal": "return", "guard_max_drop": "0.5", "guard_validated_steps": "2",
        "guard_steps": "0", "guard_baseline": "", "guard_last_score": "", "guard_rollbacks": "0", "guard_event": ""}
    for task in range(2):  # a rollback on each of two tasks
        guard.reset()
        window(guard, [-1.0])
        assert adapt(guard, box, 1.0)
        window(guard, [-3.25])
        assert not guard.permits(box)
    status = guard.status()
    assert (status["guard"], status["guard_rollbacks"], status["guard_baseline"], status["guard_last_score"]) == \
        ("stopped", "2", "-1", "-3.25")
    assert status["guard_event"] == guard.last_event and guard.last_event.startswith("rolled back adaptation 1")
    assert AdaptationGuard(GuardSpec("success", 0.1, None)).status()["guard_validated_steps"] == ""
