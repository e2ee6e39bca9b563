"""Reach and push families: demonstrators, rewards, latency, task validation, factor overrides."""

from __future__ import annotations

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

import gymnasium as gym  # noqa: E402

import sim  # noqa: E402
from metarl_robot.algos.context_ppo.algo import resolve  # noqa: E402
from metarl_robot.tasks import Fixed, TaskError, TaskSpec, Uniform  # noqa: E402
from sim.grasp_task import MAX_EE_SPEED_M_S  # noqa: E402
from sim.panda_tasks import (  # noqa: E402
    GRIPPER_DISTANCE_WEIGHT,
    PUSH_HEIGHT_M,
    PUSH_SUCCESS_M,
    REACH_SUCCESS_M,
    PandaPushEnv,
    PandaReachEnv,
    push_distribution,
    push_factors,
    reach_distribution,
    validate_push_task,
    validate_reach_task,
)

pytestmark = pytest.mark.sim

REACH = TaskSpec("reach", {"goal_x": 0.5, "goal_y": 0.05, "goal_z": 0.2, "obs_noise_std": 0.0}, "reach-fixed")
PUSH = TaskSpec(
    "push",
    {
        "object_size_m": 0.05,
        "object_mass_kg": 0.3,
        "lateral_friction": 0.6,
        "goal_x": 0.58,
        "goal_y": 0.05,
        "obs_noise_std": 0.0,
    },
    "push-fixed",
)


@pytest.fixture(scope="module")
def reach_env():
    env = PandaReachEnv(REACH)
    yield env
    env.close()


@pytest.fixture(scope="module")
def push_env():
    env = PandaPushEnv(PUSH)
    yield env
    env.close()


def run_episode(env, task: TaskSpec, act, seed: int = 0) -> tuple[dict, float]:
    """Last info and summed reward of one episode of ``act(obs) -> action``."""
    obs, info = env.reset(seed=seed, options={"task": task})
    total, truncated = 0.0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(act(obs))
        assert terminated is False
        total += reward
    return info, total


def demonstrated(env, task: TaskSpec, seed: int = 0) -> dict:
    demonstrate = resolve(env.demonstrator)
    return run_episode(env, task, lambda obs: demonstrate(obs[None], [task])[0], seed)[0]


def splits(distribution) -> list[TaskSpec]:
    return [*distribution.train_tasks[:3], *distribution.validation_tasks[:2], *distribution.test_tasks[:3]]


# ------------------------------------------------------------------------------- demonstrators


def test_reach_demonstrator_succeeds_on_every_split(reach_env):
    for task in splits(reach_distribution(seed=0, num_train=3, num_test=3, num_validation=2)):
        info = demonstrated(reach_env, task)
        assert info["success"], (task, info)
        assert info["goal_distance_m"] < REACH_SUCCESS_M


def test_push_demonstrator_succeeds_on_every_split(push_env):
    for task in splits(push_distribution(seed=0, num_train=3, num_test=3, num_validation=2)):
        info = demonstrated(push_env, task)
        assert info["success"], (task, info)
        assert info["goal_distance_m"] < PUSH_SUCCESS_M


def test_reach_demonstrator_drives_the_kuka_too():
    env = PandaReachEnv(robot="kuka_iiwa")
    try:
        assert env.interface["robot"] == "kuka_iiwa"
        assert demonstrated(env, reach_distribution(seed=0, num_test=1).test_tasks[0])["success"]
    finally:
        env.close()


def test_push_refuses_an_arm_that_cannot_reach_its_start_pose():
    with pytest.raises(ValueError, match="kuka_iiwa"):
        PandaPushEnv(robot="kuka_iiwa")


@pytest.mark.parametrize("env_fixture", ["reach_env", "push_env"])
def test_random_actions_rarely_succeed(env_fixture, request):
    env = request.getfixturevalue(env_fixture)
    distribution = reach_distribution if env_fixture == "reach_env" else push_distribution
    successes = 0
    for i, task in enumerate(distribution(seed=1, num_train=8).train_tasks):
        env.action_space.seed(i)
        info, _ = run_episode(env, task, lambda obs: env.action_space.sample(), seed=i)
        successes += info["success"]
    assert successes <= 1


# ------------------------------------------------------------------------------------ dynamics


def test_latency_of_one_step_delays_the_grasp_frame_motion_by_exactly_one_step(reach_env):
    commands = [np.array([1.0, 0.0, 0.0])] * 4 + [np.array([0.0, -1.0, 0.5])] * 4 + [np.zeros(3)] * 3
    motion = {}
    for latency in (0, 1):
        reach_env.reset(seed=0, options={"task": REACH.replace(action_latency_steps=latency)})
        positions = [reach_env.scene.ee_pose()[0]]
        for command in commands:
            reach_env.step(command)
            positions.append(reach_env.scene.ee_pose()[0])
        motion[latency] = np.array(positions) - positions[0]
    assert np.abs(motion[0][1]).max() > 0.005  # without latency the first command moves the arm
    assert np.abs(motion[1][1]).max() < 5e-4  # with one step it does not yet
    np.testing.assert_allclose(motion[1][1:], motion[0][:-1], atol=5e-4)
    assert np.abs(motion[1] - motion[0]).max() > 0.01


def test_task_arm_dynamics_reach_the_arm(reach_env):
    """Gain and damping are applied (the motion changes), though in free motion only by micrometres:
    the position-controlled joints track their reference closely whatever the gain and damping."""

    def motion(**dynamics) -> np.ndarray:
        reach_env.reset(seed=0, options={"task": REACH.replace(**dynamics)})
        positions = []
        for command in [np.array([1.0, 0.0, -1.0])] * 3 + [np.zeros(3)] * 2:
            reach_env.step(command)
            positions.append(reach_env.scene.ee_pose()[0])
        return np.array(positions)

    assert not np.array_equal(motion(actuator_gain=0.7), motion(actuator_gain=1.3))
    assert not np.array_equal(motion(joint_damping=0.0), motion(joint_damping=0.5))
    np.testing.assert_array_equal(motion(joint_damping=0.0), motion())  # the Panda URDF's damping is 0


def test_goal_marker_changes_no_physics():
    task = push_distribution(seed=0, num_train=1).train_tasks[0]
    trajectories = []
    for render_mode in (None, "rgb_array"):
        env = PandaPushEnv(task, render_mode=render_mode)
        env.action_space.seed(0)
        obs, _ = env.reset(seed=0)
        steps = [obs]
        for _ in range(15):
            steps.append(env.step(env.action_space.sample())[0])
        if render_mode:
            assert env.render().std() > 0
        env.close()
        trajectories.append(np.stack(steps))
    np.testing.assert_array_equal(trajectories[0], trajectories[1])


def test_pushes_repeat_bit_for_bit_after_other_tasks(push_env):
    """Contacts with the cube leave nothing behind: the same task and seed replay exactly."""
    first, other = push_distribution(seed=2, num_train=2).train_tasks

    def observations(task: TaskSpec) -> np.ndarray:
        demonstrate = resolve(push_env.demonstrator)
        obs, _ = push_env.reset(seed=7, options={"task": task})
        steps = [obs]
        for _ in range(30):
            steps.append(push_env.step(demonstrate(steps[-1][None], [task])[0])[0])
        return np.stack(steps)

    before = observations(first)
    observations(other)
    np.testing.assert_array_equal(observations(first), before)


def test_measurement_entry_point_prints_the_success(capsys):
    from sim.panda_tasks import main, run_policy

    assert main(["reach", "--num-tasks", "2"]) == 0
    assert "reach franka_panda test demonstrator: 2/2 succeeded" in capsys.readouterr().out
    with pytest.raises(ValueError, match="policy"):
        run_policy(None, [], "scripted")


# ------------------------------------------------------------------------------------- rewards


def test_reach_reward_is_minus_the_distance_to_the_goal(reach_env):
    obs, info = reach_env.reset(seed=0, options={"task": REACH})
    goal = np.array([REACH["goal_x"], REACH["goal_y"], REACH["goal_z"]])
    assert obs.shape == (6,) and not info["success"]
    for action in ([0.5, 0.2, 0.4], [0.0, 0.0, 0.0], [-1.0, 1.0, -1.0]):
        obs, reward, _, _, info = reach_env.step(np.array(action, dtype=np.float32))
        distance = float(np.linalg.norm(reach_env.scene.ee_pose()[0] - goal))
        assert reward == pytest.approx(-distance, abs=1e-9)
        assert info["success"] == (distance < REACH_SUCCESS_M)
        np.testing.assert_allclose(obs[:3], reach_env.scene.ee_pose()[0], atol=1e-6)
        np.testing.assert_allclose(obs[3:], reach_env.scene.ee_velocity(), atol=1e-6)


def test_reach_observation_velocity_matches_the_motion(reach_env):
    reach_env.reset(seed=0, options={"task": REACH})
    for _ in range(4):
        obs, *_ = reach_env.step(np.array([1.0, 0.0, 0.0], dtype=np.float32))
    assert obs[3] == pytest.approx(MAX_EE_SPEED_M_S, rel=0.15)
    assert abs(obs[4]) < 0.01 and abs(obs[5]) < 0.01


def test_push_reward_weighs_cube_to_goal_and_gripper_to_cube(push_env):
    obs, _ = push_env.reset(seed=0, options={"task": PUSH})
    assert obs.shape == (8,)
    goal = np.array([PUSH["goal_x"], PUSH["goal_y"]])
    for action in ([1.0, 0.0], [0.5, 0.5], [0.0, -1.0]):
        obs, reward, _, _, info = push_env.step(np.array(action, dtype=np.float32))
        cube, orientation = push_env.scene.object_pose()
        ee = push_env.scene.ee_pose()[0]
        goal_distance = float(np.linalg.norm(cube[:2] - goal))
        expected = -goal_distance - GRIPPER_DISTANCE_WEIGHT * float(np.linalg.norm(ee - cube))
        assert reward == pytest.approx(expected, abs=1e-9)
        assert info["success"] == (goal_distance < PUSH_SUCCESS_M)
        np.testing.assert_allclose(obs[3:6], cube, atol=1e-6)
        assert obs[6] ** 2 + obs[7] ** 2 == pytest.approx(1.0, abs=1e-5)
        assert abs(ee[2] - PUSH_HEIGHT_M) < 0.01  # the grasp frame stays at push height


def test_push_holds_the_fingers_closed(push_env):
    push_env.reset(seed=0, options={"task": PUSH})
    for _ in range(5):
        push_env.step(np.array([1.0, 0.0], dtype=np.float32))
    names, position, _, _ = push_env.scene.joint_state()
    fingers = [position[names.index(name)] for name in push_env.scene.spec.finger_joints]
    assert max(fingers) < 0.002


# -------------------------------------------------------------------------------------- tasks


@pytest.mark.parametrize(
    ("validate", "task", "field"),
    [
        (validate_push_task, PUSH.replace(object_mass_kg=-0.2), "object_mass_kg"),
        (validate_push_task, PUSH.replace(object_size_m=0.0), "object_size_m"),
        (validate_push_task, PUSH.replace(lateral_friction="high"), "lateral_friction"),
        (validate_push_task, PUSH.replace(object_colour=3.0), "object_colour"),
        (validate_push_task, PUSH.replace(goal_y=0.5), "goal_y"),
        (validate_push_task, PUSH.replace(action_latency_steps=0.5), "action_latency_steps"),
        (validate_push_task, TaskSpec("push", {"goal_x": 0.5, "goal_y": 0.0}), "object_size_m"),
        (validate_reach_task, REACH.replace(goal_x=1.2), "goal_x"),
        (validate_reach_task, REACH.replace(goal_z=-0.1), "goal_z"),
        (validate_reach_task, REACH.replace(action_latency_steps=True), "action_latency_steps"),
        (validate_reach_task, REACH.replace(actuator_gain=0.0), "actuator_gain"),
        (validate_reach_task, REACH.replace(joint_damping=-1.0), "joint_damping"),
        (validate_reach_task, REACH.replace(goal_speed=1.0), "goal_speed"),
        (validate_reach_task, TaskSpec("grasp", dict(REACH.params)), "family"),
    ],
)
def test_invalid_task_raises_a_task_error_naming_the_field(validate, task, field):
    with pytest.raises(TaskError, match=field):
        validate(task)


def test_set_task_validates_and_keeps_the_old_task(reach_env):
    reach_env.set_task(REACH)
    with pytest.raises(TaskError, match="goal_y"):
        reach_env.set_task(REACH.replace(goal_y=-0.3))
    with pytest.raises(TaskError, match="family"):
        reach_env.task = PUSH
    assert reach_env.task == REACH


def test_factor_override_switches_a_factor_off():
    overrides = {"action_latency_steps": 0, "object_mass_kg": 0.5, "goal_y": [0.0, 0.05]}
    tasks = push_distribution(seed=0, num_train=8, num_test=4, factors=overrides)
    for task in tasks.train_tasks + tasks.test_tasks:
        assert task["action_latency_steps"] == 0 and task["object_mass_kg"] == 0.5
        assert 0.0 <= task["goal_y"] <= 0.05
    assert isinstance(push_factors({"lateral_friction": 0.4})["lateral_friction"], Fixed)
    assert isinstance(push_factors()["lateral_friction"], Uniform)
    reach = reach_distribution(seed=0, num_train=4, factors={"obs_noise_std": 0.0})
    assert {t["obs_noise_std"] for t in reach.train_tasks} == {0.0}
    with pytest.raises(TaskError, match="goal_w"):
        reach_distribution(factors={"goal_w": 0.3})
    with pytest.raises(TaskError, match="object_mass_kg"):
        push_distribution(factors={"object_mass_kg": -1.0})


def test_distributions_draw_valid_tasks_in_range_and_keep_splits_apart():
    reach = reach_distribution(seed=3, num_train=16, num_test=8, num_validation=4)
    push = push_distribution(seed=3, num_train=16, num_test=8, num_validation=4)
    for task in reach.train_tasks + reach.test_tasks + reach.validation_tasks:
        reach.validate(task)
        assert 0.35 <= task["goal_x"] <= 0.65 and 0.05 <= task["goal_z"] <= 0.3
        assert task["action_latency_steps"] in (0, 1)
    for task in push.train_tasks + push.test_tasks + push.validation_tasks:
        push.validate(task)
        assert 0.04 <= task["object_size_m"] <= 0.06 and 0.1 <= task["object_mass_kg"] <= 1.0
    assert not {t["goal_x"] for t in reach.train_tasks} & {t["goal_x"] for t in reach.test_tasks}
    again = push_distribution(seed=3, num_train=16, num_test=8, num_validation=4)
    assert again.test_tasks == push.test_tasks


# ---------------------------------------------------------------------------------- interfaces


@pytest.mark.parametrize(("env_id", "actions"), [("metarl/PandaReach-v0", 3), ("metarl/PandaPush-v0", 2)])
def test_registered_env_interface_describes_observation_and_action(env_id, actions):
    env = gym.make(env_id).unwrapped
    try:
        interface = env.interface
        assert interface["action"]["mode"] == "cartesian_velocity"
        assert interface["action"]["scale"] == [MAX_EE_SPEED_M_S] * actions
        assert env.action_space.shape == (actions,)
        layout = interface["observation_layout"]
        assert sum(item["size"] for item in layout) == env.observation_space.shape[0]
        assert all(item["source"] for item in layout)
        assert env.metadata["render_fps"] == interface["control_rate_hz"]
        distribution = resolve(sim.ENVIRONMENTS[env_id]["distribution"])(
            seed=0, num_train=2, num_test=1, num_validation=0, factors=None
        )
        assert distribution.train_tasks[0].family == env.task.family
    finally:
        env.close()
