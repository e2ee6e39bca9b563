"""Gradient-based meta-RL: every method trains for a tiny budget, and the meta-gradient through one or
several inner steps is the true derivative of the post-adaptation objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl_robot.algos.gradient import METHODS, GradientMetaRL, TrainConfig, train
from metarl_robot.algos.gradient.algo import conjugate_gradient, masked_mean
from metarl_robot.gradient_policy import gaussian_log_prob
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import ConfigError, load_config
from metarl_robot.evaluation import evaluate
from metarl_robot.families.gradient_torch import GradientTorchController
from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig, adaptation_step
from metarl_robot.runtime.advantages import AdvantageConfig, compute_advantages, discounted_returns, linear_feature_baseline
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

TINY = {
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 2},
    "iterations": 2,
    "meta_batch_size": 2,
    "inner": {"episodes_per_step": 3},
    "policy": {"hidden_sizes": [8, 8]},
    "checkpoint_every": 1,
}
METHOD_SETTINGS = {
    "maml": {},
    "promp": {},
    "reptile": {"inner": {"episodes_per_step": 3, "steps": 2}},
    "cavia": {"policy": {"hidden_sizes": [8, 8], "context_dim": 3}},
    "meta_sgd": {"policy": {"hidden_sizes": [8, 8], "learn_inner_lr": True}},
    "multitask_ppo": {},
}


def tiny(**changes):
    return load_config(TrainConfig, {**TINY, **changes})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_for_a_tiny_budget_and_checkpoints(method, tmp_path):
    config = tiny(method=method, **METHOD_SETTINGS[method])
    torch.manual_seed(config.seed)
    before = GradientPolicy(2, 2, [0.1, 0.1], config.policy)
    path = train(config, tmp_path, progress=False)
    policy, data = load_checkpoint(path)
    assert isinstance(policy, GradientPolicy) and data["method"] == config.method_name and data["iteration"] == 2
    assert not torch.equal(policy.weights, before.weights), "the meta-parameters did not move"
    assert data["adaptation"]["kind"] == "gradient_step" and data["adaptation"]["max_episode_steps"] == 20
    assert np.isfinite(data["metrics"]["return/after_adaptation"])
    assert (tmp_path / "config.yaml").exists() and list((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_with_several_updates_per_step_trains_with_either_outer_optimiser(outer, first_order, tmp_path):
    config = tiny(outer=outer, inner={"episodes_per_step": 3, "first_order": first_order},
                  policy={"hidden_sizes": [8, 8], "inner_updates": 2})
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    assert policy.config.inner_updates == 2 and np.isfinite(data["metrics"]["return/after_adaptation"])


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_with_several_inner_steps_trains_with_either_outer_optimiser(outer, first_order, tmp_path):
    config = tiny(outer=outer, inner={"episodes_per_step": 3, "steps": 3, "first_order": first_order})
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    metrics = data["metrics"]
    assert {f"return/step_{k}" for k in range(4)} <= set(metrics) and data["method"] == f"maml_{outer}"


@pytest.mark.parametrize("every_step", [False, True])
def test_the_outer_objective_scores_the_last_step_or_every_step(every_step, tmp_path):
    """With ``loss_every_step`` the outer surrogate is the mean over k = 1..3 of the policy adapted k
    times, each on the episodes it collected (inner batch k, then the post batch); otherwise only the
    policy adapted 3 times on the post batch."""
    config = tiny(iterations=1, inner={"episodes_per_step": 3, "steps": 3, "loss_every_step": every_step})
    algo = GradientMetaRL(config, tmp_path)
    try:
        _, inner, post = algo.collect_iteration()
        batches = algo.outer_batches(inner, post)
        expected = [(1, inner[1]), (2, inner[2]), (3, post)] if every_step else [(3, post)]
        assert [k for k, _ in batches] == [k for k, _ in expected]
        assert all(b is e for (_, b), (_, e) in zip(batches, expected))
        dists = algo.post_distributions(inner, post, create_graph=False)
        by_hand = []
        for k, batch in expected:
            per_task = []
            for m in range(post.obs.shape[0]):
                phi = algo.adapt(algo.policy.initial_adapted(), inner, m, create_graph=False)[k]
                per_task.append(algo.policy.mean_log_std(phi, batch.obs[m]))
            by_hand.append(float(algo.surrogate(per_task, batch).detach()))
        assert float(algo.outer_surrogate(dists, inner, post).detach()) == pytest.approx(np.mean(by_hand), rel=1e-5)
        assert float(algo.outer_kl(dists, dists, inner, post).detach()) == pytest.approx(0.0, abs=1e-7)
    finally:
        algo.close()


def test_exploration_credit_raises_the_likelihood_of_what_tasks_that_adapted_well_explored(tmp_path):
    """E-MAML's term: zero at the current parameters (every likelihood ratio is 1 and the credit is
    standardised), and one gradient step on it makes the pre-adaptation actions of the task that gained
    most from adapting more likely and those of the task that gained least less likely."""
    config = tiny(inner={"episodes_per_step": 3, "steps": 1, "exploration_credit": 1.0})
    algo = GradientMetaRL(config, tmp_path)
    try:
        _, inner, post = algo.collect_iteration()
        pre = inner[0]
        term = algo.exploration_term(pre, post)
        assert float(term.detach()) == pytest.approx(0.0, abs=1e-6)
        dists = algo.post_distributions(inner, post, create_graph=False)
        plain = float(algo.surrogate(dists[0], post))  # one step: the post batch alone
        assert float(algo.outer_surrogate(dists, inner, post)) == pytest.approx(plain, abs=1e-6)
        gain = post.returns.mean(axis=1) - pre.returns.mean(axis=1)
        best, worst = int(np.argmax(gain)), int(np.argmin(gain))

        def mean_log_prob(m: int) -> float:
            with torch.no_grad():
                mean, log_std = algo.policy.mean_log_std(algo.policy.initial_adapted(), pre.obs[m])
                return float(masked_mean(gaussian_log_prob(mean, log_std, pre.actions[m]), pre.mask[m]))

        before = (mean_log_prob(best), mean_log_prob(worst))
        params = algo.policy.meta_parameters()
        grads = torch.autograd.grad(algo.exploration_term(pre, post), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 1e-3 * g
        assert mean_log_prob(best) > before[0] and mean_log_prob(worst) < before[1]
    finally:
        algo.close()
    with pytest.raises(ValueError, match="exploration_credit"):
        tiny(inner={"exploration_credit": -1.0})


def test_training_records_the_guard_the_robot_adapts_under(tmp_path):
    """validated_steps is the number of inner steps meta-training took; max_drop is three standard
    errors of the difference of two windows' means, from the spread of returns within a task."""
    config = tiny(inner={"episodes_per_step": 3, "steps": 2})
    _, data = load_checkpoint(train(config, tmp_path, progress=False))
    sd = data["metrics"]["return/within_task_sd"]
    assert sd > 0
    assert data["adaptation"]["guard"] == {"signal": "return", "max_drop": pytest.approx(3.0 * sd * np.sqrt(2 / 3)),
                                           "validated_steps": 2}
    _, baseline = load_checkpoint(train(tiny(method="multitask_ppo"), tmp_path / "mt", progress=False))
    assert baseline["adaptation"]["guard"]["validated_steps"] is None  # it never adapted in training


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    train(tiny(iterations=1), tmp_path, progress=False)
    _, data = load_checkpoint(train(tiny(iterations=2), tmp_path, resume=True, progress=False))
    assert data["iteration"] == 2


def test_method_settings_that_contradict_each_other_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="policy.context_dim"):
        tiny(method="cavia")
    with pytest.raises(ConfigError, match="learn_inner_lr"):
        tiny(method="meta_sgd")
    with pytest.raises(ConfigError, match="outer"):
        tiny(outer="sgd")
    with pytest.raises(ConfigError, match="inner.steps"):
        tiny(method="reptile", inner={"steps": 0})
    with pytest.raises(ConfigError, match="method 'cavia'"):
        tiny(method="maml", policy={"hidden_sizes": [8, 8], "inner_loss": "reward_model"})
    with pytest.raises(ConfigError, match="context_dim"):
        tiny(method="cavia", policy={"hidden_sizes": [8, 8], "inner_loss": "reward_model"})
    with pytest.raises(ConfigError, match="inner_loss"):
        tiny(method="cavia", policy={"hidden_sizes": [8, 8], "context_dim": 2, "inner_loss": "td_error"})
    with pytest.raises(ConfigError, match="reward_model.*epochs"):
        tiny(reward_model={"epochs": -1})


# ------------------------------------------------------------------------------ reward-model context step
REWARD_MODEL = {"hidden_sizes": [8, 8], "context_dim": 3, "inner_loss": "reward_model", "model_hidden_sizes": [16, 16]}


def test_a_reward_model_context_step_learns_its_model_and_step_sizes_beside_the_policy(tmp_path):
    config = tiny(method="cavia", iterations=3, policy=REWARD_MODEL)
    torch.manual_seed(config.seed)
    before = GradientPolicy(2, 2, [0.1, 0.1], config.policy)
    path = train(config, tmp_path, progress=False)
    policy, data = load_checkpoint(path)
    assert policy.reads_rewards and data["config"]["policy"]["inner_loss"] == "reward_model"
    # The policy by the outer step, the model and the step sizes (reached only through the inner step)
    # by the supervised one.
    for name in ("weights", "model_weights", "inner_lr"):
        assert not torch.equal(getattr(policy, name), getattr(before, name)), f"{name} did not move"
    assert data["metrics"]["loss/reward_model_after"] < data["metrics"]["loss/reward_model_before"]
    assert data["metrics"]["loss/reward_model_reverted"] == 0.0
    assert data["model_optimizer"]["state"], "the model's optimizer state is not in the checkpoint"


def test_during_the_reward_models_warm_up_only_the_model_learns(tmp_path):
    config = tiny(method="cavia", iterations=2, policy=REWARD_MODEL, reward_model={"warmup_iterations": 2})
    torch.manual_seed(config.seed)
    before = GradientPolicy(2, 2, [0.1, 0.1], config.policy)
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    assert torch.equal(policy.weights, before.weights), "the policy moved during the model's warm-up"
    assert not torch.equal(policy.model_weights, before.model_weights)
    assert "loss/surrogate_before" not in data["metrics"] and "loss/reward_model_after" in data["metrics"]


def test_a_model_update_that_leaves_the_model_worse_is_undone(tmp_path):
    # Adam steps of 50 per entry wreck any model: the update must be undone, not handed to the policy.
    config = tiny(method="cavia", iterations=1, policy=REWARD_MODEL, reward_model={"lr": 50.0, "epochs": 3})
    torch.manual_seed(config.seed)
    before = GradientPolicy(2, 2, [0.1, 0.1], config.policy)
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    assert data["metrics"]["loss/reward_model_reverted"] == 1.0
    assert torch.equal(policy.model_weights, before.model_weights) and torch.equal(policy.inner_lr, before.inner_lr)


IMITATION = {"demonstrator": "sim.navigation:navigation_oracle", "steps": 20, "tasks_per_step": 2, "lr": 0.01}


def test_imitation_on_the_adapted_contexts_learns_the_demonstrators_labels_and_holds_the_window(tmp_path):
    config = tiny(method="cavia", outer="imitation", iterations=3, policy=REWARD_MODEL, imitation=IMITATION)
    torch.manual_seed(config.seed)
    before = GradientPolicy(2, 2, [0.1, 0.1], config.policy)
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    metrics = data["metrics"]
    assert data["method"] == "cavia_imitation"
    assert metrics["loss/imitation_after"] < metrics["loss/imitation_before"]
    assert "loss/surrogate_before" not in metrics and "loss/reward_model_after" not in metrics
    # The model that identifies the contexts is frozen while the policy imitates on them.
    assert torch.equal(policy.model_weights, before.model_weights) and torch.equal(policy.inner_lr, before.inner_lr)
    # Only the mean learns: the log std (the window's exploration noise) is where it started.
    torch.testing.assert_close(policy.weights[-2:], before.weights[-2:])
    assert not torch.equal(policy.weights, before.weights)
    # The anchor holds the unadapted mean nearer zero on the window's states than the same run without it.
    free = tiny(method="cavia", outer="imitation", iterations=3, policy=REWARD_MODEL,
                imitation={**IMITATION, "anchor_weight": 0.0})
    _, unanchored = load_checkpoint(train(free, tmp_path / "free", progress=False))
    assert metrics["loss/anchor"] < 0.5 * unanchored["metrics"]["loss/anchor"]


def test_imitation_teaches_the_policy_at_every_step_it_will_act_on(tmp_path):
    # With two inner steps the robot acts at the context of step 1 and of step 2: both are labelled.
    from sim.navigation import navigation_oracle

    config = tiny(method="cavia", outer="imitation", iterations=1, policy=REWARD_MODEL, imitation=IMITATION,
                  inner={"steps": 2, "episodes_per_step": 2})
    algo = GradientMetaRL(config, tmp_path)
    tasks, inner, post = algo.collect_iteration()
    algo.record_imitation(inner, post, tasks)
    assert len(algo.imitation_data) == len(tasks)
    for m, (windows, _, taught) in enumerate(algo.imitation_data):
        assert len(windows) == 2 and len(taught) == 2
        for batch, (states, labels) in zip([inner[1], post], taught):  # collected at step 1's, step 2's context
            torch.testing.assert_close(states, batch.obs[m][batch.mask[m] > 0])
            expected = np.clip(navigation_oracle(states.numpy(), [tasks[m]] * len(states)), -1, 1)
            np.testing.assert_allclose(labels.numpy(), expected, rtol=0, atol=1e-7)
    metrics = algo.imitation_update()
    assert metrics["loss/imitation_after"] < metrics["loss/imitation_before"]


def test_imitation_continues_a_trpo_run_of_its_first_phase_and_refuses_one_past_it(tmp_path):
    from metarl_robot.checkpoint import CheckpointError

    trpo = tiny(method="cavia", iterations=2, policy=REWARD_MODEL)
    train(trpo, tmp_path, progress=False)
    first_policy, first = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert first["method"] == "cavia_trpo"
    late = tiny(method="cavia", outer="imitation", iterations=3, policy=REWARD_MODEL,
                imitation={**IMITATION, "start_iteration": 1})
    with pytest.raises(CheckpointError, match="past imitation.start_iteration=1"):
        train(late, tmp_path, resume=True, progress=False)
    both = tiny(method="cavia", outer="imitation", iterations=3, policy=REWARD_MODEL,
                imitation={**IMITATION, "start_iteration": 2})
    policy, data = load_checkpoint(train(both, tmp_path, resume=True, progress=False))
    assert data["method"] == "cavia_imitation" and data["iteration"] == 3
    assert "loss/imitation_after" in data["metrics"] and "loss/surrogate_before" not in data["metrics"]
    assert not torch.equal(policy.weights, first_policy.weights), "the imitation phase did not move the policy"


def test_imitation_refuses_what_it_cannot_train_naming_the_key():
    with pytest.raises(ConfigError, match="inner_loss: reward_model"):
        tiny(method="cavia", outer="imitation", policy={"hidden_sizes": [8, 8], "context_dim": 2}, imitation=IMITATION)
    with pytest.raises(ConfigError, match="imitation.demonstrator"):
        tiny(method="cavia", outer="imitation", policy=REWARD_MODEL)
    with pytest.raises(ConfigError, match="imitation needs"):
        tiny(imitation={"steps": 0})


def _reward_model_batch(rng, n=3, t=8):
    """Point-robot episodes: reward minus the distance to a goal after each move."""
    obs = torch.as_tensor(rng.uniform(-0.5, 0.5, size=(n, t, 3)))
    act = torch.as_tensor(rng.normal(size=(n, t, 2)))
    goal = torch.tensor([0.3, -0.2])
    reward = -torch.linalg.norm(obs[..., :2] + 0.1 * torch.clamp(act, -1, 1) - goal, dim=-1)
    mask = torch.ones(n, t, dtype=torch.float64)
    mask[0, 5:] = 0.0
    reward[0, 5:] = 1e3  # padding: must not count
    return obs, act, reward, mask


def test_a_reward_model_step_fits_the_rewards_as_values_and_is_the_exported_step():
    rng = np.random.default_rng(3)
    policy = _policy(context_dim=3, inner_loss="reward_model", inner_lr=0.05)
    with torch.no_grad():
        policy.model_weights.add_(0.3 * torch.randn_like(policy.model_weights))
    obs, action, reward, mask = _reward_model_batch(rng)
    phi0 = policy.initial_adapted().detach()
    phi1 = policy.inner_step(phi0, obs, action, reward, mask, create_graph=False).detach()
    assert policy.model_loss(phi1, obs, action, reward, mask) < policy.model_loss(phi0, obs, action, reward, mask)
    # Rewards are read as values: one offset moves the context differently (a policy-gradient step on
    # normalised advantages would not see it).
    shifted = policy.inner_step(phi0, obs, action, reward - 1.0, mask, create_graph=False).detach()
    assert (shifted - phi1).abs().max() > 1e-4
    # Padding does not count.
    changed = reward.clone()
    changed[0, 5:] = -7.0
    torch.testing.assert_close(policy.inner_step(phi0, obs, action, changed, mask, create_graph=False).detach(), phi1)
    prev = torch.zeros_like(action)
    torch.testing.assert_close(adaptation_step(policy)(phi0, obs, prev, action, reward, mask), phi1)
    # The outer (reinforcement) step does not own the model; the supervised one does.
    assert policy.meta_parameters() == [policy.weights]
    assert policy.model_parameters() == [policy.model_weights, policy.inner_lr]


# ------------------------------------------------------------------------------ meta-gradients
def _random_batch(rng, n=3, t=6, obs_dim=3, act_dim=2):
    obs = torch.as_tensor(rng.normal(size=(n, t, obs_dim)))
    act = torch.as_tensor(rng.normal(size=(n, t, act_dim)))
    adv = torch.as_tensor(rng.normal(size=(n, t)))
    mask = torch.ones(n, t, dtype=torch.float64)
    mask[0, 4:] = 0.0
    return obs, act, adv, mask


def _policy(**config) -> GradientPolicy:
    torch.manual_seed(0)
    policy = GradientPolicy(3, 2, [1.0, 2.0], GradientPolicyConfig(hidden_sizes=(5,), init_log_std=-0.3, **config)).double()
    with torch.no_grad():
        policy.weights.add_(0.3 * torch.randn_like(policy.weights))
    return policy


def _post_loss(policy, theta, inner_batches, post, *, create_graph, lr=None):
    """The post-adaptation surrogate as a function of the initial adapted vector ``theta``."""
    phi = theta
    for batch in inner_batches:
        phi = policy.inner_step(phi, *batch, create_graph=create_graph)
    return policy.surrogate_loss(phi, *post)


@pytest.mark.parametrize("steps, updates", [(1, 1), (3, 1), (1, 3), (2, 2)])
@pytest.mark.parametrize("cavia", [False, True])
def test_second_order_meta_gradient_matches_finite_differences(steps, updates, cavia):
    rng = np.random.default_rng(steps)
    # several updates on one random batch with a long step diverge; a shorter one keeps them finite
    policy = _policy(context_dim=2 if cavia else 0, inner_lr=0.5 if updates == 1 else 0.1, inner_updates=updates)
    inner = [_random_batch(rng) for _ in range(steps)]
    post = _random_batch(rng)
    params = policy.meta_parameters()[0]  # the weights

    def loss_of(weights):
        with torch.no_grad():
            policy.weights.copy_(weights)
        theta = policy.initial_adapted()
        return _post_loss(policy, theta, inner, post, create_graph=True)

    start = policy.weights.detach().clone()
    loss = loss_of(start)
    (grad,) = torch.autograd.grad(loss, params)
    direction = torch.as_tensor(rng.normal(size=start.shape))
    eps = 1e-6
    with torch.enable_grad():
        numeric = (loss_of(start + eps * direction).item() - loss_of(start - eps * direction).item()) / (2 * eps)
    assert abs(float(grad @ direction) - numeric) < 1e-6 * max(1.0, abs(numeric)), (float(grad @ direction), numeric)


def test_first_order_meta_gradient_is_the_gradient_at_the_adapted_parameters():
    rng = np.random.default_rng(7)
    policy = _policy(inner_lr=0.5)
    inner = [_random_batch(rng) for _ in range(3)]
    post = _random_batch(rng)
    theta = policy.initial_adapted()
    (first_order,) = torch.autograd.grad(_post_loss(policy, theta, inner, post, create_graph=False), policy.weights)
    phi = theta
    for batch in inner:
        phi = policy.inner_step(phi, *batch, create_graph=False).detach()
    phi.requires_grad_(True)
    (at_phi,) = torch.autograd.grad(policy.surrogate_loss(phi, *post), phi)
    torch.testing.assert_close(first_order, at_phi)
    (second_order,) = torch.autograd.grad(_post_loss(policy, policy.initial_adapted(), inner, post, create_graph=True), policy.weights)
    assert (second_order - first_order).abs().max() > 1e-6, "second order must differ from first order"


def test_meta_sgd_learns_per_parameter_inner_step_sizes():
    rng = np.random.default_rng(3)
    policy = _policy(learn_inner_lr=True, inner_lr=0.5)
    inner, post = [_random_batch(rng)], _random_batch(rng)
    loss = _post_loss(policy, policy.initial_adapted(), inner, post, create_graph=True)
    _, lr_grad = torch.autograd.grad(loss, policy.meta_parameters())
    assert lr_grad.shape == policy.weights.shape and lr_grad.abs().max() > 0
    i, eps, values = int(lr_grad.abs().argmax()), 1e-6, []
    for sign in (1, -1):
        with torch.no_grad():
            policy.inner_lr[i] += sign * eps
        values.append(_post_loss(policy, policy.initial_adapted(), inner, post, create_graph=False).item())
        with torch.no_grad():
            policy.inner_lr[i] -= sign * eps
    numeric = (values[0] - values[1]) / (2 * eps)
    assert abs(float(lr_grad[i]) - numeric) < 1e-6 * max(1.0, abs(numeric)), (float(lr_grad[i]), numeric)


@pytest.mark.parametrize("updates", [1, 3])
def test_inner_step_lowers_the_inner_loss_and_matches_the_exported_step_function(updates):
    rng = np.random.default_rng(1)
    policy = _policy(inner_lr=0.01, inner_updates=updates)
    batch = _random_batch(rng)
    phi0 = policy.initial_adapted().detach()
    phi1 = policy.inner_step(phi0, *batch, create_graph=False)
    assert policy.surrogate_loss(phi1, *batch) < policy.surrogate_loss(phi0, *batch)
    obs, action, advantage, mask = batch
    prev = torch.zeros_like(action)  # a policy without a skill reads no previous command
    torch.testing.assert_close(adaptation_step(policy)(phi0, obs, prev, action, advantage, mask), phi1.detach())
    torch.testing.assert_close(adaptation_step(policy)(phi0, obs, prev + 3.0, action, advantage, mask), phi1.detach())


def test_one_step_of_several_updates_repeats_the_policy_gradient_update_on_the_same_episodes():
    rng = np.random.default_rng(4)
    batch = _random_batch(rng)
    one, three = _policy(inner_lr=0.2), _policy(inner_lr=0.2, inner_updates=3)
    phi = phi0 = one.initial_adapted().detach()
    for _ in range(3):
        phi = one.inner_step(phi, *batch, create_graph=False).detach()
    torch.testing.assert_close(three.inner_step(phi0, *batch, create_graph=False).detach(), phi)
    assert (phi - one.inner_step(phi0, *batch, create_graph=False)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="inner_updates"):
        GradientPolicyConfig(inner_updates=0)


def test_cavia_adapts_only_a_context_that_starts_at_zero():
    policy = _policy(context_dim=4)
    assert policy.num_adapted == 4 and torch.equal(policy.initial_adapted(), torch.zeros(4, dtype=torch.float64))
    rng = np.random.default_rng(2)
    phi1 = policy.inner_step(policy.initial_adapted(), *_random_batch(rng), create_graph=False)
    assert phi1.shape == (4,) and phi1.abs().max() > 0


def test_conjugate_gradient_solves_a_positive_definite_system():
    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.normal(size=(6, 6)))
    a = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.as_tensor(rng.normal(size=6))
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, 20), torch.linalg.solve(a, b))


def test_reptile_moves_the_weights_towards_the_adapted_parameters(tmp_path):
    config = tiny(method="reptile", iterations=1, inner={"episodes_per_step": 3, "steps": 2}, reptile={"anneal": False})
    algo = GradientMetaRL(config, tmp_path)
    try:
        _, inner, post = algo.collect_iteration()
        start = algo.policy.weights.detach().clone()
        adapted = torch.stack([algo.adapt(start, inner, m, create_graph=False)[-1].detach() for m in range(2)]).mean(0)
        algo.update(inner, post)
        torch.testing.assert_close(algo.policy.weights.detach(), start + 0.5 * (adapted - start))
    finally:
        algo.close()


@pytest.mark.parametrize("method, settings", [
    ("maml", {}), ("maml", {"outer": "ppo"}), ("promp", {}), ("meta_sgd", {"policy": {"hidden_sizes": [8, 8], "learn_inner_lr": True}}),
    ("reptile", {"inner": {"episodes_per_step": 3, "steps": 2}}),
])
@pytest.mark.parametrize("learn", [True, False])
def test_the_outer_update_keeps_the_initial_log_std_only_when_told(method, settings, learn, tmp_path):
    config = tiny(method=method, iterations=1, meta_learn_log_std=learn, **settings)
    algo = GradientMetaRL(config, tmp_path)
    try:
        _, inner, post = algo.collect_iteration()
        start = algo.policy.weights.detach().clone()
        algo.update(inner, post)
        moved = algo.policy.weights.detach() - start
        log_std = moved[-algo.act_dim :]
        assert moved[: -algo.act_dim].abs().max() > 0, "the rest of the weights must still be learned"
        if learn:
            assert log_std.abs().max() > 0
        else:
            assert torch.equal(log_std, torch.zeros_like(log_std))
            # the inner step still adapts it on a task
            adapted = algo.adapt(algo.policy.initial_adapted(), inner, 0, create_graph=False)[-1]
            assert (adapted[-algo.act_dim :] - algo.policy.weights[-algo.act_dim :]).abs().max() > 0
    finally:
        algo.close()


# ------------------------------------------------------------------------------ advantages
def test_discounted_returns_stop_at_the_end_of_each_episode():
    rewards = np.array([[1.0, 1.0, 1.0], [2.0, 5.0, 5.0]])
    mask = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(discounted_returns(rewards, mask, 0.5), [[1.75, 1.5, 1.0], [2.0, 0.0, 0.0]])


def test_linear_feature_baseline_fits_returns_that_are_linear_in_its_features():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 10, 2))
    returns = 3.0 * obs[..., 0] - obs[..., 1] ** 2 + 0.5
    mask = np.ones((5, 10))
    np.testing.assert_allclose(linear_feature_baseline(obs, returns, mask), returns, atol=1e-4)


def test_advantages_are_normalised_over_valid_steps_and_zero_elsewhere():
    rng = np.random.default_rng(0)
    mask = np.ones((4, 8))
    mask[1, 5:] = 0
    adv = compute_advantages(rng.normal(size=(4, 8, 3)), rng.normal(size=(4, 8)), mask, AdvantageConfig())
    assert adv.dtype == np.float32 and np.all(adv[1, 5:] == 0)
    assert abs(adv[mask > 0].mean()) < 1e-5 and abs(adv[mask > 0].std() - 1) < 1e-3


# ------------------------------------------------------------------------------ evaluation
def test_gradient_controller_adapts_with_the_policy_inner_step_and_reports_each_round(tmp_path):
    config = tiny(iterations=1)
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    controller = GradientTorchController(policy, data["adaptation"], seed=0)
    env = PointGoalEnv()
    tasks = point_goal_distribution(num_test=2).test_tasks
    results = evaluate(controller, env, tasks, rounds=3, episodes_per_round=3, seed=0)
    assert [r["adaptation_steps"] for r in results["summary"]] == [0, 1, 2]
    assert results["episodes_per_round"] == 3 and len(results["tasks"]) == 2
    # adapt() is exactly one inner step on the stored episodes with the robot's advantages.
    controller.reset()
    env.set_task(tasks[0])
    scale = np.asarray(env.interface["action"]["scale"], np.float32)
    episodes = []
    for _ in range(3):
        obs, _ = env.reset(seed=1)
        rows, done = [], False
        while not done:
            command = controller.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(command / scale)
            done = terminated or truncated
            controller.observe(obs, command, reward, next_obs, done)
            rows.append((obs, controller._last[1], reward))
            obs = next_obs
        episodes.append(rows)
    obs = np.array([[r[0] for r in e] for e in episodes], np.float32)
    act = np.array([[r[1] for r in e] for e in episodes], np.float32)
    rew = np.array([[r[2] for r in e] for e in episodes], np.float32)
    mask = np.ones(rew.shape, np.float32)
    adv = compute_advantages(obs, rew, mask, AdvantageConfig(**data["adaptation"]["advantages"]))
    expected = policy.inner_step(policy.initial_adapted().detach(), *map(torch.as_tensor, (obs, act, adv, mask)), create_graph=False)
    torch.testing.assert_close(controller.adapt(), expected.detach())


def test_warm_start_clones_the_demonstrator_into_the_unadapted_policy(tmp_path):
    from metarl_robot.testing import point_goal_demonstrator

    config = tiny(iterations=0, warm_start={"demonstrator": "metarl_robot.testing:point_goal_demonstrator",
                                            "rounds": 2, "epochs": 40, "lr": 3e-3,
                                            "dagger_iterations": 1})
    policy, data = load_checkpoint(train(config, tmp_path, progress=False))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = events.Scalars("warm_start/imitation_loss")[-1].value
    # The position reveals which way the demonstrator went, so a clone that cannot see the goal must
    # still fit its actions far better than predicting zero (the labels' own energy).
    tasks = point_goal_distribution(num_train=8).train_tasks
    labels = point_goal_demonstrator(np.zeros((len(tasks), 2), np.float32), tasks)
    assert loss < 0.75 * float((labels**2).mean()), (loss, float((labels**2).mean()))
    assert data["iteration"] == 0 and events.Scalars("warm_start/demonstrator_success")[-1].value > 0
    assert "warm_start/learner_1_success" in events.Tags()["scalars"]


def test_cli_trains_a_gradient_config_and_evaluates_two_seeds_pooled(tmp_path, capsys):
    import json

    from metarl_robot.cli import REPO_ROOT, main

    small = ["--set", "env_id=metarl_robot.testing:metarl/PointGoal-v0",
             "--set", "tasks={distribution: 'metarl_robot.testing:point_goal_distribution', num_train: 8, num_test: 3}",
             "--set", "iterations=1", "--set", "meta_batch_size=2", "--set", "inner.episodes_per_step=2",
             "--set", "policy.hidden_sizes=[8, 8]", "--no-progress"]
    paths = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        assert main(["train", "--config", str(REPO_ROOT / "configs" / "maml_navigation.yaml"), "--run-dir", str(run),
                     "--set", f"seed={seed}", *small]) == 0
        paths.append(str(run / "checkpoints" / "last.safetensors"))
    assert main(["eval", "--checkpoint", *paths, "--rounds", "2", "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert results["num_tasks"] == 6 and results["episodes_per_round"] == 2, "3 tasks x 2 seeds, the trained batch size"
    assert [r["adaptation_steps"] for r in results["summary"]] == [0, 1]
    assert (tmp_path / "eval" / "eval.png").exists()
    assert main(["train", "--config", str(REPO_ROOT / "configs" / "maml_navigation.yaml"), "--set", "method=maml2"]) == 2
    assert "maml2" in capsys.readouterr().err


def test_observation_statistics_can_be_kept_as_the_warm_start_measured_them(tmp_path):
    warm = {"demonstrator": "metarl_robot.testing:point_goal_demonstrator", "rounds": 1, "epochs": 2}
    kept, _ = load_checkpoint(train(tiny(warm_start=warm, update_obs_normalizer=False), tmp_path / "kept", progress=False))
    moved, _ = load_checkpoint(train(tiny(warm_start=warm), tmp_path / "moved", progress=False))
    per_round = 2 * 3 * 20  # tasks x episodes x steps of the tiny config
    assert int(kept.obs_norm.count.round()) == per_round
    assert int(moved.obs_norm.count.round()) == per_round * 3, "one update per iteration on top of the warm start"


@pytest.mark.parametrize("context_dim,activation", [(0, "tanh"), (3, "tanh"), (0, "relu")])
def test_the_numpy_actor_training_samples_with_has_the_policys_mean(context_dim, activation):
    from metarl_robot.algos.gradient.rollout import GaussianActor

    torch.manual_seed(0)
    config = GradientPolicyConfig(hidden_sizes=(16, 8), context_dim=context_dim, activation=activation)
    policy = GradientPolicy(5, 3, [0.1, 0.2, 0.3], config)
    with torch.no_grad():
        policy.obs_norm.update(torch.randn(300, 5) * torch.linspace(0.1, 30.0, 5) + 2.0)
        policy.weights.add_(torch.randn_like(policy.weights) * 0.3)
    phi = policy.initial_adapted().detach() + 0.2 * torch.randn(policy.num_adapted)
    obs = torch.randn(64, 5) * 20.0
    actor = GaussianActor(policy)
    layers, log_std = actor.layers(phi.numpy())
    mean, torch_log_std = policy.mean_log_std(phi, obs)
    np.testing.assert_allclose(actor.mean(layers, phi.numpy(), obs.numpy()), mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(log_std, torch_log_std[0].detach().numpy())


def test_training_advantages_equal_the_robots_on_the_same_episodes(tmp_path_factory):
    """The advantages the runtime's adapt graph computes from the episodes the GradientController
    collected (padded to max_episode_steps) equal what meta-training computes for the same episodes
    (padded to the longest) to float32 rounding: both are runtime.advantages.compute_advantages, the
    graph's exported as ONNX nodes, whatever the padding."""
    from metarl_robot.algos.gradient.algo import to_rollouts
    from metarl_robot.runtime import load_controller
    from metarl_robot.sampling import Episode
    from tests.runtime.gradient_fixtures import VARIANTS, drive_episodes, exported_gradient_bundle, graph_advantages

    variant = VARIANTS["meta_sgd"]  # gae_lambda 0.95: the GAE recursion matters, not only the returns
    bundle = exported_gradient_bundle(tmp_path_factory, "meta_sgd")
    controller = load_controller(bundle, providers=["cpu"], seed=0)
    feeds = []
    session = controller._adapt_session

    class Recording:
        def run(self, outputs, feed):
            feeds.append({name: np.array(value) for name, value in feed.items()})
            return session.run(outputs, feed)

    controller._adapt_session = Recording()
    lengths = [3, 6, 5, 6, 1]  # the longest shorter than max_episode_steps (8): the paddings differ
    fed = drive_episodes(controller, seed=3, lengths=lengths)
    controller.adapt()
    assert len(feeds) == controller.adapt_steps  # each step on the same batch
    robot = graph_advantages(bundle, feeds[0])

    task = point_goal_distribution().train_tasks[0]
    episodes = []
    for j, e in enumerate(fed):
        flags = np.zeros(len(e["reward"]), bool)
        episodes.append(Episode(e["obs"], e["command"], e["reward"], e["obs"], flags, flags, flags, {}, 0, j, task, 0))
    config = load_config(TrainConfig, {"advantages": variant.adaptation()["advantages"]})
    policy = GradientPolicy(variant.obs_dim, variant.act_dim, variant.action_scale, GradientPolicyConfig(hidden_sizes=(16, 16)))
    training = to_rollouts(policy, episodes, policy.initial_adapted().detach()[None], config).advantages[0].numpy()
    assert training.shape == (len(lengths), max(lengths)) and robot.shape == (len(lengths), variant.max_episode_steps)
    assert np.abs(training).max() > 0.5
    np.testing.assert_allclose(robot[:, : max(lengths)], training, rtol=0, atol=1e-6)
    assert not robot[:, max(lengths) :].any()
