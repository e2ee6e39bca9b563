"""The command line answers bad input with one line naming the problem and the fix (exit code 2), and
training runs are never destroyed: no training over an existing run, --resume continues the run as it
was configured, the last checkpoints and the best are kept, a torn latest checkpoint falls back to the
previous good one, and TensorBoard never logs a step twice."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import yaml

from metarl_robot.cli import main

TINY_MAML = {
    "method": "maml",
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 2},
    "iterations": 4,
    "meta_batch_size": 2,
    "inner": {"episodes_per_step": 2},
    "policy": {"hidden_sizes": [8, 8]},
    "checkpoint_every": 1,
}


def _one_line(rc: int, capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MAML))
    return path


@pytest.fixture
def trained(config_file: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--run-dir", str(run), "--no-progress"]) == 0
    return run


def test_training_into_a_run_is_refused_and_names_both_ways_out(trained: Path, config_file: Path, capsys) -> None:
    before = {p: p.read_bytes() for p in (trained / "checkpoints").glob("*")}
    line = _one_line(main(["train", "--config", str(config_file), "--run-dir", str(trained), "--no-progress"]), capsys)
    assert "already holds a run" in line and "--resume" in line and "new --run-dir" in line
    assert {p: p.read_bytes() for p in (trained / "checkpoints").glob("*")} == before


def test_keeps_the_last_three_checkpoints_and_the_best(trained: Path) -> None:
    folder = trained / "checkpoints"
    assert sorted(p.name for p in folder.glob("iter_*")) == [f"iter_00000{i}.safetensors" for i in (2, 3, 4)]
    best = json.loads((folder / "best.json").read_text())
    assert best["keys"] == ["return/after_adaptation"] and 1 <= best["iteration"] <= 4
    from metarl_robot.checkpoint import load_checkpoint

    assert load_checkpoint(folder / "best.safetensors")[1]["iteration"] == best["iteration"]
    assert load_checkpoint(folder / "iter_000004.safetensors")[1]["iteration"] == 4


def test_resume_reads_the_runs_own_config_and_records_overrides(trained: Path, capsys) -> None:
    assert main(["train", "--run-dir", str(trained), "--resume", "--set", "iterations=5", "--no-progress"]) == 0
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["method"] == "maml" and config["iterations"] == 5 and config["meta_batch_size"] == 2
    assert "--resume --set iterations=5" in (trained / "resumes.log").read_text()
    from metarl_robot.checkpoint import load_checkpoint

    assert load_checkpoint(trained / "checkpoints" / "last.safetensors")[1]["iteration"] == 5
    line = _one_line(main(["train", "--config", "configs/grasp_rl2.yaml", "--run-dir", str(trained), "--resume"]), capsys)
    assert "drop --config" in line and "--set" in line
    line = _one_line(main(["train", "--run-dir", str(trained / "nothing"), "--resume"]), capsys)
    assert "holds no run" in line and "without --resume" in line


def test_a_torn_latest_checkpoint_falls_back_to_the_previous_good_one(trained: Path, caplog) -> None:
    last = trained / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:1000])
    with caplog.at_level("WARNING", logger="metarl_robot.train"):
        assert main(["train", "--run-dir", str(trained), "--resume", "--set", "iterations=5", "--no-progress"]) == 0
    assert any("cannot be read" in r.message and "iter_000004" in r.message for r in caplog.records)
    from metarl_robot.checkpoint import load_checkpoint

    assert load_checkpoint(last)[1]["iteration"] == 5


def test_no_tensorboard_step_is_logged_twice_after_a_resume(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # The run logged iterations 1-4; pretend it died after logging 4 but before saving it.
    folder = trained / "checkpoints"
    (folder / "last.safetensors").write_bytes((folder / "iter_000003.safetensors").read_bytes())
    assert main(["train", "--run-dir", str(trained), "--resume", "--set", "iterations=5", "--no-progress"]) == 0
    events = EventAccumulator(str(trained / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("return/after_adaptation")]
    assert steps == [1, 2, 3, 4, 5]


def test_a_full_disk_gives_one_line_and_leaves_no_partial_file(config_file: Path, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import metarl_robot.checkpoint as checkpoint

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    run = tmp_path / "full"
    line = _one_line(main(["train", "--config", str(config_file), "--run-dir", str(run), "--no-progress"]), capsys)
    assert "No space left on device" in line and "free some disk space" in line
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.safetensors"))


def test_an_unwritable_run_dir_gives_one_line(config_file: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = _one_line(main(["train", "--config", str(config_file), "--run-dir", str(blocker / "run")]), capsys)
    assert "a_file" in line and "writable folder" in line
    from tests.runtime.conftest import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "c.safetensors")
    line = _one_line(main(["export", str(checkpoint), "--out", str(blocker / "bundle")]), capsys)
    assert "a_file" in line and ("a file is in the way" in line or "writable folder" in line)
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(("content", "expected"), [
    (b"method: maml\n  iterations: [\n", r"is not valid YAML at line 2, column \d+: .*; fix the syntax there"),
    (b"method: m\xe4ml\n", r"is not UTF-8 text \(byte 9: .*\); save it as UTF-8"),
])
def test_unreadable_configs_give_one_line(content: bytes, expected: str, tmp_path: Path, capsys) -> None:
    import re

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    line = _one_line(main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]), capsys)
    assert re.search(expected, line), line
    assert not (tmp_path / "run").exists()


def test_a_malformed_set_value_gives_one_line(config_file: Path, tmp_path: Path, capsys) -> None:
    line = _one_line(main(["train", "--config", str(config_file), "--run-dir", str(tmp_path / "r"), "--set", "inner.lr=[1"]), capsys)
    assert "override 'inner.lr=[1': the value is not valid YAML" in line and "quote it" in line


@pytest.mark.parametrize(("argv", "named"), [
    (["eval", "--bundle", "B", "--rounds", "0"], "argument --rounds/--episodes: must be >= 1, got 0"),
    (["eval", "--bundle", "B", "--num-tasks", "0"], "argument --num-tasks: must be >= 1, got 0"),
    (["eval", "--bundle", "B", "--num-tasks", "-1"], "argument --num-tasks: must be >= 1, got -1"),
    (["eval", "--bundle", "B", "--episodes-per-round", "0"], "argument --episodes-per-round: must be >= 1, got 0"),
    (["eval", "--bundle", "B", "--rounds", "two"], "expected a whole number >= 1, got 'two'"),
    (["gif", "--env-id", "metarl/Navigation2D-v0", "--index", "-1"], "argument --index: must be >= 0, got -1"),
])
def test_bad_numbers_are_refused_before_anything_runs(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and named in err and "--help" in err, err


def test_num_tasks_with_a_task_file_is_refused(tmp_path: Path, capsys) -> None:
    from metarl_robot.export import export_bundle
    from tests.runtime.conftest import make_checkpoint

    bundle = export_bundle(make_checkpoint(tmp_path / "c.safetensors"), tmp_path / "bundle")
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("- family: grasp\n  params: {object_shape: box, object_size_m: 0.05, object_mass_kg: 0.2, "
                     "lateral_friction: 0.7, crush_force_n: 30}\n")
    line = _one_line(main(["eval", "--bundle", str(bundle), "--env-id", "sim:metarl/PandaGrasp-v0", "--task-file", str(tasks),
                           "--num-tasks", "1",
                           "--out", str(tmp_path / "e")]), capsys)
    assert "with --task-file every task of the file runs" in line


def test_export_into_an_existing_folder_gives_one_line(tmp_path: Path, capsys) -> None:
    from tests.runtime.conftest import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "c.safetensors")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    line = _one_line(main(["export", str(checkpoint), "--out", str(tmp_path / "taken")]), capsys)
    assert "already exists" in line and "--overwrite" in line
    line = _one_line(main(["export", str(checkpoint), "--out", str(tmp_path / "taken"), "--overwrite"]), capsys)
    assert "not a bundle" in line and (tmp_path / "taken" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(("setting", "named"), [("checkpoint_every=0", "checkpoint_every: must be a whole number >= 1"),
                                               ("seed=-1", "seed: must be a whole number >= 0"),
                                               ("inner.lr=-0.1", "inner")])
def test_invalid_values_are_refused_at_load(setting: str, named: str, config_file: Path, tmp_path: Path, capsys) -> None:
    line = _one_line(main(["train", "--config", str(config_file), "--run-dir", str(tmp_path / "r"), "--set", setting]), capsys)
    assert named in line
    assert not (tmp_path / "r").exists(), "nothing is written for a config refused at load"


def test_the_evaluation_plot_keeps_its_text_inside_and_success_at_or_above_zero() -> None:
    import matplotlib.pyplot as plt

    from metarl_robot.evaluation import report_figure

    rows = [{"round": r, "success_mean": m, "success_ci95": 0.3, "return_mean": -5.0 + r, "return_ci95": 1.0}
            for r, m in enumerate([0.05, 0.1, 0.9])]
    results = {"summary": rows, "num_tasks": 128, "episodes_per_round": 1}
    fig = report_figure(results, title="4 runs pooled: checkpoint runs/a/very/long/path/of/a/run/last.safetensors " * 2)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        texts = [fig._suptitle, *(a.xaxis.label for a in fig.axes), *(a.yaxis.label for a in fig.axes)]
        for text in texts:
            extent = text.get_window_extent(renderer)
            assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1 and extent.y1 <= box.y1 + 1, text.get_text()
        success = fig.axes[0]
        assert success.get_ylim()[0] == 0.0
        bars = [c for c in success.collections]  # the error bars' line segments
        lowest = min(float(seg[:, 1].min()) for c in bars for seg in c.get_segments())
        assert lowest >= 0.0
    finally:
        plt.close(fig)


@pytest.mark.parametrize(("env_id", "policy"), [
    ("metarl_robot.testing:metarl/PointGoal-v0", "random"),
    ("metarl/Navigation2D-v0", "models/maml_navigation/bundle"),
    ("metarl/Navigation2D-v0", "models/maml_navigation/checkpoint.safetensors"),
])
def test_gif_records_test_envs_bundles_and_gradient_checkpoints(env_id: str, policy: str, tmp_path: Path, capsys) -> None:
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    root = Path(__file__).resolve().parents[1]
    if policy != "random":
        policy = str(root / policy)
    out = tmp_path / "roll.gif"
    assert main(["gif", "--env-id", env_id, "--policy", policy, "--max-steps", "5", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.read_bytes()[:6] == b"GIF89a" and "6 frames" in capsys.readouterr().out
