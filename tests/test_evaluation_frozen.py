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
