"""The scripted grasp on a split: the oracle's force and grasp point against every fixed force of a sweep.

``python -m sim.grasp_bench`` prints the success rate, on test-split tasks, of the scripted controller with the oracle's grip force (chosen from ``grasp_force_window``) and
grasp point against every fixed grip force of a sweep. ``--distribution suite`` uses the full grasp
suite, ``--robot`` another arm. The trained comparison is ``bench/adaptation_gap.py``, the env's speed
``bench/grasp_env_speed.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


from metarl_robot.tasks import TaskSpec
from sim.grasp import GraspEnv, run_scripted_episode
from sim.grasp_task import default_grasp_distribution, grasp_distribution, oracle_grasp_offset_m, oracle_grip_force_n

FIXED_FORCES_N = (1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 45.0, 60.0)


def success_rate(env: GraspEnv, tasks: Sequence[TaskSpec], grip_force_n: float | None) -> float:
    """Fraction of ``tasks`` the scripted controller lifts; ``grip_force_n=None`` is the oracle (its force
    and grasp point), a number a fixed force at the object's centre."""
    successes = 0
    for i, task in enumerate(tasks):
        env.set_task(task)
        if grip_force_n is None:
            force, offset = oracle_grip_force_n(task), oracle_grasp_offset_m(task)
        else:
            force, offset = grip_force_n, 0.0
        successes += bool(run_scripted_episode(env, force, seed=i, grasp_offset_m=offset)["success"])
    return successes / len(tasks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32, help="number of test-split tasks in the sweep")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the task distribution")
    parser.add_argument("--distribution", choices=("default", "suite"), default="default")
    parser.add_argument("--robot", default="franka_panda")
    args = parser.parse_args(argv)

    make = grasp_distribution if args.distribution == "suite" else default_grasp_distribution
    distribution = make(seed=args.seed, num_train=max(64, args.tasks), num_test=args.tasks)
    tasks = distribution.split(args.split)[: args.tasks]
    env = GraspEnv(tasks[0], robot=args.robot)
    print(f"scripted grasp success on {len(tasks)} {args.split}-split tasks of the {args.distribution} distribution, {args.robot}:")
    print(f"  oracle force   {success_rate(env, tasks, None):6.1%}")
    rates = {force: success_rate(env, tasks, force) for force in FIXED_FORCES_N}
    for force, rate in rates.items():
        print(f"  fixed {force:5.1f} N   {rate:6.1%}")
    best = max(rates, key=rates.get)
    print(f"  best fixed force {best:g} N: {rates[best]:.1%}")
    env.close()


if __name__ == "__main__":
    main()
