"""The gradient family's benchmark scripts run end to end on tiny budgets: they call the export, parity
and runtime APIs directly, so a change there that they miss (an adapt graph input renamed, a new
required argument) fails here rather than when someone next measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "maml_navigation" / "checkpoint.safetensors"


def run_bench(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_chained_step_drift_runs_on_the_shipped_checkpoint() -> None:
    out = run_bench("bench/chained_step_drift.py", "--steps", "2", "--chains", "1")
    rows = [line for line in out.splitlines() if line.startswith("| onnxruntime vs float64")]
    assert len(rows) == 1
    first, second = (float(cell) for cell in rows[0].strip("| ").split("|")[1:3])
    assert 0 <= first <= 1e-5 and 0 <= second <= 1e-5


def test_adaptation_step_speed_prints_every_ratio(tmp_path: Path) -> None:
    out = run_bench("bench/adaptation_step_speed.py", "--checkpoint", str(CHECKPOINT), "--iterations", "20")
    assert "| onnxruntime (advantages + step) |" in out and "| runtime adapt() |" in out
    assert "numpy advantages + torch.func step" in out
    ratio_rows = [line for line in out.splitlines() if line.startswith(f"| {CHECKPOINT.relative_to(ROOT)} |")
                  or line.startswith(f"| {CHECKPOINT} |")]
    assert ratio_rows, out


def test_grasp_step_direction_runs_on_the_shipped_skill_checkpoint() -> None:
    out = run_bench("bench/grasp_step_direction.py", "--tasks", "2")
    assert "2 test objects" in out and "moved the oracle's way" in out


def test_grasp_attempt_forces_runs_on_the_shipped_skill_checkpoint() -> None:
    out = run_bench("bench/grasp_attempt_forces.py", "--checkpoint", str(ROOT / "models" / "maml_grasp_skill" / "checkpoint.safetensors"),
                    "--tasks", "2")
    assert "policy (mean action): lifted " in out
    assert "slip-law ramp from 1.5 N: lifted " in out and out.count("first squeeze forces") == 4


def test_step_batch_size_takes_one_step_from_each_window_size(tmp_path: Path) -> None:
    out = run_bench("bench/step_batch_size.py", "--checkpoint", str(CHECKPOINT), "--config",
                    str(ROOT / "configs" / "maml_navigation.yaml"), "--episodes", "2", "4", "--eval-tasks", "2",
                    "--out", str(tmp_path / "rows.json"))
    rows = [line for line in out.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert len(rows) == 2, out
    saved = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["episodes"] for r in saved] == [2, 4]
    assert all(r["before"]["return_mean"] < 0 and r["after"]["return_mean"] < 0 for r in saved)


def test_step_batch_size_without_a_config_names_the_fix(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "bench/step_batch_size.py", "--checkpoint", str(CHECKPOINT)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "pass --config" in result.stderr


def test_nav_step_error_splits_the_final_error_along_and_across_the_goal(tmp_path: Path) -> None:
    out = run_bench("bench/nav_step_error.py", "--checkpoint", str(CHECKPOINT), "--config",
                    str(ROOT / "configs" / "maml_navigation.yaml"), "--goals", "3", "--out", str(tmp_path / "e.json"))
    assert "| slope of reached against goal distance |" in out
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert len(rows) == 3
    for r in rows:
        goal, final = np.array(r["goal"]), np.array(r["final"])
        # the split is a decomposition of the final position in the goal's frame
        assert np.isclose(r["along"] ** 2 + r["across"] ** 2, float(final @ final))
        assert np.isclose(r["error"], float(np.linalg.norm(final - goal)))


def test_nav_one_step_bound_reports_each_scheme_on_dynamics_checked_against_the_env(tmp_path: Path) -> None:
    out = run_bench("bench/nav_one_step_bound.py", "--goals", "4", "--windows", "1", "--out", str(tmp_path / "b.json"))
    report = json.loads((tmp_path / "b.json").read_text())
    rows = report["rows"]
    grid = np.array(report["grid"])
    assert grid.shape == (len(report["sigmas"]), len(report["alphas"])) and np.isfinite(grid).all()
    assert max(v for k, v in rows.items() if k.startswith("one gradient step")) == grid.max()
    # reading one episode's rewards exactly locates the goal: as good as driving straight to it
    assert np.isclose(rows["then drive to the goal solved from its rewards"], rows["scripted optimum (drives to the goal)"], atol=1e-6)
    assert rows["standing still"] < rows["scripted optimum (drives to the goal)"]
    assert "| sigma \\ alpha |" in out


def test_nav_one_step_bound_dynamics_are_the_envs() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from nav_one_step_bound import check_against_env, drive_to

    goals = np.array([[0.31, -0.22], [-0.4, 0.05], [0.0, 0.45]])
    check_against_env(goals, np.random.default_rng(0))  # raises SystemExit on a mismatch
    # a target at the goal: per-axis moves of 0.1 m, and the episode stops on reaching it
    goal = np.array([0.3, 0.2])
    expected = -(np.linalg.norm([0.1 - 0.3, 0.1 - 0.2]) + np.linalg.norm([0.2 - 0.3, 0.0]))
    assert np.isclose(drive_to(goal[None], goal)[0], expected)


def test_nav_one_step_bound_scores_the_reward_model_step_on_the_envs_rewards() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from nav_one_step_bound import STEP_M, drive_to, random_walk_windows, reward_model_returns

    goals = np.array([[0.31, -0.22], [-0.4, 0.05]])
    obs, action, reward, _ = (x.numpy() for x in random_walk_windows(goals, np.random.default_rng(0), 3))
    assert np.all(obs[:, :, 0] == 0.0)  # every episode starts at the origin
    after = obs + np.clip(action, -1, 1) * STEP_M
    np.testing.assert_allclose(obs[:, :, 1:], after[:, :, :-1], atol=1e-6)
    np.testing.assert_allclose(reward, -np.linalg.norm(after - goals[:, None, None], axis=-1), atol=1e-5)
    error, value = reward_model_returns(goals, np.random.default_rng(0), steps=2, episodes=2, context_dim=2)
    assert np.isfinite(error) and error > 0
    assert value <= np.mean([drive_to(g[None], g)[0] for g in goals]) + 1e-9  # no controller beats the optimum


def test_navigation_rows_runs_the_baselines_beside_the_shipped_models(tmp_path: Path) -> None:
    out = run_bench("bench/navigation_rows.py", "--eval-tasks", "2", "--rounds", "2", "--out", str(tmp_path))
    report = json.loads((tmp_path / "results.json").read_text())
    labels = list(report["curves"])
    assert any("models/cavia_imitation_navigation" in label for label in labels)
    for baseline in ("scripted optimum", "classical: trilaterate", "standing still"):
        assert any(label.startswith(baseline) for label in labels), baseline
        assert any(line.startswith(f"| {baseline}") for line in out.splitlines()), baseline
    optimum = next(v for k, v in report["curves"].items() if k.startswith("scripted optimum"))["summary"][0]["return_mean"]
    classical = next(v for k, v in report["curves"].items() if k.startswith("classical"))["summary"][0]["return_mean"]
    still = report["curves"]["standing still"]["summary"][0]["return_mean"]
    assert optimum - 1.0 < classical <= optimum and still < classical


def test_navigation_rows_refuses_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "bench/navigation_rows.py", "--row", "x", str(tmp_path / "none.safetensors")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "no checkpoint at" in result.stderr and "Traceback" not in result.stderr


def test_context_later_steps_measures_the_second_step_of_the_shipped_model() -> None:
    out = run_bench("bench/context_later_steps.py", "--goals", "2")
    assert out.count("second step x") == 6 and "line-searched chain" in out and "c1's mean action" in out


def test_context_later_steps_refuses_a_policy_gradient_checkpoint_in_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "bench/context_later_steps.py", "--checkpoint", str(CHECKPOINT)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "reward-model context steps" in result.stderr and "Traceback" not in result.stderr


def test_method_comparison_prints_each_rows_gap_against_the_scripted_optimum(tmp_path: Path) -> None:
    out = run_bench("bench/method_comparison.py", "--iterations", "1", "--eval-tasks", "2", "--methods", "MAML-TRPO",
                    "--out", str(tmp_path))
    report = json.loads((tmp_path / "results.json").read_text())["MAML-TRPO"]
    before, after = (report["summary"][k]["return_mean"] for k in (0, 1))
    optimum = report["scripted_optimum"]
    assert f"scripted optimum on these goals: {optimum:.2f};" in out
    assert optimum > before  # driving to the goal beats an untrained policy
    assert np.isclose(report["gap_closed_after_1_step"], (after - before) / (optimum - before))
    assert "1-step return of MAML-TRPO vs MAML-TRPO's: 100%" in out


@pytest.mark.parametrize("args, message", [
    (["bench/nav_one_step_bound.py", "--config", "no_such.yaml"], "config file 'no_such.yaml' does not exist"),
    (["bench/gradient_meta.py", "cheetah-vel", "--meta-set", "bogus=1", "--iterations", "1"], "unknown config key 'bogus'"),
])
def test_bench_scripts_refuse_a_bad_config_in_one_line(args, message, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if args[0].endswith("gradient_meta.py"):
        args = [*args, "--out", str(tmp_path)]
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
