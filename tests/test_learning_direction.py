"""Every learning algorithm, trained for a few updates on a continuous bandit whose optimum is known
(``metarl_robot.testing.TargetBanditEnv``: reward ``-|a - target|^2``, targets around ``TARGET_MEAN``),
moves its policy the right way. A sign slip in a policy loss, an advantage or an outer update moves it
the other way, and these tests fail; the tiny-budget training tests elsewhere only check that weights
moved and metrics are finite.

What "the right way" means follows each family's objective:

* methods that act before adapting on what they learned across tasks (context PPO, RL², RMA, PEARL, and
  the non-adaptive multi-task PPO): the mean first action of a fresh trial gets closer to the mean
  target;
* gradient meta-learners (MAML, ProMP, Reptile, CAVIA, Meta-SGD): the mean action *after one adaptation
  step* on a task's own episodes gets closer to that task's target, on tasks none of them trained on.
  (MAML may move its unadapted policy away from the targets while its adapted one improves: that is its
  objective, and the test holds it to that.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.config import load_config
from metarl_robot.evaluation import reset_controller, torch_controller
from metarl_robot.families import registry
from metarl_robot.testing import TARGET_MEAN, TargetBanditEnv, target_bandit_distribution

ENV = {"env_id": "metarl_robot.testing:metarl/TargetBandit-v0",
       "tasks": {"distribution": "metarl_robot.testing:target_bandit_distribution", "num_train": 16, "num_test": 2}}
GRADIENT = {"meta_batch_size": 4, "inner": {"episodes_per_step": 8}, "policy": {"hidden_sizes": [8, 8]}}
PPO_FAST = {"epochs": 4, "minibatches": 2, "lr": 3e-3}
OUTER_PPO_FAST = {"epochs": 4, "lr": 3e-3}

ACT_FIRST = {
    "context_ppo": {"tasks_per_iteration": 8, "episodes_per_task": 2, "asynchronous": False,
                    "policy": {"hidden_sizes": [16, 16], "context_dim": 2}, "ppo": PPO_FAST,
                    "adaptation": {"buffer_size": 8}},
    "rl2": {"method": "rl2", "trials_per_iteration": 8, "episodes_per_trial": 2, "sampler": "serial",
            "policy": {"cell": "gru", "hidden_size": 12, "embed_sizes": [16]}, "ppo": PPO_FAST},
    "rma": {"method": "rma", "trials_per_iteration": 8, "episodes_per_trial": 2, "sampler": "serial",
            "policy": {"cell": "window", "window_steps": 4, "hidden_size": 16, "embed_sizes": [], "latent_dim": 2},
            "ppo": PPO_FAST, "adaptation_module": {"iterations": 0}},
    "pearl": {"method": "pearl", "tasks_per_iteration": 4, "episodes_per_trial": 2, "sampler": "serial",
              "policy": {"cell": "pearl", "latent_dim": 2, "context_sizes": [16], "hidden_size": 16, "embed_sizes": [],
                         "critic_sizes": [32], "squash": "tanh"},
              "sac": {"gradient_steps": 40, "batch_size": 32, "context_size": 8, "meta_batch": 4, "lr": 1e-3}},
    "multitask_ppo": {"method": "multitask_ppo", **GRADIENT, "ppo": OUTER_PPO_FAST},
}
ADAPT_FIRST = {
    "maml_trpo": {"method": "maml", **GRADIENT},
    "maml_ppo": {"method": "maml", "outer": "ppo", **GRADIENT, "ppo": OUTER_PPO_FAST},
    "promp": {"method": "promp", **GRADIENT},
    "reptile": {"method": "reptile", **GRADIENT, "inner": {"episodes_per_step": 8, "steps": 2}},
    "cavia": {"method": "cavia", **GRADIENT, "policy": {"hidden_sizes": [8, 8], "context_dim": 2}},
    "meta_sgd": {"method": "meta_sgd", **GRADIENT, "policy": {"hidden_sizes": [8, 8], "learn_inner_lr": True}},
}
ITERATIONS = 3
SEEDS = (0, 1, 2)
MARGIN = 0.02
"""Required gain in distance to the target, pooled over ``SEEDS``, in normalised action units (the
targets are 0.64 from the initial mean action); every seed must gain too. Measured over seeds 0-4
(7 December 2026), the smallest per-method mean gain is ProMP's 0.028 (sd 0.001); the others range
from 0.077 (multi-task PPO) to 0.334 (context PPO), with per-seed minima all above 0.027. PEARL at
20 gradient steps per iteration gained -0.007 to 0.030 (seed 0 alone would have passed), so it runs
40 steps at lr 1e-3 here: 0.099 to 0.274. A sign flip turns the gains negative."""


def train(settings: dict, iterations: int, run_dir: Path, seed: int = 0) -> Path:
    config = {**ENV, **settings, "checkpoint_every": max(iterations, 1), "seed": seed}
    config["ppo_iterations" if settings.get("method") == "rma" else "iterations"] = iterations
    module = registry.algorithm(settings.get("method"))
    return module.train(load_config(module.TrainConfig, config), run_dir, progress=False)


def first_mean_action(checkpoint: Path) -> np.ndarray:
    """The normalised mean action of a fresh trial's first step (the bandit observes zeros)."""
    policy, data = load_checkpoint(checkpoint)
    controller = torch_controller(policy, data["adaptation"], seed=0, explore=False)
    reset_controller(controller, 0)
    return np.asarray(controller.act(np.zeros(2, np.float32))) / np.asarray(data["interface"]["action"]["scale"])


def adapted_distance(checkpoint: Path, num_tasks: int = 8) -> float:
    """Mean distance between a task's target and the mean action after one adaptation step on that
    task's own exploring episodes, over tasks drawn apart from training's."""
    policy, data = load_checkpoint(checkpoint)
    scale = np.asarray(data["interface"]["action"]["scale"])
    episodes = int(data["adaptation"]["episodes_per_step"])
    distances = []
    for k, task in enumerate(target_bandit_distribution(seed=5, num_train=num_tasks).train_tasks):
        controller = torch_controller(policy, data["adaptation"], seed=k, explore=True)
        reset_controller(controller, k)
        env = TargetBanditEnv(task)
        for episode in range(episodes):
            obs, _ = env.reset(seed=100 * k + episode)
            done = False
            while not done:
                command = np.asarray(controller.act(obs))
                next_obs, reward, terminated, truncated, _ = env.step(command / scale)
                done = terminated or truncated
                controller.observe(obs, command, reward, next_obs, done)
                obs = next_obs
        controller.adapt()
        controller.explore = False
        target = np.array([task["target_x"], task["target_y"]])
        distances.append(np.linalg.norm(np.asarray(controller.act(np.zeros(2, np.float32))) / scale - target))
    return float(np.mean(distances))


def _check_gains(name: str, gains: list[float]) -> None:
    assert min(gains) > 0.0, f"{name}: some seed moved away from the optimum: gains {gains} over seeds {SEEDS}"
    assert float(np.mean(gains)) > MARGIN, f"{name}: mean gain {np.mean(gains):.3f} over seeds {SEEDS} (gains {gains})"


@pytest.mark.parametrize("name", sorted(ACT_FIRST))
def test_updates_move_the_first_action_towards_the_best_uninformed_action(name, tmp_path):
    gains = []
    for seed in SEEDS:
        start = train(ACT_FIRST[name], 0, tmp_path / f"start{seed}", seed)
        before = np.linalg.norm(first_mean_action(start) - TARGET_MEAN)
        after = np.linalg.norm(first_mean_action(train(ACT_FIRST[name], ITERATIONS, tmp_path / f"trained{seed}", seed)) - TARGET_MEAN)
        assert before > 0.5  # the untrained policy starts far from the optimum
        gains.append(round(float(before - after), 4))
    _check_gains(name, gains)


@pytest.mark.parametrize("name", sorted(ADAPT_FIRST))
def test_meta_updates_move_the_adapted_action_towards_each_tasks_target(name, tmp_path):
    gains = []
    for seed in SEEDS:
        before = adapted_distance(train(ADAPT_FIRST[name], 0, tmp_path / f"start{seed}", seed))
        after = adapted_distance(train(ADAPT_FIRST[name], ITERATIONS, tmp_path / f"trained{seed}", seed))
        assert before > 0.5
        gains.append(round(before - after, 4))
    _check_gains(name, gains)
