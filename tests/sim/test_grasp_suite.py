"""The full grasp suite: object splits, dynamics factors, robots, and the parameters that reach the physics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

from metarl_robot.tasks import Fixed, TaskError, TaskSpec, load_task_file  # noqa: E402
from sim import GRASP_VALIDATORS, GraspEnv, GraspScene, grasp_distribution, oracle_grip_force_n  # noqa: E402
from sim.grasp import run_scripted_episode, scripted_grasp_action  # noqa: E402
from sim.grasp_task import (  # noqa: E402
    RANDOM_URDF_SPLITS,
    SUITE_FACTORS,
    grasp_force_window,
    min_hold_force_n,
    oracle_grasp_offset_m,
    suite_factors,
    validate_grasp_task,
)

pytestmark = pytest.mark.sim


def box(task_id: str = "box", **params) -> TaskSpec:
    defaults = {
        "object_shape": "box",
        "object_size_m": 0.045,
        "object_mass_kg": 0.2,
        "lateral_friction": 0.8,
        "crush_force_n": 50.0,
    }
    return TaskSpec("grasp", {**defaults, **params}, task_id)


@pytest.fixture(scope="module")
def suite():
    return grasp_distribution(seed=0, num_train=48, num_test=24, num_validation=12)


def test_mesh_objects_keep_to_their_split(suite):
    for split in ("train", "validation", "test"):
        meshes = [t["random_urdf"] for t in suite.split(split) if "random_urdf" in t.params]
        assert meshes, f"no mesh objects in the {split} split"
        assert all(m in RANDOM_URDF_SPLITS[split] for m in meshes)
    shapes = {t.params.get("object_shape") for t in suite.train_tasks} - {None}
    assert shapes == {"box", "cylinder", "sphere", "capsule"}


def test_every_suite_task_is_valid_and_solvable_by_construction(suite):
    for task in suite.train_tasks + suite.test_tasks:
        validate_grasp_task(task)
        hold, _ = grasp_force_window(task)
        margin = task["crush_force_n"] / hold
        assert SUITE_FACTORS["crush_margin"].low - 1e-9 <= margin <= SUITE_FACTORS["crush_margin"].high + 1e-9


def test_splits_are_fixed_by_the_seed():
    a = grasp_distribution(seed=3, num_train=8, num_test=4, num_validation=2)
    b = grasp_distribution(seed=3, num_train=8, num_test=4, num_validation=2)
    assert a.train_tasks == b.train_tasks and a.test_tasks == b.test_tasks and a.validation_tasks == b.validation_tasks
    assert a.train_tasks != grasp_distribution(seed=4, num_train=8, num_test=4).train_tasks


def test_factors_switch_off_with_a_single_value():
    dist = grasp_distribution(
        num_train=16, num_test=2,
        factors={"object_kind": "primitive", "action_latency_steps": 0, "com_offset_fraction": 0.0, "restitution": 0.1},
    )
    for task in dist.train_tasks:
        assert "object_shape" in task.params and task["action_latency_steps"] == 0 and task["restitution"] == 0.1
        assert task.params.get("com_offset_m", 0.0) == 0.0
    assert isinstance(suite_factors({"restitution": 0.1})["restitution"], Fixed)
    with pytest.raises(TaskError, match="grasp factor 'restitutoin' is unknown"):
        grasp_distribution(factors={"restitutoin": 0.1})
    explicit = grasp_distribution(num_train=4, num_test=1, factors={"crush_force_n": [5.0, 6.0]})
    assert all(5.0 <= t["crush_force_n"] <= 6.0 for t in explicit.train_tasks)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"object_mass_kg": -1.0}, "object_mass_kg"),
        ({"restitution": 1.5}, "restitution"),
        ({"action_latency_steps": 0.5}, "action_latency_steps"),
        ({"gripper_force_limit_n": 80.0}, "gripper_force_limit_n"),
        ({"actuator_gain": 0.0}, "actuator_gain"),
        ({"object_length_m": 0.3}, "object_length_m"),
        ({"com_offset_m": 0.05}, "com_offset_m"),
        ({"object_shape": "sphere", "com_offset_m": 0.01}, "com_offset_m"),
        ({"object_shape": "cylinder", "object_length_m": 0.12}, "object_length_m"),
        ({"random_urdf": 1000, "object_shape": None}, "random_urdf"),
        ({"random_urdf": 3}, "exclude each other"),
        ({"mass": 1.0}, "unknown grasp parameter"),
    ],
)
def test_bad_parameters_name_the_field(change, field):
    params = {**box().params, **change}
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(TaskError, match=field):
        validate_grasp_task(TaskSpec("grasp", params))


def test_task_file_with_suite_parameters_loads_and_rejects_missing_urdf(tmp_path):
    good = [{"family": "grasp", "task_id": "mesh", "params": {
        "random_urdf": 905, "object_size_m": 0.05, "object_mass_kg": 0.2, "lateral_friction": 0.7, "crush_force_n": 20.0,
        "action_latency_steps": 1, "restitution": 0.1, "gripper_force_limit_n": 45.0}}]
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump(good))
    (task,) = load_task_file(path, GRASP_VALIDATORS)
    assert task["random_urdf"] == 905 and task["action_latency_steps"] == 1
    bad = [{"family": "grasp", "params": {**good[0]["params"], "random_urdf": None, "object_urdf": "nowhere/cup.urdf"}}]
    bad[0]["params"].pop("random_urdf")
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(TaskError, match=r"tasks\[0\].*object_urdf='.*cup.urdf' does not exist"):
        load_task_file(path, GRASP_VALIDATORS)


def test_mesh_object_is_scaled_to_its_size_and_rests_still():
    params = {k: v for k, v in box().params.items() if k != "object_shape"}
    task = TaskSpec("grasp", {**params, "random_urdf": 903, "object_size_m": 0.05}, "mesh")
    scene = GraspScene(task)
    scene.reset(np.random.default_rng(0))
    low, high = scene.bullet.getAABB(scene.body_ids["object"])
    assert 0.048 <= max(np.subtract(high, low)) <= 0.05 + 0.01  # Bullet pads AABBs by the collision margin
    start = scene.object_pose()[0]
    for _ in range(5):
        scene.apply_command(np.zeros(4))
        scene.step_control()
    assert np.linalg.norm(scene.object_pose()[0] - start) < 2e-3
    assert scene.status()["tilt_rad"] < math.radians(2)
    scene.close()


def test_object_pose_is_the_geometric_centre_not_the_offset_centre_of_mass():
    task = box("heavy-end", object_length_m=0.12, com_offset_m=0.04)
    scene = GraspScene(task)
    scene.reset(np.random.default_rng(0))
    centre = scene.object_pose()[0]
    com = np.asarray(scene.bullet.getBasePositionAndOrientation(scene.body_ids["object"])[0])
    np.testing.assert_allclose(com - centre, [0.04, 0.0, 0.0], atol=1e-6)
    assert oracle_grasp_offset_m(task) == 0.04
    scene.close()


def test_force_limit_caps_the_grip_and_narrows_the_window():
    task = box("weak-gripper", gripper_force_limit_n=8.0, crush_force_n=30.0)
    assert grasp_force_window(task)[1] == 8.0
    scene = GraspScene(task)
    scene.reset(np.random.default_rng(0))
    scene.apply_command(np.array([0.0, 0.0, 0.0, 40.0]))
    scene.step_control()
    assert scene.status()["commanded_grip_force_n"] == 8.0
    scene.close()


def test_latency_delays_commands_by_whole_control_periods():
    def rises(latency: int) -> np.ndarray:
        scene = GraspScene(box("lag", action_latency_steps=latency))
        scene.reset(np.random.default_rng(0))
        heights = [float(scene.ee_pose()[0][2])]
        for _ in range(5):
            scene.apply_command(np.array([0.0, 0.0, 0.1, -1.0]))
            scene.step_control()
            heights.append(float(scene.ee_pose()[0][2]))
        scene.close()
        return np.diff(heights)

    prompt, delayed = rises(0), rises(2)
    assert prompt[0] > 0.002
    assert np.all(np.abs(delayed[:2]) < 1e-3), "commands acted before the latency elapsed"
    np.testing.assert_allclose(delayed[2:], prompt[:3], atol=2e-3)


def test_task_observation_noise_replaces_the_env_default():
    env = GraspEnv(box("noisy", obs_noise_std=0.01), obs_noise_std=0.0)
    noisy, _ = env.reset(seed=0)
    env.set_task(box("quiet", obs_noise_std=0.0))
    clean, _ = env.reset(seed=0)
    assert np.abs(noisy[:3] - clean[:3]).max() > 1e-3
    np.testing.assert_array_equal(clean, env.scene.observation())
    env.close()


@pytest.mark.parametrize("robot", ["kuka_iiwa", "xarm6"])
def test_other_arms_lift_an_easy_box_with_the_scripted_oracle(robot):
    task = box("easy")
    env = GraspEnv(task, robot=robot)
    assert env.interface["robot"] == robot
    assert env.scene.joint_state()[0] == env.interface["joint_names"]
    result = run_scripted_episode(env, oracle_grip_force_n(task), seed=0)
    assert result["success"], result
    env.close()


def test_hold_force_spans_two_decades_so_no_fixed_force_fits_most_tasks(suite):
    holds = [grasp_force_window(t)[0] for t in suite.test_tasks]
    assert max(holds) / min(holds) > 30
    best_fixed_fraction = max(
        np.mean([lo < force < hi for lo, hi in map(grasp_force_window, suite.test_tasks)])
        for force in np.geomspace(0.3, 60, 40)
    )
    assert best_fixed_fraction < 0.5
    assert min_hold_force_n(1.0, 0.5) == pytest.approx(1.0 * 11.31 / 1.0)


def test_scripted_action_moves_towards_the_offset_grasp_point():
    obs = np.zeros(10, np.float32)
    obs[:3] = [0.5, 0.0, 0.14]
    obs[3:6] = [0.5, 0.0, 0.02]
    obs[6:8] = 0.04
    assert scripted_grasp_action(obs, 5.0, grasp_offset_m=0.03)[0] > 0.5
    assert scripted_grasp_action(obs, 5.0, grasp_offset_m=-0.03)[0] < -0.5
