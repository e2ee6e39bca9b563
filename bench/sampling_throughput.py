"""Env steps per second of each episode sampler, and the speed-up of two workers over one.

    python bench/sampling_throughput.py [--requests 32] [--batches 3] [--envs grasp point] [--no-ray]

For each env: the serial sampler, and the subprocess and Ray samplers with one and two workers. Each
sampler first runs one warm-up batch (worker start-up, imports, first PyBullet scene) that is not
timed, then ``--batches`` timed batches of ``--requests`` requests of one episode each; the samplers
take turns batch by batch, so a change in the load of a shared machine affects them alike. The
episodes of every sampler are compared with the serial sampler's (they must be identical). ``grasp`` is
the PyBullet grasp env with its default 30-step episodes, its registered task distribution and the
scripted grasp controller with the oracle's grip force and grasp point; ``point`` is the 20-step
point-goal toy env, whose steps cost almost nothing, so its figures show the samplers' own overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from metarl_robot.sampling import (
    EpisodePolicy,
    EpisodeRequest,
    FunctionPolicy,
    RaySampler,
    SerialSampler,
    SubprocessSampler,
    make_requests,
    start_local_ray,
)
from metarl_robot.tasks import TaskSpec


def grasp_controller(obs: np.ndarray, task: TaskSpec, options: dict) -> np.ndarray:
    from sim import oracle_grasp_action

    return oracle_grasp_action(obs, task)


def point_controller(obs: np.ndarray, task: TaskSpec, options: dict) -> np.ndarray:
    goal = np.array([task["goal_x"], task["goal_y"]])
    return np.clip((goal - obs) / 0.1, -1.0, 1.0).astype(np.float32)


def grasp_tasks() -> list[TaskSpec]:
    from sim import grasp_distribution

    return grasp_distribution(seed=0).train_tasks


def point_tasks() -> list[TaskSpec]:
    from metarl_robot.testing import point_goal_distribution

    return point_goal_distribution().train_tasks


ENVS: dict[str, tuple[str, Callable[[], list[TaskSpec]], Callable]] = {
    "grasp": ("sim:metarl/PandaGrasp-v0", grasp_tasks, grasp_controller),
    "point": ("metarl_robot.testing:metarl/PointGoal-v0", point_tasks, point_controller),
}


def batch(tasks: list[TaskSpec], n: int, seed: int) -> list[EpisodeRequest]:
    return make_requests([tasks[i % len(tasks)] for i in range(n)], seed=seed)


def measure(
    samplers: list[tuple[str, int, object]], policy: EpisodePolicy, tasks: list[TaskSpec], requests: int, batches: int
) -> tuple[list[float], bool]:
    """Steps per second of each sampler, timed batch by batch in turn so that a change in the machine's
    load hits every sampler alike; and whether they all returned the same episodes."""
    for _, _, sampler in samplers:
        sampler.sample(policy, batch(tasks, requests, seed=1000))  # warm-up, not timed
    steps, seconds = [0] * len(samplers), [0.0] * len(samplers)
    identical = True
    for b in range(batches):
        requests_b = batch(tasks, requests, seed=b)
        reference = None
        for i, (_, _, sampler) in enumerate(samplers):
            start = time.perf_counter()
            episodes = sampler.sample(policy, requests_b)
            seconds[i] += time.perf_counter() - start
            steps[i] += sum(episode.length for episode in episodes)
            reference = episodes if reference is None else reference
            identical = identical and episodes == reference
    return [n / t for n, t in zip(steps, seconds)], identical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32, help="requests (one episode each) per batch")
    parser.add_argument("--batches", type=int, default=4, help="timed batches per sampler")
    parser.add_argument("--envs", nargs="+", choices=sorted(ENVS), default=["grasp", "point"])
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray sampler")
    args = parser.parse_args()

    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start")
    configs: list[tuple[str, int, Callable]] = [
        ("serial", 1, lambda env_id: SerialSampler(env_id)),
        ("subprocess", 1, lambda env_id: SubprocessSampler(env_id, 1)),
        ("subprocess", 2, lambda env_id: SubprocessSampler(env_id, 2)),
    ]
    if not args.no_ray:
        # Ray's CPUs are scheduling tokens: three let the 1- and 2-actor samplers exist side by side
        # (only one of them runs at a time).
        start_local_ray(num_cpus=3)
        configs += [
            ("ray", 1, lambda env_id: RaySampler(env_id, 1)),
            ("ray", 2, lambda env_id: RaySampler(env_id, 2)),
        ]
    rows = []
    for env_name in args.envs:
        env_id, make_tasks, controller = ENVS[env_name]
        with contextlib.ExitStack() as stack:
            samplers = [(name, workers, stack.enter_context(make(env_id))) for name, workers, make in configs]
            rates, identical = measure(samplers, FunctionPolicy(controller), make_tasks(), args.requests, args.batches)
        one_worker: dict[str, float] = {}
        for (sampler_name, workers, _), rate in zip(samplers, rates):
            speed_up = f"{rate / one_worker[sampler_name]:.2f}x" if sampler_name in one_worker else ""
            one_worker.setdefault(sampler_name, rate)
            rows.append((env_name, sampler_name, workers, rate, speed_up))
            print(f"  {env_name:6s} {sampler_name:10s} {workers} worker(s): {rate:9.0f} steps/s {speed_up}", flush=True)
        print(f"  {env_name}: every sampler returned {'the same' if identical else 'DIFFERENT'} episodes", flush=True)

    print(f"\n{args.requests} requests x 1 episode per batch, {args.batches} timed batches per sampler (taken in turn) "
          f"after one warm-up batch; load average {os.getloadavg()[0]:.2f} at end\n")
    print("| env | sampler | workers | env steps/s | 2 vs 1 worker |")
    print("| --- | --- | ---: | ---: | ---: |")
    for env_name, sampler_name, workers, rate, speed_up in rows:
        print(f"| {env_name} | {sampler_name} | {workers} | {rate:,.0f} | {speed_up} |")
    if not args.no_ray:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
