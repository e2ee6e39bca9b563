"""Grasp env cost against raw PyBullet stepping of the same scene, in the same run.

For every control step the env calls ``stepSimulation`` 24 times (24 physics steps of 1/240 s) and
does its own work around them: inverse kinematics, joint references, finger drive, contact queries,
sensing, observation, reward. The scene times its ``stepSimulation`` calls (``physics_time_s``), so the
raw cost of stepping exactly these physics states is measured inside the very episodes the env runs.
The ratio ``env.step`` time / raw stepping time is the env's overhead factor (target <= 1.10).

For reference the script also steps the same scene with nothing else happening (the arm parked at
home, no contacts), which is cheaper physics than a grasp and so overstates the ratio.

    python bench/grasp_env_speed.py                      # Panda, 16 test-split tasks of the suite
    python bench/grasp_env_speed.py --robot kuka_iiwa
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.grasp import GraspEnv, oracle_grasp_action  # noqa: E402
from sim.grasp_task import default_grasp_distribution, grasp_distribution  # noqa: E402


def measure(env: GraspEnv, tasks, episodes_per_task: int) -> tuple[float, float, int]:
    """Seconds in ``env.step`` and in ``stepSimulation`` over scripted-oracle episodes, and the step count."""
    step_s, steps = 0.0, 0
    physics_before = env.scene.physics_time_s
    for i, task in enumerate(tasks):
        env.set_task(task)
        for k in range(episodes_per_task):
            obs, _ = env.reset(seed=1000 * i + k)
            truncated = False
            while not truncated:
                action = oracle_grasp_action(obs, task)
                start = time.perf_counter()
                obs, _, _, truncated, _ = env.step(action)
                step_s += time.perf_counter() - start
                steps += 1
    return step_s, env.scene.physics_time_s - physics_before, steps


def idle_stepping_s(env: GraspEnv, control_steps: int) -> float:
    """Seconds per control step of 24 bare ``stepSimulation`` calls with the arm at rest."""
    env.reset(seed=0)
    step = env.scene.bullet.stepSimulation
    start = time.perf_counter()
    for _ in range(control_steps * env.scene.substeps):
        step()
    return (time.perf_counter() - start) / control_steps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robot", default="franka_panda")
    parser.add_argument("--tasks", type=int, default=16, help="test-split tasks of the suite")
    parser.add_argument("--episodes", type=int, default=3, help="episodes per task")
    parser.add_argument("--repeats", type=int, default=3, help="report each repeat and the median")
    parser.add_argument("--distribution", choices=("suite", "default"), default="suite")
    args = parser.parse_args(argv)

    make = grasp_distribution if args.distribution == "suite" else default_grasp_distribution
    tasks = make(seed=0, num_train=8, num_test=args.tasks).test_tasks
    env = GraspEnv(tasks[0], robot=args.robot)
    measure(env, tasks[:2], 1)  # warm-up: builds, caches
    ratios = []
    print(f"robot {args.robot}, {len(tasks)} {args.distribution} test tasks x {args.episodes} scripted-oracle episodes of 30 steps")
    print(f"{'repeat':>6} {'env.step ms':>12} {'raw stepping ms':>16} {'ratio':>7} {'steps/s env':>12} {'steps/s raw':>12}")
    for r in range(args.repeats):
        step_s, physics_s, steps = measure(env, tasks, args.episodes)
        ratio = step_s / physics_s
        ratios.append(ratio)
        print(f"{r:>6} {1e3 * step_s / steps:>12.3f} {1e3 * physics_s / steps:>16.3f} {ratio:>7.3f} "
              f"{steps / step_s:>12.0f} {steps / physics_s:>12.0f}")
    idle = idle_stepping_s(env, 200)
    print(f"median ratio env / raw stepping of the same episodes: {np.median(ratios):.3f} (target <= 1.10)")
    print(f"reference: idle scene, 24 bare stepSimulation calls: {1e3 * idle:.3f} ms per control step")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
