"""PEARL on the recurrent family's pearl cell: the posterior is the product of the prior and the
transitions' factors (known answer), the latent is drawn at each episode's start and held, SAC's
critic learns on a fixed buffer, and a tiny-budget run is saved, resumed, exported, verified and
evaluated the same in PyTorch and in the torch-free runtime. Also the sparse point robot."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl_robot.algos import pearl
from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import ConfigError, load_config
from metarl_robot.recurrent_policy import PearlCore, RecurrentPolicy, RecurrentPolicyConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "pearl_sparse_point.yaml"
TINY = ["iterations=2", "tasks.num_train=6", "tasks.num_test=3", "tasks_per_iteration=3", "checkpoint_every=1",
        "sac.gradient_steps=4", "sac.batch_size=32", "sac.context_size=8", "sac.meta_batch=3",
        "policy.context_sizes=[16]", "policy.hidden_size=16", "policy.critic_sizes=[32]", "policy.latent_dim=2"]


def _policy(latent: int = 2) -> RecurrentPolicy:
    torch.manual_seed(0)
    config = RecurrentPolicyConfig(cell="pearl", latent_dim=latent, context_sizes=(16,), hidden_size=8, embed_sizes=(),
                                   squash="tanh", critic_sizes=(8,))
    return RecurrentPolicy(2, 2, [0.1, 0.1], config).eval()


def test_the_posterior_is_the_product_of_the_prior_and_the_weighted_factors() -> None:
    mean = torch.tensor([[[1.0, -2.0], [3.0, 0.5], [9.0, 9.0]]])
    precision = torch.tensor([[[2.0, 1.0], [0.5, 4.0], [7.0, 7.0]]])
    weight = torch.tensor([[[1.0], [1.0], [0.0]]])  # the third factor is left out
    post_mean, post_precision = PearlCore.posterior(mean, precision, weight)
    torch.testing.assert_close(post_precision, torch.tensor([[1.0 + 2.0 + 0.5, 1.0 + 1.0 + 4.0]]))
    torch.testing.assert_close(post_mean, torch.tensor([[(2.0 * 1.0 + 0.5 * 3.0) / 3.5, (1.0 * -2.0 + 4.0 * 0.5) / 6.0]]))


def test_the_cell_updates_the_posterior_per_transition_and_holds_the_latent_through_an_episode() -> None:
    """Steps 0..5 with an episode end after step 2: the state after step 5 is the posterior over the factors
    of steps 1, 2, 4, 5 (step 0 starts the trial and step 3 starts an episode: their previous step is not a
    transition that led to them); the latent is drawn at steps 0 and 3 only, from the posterior then."""
    p = _policy()
    g = torch.Generator().manual_seed(1)
    obs, act = torch.randn(1, 6, 2, generator=g), torch.rand(1, 6, 2, generator=g) * 2 - 1
    rew = torch.randn(1, 6, 1, generator=g)
    done = torch.tensor([[[0.0], [0.0], [0.0], [1.0], [0.0], [0.0]]])  # prev_done: step 2 ended an episode
    noise = torch.randn(1, 6, 2, generator=g)
    with torch.no_grad():
        x = p.core_inputs(obs, act, rew, done)
        states, zs = [], []
        state = p.initial_state(1)
        for t in range(6):
            _, state = p.core(x[:, t : t + 1], state, noise[:, t : t + 1])
            states.append(state)
            zs.append(state[0, 4:6].clone())
        m, l = p.core.factors(x[..., :5])
        weight = torch.tensor([[[0.0], [1.0], [1.0], [0.0], [1.0], [1.0]]])
        mean, precision = PearlCore.posterior(m, l, weight)
        torch.testing.assert_close(states[-1][0, :2], mean[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(states[-1][0, 2:4], torch.log(precision[0]), rtol=1e-5, atol=1e-6)
        # the draw at step 3 used the posterior over steps 1 and 2
        m3, p3 = PearlCore.posterior(m[:, :3], l[:, :3], weight[:, :3])
        torch.testing.assert_close(zs[3], (m3 + torch.rsqrt(p3) * noise[:, 3])[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(zs[0], noise[0, 0])  # step 0: a draw from the prior N(0, I)
        assert torch.equal(zs[1], zs[0]) and torch.equal(zs[2], zs[0]) and torch.equal(zs[5], zs[3])
        assert not torch.equal(zs[3], zs[0])
        whole, final = p.core(x, p.initial_state(1), noise)  # the sequence at once gives the same state
    torch.testing.assert_close(final, states[-1])


@pytest.mark.parametrize(
    "override, message",
    [
        ("policy.cell=gru", "PEARL trains the pearl cell"),
        ("policy.squash=clip", "tanh-squashed"),
        ("policy.embed_sizes=[8]", "embed_sizes: \\[\\]"),
        ("sac.gamma=0", "gamma in \\(0, 1\\]"),
        ("sac.meta_batch=0", "meta_batch"),
    ],
)
def test_config_refuses_bad_values_by_name(override: str, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(pearl.TrainConfig, CONFIG, [override])


def test_the_sparse_point_robot_rewards_only_near_the_goal() -> None:
    from sim.navigation import SparsePointRobotEnv, sparse_point_distribution

    tasks = sparse_point_distribution(num_train=50).train_tasks
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks])
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    assert goals[:, 1].min() >= 0 and goals[:, 0].min() < -0.5 < 0.5 < goals[:, 0].max()
    env = SparsePointRobotEnv(tasks[0])
    env.reset(seed=0)
    direction = goals[0] / np.linalg.norm(goals[0])
    rewards = [env.step(direction * 0.9)[1] for _ in range(20)]
    # 0.09 m per step along the goal's direction: the point enters the 0.2 m disc on step 9 (0.81 m).
    assert rewards[:8] == [0.0] * 8 and all(r == 1.0 for r in rewards[9:12])


def test_the_critic_fits_a_fixed_buffer(tmp_path: Path) -> None:
    """Known answer for the critic's update: with a discount near zero its target is the scaled reward
    (dense here: minus the distance to the goal), so repeated SAC steps on fixed buffers must bring its
    error far below where it started (a sign error in the loss or the target would not)."""
    dense = [*TINY, "env_id=sim:metarl/Navigation2D-v0", "tasks.distribution=sim.navigation:navigation_distribution",
             "sac.gamma=0.001", "sac.lr=0.003", "env_kwargs={max_episode_steps: 20}"]
    algo = pearl.PEARL(load_config(pearl.TrainConfig, CONFIG, dense), tmp_path)
    try:
        algo.collect(algo.tasks.train_tasks)
        losses = [algo.gradient_step()["loss/q"] for _ in range(300)]
    finally:
        algo.close()
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.25 * first, (first, last)


def test_tiny_budget_run_trains_resumes_exports_verifies_and_evaluates(tmp_path: Path) -> None:
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import evaluate, torch_controller
    from metarl_robot.export import export_bundle
    from metarl_robot.runtime import load_controller
    from metarl_robot.verify import verify_bundle

    config = load_config(pearl.TrainConfig, CONFIG, TINY)
    path = pearl.train(config, tmp_path / "run", progress=False)
    first, data = load_checkpoint(path)
    assert data["method"] == "pearl" and data["iteration"] == 2
    assert {"loss/q", "loss/kl", "alpha", "return/episode_1", "buffer/transitions"} <= set(data["metrics"])
    path = pearl.train(load_config(pearl.TrainConfig, CONFIG, [*TINY, "iterations=3"]), tmp_path / "run", resume=True, progress=False)
    policy, data = load_checkpoint(path)
    assert data["iteration"] == 3 and not torch.equal(first.actor[0].weight, policy.actor[0].weight)

    bundle = export_bundle(path, tmp_path / "bundle")
    report = verify_bundle(bundle, checkpoint=path)
    assert report.ok, report.format()
    ctl = load_controller(bundle, ["cpu"])
    assert ctl.noise_size == 2 + 2 and ctl.bundle.adaptation["cell"] == "pearl"

    env = make_meta_env(config.env_id, {}, unwrapped=True)
    from sim.navigation import sparse_point_distribution

    tasks = sparse_point_distribution(num_test=3).test_tasks
    on_robot = evaluate(functools.partial(load_controller, bundle, providers=["cpu"]), env, tasks, rounds=2, seed=5)
    in_torch = evaluate(torch_controller(policy, data["adaptation"]), env, tasks, rounds=2, seed=5)
    np.testing.assert_allclose([t["returns"] for t in on_robot["tasks"]], [t["returns"] for t in in_torch["tasks"]])


def test_the_critic_may_learn_a_dense_reward_while_the_encoder_reads_the_sparse_one(tmp_path: Path) -> None:
    algo = pearl.PEARL(load_config(pearl.TrainConfig, CONFIG, TINY), tmp_path)
    try:
        algo.collect(algo.tasks.train_tasks[:3])
        buffer = next(iter(algo.buffers.values()))
        n = buffer.count
        assert set(np.unique(buffer.rewards[:n])) <= {0.0, 1.0}  # what the robot sees: the sparse reward
        goal = np.array([[t["goal_x"], t["goal_y"]] for t in algo.tasks.train_tasks if t.task_id == next(iter(algo.buffers))][0])
        np.testing.assert_allclose(buffer.critic_rewards[:n], -np.linalg.norm(buffer.next_obs[:n] - goal, axis=1), rtol=1e-5)
    finally:
        algo.close()
