"""Speed-up of parallel samplers for what the project actually runs on the grasp env: meta-training
collection and meta-testing, serial against the subprocess (and Ray) sampler with two workers.

    python bench/collection_speedup.py [--iterations 4] [--eval-tasks 16] [--repeats 3] [--no-ray] [--rl2-rounds 2]

Training collection: ``ContextPPO.collect_iteration`` of ``configs/grasp_context_ppo.yaml`` (8 train
tasks x 3 consecutive episodes of 30 steps, acting and re-inferring the context as on the robot), with
the policy as initialised; one warm-up iteration per sampler, then ``--iterations`` timed iterations,
the samplers taking turns iteration by iteration so a change in a shared machine's load hits them
alike. Meta-testing: ``evaluate`` of the shipped grasp model (``models/grasp_context_ppo``, PyTorch
controller from a per-task factory, as ``metarl-robot eval --checkpoint`` builds it) on
``--eval-tasks`` test tasks x 3 rounds of one episode, on samplers made once (worker start-up not
timed, one warm-up evaluation each), then ``--repeats`` timed evaluations per sampler in turn; the
start-up of each parallel sampler is reported separately. Every sampler's episodes and figures are
compared with the serial sampler's: they must be identical.

The shipped recipe's own collection (``--rl2-rounds``, 0 to skip): the RL² warm start of
``configs/grasp_rl2.yaml`` gathers trials of its teacher (32 train tasks x 4 attempts of 60 steps per
round, the classical grip controller acting); ``--rl2-rounds`` timed rounds per sampler, in turn.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GRASP_CONFIG = REPO / "configs" / "grasp_context_ppo.yaml"
GRASP_MODEL = REPO / "models" / "grasp_context_ppo" / "checkpoint.safetensors"
RL2_CONFIG = REPO / "configs" / "grasp_rl2.yaml"


def _timed_collections(collects: list, repeats: int) -> list[tuple[float, bool]]:
    """Call each ``collect() -> batch`` in turn, ``repeats`` times: env steps per second of each, and
    whether its batches equal the first one's (the serial sampler's)."""
    steps, seconds, same = [0] * len(collects), [0.0] * len(collects), [True] * len(collects)
    for _ in range(repeats):
        reference = None
        for i, collect in enumerate(collects):
            start = time.perf_counter()
            batch = collect()
            seconds[i] += time.perf_counter() - start
            steps[i] += int(batch.valid.sum())
            reference = batch if reference is None else reference
            same[i] = same[i] and all(
                np.array_equal(getattr(batch, k), getattr(reference, k)) for k in ("obs", "actions", "rewards", "valid")
            )
    return [(n / t, ok) for n, t, ok in zip(steps, seconds, same)]


def training_collection(samplers: list[tuple[str, int]], iterations: int) -> list[tuple[float, bool]]:
    """Env steps per second of each sampler in ContextPPO.collect_iteration, and whether its
    episodes equal the serial sampler's."""
    from metarl_robot.algos.context_ppo import TrainConfig
    from metarl_robot.algos.context_ppo.algo import ContextPPO
    from metarl_robot.config import load_config

    with contextlib.ExitStack() as stack:
        collects = []
        for name, workers in samplers:
            config = load_config(TrainConfig, GRASP_CONFIG, [f"sampler={name}", f"num_workers={workers}"])
            algo = ContextPPO(config, Path(stack.enter_context(tempfile.TemporaryDirectory())))
            stack.callback(algo.close)
            algo.collect_iteration()  # warm-up: worker start-up, imports, first PyBullet scene
            collects.append(lambda algo=algo: algo.collect_iteration()[0])
        return _timed_collections(collects, iterations)


def rl2_teacher_collection(samplers: list[tuple[str, int]], rounds: int) -> list[tuple[float, bool]]:
    """Env steps per second of each sampler gathering the RL² warm start's teacher trials (4 batches of
    8 trials per timed round), and whether its episodes equal the serial sampler's."""
    from metarl_robot.algos.rl2.algo import RL2, TrainConfig
    from metarl_robot.algos.rl2.rollout import trial_batch
    from metarl_robot.algos.rl2.teacher import TeacherTrials
    from metarl_robot.config import load_config

    with contextlib.ExitStack() as stack:
        collects = []
        for name, workers in samplers:
            config = load_config(TrainConfig, RL2_CONFIG, [f"sampler={name}", f"num_workers={workers}", "trials_per_iteration=8"])
            algo = RL2(config, Path(stack.enter_context(tempfile.TemporaryDirectory())))
            stack.callback(algo.close)
            ws = config.warm_start
            make = functools.partial(TeacherTrials, ws.teacher, ws.teacher_kwargs, algo.interface)
            algo._collect_rounds(1, make)  # warm-up
            collects.append(lambda algo=algo, make=make, n=config.episodes_per_trial: trial_batch(algo._collect_rounds(4, make), n))
        return _timed_collections(collects, rounds)


def meta_testing(samplers: list[tuple[str, int]], num_tasks: int, repeats: int) -> list[tuple[float, float, bool]]:
    """Env steps per second of each sampler in evaluate(), its start-up seconds, and whether its
    per-task figures equal the serial sampler's."""
    from metarl_robot.algos.common import build_task_distribution
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import evaluate, torch_controller
    from metarl_robot.sampling import make_sampler

    policy, data = load_checkpoint(GRASP_MODEL)
    config = data["config"]
    env = make_meta_env(config["env_id"], config.get("env_kwargs", {}), unwrapped=True)
    tasks = build_task_distribution(config["tasks"]).split("test")[:num_tasks]
    factory = functools.partial(torch_controller, policy, data["adaptation"])
    protocol = {"rounds": 3, "episodes_per_round": 1, "seed": 0}
    steps_per_eval = None
    with contextlib.ExitStack() as stack:
        made = []
        for name, workers in samplers:
            start = time.perf_counter()
            if name == "serial":
                sampler = make_sampler("serial", None, env=env)
            else:
                sampler = make_sampler(name, env.unwrapped.spec, num_workers=workers)
            made.append((sampler, time.perf_counter() - start))
            stack.callback(sampler.close)
            evaluate(factory, env, tasks, sampler=sampler, **protocol)  # warm-up
        seconds, same, reference = [0.0] * len(made), [True] * len(made), None
        for _ in range(repeats):
            for i, (sampler, _) in enumerate(made):
                start = time.perf_counter()
                results = evaluate(factory, env, tasks, sampler=sampler, **protocol)
                seconds[i] += time.perf_counter() - start
                reference = results if reference is None else reference
                same[i] = same[i] and results["tasks"] == reference["tasks"]
        # Every episode of the grasp env lasts its 30 control steps.
        steps_per_eval = len(tasks) * protocol["rounds"] * protocol["episodes_per_round"] * int(env.max_episode_steps)
    env.close()
    return [(steps_per_eval * repeats / t, startup, ok) for t, (_, startup), ok in zip(seconds, made, same)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4, help="timed training-collection iterations per sampler")
    parser.add_argument("--eval-tasks", type=int, default=16, help="test tasks per meta-test evaluation")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per sampler")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray sampler")
    parser.add_argument("--rl2-rounds", type=int, default=2, help="timed rounds of the RL² teacher collection (0: skip)")
    args = parser.parse_args()

    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    samplers = [("serial", 1), ("subprocess", 2)]
    if not args.no_ray:
        from metarl_robot.sampling import start_local_ray

        start_local_ray(num_cpus=2)
        samplers.append(("ray", 2))
    train = training_collection(samplers, args.iterations)
    test = meta_testing(samplers, args.eval_tasks, args.repeats)
    rl2 = rl2_teacher_collection(samplers, args.rl2_rounds) if args.rl2_rounds else []
    print(f"\nload average {os.getloadavg()[0]:.2f} at end\n")
    print("| what | sampler | workers | env steps/s | vs serial | same episodes as serial | sampler start-up s |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    tables = [("training collection", [(r, None, ok) for r, ok in train]), ("meta-testing", test)]
    if rl2:
        tables.append(("RL² teacher collection", [(r, None, ok) for r, ok in rl2]))
    for label, rows in tables:
        for (name, workers), (rate, startup, ok) in zip(samplers, rows):
            ratio = rate / rows[0][0]
            up = "" if startup is None or name == "serial" else f"{startup:.1f}"
            print(f"| {label} | {name} | {workers} | {rate:,.0f} | {ratio:.2f}x | {'yes' if ok else 'NO'} | {up} |")
    if not args.no_ray:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
