"""Property-based tests (hypothesis): every generated input is either accepted and behaves, or refused
with the documented error type; none crashes with anything else.

* task files: arbitrary YAML documents and grasp parameters -> tasks, or ``TaskError``;
* configs: arbitrary ``--set`` keys and YAML values on every shipped config -> a config, or ``ConfigError``;
* manifests: a real bundle's manifest with a value replaced or a key removed, resealed -> a bundle, or ``BundleError``;
* robot inputs: joint states and poses with any values and sizes -> an observation or a ``Hold``, and
  through the control loop a command that is finite and inside the bundle's bounds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarl_robot.config import ConfigError, load_config
from metarl_robot.tasks import TaskError, load_task_file

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=int(__import__("os").environ.get("METARL_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["box", "sphere", "cylinder", "capsule", "x.urdf", "1e-3", "-1"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)

GRASP_KEYS = ["object_shape", "object_size_m", "object_mass_kg", "lateral_friction", "crush_force_n",
              "object_length_m", "com_offset_m", "random_urdf", "object_urdf", "restitution", "actuator_gain",
              "action_latency_steps", "obs_noise_std", "gripper_force_limit_n", "joint_damping"]
grasp_params = st.dictionaries(st.sampled_from(GRASP_KEYS), scalars, max_size=8)


@FAST
@given(document=values)
def test_any_yaml_document_as_a_task_file_gives_tasks_or_a_task_error(document, tmp_path_factory) -> None:
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    from sim import GRASP_VALIDATORS

    path = tmp_path_factory.mktemp("fuzz") / "tasks.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        tasks = load_task_file(path, GRASP_VALIDATORS)
    except TaskError:
        return
    assert tasks and len({t.task_id for t in tasks}) == len(tasks)


@FAST
@given(params=grasp_params, family=st.sampled_from(["grasp", "grasp", "nav", ""]), task_id=st.one_of(st.none(), st.text(max_size=6)))
def test_any_grasp_parameters_give_a_valid_task_or_a_task_error(params, family, task_id, tmp_path_factory) -> None:
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    from sim import GRASP_VALIDATORS
    from sim.grasp_task import grasp_force_window

    path = tmp_path_factory.mktemp("fuzz") / "tasks.yaml"
    entry = {"family": family, "params": params, **({"task_id": task_id} if task_id is not None else {})}
    try:
        path.write_text(yaml.safe_dump([entry]))
    except yaml.YAMLError:
        return
    try:
        (task,) = load_task_file(path, GRASP_VALIDATORS)
    except TaskError:
        return
    assert task.family == family  # an unvalidated family ("nav") passes through as it was given
    if family != "grasp":
        return
    low, high = grasp_force_window(task)  # an accepted grasp task has a computable force window
    assert math.isfinite(low) and low > 0 and high > 0


SHIPPED_CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))
CONFIG_KEYS = ["iterations", "seed", "checkpoint_every", "trials_per_iteration", "episodes_per_trial", "meta_batch_size",
               "ppo.lr", "ppo.epochs", "ppo.gamma", "ppo.clip_ratio", "warm_start.lr", "warm_start.rounds",
               "inner.lr", "inner.steps", "policy.hidden_size", "policy.hidden_sizes", "policy.cell", "tasks.num_train",
               "tasks", "policy", "sampler", "num_workers", "improve.samples", "no.such.key", "env_kwargs"]


@FAST
@given(config=st.sampled_from(SHIPPED_CONFIGS), key=st.sampled_from(CONFIG_KEYS), value=values)
def test_any_override_of_a_shipped_config_gives_a_config_or_a_config_error(config, key, value) -> None:
    from metarl_robot.algos.loop import check_run_fields
    from metarl_robot.cli import train_module

    module = train_module(str(REPO / config), [])
    try:
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        if text.endswith("..."):
            text = text[:-3].strip()
    except yaml.YAMLError:
        return
    try:
        loaded = load_config(module.TrainConfig, REPO / config, [f"{key}={text}"])
        check_run_fields(loaded)
    except ConfigError:
        return


# ------------------------------------------------------------------------------------------ manifests
@pytest.fixture(scope="module")
def sealed_bundle(tmp_path_factory) -> Path:
    from metarl_robot.export import export_bundle
    from tests.runtime.conftest import make_checkpoint

    root = tmp_path_factory.mktemp("fuzz_bundle")
    return export_bundle(make_checkpoint(root / "c.safetensors"), root / "bundle")


def _paths(node, prefix=()):
    """Every key path of a JSON document."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node[:3]):
            yield (*prefix, i)
            yield from _paths(child, (*prefix, i))


@FAST
@given(data=st.data(), replacement=values, remove=st.booleans())
def test_any_single_edit_of_a_sealed_manifest_gives_a_bundle_or_a_bundle_error(sealed_bundle, tmp_path_factory, data,
                                                                               replacement, remove) -> None:
    from metarl_robot.runtime import BundleError, load_bundle
    from metarl_robot.runtime.integrity import seal_manifest

    copy = Path(shutil.copytree(sealed_bundle, tmp_path_factory.mktemp("fuzz") / "bundle"))
    manifest = json.loads((copy / "manifest.json").read_text())
    paths = [p for p in _paths(manifest) if p[0] not in ("digest",)]
    path = data.draw(st.sampled_from(paths))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if remove and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    try:
        text = json.dumps(seal_manifest(manifest), allow_nan=False)
    except (ValueError, TypeError, BundleError):
        return  # not expressible as a sealed manifest (NaN, a non-string key): nothing to load
    (copy / "manifest.json").write_text(text)
    try:
        bundle = load_bundle(copy)
    except BundleError:
        return
    assert bundle.manifest["observation"]["dim"] >= 1


# ------------------------------------------------------------------------------------------ robot inputs
joint_values = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=12)
POSITIONS = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=5)


@pytest.fixture(scope="module")
def loop_and_bundle(sealed_bundle):
    from metarl_robot.runtime import RobotLoop

    loop = RobotLoop.load(sealed_bundle, ["cpu"])
    loop.start()
    return loop


@FAST
@given(position=joint_values, velocity=joint_values, effort=joint_values, ee=POSITIONS, obj=POSITIONS,
       names=st.one_of(st.none(), st.lists(st.sampled_from(["panda_finger_joint1", "panda_finger_joint2", "x", ""]),
                                           max_size=4)),
       age=st.floats(-1.0, 5.0))
def test_any_robot_input_gives_a_finite_bounded_command_or_a_hold(loop_and_bundle, position, velocity, effort, ee, obj,
                                                                  names, age) -> None:
    from metarl_robot.contract import JointStateSample, PoseSample, RobotInputs

    loop = loop_and_bundle
    joints = list(loop.contract.observed_joints) if names is None else names
    now = 1000.0
    try:
        joint_state = JointStateSample.create(joints, position, velocity, effort, now - age, now)
        pose = {"ee_pose": PoseSample.create(ee, [0, 0, 0, 1], now - age, now),
                "object_pose": PoseSample.create(obj, [0, 0, 0, 1], now - age, now)}
    except (ValueError, TypeError):
        return  # refused where a sample is built (the node's callbacks build them the same way)
    command = loop.tick(now, RobotInputs(joint_state, pose))
    assert command is not None
    values = np.asarray(command.values)
    assert np.isfinite(values).all()
    spec = loop.contract.action
    assert (values >= spec.low - 1e-9).all() and (values <= spec.high + 1e-9).all()
