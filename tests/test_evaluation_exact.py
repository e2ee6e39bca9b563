"""The meta-test protocol's exact answers on a bandit whose rewards can be worked out by hand: which
round each command belongs to, when ``adapt()`` runs, how commands are scaled and handed back, the
summary's means and confidence intervals, and pooling across runs. Written from the survivors of a
mutation run over ``evaluation.py`` (docs/testing.md)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from metarl_robot.evaluation import ci95, combine, evaluate, reset_controller
from metarl_robot.testing import TargetBanditEnv, target_bandit_distribution

SCALE = 0.1  # TargetBanditEnv's action scale (POINT_INTERFACE): physical = normalised x 0.1
STEPS = 4    # its episode length
COMMANDS = [np.array([0.0, 0.0]), np.array([0.05, -0.04]), np.array([0.02, 0.08])]
"""The command after 0, 1 and 2 adaptations, in physical units."""


class Stepper:
    """Sends ``COMMANDS[number of adapt() calls]``; keeps what it is told."""

    log: list = []

    def __init__(self, seed: int = 0) -> None:
        self.adapted, self.seen, self.seeds, self.tasks = 0, [], [], []
        Stepper.log.append(self)

    def reset(self, seed: int | None = None) -> None:
        self.seeds.append(seed)
        self.adapted = 0

    def act(self, obs):
        return COMMANDS[self.adapted].astype(np.float32)

    def observe(self, obs, action, reward, next_obs, done) -> None:
        self.seen.append((np.array(action), reward, done))

    def adapt(self) -> None:
        self.adapted += 1


class TaskTold(Stepper):
    def set_task(self, task) -> None:
        self.tasks.append(task)


def _return(command: np.ndarray, task) -> float:
    target = np.array([task["target_x"], task["target_y"]])
    sent = command.astype(np.float32) / np.float32(SCALE)  # as the protocol maps it, in float32
    error = np.clip(sent.astype(np.float64), -1, 1) - target
    return STEPS * -float(error @ error)


@pytest.fixture
def tasks():
    return target_bandit_distribution().test_tasks[:3]


def test_each_round_is_scored_with_the_command_of_its_adaptation_step(tasks):
    Stepper.log = []
    results = evaluate(functools.partial(Stepper), TargetBanditEnv(), tasks, rounds=3, episodes_per_round=2, seed=4)
    assert (results["rounds"], results["episodes_per_round"], results["adapt"], results["seed"]) == (3, 2, True, 4)
    assert results["num_tasks"] == 3 and len(Stepper.log) == 3
    for task, row in zip(tasks, results["tasks"]):
        assert row["task"] == task.to_dict()
        assert row["returns"] == pytest.approx([_return(c, task) for c in COMMANDS], rel=1e-6)
        assert row["success"] == [float(_return(c, task) / STEPS > -0.01) for c in COMMANDS]
    for k, summary in enumerate(results["summary"]):
        returns = [_return(COMMANDS[k], task) for task in tasks]
        assert summary["round"] == k and summary["adaptation_steps"] == k
        assert summary["return_mean"] == pytest.approx(np.mean(returns), rel=1e-6)
        assert summary["return_ci95"] == pytest.approx(ci95(returns), rel=1e-5)
        success = [float(r / STEPS > -0.01) for r in returns]
        assert summary["success_mean"] == pytest.approx(np.mean(success))
        assert summary["success_ci95"] == pytest.approx(ci95(success), nan_ok=True)
    assert [s["success_mean"] for s in results["summary"]] == [0.0, 1.0, 0.0]  # step 1 sends the mean target
    # adapt() ran at the end of rounds 1 and 2 only, and every transition carried the physical command
    assert [c.adapted for c in Stepper.log] == [2, 2, 2]
    controller = Stepper.log[0]
    assert len(controller.seen) == 3 * 2 * STEPS
    sent = [tuple(np.round(a, 6)) for a, _, _ in controller.seen]
    assert sent == [tuple(np.round(COMMANDS[k].astype(np.float32), 6)) for k in range(3) for _ in range(2 * STEPS)]
    assert [done for _, _, done in controller.seen].count(True) == 6  # each episode's last step


def test_a_frozen_run_scores_every_round_at_step_zero(tasks):
    Stepper.log = []
    results = evaluate(functools.partial(Stepper), TargetBanditEnv(), tasks, rounds=2, adapt=False)
    assert [s["adaptation_steps"] for s in results["summary"]] == [0, 0]
    assert results["tasks"][0]["returns"] == pytest.approx([_return(COMMANDS[0], tasks[0])] * 2, rel=1e-6)


def test_every_task_gets_its_own_seed_and_only_an_oracle_is_told_the_task(tasks):
    Stepper.log = []
    evaluate(functools.partial(TaskTold), TargetBanditEnv(), tasks, rounds=1, seed=1)
    told = Stepper.log
    assert [c.tasks for c in told] == [[t] for t in tasks]
    seeds = [c.seeds[0] for c in told]
    assert all(isinstance(s, int) for s in seeds) and len(set(seeds)) == 3
    Stepper.log = []
    evaluate(functools.partial(Stepper), TargetBanditEnv(), tasks, rounds=1, seed=1)
    assert [c.seeds[0] for c in Stepper.log] == seeds and all(c.tasks == [] for c in Stepper.log)


def test_bad_protocol_arguments_are_refused_in_one_line(tasks):
    for rounds, episodes in ((0, 1), (1, 0)):
        with pytest.raises(ValueError) as err:
            evaluate(functools.partial(Stepper), TargetBanditEnv(), tasks, rounds=rounds, episodes_per_round=episodes)
        assert str(err.value) == f"rounds and episodes_per_round must be >= 1, got {rounds}, {episodes}"


def test_ci95_is_the_normal_half_width_of_the_mean():
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(1.96 / math.sqrt(3))
    assert math.isnan(ci95([5.0])) and math.isnan(ci95([]))
    assert ci95([2.0, 2.0]) == 0.0


def test_reset_controller_passes_the_seed_only_to_a_reset_that_takes_one():
    taking = Stepper()
    reset_controller(taking, 17)
    assert taking.seeds == [17]

    class Plain:
        calls = 0

        def reset(self):
            Plain.calls += 1

    reset_controller(Plain(), 17)
    assert Plain.calls == 1


def _run(returns: list[list[float]], seed=0, adapt=True):
    from metarl_robot.evaluation import summarize

    tasks = [{"task": {"i": i}, "returns": r, "success": [1.0] * len(r)} for i, r in enumerate(returns)]
    return summarize({"rounds": len(returns[0]), "episodes_per_round": 1, "adapt": adapt, "seed": seed, "tasks": tasks})


def test_combine_pools_every_task_of_every_run_once():
    a, b = _run([[1.0, 2.0], [3.0, 4.0]], seed=0), _run([[5.0, 6.0]], seed=1)
    pooled = combine([a, b], labels=["s0", "s1"])
    assert pooled["num_tasks"] == 3 and pooled["seed"] == [0, 1] and pooled["runs"] == ["s0", "s1"]
    assert [t["run"] for t in pooled["tasks"]] == ["s0", "s0", "s1"]
    assert [s["return_mean"] for s in pooled["summary"]] == [3.0, 4.0]
    assert pooled["summary"][0]["return_ci95"] == pytest.approx(ci95([1.0, 3.0, 5.0]))
    assert combine([a, b])["runs"] == ["0", "1"]
    with pytest.raises(ValueError) as err:
        combine([])
    assert str(err.value) == "combine needs at least one result"
    with pytest.raises(ValueError) as err:
        combine([a, _run([[1.0, 2.0]], adapt=False)])
    assert str(err.value) == "cannot pool results of different protocols (rounds, episodes_per_round, adapt must match)"


class SeedRecordingBandit(TargetBanditEnv):
    """Keeps the seed of every reset."""

    seeds: list = []

    def reset(self, *, seed=None, options=None):
        SeedRecordingBandit.seeds.append(seed)
        return super().reset(seed=seed, options=options)


def test_the_protocol_draws_its_reset_and_task_seeds_from_the_seed_given(tasks):
    SeedRecordingBandit.seeds, Stepper.log = [], []
    results = evaluate(functools.partial(Stepper), SeedRecordingBandit(), tasks[:2], rounds=2, seed=9)
    rng = np.random.default_rng(9)
    expected = [int(rng.integers(2**31)) for _ in range(2 * 2)]  # task by task, episode by episode
    assert SeedRecordingBandit.seeds == expected
    assert all(0 <= s < 2**31 for c in Stepper.log for s in c.seeds)
    assert (results["rounds"], results["episodes_per_round"]) == (2, 1)


def test_a_factory_is_called_with_the_task_seed_its_controller_is_reset_with(tasks):
    made = []

    def factory(seed):
        made.append(seed)
        return Stepper(seed)

    Stepper.log = []
    defaults = evaluate(factory, TargetBanditEnv(), tasks[:2])
    assert made == [c.seeds[0] for c in Stepper.log] and all(isinstance(s, int) for s in made)
    assert (defaults["rounds"], defaults["episodes_per_round"], defaults["seed"], defaults["adapt"]) == (3, 1, 0, True)
