"""Training and evaluation collect through the samplers: the same seeds give the same episodes, and
the same meta-test figures, on every backend and with any number of workers."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
import torch

from metarl_robot.algos.context_ppo import TrainConfig as ContextConfig
from metarl_robot.algos.context_ppo.algo import ContextPPO
from metarl_robot.algos.gradient import GradientMetaRL
from metarl_robot.algos.gradient import TrainConfig as GradientConfig
from metarl_robot.config import load_config
from metarl_robot.envs import make_meta_env
from metarl_robot.evaluation import evaluate, torch_controller
from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig
from metarl_robot.sampling import SerialSampler
from metarl_robot.testing import point_goal_distribution
from tests.test_context_ppo import TINY as CONTEXT_TINY

POINT_ENV = "metarl_robot.testing:metarl/PointGoal-v0"
BACKENDS = [("serial", 1), ("subprocess", 1), ("subprocess", 2)]
if importlib.util.find_spec("ray") is not None:
    BACKENDS.append(("ray", 2))

GRADIENT_TINY = {
    "env_id": POINT_ENV,
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 4},
    "iterations": 1,
    "meta_batch_size": 3,
    "inner": {"episodes_per_step": 2, "steps": 1},
    "policy": {"hidden_sizes": [8, 8]},
}


def point_env():
    return make_meta_env(POINT_ENV, {"max_episode_steps": 6}, unwrapped=True)


def gradient_policy() -> GradientPolicy:
    torch.manual_seed(0)
    policy = GradientPolicy(2, 2, [0.1, 0.1], GradientPolicyConfig(hidden_sizes=(8, 8), inner_lr=0.5))
    with torch.no_grad():
        policy.weights.add_(torch.randn_like(policy.weights) * 0.3)
    return policy


ADAPTATION = {
    "steps": 1, "episodes_per_step": 2, "max_episode_steps": 6,
    "advantages": {"gamma": 0.99, "gae_lambda": 1.0, "normalize": True, "baseline_ridge": 1e-5},
}


class NoisyBiasController:
    """A picklable stochastic controller that adapts: noisy commands around a bias that moves towards
    the mean observation of the last round; ``reset`` takes no seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.bias, self.seen = np.zeros(2, np.float32), []

    def act(self, obs):
        return (self.bias + 0.05 * self.rng.standard_normal(2)).astype(np.float32)

    def observe(self, obs, action, reward, next_obs, done) -> None:
        self.seen.append(np.asarray(next_obs, np.float32))

    def adapt(self):
        self.bias, self.seen = np.clip(np.mean(self.seen, 0), -0.1, 0.1).astype(np.float32), []
        return self.bias


def test_evaluation_is_the_same_on_every_backend_for_a_controller_and_for_a_factory():
    """Stochastic, adapting controllers: copies of one (as passed) and controllers from a factory
    (seeded per task) give identical per-task figures wherever they run."""
    tasks = point_goal_distribution(num_test=5).test_tasks
    policy = gradient_policy()
    protocol = {"rounds": 3, "episodes_per_round": 2, "seed": 4}
    for controller in (NoisyBiasController(seed=1), functools.partial(torch_controller, policy, ADAPTATION)):
        results = [
            evaluate(controller, point_env(), tasks, sampler=sampler, num_workers=workers, **protocol)["tasks"]
            for sampler, workers in BACKENDS
        ]
        assert all(r == results[0] for r in results[1:])
        returns = np.array([t["returns"] for t in results[0]])
        assert len(np.unique(returns)) == returns.size, "every task and round saw different episodes"


def test_evaluation_of_an_onnx_controller_in_place_equals_its_factory_on_workers(tmp_path_factory):
    """The runtime's controllers cannot be pickled: serial evaluation runs the one object, reset with
    each task's seed; workers build one per task from a factory. Both give the same figures."""
    from metarl_robot.runtime import load_controller
    from tests.runtime.gradient_fixtures import exported_gradient_bundle

    bundle = exported_gradient_bundle(tmp_path_factory, "cavia")  # a 2-D interface, as the point-goal env
    tasks = point_goal_distribution(num_test=3).test_tasks
    protocol = {"rounds": 2, "episodes_per_round": 3, "seed": 2}
    in_place = evaluate(load_controller(bundle, providers=["cpu"], seed=0), point_env(), tasks, **protocol)
    factory = functools.partial(load_controller, bundle, providers=["cpu"])
    on_workers = evaluate(factory, point_env(), tasks, sampler="subprocess", num_workers=2, **protocol)
    assert in_place["tasks"] == on_workers["tasks"]
    with pytest.raises(Exception, match="cannot be pickled.*factory"):
        evaluate(load_controller(bundle, providers=["cpu"], seed=0), point_env(), tasks, sampler="subprocess", **protocol)


def test_evaluation_runs_on_a_sampler_you_made_and_leaves_it_open():
    tasks = point_goal_distribution(num_test=2).test_tasks
    controller = functools.partial(torch_controller, gradient_policy(), ADAPTATION)
    env = point_env()
    reference = evaluate(controller, env, tasks, rounds=2, episodes_per_round=2)
    with SerialSampler(env=env) as sampler:
        assert evaluate(controller, env, tasks, rounds=2, episodes_per_round=2, sampler=sampler) == reference
        assert evaluate(controller, env, tasks, rounds=2, episodes_per_round=2, sampler=sampler) == reference


def test_context_ppo_collects_the_same_episodes_on_every_backend(tmp_path):
    batches = []
    for sampler, workers in BACKENDS:
        tiny = {k: v for k, v in CONTEXT_TINY.items() if k != "asynchronous"}
        algo = ContextPPO(load_config(ContextConfig, {**tiny, "sampler": sampler, "num_workers": workers}), tmp_path)
        try:
            batches.append(algo.collect_iteration())
        finally:
            algo.close()
    (reference, reference_windows), *others = batches
    for batch, windows in others:
        for name in ("obs", "actions", "rewards", "valid", "success"):
            np.testing.assert_array_equal(getattr(batch, name), getattr(reference, name))
        for name in reference.extras:
            np.testing.assert_array_equal(batch.extras[name], reference.extras[name])
        for name in reference_windows:
            np.testing.assert_array_equal(windows[name], reference_windows[name])
    assert reference.valid.shape[1] == CONTEXT_TINY["tasks_per_iteration"] * CONTEXT_TINY["episodes_per_task"]


def test_gradient_meta_rl_collects_the_same_inner_and_post_batches_on_every_backend(tmp_path):
    collected = []
    for sampler, workers in BACKENDS:
        algo = GradientMetaRL(load_config(GradientConfig, {**GRADIENT_TINY, "sampler": sampler, "num_workers": workers}), tmp_path)
        try:
            _, inner, post = algo.collect_iteration()
        finally:
            algo.close()
        collected.append([*inner, post])
    for other in collected[1:]:
        for a, b in zip(collected[0], other):
            for name in ("obs", "actions", "rewards", "mask", "log_probs", "advantages"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            np.testing.assert_array_equal(a.returns, b.returns)
    first, post = collected[0][0], collected[0][-1]
    assert first.obs.shape[:2] == (3, 2) and not torch.equal(first.actions, post.actions)
