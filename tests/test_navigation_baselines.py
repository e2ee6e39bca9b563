"""The classical navigation controller: it must find the goal from rewards alone and then reach it."""

import numpy as np
import pytest

from metarl_robot.evaluation import OracleController, evaluate
from metarl_robot.tasks import TaskSpec
from sim.navigation import FAMILY, Navigation2DEnv
from sim.navigation_baselines import TrilaterationController, solve_goal


@pytest.mark.parametrize("goal", [(0.31, -0.42), (-0.5, 0.5), (0.0, 0.0)])
def test_solve_goal_recovers_the_goal_from_exact_distances(goal):
    positions = np.array([[0.1, 0.0], [0.1, 0.1], [0.0, 0.1], [0.3, 0.2]])
    distances = np.linalg.norm(positions - np.array(goal), axis=1)
    np.testing.assert_allclose(solve_goal(positions, distances), goal, atol=1e-9)


def test_solve_goal_refuses_collinear_positions():
    positions = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]])
    assert solve_goal(positions, np.ones(3)) is None
    assert solve_goal(positions[:2], np.ones(2)) is None


def test_controller_reaches_goals_it_was_never_told():
    env = Navigation2DEnv()
    tasks = [TaskSpec(FAMILY, {"goal_x": gx, "goal_y": gy}) for gx, gy in [(0.4, -0.3), (-0.45, 0.2), (0.05, 0.49)]]
    classical = evaluate(TrilaterationController(), env, tasks, rounds=1, episodes_per_round=3, seed=0)
    scripted = evaluate(OracleController(env), env, tasks, rounds=1, episodes_per_round=3, seed=0, adapt=False)
    standing = -np.mean([np.hypot(t["goal_x"], t["goal_y"]) for t in tasks]) * env.max_episode_steps
    ours, best = classical["summary"][0]["return_mean"], scripted["summary"][0]["return_mean"]
    assert classical["summary"][0]["success_mean"] == 1.0
    # Three probing moves cost at most a few tenths of a unit over the scripted optimum, which knows the goal.
    assert best - 1.0 < ours <= best + 1e-9 and ours > 0.1 * standing


def test_estimate_survives_episodes_and_is_forgotten_on_reset():
    controller = TrilaterationController()
    goal = np.array([0.2, -0.3])
    position = np.zeros(2)
    for _ in range(5):
        command = controller.act(position.astype(np.float32))
        nxt = position + np.clip(command, -0.1, 0.1)
        controller.observe(position, command, -float(np.linalg.norm(nxt - goal)), nxt, False)
        position = nxt
    np.testing.assert_allclose(controller.goal_estimate, goal, atol=1e-9)
    controller.reset()
    assert controller.goal_estimate is None
