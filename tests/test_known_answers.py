"""Known answers, computed by hand, for the arithmetic every learner and the robot's adaptation step
rest on: discounted returns, GAE with non-zero values across episode boundaries, the critic's returns,
the linear feature baseline and advantage normalisation. A sign or index slip in any of them changes
these numbers."""

from __future__ import annotations

import numpy as np
import pytest

from metarl_robot.algos.context_ppo.algo import actor_critic_advantages
from metarl_robot.runtime.advantages import (
    AdvantageConfig,
    baseline_features,
    compute_advantages,
    discounted_returns,
    gae,
    linear_feature_baseline,
)
from metarl_robot.sampling import Episode, EpisodeBatch
from metarl_robot.testing import point_goal_distribution

# Two episodes side by side, [N, T]: the first runs 3 steps, the second ends after 2. The padded step
# holds a reward and a value that must be ignored.
REWARDS = np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 5.0]])
VALUES = np.array([[0.5, 1.0, -1.0], [2.0, 0.5, 7.0]])
MASK = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
GAMMA, LAM = 0.9, 0.8

# By hand, delta_t = r_t + gamma * V_{t+1} * valid_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}:
# episode 1: deltas 1 + 0.9 - 0.5 = 1.4, 2 - 0.9 - 1 = 0.1, 3 + 0 + 1 = 4.0
#            A = 1.4 + 0.72 * 2.98 = 3.5456, 0.1 + 0.72 * 4 = 2.98, 4.0
# episode 2: deltas 1 + 0.45 - 2 = -0.55, 0 + 0 - 0.5 = -0.5 (its last step: no bootstrap)
#            A = -0.55 + 0.72 * -0.5 = -0.91, -0.5, 0 (padding)
EXPECTED_GAE = np.array([[3.5456, 2.98, 4.0], [-0.91, -0.5, 0.0]])


def test_gae_with_values_and_an_episode_boundary():
    np.testing.assert_allclose(gae(REWARDS, VALUES, MASK, GAMMA, LAM), EXPECTED_GAE, atol=1e-12)


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    np.testing.assert_allclose(gae(REWARDS, VALUES, MASK, GAMMA, 0.0), [[1.4, 0.1, 4.0], [-0.55, -0.5, 0.0]], atol=1e-12)


def test_discounted_returns_stop_at_each_episodes_end():
    # 3 + 0.9 * 0 = 3; 2 + 0.9 * 3 = 4.7; 1 + 0.9 * 4.7 = 5.23 and 0; 1 + 0 = 1 (the 5 is padding)
    np.testing.assert_allclose(discounted_returns(REWARDS, MASK, GAMMA), [[5.23, 4.7, 3.0], [1.0, 0.0, 0.0]], atol=1e-12)


def _episode(rewards, values, index):
    t = len(rewards)
    flags = np.zeros(t, bool)
    obs = np.zeros((t, 2), np.float32)
    return Episode(obs, np.zeros((t, 2), np.float32), np.asarray(rewards, np.float32), obs, flags, flags, flags,
                   {"value": np.asarray(values, np.float32)}, index, 0, point_goal_distribution().train_tasks[0], 0)


def test_critic_advantages_and_returns_of_a_batch():
    """Context PPO's targets: advantages as above, returns = advantages + values (time-major [T, N])."""
    batch = EpisodeBatch.from_episodes([_episode(REWARDS[0], VALUES[0], 0), _episode(REWARDS[1, :2], VALUES[1, :2], 1)])
    adv, ret = actor_critic_advantages(batch, GAMMA, LAM)
    np.testing.assert_allclose(adv, EXPECTED_GAE.T, atol=1e-5)
    np.testing.assert_allclose(ret, [[4.0456, 1.09], [3.98, 0.0], [3.0, 0.0]], atol=1e-5)


def test_linear_baseline_recovers_returns_that_are_linear_in_its_features():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4, 6, 2))
    coef = np.array([0.5, -1.0, 0.25, 0.0, 2.0, -3.0, 1.0, 0.7])  # [obs, obs^2, t, t^2, t^3, 1]
    returns = baseline_features(obs) @ coef
    mask = np.ones((4, 6))
    mask[1, 4:] = 0.0
    fitted = linear_feature_baseline(obs, returns, mask, ridge=1e-10)
    np.testing.assert_allclose(fitted, returns * mask, atol=1e-4)  # a ridge solve of a badly scaled cubic in t
    assert not fitted[1, 4:].any()


def test_baseline_features_are_clipped_observations_their_squares_and_time():
    obs = np.array([[[20.0], [-1.0]]])  # [N=1, T=2, D=1]
    np.testing.assert_allclose(baseline_features(obs)[0], [[10.0, 100.0, 0.0, 0.0, 0.0, 1.0],
                                                           [-1.0, 1.0, 0.01, 1e-4, 1e-6, 1.0]])


def test_robot_advantages_are_normalised_returns_minus_the_baseline():
    """With lambda 1, the robot's advantages are the discounted returns minus the baseline's fit,
    normalised to zero mean and unit standard deviation over the valid steps."""
    config = AdvantageConfig(gamma=0.5, gae_lambda=1.0, normalize=True, baseline_ridge=1e-10)
    rewards = np.array([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]])
    advantages = compute_advantages(np.zeros((1, 6, 1)), rewards, np.ones((1, 6)), config)
    assert advantages.mean() == pytest.approx(0.0, abs=1e-6) and advantages.std() == pytest.approx(1.0, abs=1e-4)
    returns = discounted_returns(rewards, np.ones((1, 6)), 0.5)[0]
    fit = linear_feature_baseline(np.zeros((1, 6, 1)), returns[None], np.ones((1, 6)), 1e-10)[0]
    residual = returns - fit
    assert residual.std() > 0.1  # the cubic in time cannot follow the alternating reward
    np.testing.assert_allclose(advantages[0], (residual - residual.mean()) / residual.std(), atol=1e-4)
    # Unnormalised, the same call returns the residual itself.
    raw = compute_advantages(np.zeros((1, 6, 1)), rewards, np.ones((1, 6)),
                             AdvantageConfig(gamma=0.5, gae_lambda=1.0, normalize=False, baseline_ridge=1e-10))
    np.testing.assert_allclose(raw[0], residual, atol=1e-5)


def test_an_inner_policy_gradient_step_moves_the_mean_towards_the_actions_with_positive_advantage():
    """The robot's adaptation step (the graph exported from ``inner_step``): actions above the mean
    paid, actions below it cost, so one step raises the mean action, with its size known to first
    order: d mean / d phi . (-lr * grad of the inner loss)."""
    import torch

    from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig

    torch.manual_seed(0)
    policy = GradientPolicy(1, 1, [1.0], GradientPolicyConfig(hidden_sizes=(4,), inner_lr=0.05)).double()
    phi0 = policy.initial_adapted().detach()
    obs = torch.zeros(1, 4, 1, dtype=torch.float64)
    mean0 = policy.mean_log_std(phi0, obs[0, :1])[0].item()
    action = torch.tensor([[[mean0 + 0.5], [mean0 + 0.5], [mean0 - 0.5], [mean0 - 0.5]]], dtype=torch.float64)
    advantage = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    phi1 = policy.inner_step(phi0, obs, action, advantage, mask, create_graph=False)
    mean1 = policy.mean_log_std(phi1, obs[0, :1])[0].item()
    assert mean1 > mean0 + 1e-4

    # First order: the loss is -mean(logp * A); its gradient in the mean is -mean(A (a - mu) / sigma^2).
    phi = phi0.clone().requires_grad_(True)
    mu, log_std = policy.mean_log_std(phi, obs[0, :1])
    (dmu_dphi,) = torch.autograd.grad(mu.sum(), phi)
    sigma2 = float(torch.exp(2 * log_std).item())
    dloss_dmu = -float((advantage * (action[..., 0] - mean0)).mean()) / sigma2  # = -0.5 / sigma^2
    expected_change = float(dmu_dphi @ (-0.05 * dloss_dmu * dmu_dphi))
    assert mean1 - mean0 == pytest.approx(expected_change, rel=0.05)


@pytest.mark.parametrize("gamma, lam", [(0.0, 0.5), (1.5, 0.5), (0.9, -0.1), (0.9, 1.5)])
def test_advantage_config_refuses_either_discount_out_of_range(gamma, lam):
    with pytest.raises(ValueError, match="gamma must be in"):
        AdvantageConfig(gamma=gamma, gae_lambda=lam)


def test_advantage_config_refuses_a_ridge_that_is_not_positive():
    with pytest.raises(ValueError, match="baseline_ridge must be positive"):
        AdvantageConfig(baseline_ridge=0.0)
    assert AdvantageConfig(gamma=1.0, gae_lambda=0.0).gamma == 1.0  # the closed ends are allowed


def test_the_gradient_family_outer_surrogate_on_a_batch_worked_out_by_hand():
    """The importance ratio is exp(new - old log-probability); clipped, each step takes the smaller
    objective. Values by hand: ratios exp(0), exp(0.1), exp(-0.2) on advantages 1, 2, -0.5."""
    import math

    import torch

    from metarl_robot.algos.gradient.algo import GradientMetaRL, Rollouts
    from metarl_robot.gradient_policy import gaussian_log_prob

    actions = torch.tensor([[[[0.5], [-1.0], [2.0]]]])  # [M=1, N=1, T=3, act=1]
    mean, log_std = torch.zeros_like(actions[0]), torch.zeros_like(actions[0])
    shift = torch.tensor([[0.0, 0.1, -0.2]])
    old = gaussian_log_prob(mean, log_std, actions[0]) - shift
    post = Rollouts(obs=torch.zeros(1, 1, 3, 2), actions=actions, rewards=torch.zeros(1, 1, 3),
                    mask=torch.ones(1, 1, 3), log_probs=old[None], advantages=torch.tensor([[[1.0, 2.0, -0.5]]]),
                    returns=np.zeros((1, 1)), success=np.zeros((1, 1)))
    ratios, adv = [1.0, math.exp(0.1), math.exp(-0.2)], [1.0, 2.0, -0.5]
    plain = -sum(r * a for r, a in zip(ratios, adv)) / 3
    import types

    # A policy without a skill: every action dimension is a decision at every step.
    algo = types.SimpleNamespace(policy=types.SimpleNamespace(decision_weights=lambda obs: None))
    assert float(GradientMetaRL.surrogate(algo, [(mean, log_std)], post)) == pytest.approx(plain, rel=1e-6)
    clipped = -sum(min(r * a, min(max(r, 0.95), 1.05) * a) for r, a in zip(ratios, adv)) / 3
    assert float(GradientMetaRL.surrogate(algo, [(mean, log_std)], post, clip=0.05)) == pytest.approx(clipped, rel=1e-6)
    assert clipped != pytest.approx(plain)  # the clip is active on this batch


def test_the_ppo_clipped_surrogate_its_gradient_and_the_kl_estimate_by_hand():
    """Ratios 1.5, 0.5, 1.1, 0.7 on advantages 1, 1, -1, -1 with clip 0.2:
    min(1.5, 1.2) = 1.2 (clipped, no gradient); min(0.5, 0.8) = 0.5 (unclipped: d/dlog r = r A = 0.5);
    min(-1.1, -1.1) = -1.1 (inside the clip: -1.1); min(-0.7, -0.8) = -0.8 (clipped, no gradient)."""
    import math

    import torch

    from metarl_robot.algos.common.ppo import approx_kl_terms, clipped_surrogate

    log_ratio = torch.tensor([math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.7)], dtype=torch.float64,
                             requires_grad=True)
    surrogate = clipped_surrogate(log_ratio, torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64), 0.2)
    assert surrogate.tolist() == pytest.approx([1.2, 0.5, -1.1, -0.8], abs=1e-12)
    surrogate.sum().backward()
    assert log_ratio.grad.tolist() == pytest.approx([0.0, 0.5, -1.1, 0.0], abs=1e-12)
    kl = approx_kl_terms(log_ratio.detach())
    assert kl.tolist() == pytest.approx([0.5 - math.log(1.5), -0.5 - math.log(0.5), 0.1 - math.log(1.1),
                                         -0.3 - math.log(0.7)], abs=1e-12)
    assert (kl > 0).all()


def test_the_actor_critic_loss_adds_the_value_error_and_subtracts_the_entropy_bonus():
    import torch

    from metarl_robot.algos.common.ppo import actor_critic_loss

    entropy = torch.tensor(3.0, requires_grad=True)
    loss = actor_critic_loss(torch.tensor(1.0), torch.tensor(2.0), entropy, value_coef=0.5, entropy_coef=0.1)
    assert float(loss) == pytest.approx(1.0 + 0.5 * 2.0 - 0.1 * 3.0)
    loss.backward()
    assert float(entropy.grad) == pytest.approx(-0.1)  # descending the loss raises the entropy
