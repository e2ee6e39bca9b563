"""RL² on the grasp suite: a recurrent policy on the grasp_force skill, warm-started from a teacher that
is never told the task, then PPO; its bundle (the skill inside the graph) exported, verified against
the checkpoint over long sequences, and run by the torch-free runtime with the same commands."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

from metarl_robot.algos import rl2  # noqa: E402
from metarl_robot.checkpoint import load_checkpoint  # noqa: E402
from metarl_robot.config import load_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "grasp_rl2.yaml"
TINY = [
    "iterations=2", "trials_per_iteration=2", "episodes_per_trial=2", "sampler=serial", "checkpoint_every=1",
    "tasks.num_train=8", "tasks.num_test=2", "env_kwargs.max_episode_steps=24",
    "policy.hidden_size=8", "policy.embed_sizes=[8]", "policy.critic_sizes=[8]",
    "ppo.epochs=1", "ppo.minibatches=1", "ppo.critic_warmup_iterations=1", "ppo.imitation_decay_iterations=2",
    "warm_start.rounds=1", "warm_start.epochs=2",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    from metarl_robot.export import export_bundle

    root = tmp_path_factory.mktemp("rl2_grasp")
    config = load_config(rl2.TrainConfig, CONFIG, TINY)
    checkpoint = rl2.train(config, root / "run", progress=False)
    return checkpoint, export_bundle(checkpoint, root / "bundle")


def test_shipped_config_loads_with_a_teacher_that_is_never_told_the_task() -> None:
    config = load_config(rl2.TrainConfig, CONFIG)
    assert config.policy.skill == "grasp_force" and config.env_kwargs["max_episode_steps"] == 60
    assert config.warm_start.teacher == "sim.grasp_baselines:RampBisectionController" and config.warm_start.rounds > 0
    assert config.tasks.distribution.endswith("grasp_distribution")


def test_tiny_run_warm_starts_trains_and_records_the_skill(tiny_run) -> None:
    checkpoint, _ = tiny_run
    policy, data = load_checkpoint(checkpoint)
    assert data["iteration"] == 2 and policy.skill is not None and policy.skill.name == "grasp_force"
    names = [entry[0] for entry in policy.config.skill_layout]
    assert names == ["ee_position", "object_position", "finger_position", "finger_effort"]
    assert torch.equal(policy.learned_mask, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    metrics = data["metrics"]
    assert metrics["loss/imitation_weight"] == pytest.approx(1.0)  # iteration 1: after the critic's warm-up
    assert np.isfinite(metrics["loss/policy"]) and np.isfinite(metrics["loss/value"])


def test_critic_warmup_leaves_the_actor_alone(tmp_path: Path) -> None:
    """During the critic's warm-up only the value head changes: the actor's weights and the core stay."""
    config = load_config(rl2.TrainConfig, CONFIG, [*TINY, "iterations=1", "ppo.critic_warmup_iterations=1"])
    algo = rl2.algo.RL2(config, tmp_path)
    try:
        algo.warm_start()
        before = {k: v.clone() for k, v in algo.policy.state_dict().items()}
        algo.train_iteration()
        after = algo.policy.state_dict()
        frozen = [name for name in before if name.startswith(("actor.", "core.", "embed.", "log_std"))]
        assert len(frozen) >= 4, sorted(before)  # the prefixes still name the actor's parameters
        for name in frozen:
            assert torch.equal(before[name], after[name]), name
        assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("critic."))
    finally:
        algo.close()


def test_imitation_moves_the_actor_towards_the_teacher(tmp_path: Path) -> None:
    """Cloning lowers the imitation loss on the teacher's own trials, from the untrained policy's."""
    from metarl_robot.algos.rl2.teacher import imitation_loss, teacher_tensors

    config = load_config(rl2.TrainConfig, CONFIG, [*TINY, "warm_start.epochs=30", "warm_start.lr=0.01"])
    algo = rl2.algo.RL2(config, tmp_path)
    try:
        fresh = rl2.algo.RL2(config, tmp_path / "fresh")
        metrics = algo.warm_start()
        t = algo._teacher
        torch.manual_seed(0)
        with torch.no_grad():
            trained = float(imitation_loss(algo, t, 100))
        fresh.policy.obs_norm.load_state_dict(algo.policy.obs_norm.state_dict())
        torch.manual_seed(0)
        with torch.no_grad():
            untrained = float(imitation_loss(fresh, teacher_tensors(fresh, _batch_of(algo)), 100))
        fresh.close()
        assert trained < 0.5 * untrained, (trained, untrained, metrics)
    finally:
        algo.close()


def _batch_of(algo):
    """The teacher trials the warm start cloned, as a batch again (kept on the algorithm for PPO)."""
    return algo._teacher_batch


def test_bundle_verifies_against_the_checkpoint_and_runs_the_skill_without_torch(tiny_run) -> None:
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import evaluate, torch_controller
    from metarl_robot.runtime import load_controller
    from metarl_robot.verify import verify_bundle
    from sim.grasp_task import grasp_distribution

    checkpoint, bundle = tiny_run
    report = verify_bundle(bundle, checkpoint=checkpoint)
    assert report.ok, report.format()
    assert "policy_sequence max abs diff" in {c.name: c for c in report.checks}["onnxruntime vs PyTorch checkpoint"].detail
    policy, data = load_checkpoint(checkpoint)
    env = make_meta_env("sim:metarl/PandaGrasp-v0", {"max_episode_steps": 24}, unwrapped=True)
    tasks = grasp_distribution(seed=0).test_tasks[:2]
    on_robot = evaluate(functools.partial(load_controller, bundle, providers=["cpu"]), env, tasks, rounds=2, seed=5)
    in_torch = evaluate(torch_controller(policy, data["adaptation"]), env, tasks, rounds=2, seed=5)
    np.testing.assert_allclose([t["returns"] for t in on_robot["tasks"]], [t["returns"] for t in in_torch["tasks"]], rtol=1e-4)

    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "onnx", "onnxscript"):
            sys.modules[name] = None
        import numpy as np
        from metarl_robot.runtime import load_controller
        ctl = load_controller({str(bundle)!r}, ["cpu"], seed=0)
        obs = np.array([0.5, 0.0, 0.14, 0.5, 0.0, 0.03, 0.04, 0.04, 20.0, 20.0], np.float32)
        command = ctl.act(obs)
        # Far above the object with the gripper open: the skill descends and keeps the gripper open.
        assert command[3] == -60.0 and abs(command[0]) < 1e-6, command
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_warm_start_only_run_resumes_into_ppo_without_cloning_again(tmp_path: Path, monkeypatch) -> None:
    """``iterations: 0`` keeps the clone; resuming it with more iterations fine-tunes that clone with PPO
    and must not collect and clone the teacher's trials a second time (which would overwrite it)."""
    run = tmp_path / "run"
    config = load_config(rl2.TrainConfig, CONFIG, [*TINY, "iterations=0"])
    first = rl2.train(config, run, progress=False)
    cloned = {k: v.clone() for k, v in load_checkpoint(first)[0].state_dict().items()}
    calls = []
    monkeypatch.setattr(rl2.algo.RL2, "warm_start", lambda self: calls.append(1) or {})
    resumed = load_config(rl2.TrainConfig, CONFIG, [*TINY, "iterations=1", "ppo.critic_warmup_iterations=0"])
    checkpoint = rl2.train(resumed, run, resume=True, progress=False)
    policy, data = load_checkpoint(checkpoint)
    assert calls == [] and data["iteration"] == 1
    assert any(not torch.equal(cloned[k], v) for k, v in policy.state_dict().items() if k.startswith("actor."))
