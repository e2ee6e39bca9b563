"""RMA on the recurrent family's window cell: the history window as the carried state, phase 1 through
the privileged latent, phase 2 training only the adaptation module, and a tiny-budget run that is
saved, resumed, exported, verified and evaluated through the torch-free runtime."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl_robot.algos import rma
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import ConfigError, load_config
from metarl_robot.recurrent_policy import RecurrentPolicy, RecurrentPolicyConfig
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "method": "rma",
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 16, "num_test": 3},
    "ppo_iterations": 2,
    "trials_per_iteration": 8,
    "episodes_per_trial": 2,
    "sampler": "serial",
    "checkpoint_every": 1,
    "policy": {"cell": "window", "window_steps": 4, "hidden_size": 24, "embed_sizes": [], "latent_dim": 3},
    "ppo": {"epochs": 2, "minibatches": 2},
    "warm_start": {"demonstrator": "metarl_robot.testing:point_goal_demonstrator", "rounds": 2, "epochs": 20,
                   "noise_dims": [0], "noise_log_std": 0.3},
    "adaptation_module": {"iterations": 3, "epochs": 30, "minibatches": 2},
}


def _window_policy(steps: int = 4, privileged: int = 2) -> RecurrentPolicy:
    torch.manual_seed(0)
    config = RecurrentPolicyConfig(cell="window", window_steps=steps, hidden_size=8, embed_sizes=(), latent_dim=3, privileged_dim=privileged)
    policy = RecurrentPolicy(5, 2, [1.0, 2.0], config)
    with torch.no_grad():
        policy.obs_norm.update(torch.randn(200, 5) * 3.0 + 1.0)
    return policy.eval()


def _sequence(policy: RecurrentPolicy, batch: int, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, policy.obs_dim, generator=g) * 3, torch.rand(batch, steps, policy.act_dim, generator=g) * 2 - 1,
            torch.randn(batch, steps, 1, generator=g), (torch.rand(batch, steps, 1, generator=g) < 0.1).float())


def test_the_window_state_is_exactly_the_last_inputs_oldest_first() -> None:
    """Known answer: after any number of steps the state is the last N core inputs, and a sequence
    unrolled at once gives the same features and state as one step at a time (the exported graph)."""
    policy = _window_policy(steps=4)
    obs, act, rew, done = _sequence(policy, batch=3, steps=11)
    start = torch.randn(3, policy.state_size)  # a non-zero window, as the robot carries across attempts
    with torch.no_grad():
        features, final = policy.unroll(obs, act, rew, done, start)
        inputs = policy.core_inputs(obs, act, rew, done)
        state, stepped = start, []
        for t in range(obs.shape[1]):
            f, state = policy.unroll(obs[:, t : t + 1], act[:, t : t + 1], rew[:, t : t + 1], done[:, t : t + 1], state)
            stepped.append(f)
    assert policy.state_size == 4 * inputs.shape[-1] and policy.state_layout == [{"name": "history", "offset": 0, "size": policy.state_size}]
    torch.testing.assert_close(final, inputs[:, -4:].reshape(3, -1))
    torch.testing.assert_close(state, final)
    torch.testing.assert_close(torch.cat(stepped, dim=1), features)
    # Two steps in, the window still holds the two newest inputs of the starting window ahead of them.
    with torch.no_grad():
        _, two = policy.unroll(obs[:, :2], act[:, :2], rew[:, :2], done[:, :2], start)
    width = inputs.shape[-1]
    torch.testing.assert_close(two[:, : 2 * width], start[:, 2 * width :])


def test_the_privileged_latent_replaces_the_estimate_only_where_given() -> None:
    policy = _window_policy()
    obs, act, rew, done = _sequence(policy, batch=2, steps=6)
    zero = policy.initial_state(2)
    a, b = torch.tensor([[0.1, 5.0], [2.0, -1.0]]), torch.tensor([[3.0, 0.0], [-2.0, 4.0]])
    with torch.no_grad():
        estimated, _ = policy.unroll(obs, act, rew, done, zero)
        with_a, _ = policy.unroll(obs, act, rew, done, zero, privileged=a)
        with_b, _ = policy.unroll(obs, act, rew, done, zero, privileged=b)
        base = policy.core.base(torch.cat([policy.core_inputs(obs, act, rew, done), policy.privileged_latent(a).unsqueeze(1).expand(-1, 6, -1)], -1))
    torch.testing.assert_close(with_a, base)
    assert (with_a - with_b).abs().max() > 1e-3 and (with_a - estimated).abs().max() > 1e-3
    gru = RecurrentPolicy(5, 2, [1.0, 2.0], RecurrentPolicyConfig(cell="gru", hidden_size=4))
    with pytest.raises(ValueError, match="no privileged encoder"):
        gru.privileged_latent(a)


@pytest.mark.parametrize(
    "override, message",
    [
        ("policy.cell=gru", "method rma trains the window cell"),
        ("method=prototypical", "method prototypical trains the prototype cell"),
        ("policy.comparison=manhattan", "comparison 'manhattan' is not supported"),
        ("policy.window_steps=1", "window_steps >= 2"),
        ("log_privileged=[mass]", "not in privileged"),
        ("warm_start.rounds=2", "needs warm_start.demonstrator"),
        ("warm_start.noise_log_std=-1", "noise_log_std >= 0"),
        ("adaptation_module.buffer_rounds=0", "buffer_rounds"),
    ],
)
def test_config_refuses_bad_values_by_name(override: str, message: str) -> None:
    base = dict(TINY, warm_start={}, privileged=["goal_x"]) if "log_privileged" in override else dict(TINY, warm_start={})
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(rma.TrainConfig, base, [override])


def test_shipped_config_loads_and_train_finds_the_method() -> None:
    from metarl_robot.families import registry

    config = load_config(rma.TrainConfig, REPO_ROOT / "configs" / "grasp_rma.yaml")
    assert config.method == "rma" and config.policy.cell == "window" and config.iterations == config.adaptation_module.iterations
    assert registry.algorithm("rma") is rma


def test_tiny_budget_run_trains_both_phases_resumes_exports_verifies_and_evaluates(tmp_path: Path) -> None:
    from metarl_robot.evaluation import evaluate, torch_controller
    from metarl_robot.export import export_bundle
    from metarl_robot.runtime import load_controller
    from metarl_robot.verify import verify_bundle

    config = load_config(rma.TrainConfig, dict(TINY, adaptation_module={**TINY["adaptation_module"], "iterations": 0}))
    path = rma.train(config, tmp_path / "run", progress=False)
    phase1, data = load_checkpoint(path)
    assert data["method"] == "rma" and data["iteration"] == 2 and phase1.config.privileged_dim == 2  # goal_x, goal_y
    assert data["adaptation"]["privileged"] == ["goal_x", "goal_y"]
    assert "loss/approx_kl" in data["metrics"]  # phase 1 ran PPO through the privileged latent

    more = load_config(rma.TrainConfig, TINY)  # phase 2's three rounds on top
    path = rma.train(more, tmp_path / "run", resume=True, progress=False)
    policy, data = load_checkpoint(path)
    assert data["iteration"] == 5
    # Phase 2 trains the adaptation module and nothing else: the base, actor, encoder and normaliser stay.
    moved = {name for name, p in policy.state_dict().items() if not torch.equal(p, phase1.state_dict()[name])}
    assert moved and all(name.startswith("core.adaptation.") for name in moved), moved
    metrics = data["metrics"]
    assert metrics["adaptation_module/latent_mse"] < metrics["adaptation_module/latent_mse_before_fit"]

    bundle = export_bundle(path, tmp_path / "bundle")
    report = verify_bundle(bundle, checkpoint=path)
    assert report.ok, report.format()
    manifest_adaptation = load_controller(bundle, ["cpu"]).bundle.adaptation
    assert manifest_adaptation["cell"] == "window" and manifest_adaptation["window_steps"] == 4

    env, tasks = PointGoalEnv(), point_goal_distribution(num_test=3).test_tasks
    on_robot = evaluate(functools.partial(load_controller, bundle, providers=["cpu"]), env, tasks, rounds=2, seed=3)
    in_torch = evaluate(torch_controller(policy, data["adaptation"]), env, tasks, rounds=2, seed=3)
    np.testing.assert_allclose([t["returns"] for t in on_robot["tasks"]], [t["returns"] for t in in_torch["tasks"]], rtol=1e-4)


def test_phase_two_learns_the_latent_from_the_history() -> None:
    """Known answer on the point task: the goal (the privileged parameters) shows in the history (where
    the point moved, how the reward changed), so after a few rounds the module's latents are far closer
    to the encoder's than the best constant guess (the latents' variance over the tasks) is."""
    import tempfile

    with tempfile.TemporaryDirectory() as run:
        cfg = dict(TINY, ppo_iterations=0, adaptation_module={**TINY["adaptation_module"], "lr": 3e-3, "epochs": 50})
        algo = rma.RMA(load_config(rma.TrainConfig, cfg), Path(run))
        try:
            algo.warm_start()
            for _ in range(4):
                last = algo.train_iteration()
        finally:
            algo.close()
    assert last["adaptation_module/privileged_round"] == 0.0  # the last rounds acted on the module's own estimates
    assert last["adaptation_module/latent_mse"] < 0.5 * last["adaptation_module/latent_variance"], last


@pytest.mark.parametrize("comparison", ["euclidean", "cosine"])
def test_prototypical_inference_trains_its_metric_and_exports(comparison: str, tmp_path: Path) -> None:
    """The prototype cell: one prototype per training task whose latent is the encoder's latent of that task;
    phase 2 moves only the embedding, the prototypes and the temperature (and sets the prototype latents),
    the support set's task logits learn to pick out the task they came from, and the bundle verifies."""
    from metarl_robot.export import export_bundle
    from metarl_robot.verify import verify_bundle

    cfg = dict(TINY, method="prototypical", ppo_iterations=0,
               policy={"cell": "prototype", "hidden_size": 24, "embed_sizes": [], "latent_dim": 3, "embedding_dim": 6,
                       "comparison": comparison},
               adaptation_module={**TINY["adaptation_module"], "iterations": 0})
    path = rma.train(load_config(rma.TrainConfig, cfg), tmp_path / "run", progress=False)
    phase1, _ = load_checkpoint(path)
    assert phase1.config.num_prototypes == 16 and not phase1.core.prototype_latents.any()
    path = rma.train(load_config(rma.TrainConfig, dict(cfg, adaptation_module={**TINY["adaptation_module"], "lr": 3e-3})),
                     tmp_path / "run", resume=True, progress=False)
    policy, data = load_checkpoint(path)
    assert data["method"] == "prototypical" and data["iteration"] == 3
    moved = {name for name, p in policy.state_dict().items() if not torch.equal(p, phase1.state_dict()[name])}
    inference = ("core.embedding.", "core.prototypes", "core.log_temperature", "core.prototype_latents")
    assert moved and all(name.startswith(inference) for name in moved), moved
    tasks = point_goal_distribution(num_train=16).train_tasks
    goals = torch.tensor([[t["goal_x"], t["goal_y"]] for t in tasks], dtype=torch.float32)
    torch.testing.assert_close(policy.core.prototype_latents, policy.privileged_latent(goals).detach())
    metrics = data["metrics"]
    # Chance is log(16) = 2.77 nats; the support sets must say more than that about their task.
    assert metrics["adaptation_module/task_loss"] < 2.6, metrics
    bundle = export_bundle(path, tmp_path / "bundle")
    report = verify_bundle(bundle, checkpoint=path)
    assert report.ok, report.format()
