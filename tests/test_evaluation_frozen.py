"""evaluate(adapt=False) is the same policy with adaptation frozen, for every kind of controller: it never
calls adapt(), and it switches learning off as the robot does, so a controller that adapts inside act()
(a recurrent memory) or explores in order to adapt (a gradient policy) is frozen too."""

from __future__ import annotations

import numpy as np

from metarl_robot.evaluation import evaluate
from metarl_robot.testing import PointGoalEnv, point_goal_distribution


class RecordingController:
    """Moves one way while learning and the other when frozen; records every reset(), adapt() and
    set_learning() call in ``calls`` (shared by the fresh controller each task gets)."""

    def __init__(self, calls: list[str], seed: int = 0) -> None:
        self.calls = calls
        self.learning = True

    def reset(self) -> None:
        self.calls.append("reset")

    def act(self, obs):
        return np.full(2, 0.05 if self.learning else -0.05, dtype=np.float32)

    def observe(self, obs, action, reward, next_obs, done) -> None:
        pass

    def adapt(self):
        self.calls.append("adapt")

    def set_learning(self, enabled: bool) -> None:
        self.calls.append(f"set_learning({enabled})")
        self.learning = enabled


def test_frozen_evaluation_switches_learning_off_and_never_adapts():
    tasks = point_goal_distribution(seed=0, num_train=1, num_test=3).test_tasks
    frozen: list[str] = []
    frozen_results = evaluate(
        lambda seed: RecordingController(frozen, seed), PointGoalEnv(), tasks, rounds=3, seed=0, adapt=False
    )
    assert "adapt" not in frozen
    assert frozen == ["reset", "set_learning(False)"] * len(tasks)

    adapting: list[str] = []
    adapting_results = evaluate(
        lambda seed: RecordingController(adapting, seed), PointGoalEnv(), tasks, rounds=3, seed=0, adapt=True
    )
    assert adapting == ["reset", "adapt", "adapt"] * len(tasks)
    # Learning off changes what this controller does, so the two runs differ.
    assert frozen_results["summary"][0]["return_mean"] != adapting_results["summary"][0]["return_mean"]


class BatchController(RecordingController):
    """Steps on ``episodes_per_step`` episodes, like a gradient controller, and records when it adapts."""

    episodes_per_step = 4

    def __init__(self, calls: list[str], seed: int = 0) -> None:
        super().__init__(calls, seed)
        self.episodes_ready = 0

    def observe(self, obs, action, reward, next_obs, done) -> None:
        if done:
            self.episodes_ready = min(self.episodes_ready + 1, self.episodes_per_step)

    def adapt(self):
        self.calls.append(f"adapt({self.episodes_ready})")
        self.episodes_ready = 0

    def schedule(self, every_n_steps: int = 0):
        from metarl_robot.runtime.schedule import AdaptationSchedule

        return AdaptationSchedule("episodes", every_n_steps, self.episodes_per_step)


def test_a_controller_that_steps_on_several_episodes_adapts_once_its_batch_is_full():
    """Rounds of one attempt and a gradient controller that steps on 4: it adapts after attempts 4 and 8
    of 12, on full batches, as on the robot, and never on a partial batch."""
    tasks = point_goal_distribution(seed=0, num_train=1, num_test=2).test_tasks
    calls: list[str] = []
    evaluate(lambda seed: BatchController(calls, seed), PointGoalEnv(), tasks, rounds=12, seed=0)
    assert calls == ["reset", "adapt(4)", "adapt(4)"] * len(tasks)
    # Rounds as long as the batch: one step per round but the last, as before.
    calls.clear()
    evaluate(lambda seed: BatchController(calls, seed), PointGoalEnv(), tasks[:1], rounds=3, episodes_per_round=4, seed=0)
    assert calls == ["reset", "adapt(4)", "adapt(4)"]


def test_the_gradient_twin_counts_its_closed_episodes_as_the_runtime_does():
    import torch

    from metarl_robot.families.gradient_torch import GradientTorchController
    from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig

    policy = GradientPolicy(2, 2, [1.0, 1.0], GradientPolicyConfig(hidden_sizes=(4,)))
    twin = GradientTorchController(policy, {"episodes_per_step": 2, "max_episode_steps": 3}, seed=0)
    obs = np.zeros(2, np.float32)
    counts = []
    for step in range(7):
        command = twin.act(obs)
        twin.observe(obs, command, 0.0, obs, step % 2 == 1)
        counts.append(twin.episodes_ready)
    assert counts == [0, 1, 1, 2, 2, 2, 2]
    with torch.no_grad():
        twin.adapt()
    assert twin.episodes_ready == 0
