"""The classical grip-force baselines: blind to the task, adapting in the directions they should, and run
by the one meta-test protocol like any learned controller."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

from metarl_robot.evaluation import evaluate  # noqa: E402
from metarl_robot.tasks import TaskSpec  # noqa: E402
from sim import PandaGraspEnv  # noqa: E402
from sim.grasp_baselines import (  # noqa: E402
    FixedForceController,
    ForceBisectionController,
    ForceRampController,
    SlipLawRampController,
    GripForceController,
    RampBisectionController,
)

pytestmark = pytest.mark.sim


def grasp_task(task_id: str, **params) -> TaskSpec:
    defaults = {"object_shape": "box", "object_size_m": 0.04, "object_mass_kg": 0.1, "lateral_friction": 0.8,
                "crush_force_n": 50.0}
    return TaskSpec("grasp", {**defaults, **params}, task_id)


# Holding force (docs/grasp_env.md): m (g + 1.5) / (2 mu). Heavy and slippery: 1.0 * 11.31 / 0.6 = 18.9 N.
HEAVY_SLIPPERY = grasp_task("heavy-slippery", object_shape="cylinder", object_mass_kg=1.0, lateral_friction=0.3)
# Light and fragile: holds from 0.35 N, crushed above 4 N.
FRAGILE = grasp_task("fragile", object_mass_kg=0.05, crush_force_n=4.0)
EASY = grasp_task("easy", object_mass_kg=0.2, crush_force_n=40.0)


@pytest.fixture(scope="module")
def env():
    env = PandaGraspEnv(EASY)
    yield env
    env.close()


def attempt(env, controller, task: TaskSpec, seed: int = 0) -> tuple[list[np.ndarray], dict]:
    """One attempt: the controller sees the observation, the command it sent and the reward, nothing else."""
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    env.set_task(task)
    obs, _ = env.reset(seed=seed)
    commands, done = [], False
    while not done:
        command = controller.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(command / scale)
        done = terminated or truncated
        controller.observe(obs, command, reward, next_obs, done)
        commands.append(command)
        obs = next_obs
    return commands, info


def reachable(obj, seen=None) -> list:
    """Every object reachable from ``obj`` through attributes, containers and dataclass fields."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = [obj]
    children = []
    if isinstance(obj, dict):
        children = list(obj.keys()) + list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    for child in children:
        found += reachable(child, seen)
    return found


CONTROLLERS = [
    lambda interface: FixedForceController(interface, force_n=3.0),
    lambda interface: ForceBisectionController(interface),
    lambda interface: ForceRampController(interface, start_n=1.0),
    lambda interface: RampBisectionController(interface, start_n=1.0),
    lambda interface: SlipLawRampController(interface, start_n=1.0),
]


@pytest.mark.parametrize("make", CONTROLLERS, ids=["fixed", "bisection", "ramp", "combined", "slip_law"])
def test_controllers_never_hold_the_task_and_read_the_observation_by_name(env, make) -> None:
    controller = make(env.interface)
    assert not hasattr(controller, "set_task")  # evaluate() tells the task only to controllers that have it
    commands, _ = attempt(env, controller, EASY)
    controller.adapt()
    assert not any(isinstance(o, TaskSpec) for o in reachable(controller))

    # The same attempt with the observation laid out in another order gives the same commands: the
    # controllers find each entry by its name in the layout, not by position.
    layout = list(reversed(env.interface["observation_layout"]))
    shuffled = {**env.interface, "observation_layout": layout}
    slices, start = {}, 0
    for item in env.interface["observation_layout"]:
        slices[item["name"]] = slice(start, start + item["size"])
        start += item["size"]
    order = np.concatenate([np.arange(slices[item["name"]].start, slices[item["name"]].stop) for item in layout])
    twin = make(shuffled)
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    env.set_task(EASY)
    obs, _ = env.reset(seed=0)
    for expected in commands:
        command = twin.act(obs[order])
        np.testing.assert_array_equal(command, expected)
        next_obs, reward, _, truncated, _ = env.step(command / scale)
        twin.observe(obs[order], command, reward, next_obs[order], truncated)
        obs = next_obs


def test_layout_without_the_entries_it_needs_is_refused(env) -> None:
    interface = {**env.interface, "observation_layout": env.interface["observation_layout"][:2]}
    with pytest.raises(ValueError, match="finger_position"):
        FixedForceController(interface, force_n=1.0)


def test_bisection_raises_the_force_after_a_slip_and_lowers_it_after_a_crush(env) -> None:
    controller = ForceBisectionController(env.interface, first_n=2.0)
    _, info = attempt(env, controller, HEAVY_SLIPPERY)
    assert not info["success"] and not info["crushed"]
    assert controller.attempts[-1].label == "slipped"
    controller.adapt()
    assert controller.force_n > 2.0 and controller.low_n == 2.0

    controller = ForceBisectionController(env.interface, first_n=20.0)
    _, info = attempt(env, controller, FRAGILE)
    assert info["crushed"]
    assert controller.attempts[-1].label == "crushed"  # learnt from the crush penalty in the reward
    controller.adapt()
    assert controller.force_n < 20.0 and controller.high_n == 20.0

    # Adaptation off (evaluate(adapt=False) never calls adapt): the force stays.
    controller = ForceBisectionController(env.interface, first_n=20.0)
    attempt(env, controller, FRAGILE)
    attempt(env, controller, FRAGILE, seed=1)
    assert controller.force_n == 20.0 and len(controller.attempts) == 2


def test_ramp_raises_the_force_while_the_object_slips_during_the_lift(env) -> None:
    controller = ForceRampController(env.interface, start_n=1.0)
    commands, info = attempt(env, controller, HEAVY_SLIPPERY)
    outcome = controller.attempts[-1]
    forces = np.array([c[3] for c in commands])
    assert outcome.grasped and outcome.raises >= 2
    squeezing = forces[forces > 0]
    assert squeezing[0] == pytest.approx(1.0)
    assert squeezing.max() == pytest.approx(1.0 * 1.35**outcome.raises, rel=1e-5)
    # Each raise is one step smaller than the narrowest force window of the suite (1.4x).
    steps = squeezing[1:] / squeezing[:-1]
    assert np.all(steps[steps > 1.0 + 1e-6] < 1.4)
    assert not info["crushed"]

    # EASY holds from 0.2 * 11.31 / 1.6 = 1.41 N: the ramp climbs from 1 N to just above that and lifts.
    controller = ForceRampController(env.interface, start_n=1.0)
    _, info = attempt(env, controller, EASY)
    outcome = controller.attempts[-1]
    assert info["success"] and outcome.lifted and 1 <= outcome.raises <= 3
    assert 1.41 * 0.9 <= outcome.final_force_n < 1.41 * 1.35**2


def test_slip_law_ramp_raises_towards_a_force_set_by_the_slip_one_ratio_per_step_at_most(env) -> None:
    """The memoryless ramp: while the object slips, the force climbs (never more than 1.35x per step,
    never down) towards start * 1.35 ** (slip / step); the heavy, slippery object is still lifted without
    a crush, and the easy one is lifted near its holding force."""
    controller = SlipLawRampController(env.interface, start_n=1.0)
    commands, info = attempt(env, controller, HEAVY_SLIPPERY)
    outcome = controller.attempts[-1]
    squeezing = np.array([c[3] for c in commands if c[3] > 0])
    assert outcome.grasped and outcome.raises >= 2 and squeezing[0] == pytest.approx(1.0)
    steps = squeezing[1:] / squeezing[:-1]
    assert np.all(steps >= 1.0 - 1e-6) and np.all(steps <= 1.35 + 1e-5)
    assert not info["crushed"]
    controller = SlipLawRampController(env.interface, start_n=1.0)
    _, info = attempt(env, controller, EASY)
    assert info["success"] and controller.attempts[-1].final_force_n < 1.41 * 1.35**3


def test_ramp_with_bisection_starts_the_next_attempt_above_the_force_that_slipped() -> None:
    # A 30-step attempt is too short for the ramp to catch this object (with 60 steps it lifts it).
    env = PandaGraspEnv(EASY, max_episode_steps=30)
    controller = RampBisectionController(env.interface, start_n=1.0)
    attempt(env, controller, HEAVY_SLIPPERY)
    assert controller.attempts[-1].slipped
    reached = controller.attempts[-1].max_force_n
    controller.adapt()
    assert controller.low_n == pytest.approx(reached)
    assert reached < controller.next_start_n <= reached * controller.ratio**controller.jump_raises + 1e-9


def test_evaluate_runs_the_baselines_like_any_controller(env) -> None:
    tasks = [EASY, FRAGILE]
    fixed = evaluate(FixedForceController(env.interface, force_n=20.0), env, tasks, rounds=2, seed=3)
    bisection = evaluate(ForceBisectionController(env.interface, first_n=20.0), env, tasks, rounds=2, seed=3)
    frozen = evaluate(ForceBisectionController(env.interface, first_n=20.0), env, tasks, rounds=2, seed=3, adapt=False)
    assert [t["success"] for t in fixed["tasks"]] == [[1.0, 1.0], [0.0, 0.0]]  # 20 N crushes the fragile box
    # The bisection's first attempt is the fixed force's; after the crush it comes down and lifts it.
    assert [t["success"] for t in bisection["tasks"]] == [[1.0, 1.0], [0.0, 1.0]]
    assert frozen["tasks"] == fixed["tasks"]
    ramp = evaluate(RampBisectionController(env.interface, start_n=1.0), env, tasks, rounds=2, seed=3)
    assert ramp["summary"][0]["success_mean"] == 1.0


def test_controller_protocol_surface(env) -> None:
    controller = RampBisectionController(env.interface)
    assert isinstance(controller, GripForceController)
    assert (controller.obs_dim, controller.act_dim) == (10, 4)
    assert controller.schedule().at_episode_end()
    assert controller.status()["adaptation_family"] == "classical_grip"
    assert copy.deepcopy(controller).get_state() == controller.get_state()


def test_a_crush_reported_while_the_gripper_opens_keeps_the_bracket_positive(env) -> None:
    controller = RampBisectionController(env.interface, start_n=1.0)
    env.set_task(EASY)
    obs, _ = env.reset(seed=0)
    command = controller.act(obs)
    assert command[3] < 0  # approaching with the gripper open
    controller.observe(obs, command, -2.0, obs, True)
    assert controller.attempts[-1].crushed
    controller.adapt()
    state = controller.get_state()
    assert all(np.isfinite(v) and v > 0 for v in state.values()), state
