"""The PyBullet grasp family: scene, Gymnasium env, task validation, and the physics of the force window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

import gymnasium as gym  # noqa: E402
import pybullet_data  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from metarl_robot.envs import MetaEnv  # noqa: E402
from metarl_robot.tasks import TaskError, TaskSpec, load_task_file  # noqa: E402
from sim import (  # noqa: E402
    GRASP_VALIDATORS,
    INTERFACE,
    GraspScene,
    PandaGraspEnv,
    default_grasp_distribution,
    grasp_force_window,
    oracle_grip_force_n,
    scripted_grasp_action,
    validate_grasp_task,
)
from sim.grasp import run_scripted_episode  # noqa: E402
from sim.scene import CRUSHED_COLOUR, assemble_observation  # noqa: E402

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]


def grasp_task(task_id: str = "", **params) -> TaskSpec:
    defaults = {
        "object_shape": "box",
        "object_size_m": 0.04,
        "object_mass_kg": 0.1,
        "lateral_friction": 0.8,
        "crush_force_n": 50.0,
    }
    return TaskSpec("grasp", {**defaults, **params}, task_id)


EASY_BOX = grasp_task("easy-box")
EASY_SPHERE = grasp_task("easy-sphere", object_shape="sphere", object_size_m=0.05)
HEAVY_SLIPPERY = grasp_task("heavy-slippery", object_shape="cylinder", object_mass_kg=1.0, lateral_friction=0.3)
FRAGILE = grasp_task("fragile", object_mass_kg=0.05, crush_force_n=4.0)


@pytest.fixture(scope="module")
def env():
    env = PandaGraspEnv(EASY_BOX)
    yield env
    env.close()


def object_dynamics(env: PandaGraspEnv) -> tuple[float, float]:
    scene = env.scene
    info = scene.bullet.getDynamicsInfo(scene.body_ids["object"], -1)
    return info[0], info[1]


def rollout(env: PandaGraspEnv, seed: int, steps: int = 30, grip_force_n: float = 8.0):
    """Scripted actions with seeded noise, so that the arm also wanders and bumps into things."""
    noise = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for _ in range(steps):
        action = scripted_grasp_action(obs, grip_force_n) + noise.normal(0.0, 0.3, 4).astype(np.float32)
        obs, reward, terminated, _, _ = env.step(action)
        assert terminated is False
        observations.append(obs)
        rewards.append(reward)
    return np.stack(observations), np.array(rewards)


# ------------------------------------------------------------------------------ gymnasium contract


def test_registered_env_passes_gymnasium_checker():
    env = gym.make("metarl/PandaGrasp-v0", render_mode="rgb_array")
    assert isinstance(env.unwrapped, PandaGraspEnv)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_env_implements_meta_env_and_interface(env):
    assert isinstance(env, MetaEnv)
    assert env.interface == INTERFACE
    assert json.loads(json.dumps(INTERFACE)) == INTERFACE
    layout_size = sum(item["size"] for item in INTERFACE["observation_layout"])
    assert env.observation_space.shape == (layout_size,) == (10,)
    assert env.action_space.shape == (4,)
    assert INTERFACE["joint_names"] == env.scene.joint_state()[0]
    assert np.allclose(INTERFACE["action"]["high"], INTERFACE["action"]["scale"])


def test_observation_is_assembled_from_scene_sources(env):
    obs, _ = env.reset(seed=0)
    scene = env.scene
    rebuilt = assemble_observation(scene.joint_state(), scene.ee_pose(), scene.object_pose())
    assert obs.dtype == np.float32
    assert np.array_equal(obs, rebuilt)
    assert np.allclose(obs[0:3], scene.ee_pose()[0])


def test_episode_truncates_without_terminating():
    env = PandaGraspEnv(EASY_BOX, max_episode_steps=4)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]
    env.close()


def test_same_seed_and_task_give_bit_identical_episodes():
    task = default_grasp_distribution().train_tasks[3]
    fresh = PandaGraspEnv(task)
    reference = rollout(fresh, seed=5)
    again = rollout(fresh, seed=5)
    with_history = PandaGraspEnv(EASY_SPHERE)
    rollout(with_history, seed=1, steps=12)  # ends squeezing the object: cached contacts must not leak
    with_history.set_task(task)
    replay = rollout(with_history, seed=5)
    for other in (again, replay):
        assert np.array_equal(reference[0], other[0])
        assert np.array_equal(reference[1], other[1])
    assert not np.array_equal(reference[0], rollout(fresh, seed=6)[0])
    fresh.close()
    with_history.close()


def test_observation_noise_is_seeded():
    noisy = PandaGraspEnv(EASY_BOX, obs_noise_std=0.01)
    first, _ = noisy.reset(seed=2)
    second, _ = noisy.reset(seed=2)
    clean = noisy.scene.observation()
    assert np.array_equal(first, second)
    assert 0 < np.abs(first - clean).max() < 0.1
    noisy.close()


def test_set_task_takes_effect_at_next_reset(env):
    env.set_task(EASY_BOX)
    env.reset(seed=0)
    assert object_dynamics(env) == pytest.approx((0.1, 0.8))
    heavy = grasp_task(object_mass_kg=0.7, lateral_friction=0.45)
    env.task = heavy
    assert env.task == heavy
    assert object_dynamics(env) == pytest.approx((0.1, 0.8))
    env.reset(seed=0)
    assert object_dynamics(env) == pytest.approx((0.7, 0.45))
    env.reset(seed=1, options={"task": EASY_BOX})
    assert env.task == EASY_BOX and object_dynamics(env) == pytest.approx((0.1, 0.8))


def test_vector_env_sets_a_task_per_sub_env():
    vec = gym.vector.SyncVectorEnv([lambda: PandaGraspEnv(EASY_BOX), lambda: PandaGraspEnv(EASY_BOX)])
    vec.set_attr("task", [EASY_SPHERE, HEAVY_SLIPPERY])
    assert vec.get_attr("task") == (EASY_SPHERE, HEAVY_SLIPPERY)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 10)
    masses = [object_dynamics(sub)[0] for sub in vec.envs]
    assert masses == pytest.approx([0.1, 1.0])
    obs, rewards, terminated, truncated, _ = vec.step(np.zeros((2, 4), dtype=np.float32))
    assert rewards.shape == (2,) and not terminated.any() and not truncated.any()
    vec.close()


def test_rgb_render_is_headless_and_shows_the_scene():
    env = PandaGraspEnv(EASY_BOX, render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert image.std() > 10
    assert env.scene.render_rgb(width=64, height=48).shape == (48, 64, 3)
    env.close()


# ----------------------------------------------------------------------------------- grasp physics


@pytest.mark.parametrize("task", [EASY_BOX, EASY_SPHERE], ids=lambda t: t.task_id)
def test_scripted_oracle_lifts_easy_objects(env, task):
    env.set_task(task)
    info = run_scripted_episode(env, oracle_grip_force_n(task), seed=0)
    assert info["success"] and not info["crushed"]
    assert info["lift_height_m"] >= 0.08
    assert info["return"] > 10.0


def test_weak_grip_drops_heavy_slippery_object(env):
    low, high = grasp_force_window(HEAVY_SLIPPERY)
    assert low > 10.0
    env.set_task(HEAVY_SLIPPERY)
    weak = run_scripted_episode(env, 0.5 * low, seed=0)
    assert not weak["success"] and not weak["crushed"]
    assert weak["lift_height_m"] < 0.02
    firm = run_scripted_episode(env, 1.3 * low, seed=0)
    assert firm["success"]


def test_strong_grip_crushes_fragile_object(env):
    env.set_task(FRAGILE)
    strong = run_scripted_episode(env, 30.0, seed=0)
    assert strong["crushed"] and not strong["success"]
    assert strong["grip_force_n"] > FRAGILE["crush_force_n"]
    scene = env.scene
    colours = [shape[7] for shape in scene.bullet.getVisualShapeData(scene.body_ids["object"])]
    assert colours[0] == pytest.approx(CRUSHED_COLOUR)
    gentle = run_scripted_episode(env, oracle_grip_force_n(FRAGILE), seed=0)
    assert gentle["success"] and not gentle["crushed"]


def test_squeezing_just_below_the_crush_force_never_crushes(env):
    """Crushing compares the period-averaged squeeze, so impact spikes when the pads land do not count."""
    task = grasp_task(crush_force_n=10.5)
    env.set_task(task)
    info = run_scripted_episode(env, 10.0, seed=0)
    assert info["success"] and not info["crushed"]
    assert info["grip_force_n"] == pytest.approx(10.0, rel=0.02)


def test_finger_effort_is_the_applied_squeezing_force(env):
    env.set_task(EASY_BOX)
    obs, _ = env.reset(seed=0)
    for _ in range(15):
        obs, *_ = env.step(scripted_grasp_action(obs, 12.0))
    names, _, _, effort = env.scene.joint_state()
    fingers = [effort[names.index(name)] for name in ("panda_finger_joint1", "panda_finger_joint2")]
    assert fingers == pytest.approx([-12.0, -12.0], rel=0.02)
    assert obs[8:10] == pytest.approx(fingers, rel=1e-5)


def test_no_fixed_force_matches_the_oracle_on_the_default_distribution():
    tasks = default_grasp_distribution(num_train=400).train_tasks
    windows = np.array([grasp_force_window(task) for task in tasks])
    oracle = np.mean(windows[:, 0] < windows[:, 1])
    forces = np.geomspace(0.5, 60.0, 100)
    best_fixed = max(np.mean((windows[:, 0] < f) & (f < windows[:, 1])) for f in forces)
    assert oracle > 0.85
    assert best_fixed < oracle - 0.15


# ------------------------------------------------------------------------------------------- tasks


def test_default_distribution_holds_out_spheres_for_testing():
    distribution = default_grasp_distribution(seed=3)
    train_shapes = {task["object_shape"] for task in distribution.train_tasks}
    test_shapes = {task["object_shape"] for task in distribution.test_tasks}
    assert test_shapes == {"sphere"} and "sphere" not in train_shapes
    for task in distribution.train_tasks + distribution.test_tasks:
        validate_grasp_task(task)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"object_mass_kg": 0.0}, "object_mass_kg"),
        ({"object_mass_kg": -1.0}, "object_mass_kg"),
        ({"object_mass_kg": "heavy"}, "object_mass_kg"),
        ({"object_size_m": -0.01}, "object_size_m"),
        ({"object_size_m": 0.2}, "object_size_m"),
        ({"object_shape": "torus"}, "object_shape"),
        ({"lateral_friction": 0.0}, "lateral_friction"),
        ({"crush_force_n": -5.0}, "crush_force_n"),
        ({"object_urdf": "/nonexistent/object.urdf"}, "object_urdf"),
    ],
)
def test_invalid_task_parameters_name_the_field(change, field):
    task = grasp_task(**change)
    if "object_urdf" in change:
        task = TaskSpec("grasp", {k: v for k, v in task.params.items() if k != "object_shape"})
    with pytest.raises(TaskError, match=field):
        validate_grasp_task(task)


def test_invalid_tasks_are_rejected_by_scene_env_and_task_files(tmp_path, env):
    missing = TaskSpec("grasp", {k: v for k, v in EASY_BOX.params.items() if k != "crush_force_n"})
    with pytest.raises(TaskError, match="crush_force_n"):
        env.set_task(missing)
    with pytest.raises(TaskError, match="family"):
        GraspScene(TaskSpec("reach", {}))
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text(
        "- family: grasp\n"
        "  params: {object_shape: box, object_size_m: 0.04, object_mass_kg: -2, lateral_friction: 0.5,"
        " crush_force_n: 10}\n"
    )
    with pytest.raises(TaskError, match=r"tasks\[0\].*object_mass_kg"):
        load_task_file(task_file, GRASP_VALIDATORS)


def test_task_file_with_urdf_object_runs_an_episode(tmp_path):
    urdf = Path(pybullet_data.getDataPath()) / "random_urdfs" / "000" / "000.urdf"
    task_file = tmp_path / "objects.yaml"
    task_file.write_text(
        "tasks:\n"
        "  - task_id: random-000\n"
        "    family: grasp\n"
        f"    params: {{object_urdf: {urdf}, object_size_m: 0.5, object_mass_kg: 0.2,"
        " lateral_friction: 0.7, crush_force_n: 30}\n"
    )
    (task,) = load_task_file(task_file, GRASP_VALIDATORS)
    env = PandaGraspEnv(task)
    info = run_scripted_episode(env, 10.0, seed=0)
    assert set(info) >= {"success", "crushed", "lift_height_m"}
    assert object_dynamics(env) == pytest.approx((0.2, 0.7))
    env.close()


@pytest.mark.parametrize(("name", "scale", "width_cm"), [("objects/mug.urdf", 1.0, 12.8), ("sphere2.urdf", 1.0, 100.0),
                                                       ("random_urdfs/000/000.urdf", 0.6, 7.8)])
def test_urdf_objects_wider_than_the_open_gripper_are_refused_with_the_scale_that_fits(tmp_path, name, scale, width_cm):
    urdf = Path(pybullet_data.getDataPath()) / name
    task_file = tmp_path / "objects.yaml"
    task_file.write_text(
        "tasks:\n  - family: grasp\n"
        f"    params: {{object_urdf: {urdf}, object_size_m: {scale}, object_mass_kg: 0.2, lateral_friction: 0.7, crush_force_n: 30}}\n"
    )
    with pytest.raises(TaskError, match=rf"tasks\[0\].*is {width_cm:.1f} cm wide.*at most 7 cm: use object_size_m <= ") as err:
        load_task_file(task_file, GRASP_VALIDATORS)
    fitting = float(str(err.value).rsplit("<= ", 1)[1])
    task_file.write_text(task_file.read_text().replace(f"object_size_m: {scale}", f"object_size_m: {fitting * 0.999:.6g}"))
    (task,) = load_task_file(task_file, GRASP_VALIDATORS)  # the scale the message names fits
    assert task["object_size_m"] < scale


def test_example_task_file_loads_and_its_bottle_can_be_lifted():
    tasks = load_task_file(REPO / "configs" / "tasks" / "example_objects.yaml", GRASP_VALIDATORS)
    bottle = next(task for task in tasks if "object_urdf" in task.params)
    assert Path(bottle["object_urdf"]).is_file()
    env = PandaGraspEnv(bottle)
    assert run_scripted_episode(env, oracle_grip_force_n(bottle), seed=0)["success"]
    env.close()


def test_scene_rejects_time_steps_that_do_not_divide_the_control_period():
    with pytest.raises(ValueError, match="time_step"):
        GraspScene(EASY_BOX, time_step=0.007)
