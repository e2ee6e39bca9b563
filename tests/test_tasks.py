import dataclasses

import numpy as np
import pytest
import yaml
from hypothesis import given, strategies as st

from metarl_robot.tasks import (
    Choice, Fixed, TaskDistribution, TaskError, TaskSpec, Uniform, factor_from_config, load_task_file, save_task_file,
)


def test_taskspec_is_frozen_hashable_and_inspectable():
    t = TaskSpec("grasp", {"object_mass_kg": 0.3, "object_shape": "box"}, "a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.family = "x"
    with pytest.raises(TypeError):
        t.params["object_mass_kg"] = 1.0
    assert t == TaskSpec("grasp", {"object_shape": "box", "object_mass_kg": 0.3}, "a")
    assert {t: 1}[TaskSpec("grasp", {"object_shape": "box", "object_mass_kg": 0.3}, "a")] == 1
    assert t["object_mass_kg"] == 0.3 and t.replace(object_mass_kg=1.0)["object_mass_kg"] == 1.0
    with pytest.raises(TaskError, match="no parameter 'mass'"):
        t["mass"]


def test_taskspec_rejects_bad_values():
    with pytest.raises(TaskError, match="finite"):
        TaskSpec("grasp", {"m": float("nan")})
    with pytest.raises(TaskError, match=r"params\['m'\]"):
        TaskSpec("grasp", {"m": [1, 2]})


def test_distribution_is_seeded_and_splits_are_fixed():
    factors = {"mass": Uniform(0.1, 1.0, log=True), "shape": Choice(("box", "cylinder"), test_values=("sphere",))}
    a = TaskDistribution("grasp", factors, seed=3, num_train=20, num_test=5)
    b = TaskDistribution("grasp", factors, seed=3, num_train=20, num_test=5)
    c = TaskDistribution("grasp", factors, seed=4, num_train=20, num_test=5)
    assert a.train_tasks == b.train_tasks and a.test_tasks == b.test_tasks
    assert a.train_tasks != c.train_tasks
    assert {t["shape"] for t in a.train_tasks} <= {"box", "cylinder"}
    assert {t["shape"] for t in a.test_tasks} == {"sphere"}
    assert not set(a.train_tasks) & set(a.test_tasks)
    drawn = a.sample(50, np.random.default_rng(0))
    assert all(t in a.train_tasks for t in drawn)


@given(st.floats(0.01, 10), st.floats(0.01, 10), st.integers(0, 2**31))
def test_uniform_samples_stay_in_range(lo, span, seed):
    f = Uniform(lo, lo + span, log=True)
    x = f.sample(np.random.default_rng(seed))
    assert lo * (1 - 1e-9) <= x <= (lo + span) * (1 + 1e-9)


def test_factor_config_forms_and_errors():
    assert factor_from_config("m", [0.1, 1.0]) == Uniform(0.1, 1.0)
    assert factor_from_config("m", {"low": 0.1, "high": 1.0, "log": True}) == Uniform(0.1, 1.0, True)
    assert factor_from_config("s", {"choice": ["box"]}) == Choice(("box",))
    assert factor_from_config("s", 0.5) == Fixed(0.5)
    with pytest.raises(TaskError, match="factor 'm': unknown key"):
        factor_from_config("m", {"low": 0, "high": 1, "typo": 2})
    with pytest.raises(TaskError, match="low <= high"):
        Uniform(2.0, 1.0)


def test_task_file_round_trip_and_errors(tmp_path):
    tasks = [TaskSpec("grasp", {"object_mass_kg": 0.2}, "mine")]
    save_task_file(tasks, tmp_path / "t.yaml")
    assert load_task_file(tmp_path / "t.yaml") == tasks

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump([{"family": "grasp", "parms": {}}]))
    with pytest.raises(TaskError, match=r"tasks\[0\]: unknown key\(s\) \['parms'\]"):
        load_task_file(tmp_path / "bad.yaml")
    with pytest.raises(TaskError, match="does not exist"):
        load_task_file(tmp_path / "missing.yaml")

    def no_negative_mass(task):
        if task["object_mass_kg"] <= 0:
            raise TaskError("object_mass_kg must be > 0")

    (tmp_path / "neg.yaml").write_text(yaml.safe_dump([{"family": "grasp", "params": {"object_mass_kg": -1}}]))
    with pytest.raises(TaskError, match=r"neg.yaml: tasks\[0\]: object_mass_kg must be > 0"):
        load_task_file(tmp_path / "neg.yaml", {"grasp": no_negative_mass})


def test_task_file_refuses_duplicate_ids_and_unreadable_text(tmp_path):
    twice = [{"family": "grasp", "task_id": "cup", "params": {}}, {"family": "grasp", "task_id": "cup", "params": {}}]
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(twice))
    with pytest.raises(TaskError, match=r"tasks\[1\]: task_id 'cup' is already used by tasks\[0\]; give every task its own"):
        load_task_file(tmp_path / "dup.yaml")
    # A generated id ("<stem>-<index>") may not collide with a given one either.
    clash = [{"family": "grasp", "task_id": "gen-1", "params": {}}, {"family": "grasp", "params": {}}]
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(clash))
    with pytest.raises(TaskError, match=r"task_id 'gen-1' is already used by tasks\[0\]"):
        load_task_file(tmp_path / "gen.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"- family: gr\xe4sp\n")
    with pytest.raises(TaskError, match=r"latin1.yaml' is not UTF-8 text \(byte 12: .*\); save it as UTF-8"):
        load_task_file(tmp_path / "latin1.yaml")
    (tmp_path / "syntax.yaml").write_text("- family: grasp\n  params: {a: [1\n")
    with pytest.raises(TaskError, match=r"syntax.yaml' is not valid YAML at line \d+, column \d+: .*; fix the syntax there"):
        load_task_file(tmp_path / "syntax.yaml")


def test_taskspec_pickles_for_subprocess_workers():
    import pickle

    t = TaskSpec("grasp", {"object_mass_kg": 0.3}, "a")
    assert pickle.loads(pickle.dumps(t)) == t
