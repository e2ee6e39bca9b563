"""How much adaptation is worth on the grasp suite: an oracle that knows each task against the best
non-adaptive policy, trained with the same budget by the same method, evaluated on the test split.

Both policies are the scripted grasp (``sim.grasp.parametric_grasp_action``) with learned parameters:

* **domain-randomised (DR)**: one grip force for every task, the best a policy that cannot tell tasks
  apart can do with this controller;
* **oracle**: the grip force as a function of the true task parameters (the force needed to hold the
  object and the most it tolerates), so it can treat a heavy slippery object and a fragile one differently.

Both grasp at the object's centre: the centre-of-mass offset makes no measurable difference in this
simulator (``docs/grasp_env.md``), so a grasp-point parameter would only add search noise.

Each is trained by the cross-entropy method on train-split tasks with the same episode budget, from the
same starting point (the oracle's feature weights start at zero, i.e. at the DR policy). The script also
evaluates the analytic oracle (``sim.grasp.oracle_grasp_action``, no training) and the best fixed force
of a sweep on the train split. Episodes run on the subprocess sampler.

    python bench/adaptation_gap.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metarl_robot.evaluation import ci95  # noqa: E402
from metarl_robot.sampling import EpisodeRequest, FunctionPolicy, SerialSampler, SubprocessSampler  # noqa: E402
from sim.grasp import oracle_grasp_action, parametric_grasp_action  # noqa: E402
from sim.grasp_task import grasp_distribution  # noqa: E402

ENV_ID = "sim:metarl/PandaGrasp-v0"
START = {"none": ([np.log(5.0)], [1.5]), "task": ([np.log(5.0), 0.0, 0.0], [1.5, 1.0, 1.0])}
"""CEM starting mean and standard deviation of each policy's parameters (the oracle's extra weights start at 0)."""


def _oracle(obs, task, options):
    return oracle_grasp_action(obs, task)


def run(sampler, policy, tasks, seeds, options_list, *, returns: bool = False) -> np.ndarray:
    """Success (0/1), or the return, of one episode per (task, seed, options) triple."""
    requests = [EpisodeRequest(i, t, int(s), 1, o) for i, (t, s, o) in enumerate(zip(tasks, seeds, options_list))]
    episodes = sampler.sample(policy, requests)
    return np.array([e.total_reward if returns else float(e.succeeded) for e in episodes])


def cem(sampler, features: str, train_tasks, rng: np.random.Generator, *, iterations: int, population: int,
        tasks_per_candidate: int, elite_fraction: float = 0.25) -> tuple[np.ndarray, list[float]]:
    """Cross-entropy search over the controller parameters for the highest mean episode return (the
    env's dense reward, less noisy than 0/1 success); returns the final mean and the elite mean return
    per iteration. Every candidate of an iteration sees the same tasks and seeds."""
    mean, std = (np.asarray(v, dtype=np.float64) for v in START[features])
    policy = FunctionPolicy(parametric_grasp_action)
    curve = []
    n_elite = max(1, int(round(elite_fraction * population)))
    for _ in range(iterations):
        candidates = mean + std * rng.standard_normal((population, len(mean)))
        picks = rng.choice(len(train_tasks), tasks_per_candidate, replace=False)
        seeds = rng.integers(0, 2**31, tasks_per_candidate)
        tasks = [train_tasks[i] for i in picks]
        options = [{"features": features, "theta": c.tolist()} for c in candidates for _ in tasks]
        episode_returns = run(sampler, policy, tasks * population, np.tile(seeds, population), options, returns=True)
        scores = episode_returns.reshape(population, tasks_per_candidate).mean(1)
        elite = candidates[np.argsort(-scores, kind="stable")[:n_elite]]
        # Smoothed update: half the old spread is kept, so a lucky elite cannot collapse the search.
        mean = elite.mean(0)
        std = np.maximum(0.5 * std + 0.5 * elite.std(0), 0.05 * np.asarray(START[features][1]))
        curve.append(float(np.sort(scores)[-n_elite:].mean()))
    return mean, curve


def best_fixed_force(sampler, train_tasks, seeds) -> tuple[float, float]:
    policy = FunctionPolicy(parametric_grasp_action)
    best = (0.0, -1.0)
    for force in np.geomspace(0.5, 60.0, 12):
        options = [{"features": "none", "theta": [float(np.log(force))]}] * len(train_tasks)
        rate = float(run(sampler, policy, train_tasks, seeds, options).mean())
        best = max(best, (force, rate), key=lambda fr: fr[1])
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--tasks-per-candidate", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--robot", default="franka_panda")
    parser.add_argument("--out", default="runs/adaptation_gap.json")
    args = parser.parse_args(argv)

    dist = grasp_distribution(seed=0, num_train=args.num_train, num_test=args.num_test)
    train, test = dist.train_tasks, dist.test_tasks
    budget = args.iterations * args.population * args.tasks_per_candidate
    env_kwargs = {"robot": args.robot}
    sampler = (SubprocessSampler(ENV_ID, args.workers, env_kwargs=env_kwargs) if args.workers > 1
               else SerialSampler(ENV_ID, env_kwargs=env_kwargs))
    rows, started = [], time.perf_counter()
    with sampler:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            test_seeds = rng.integers(0, 2**31, len(test))
            t0 = time.perf_counter()
            dr_theta, dr_curve = cem(sampler, "none", train, rng, iterations=args.iterations, population=args.population,
                                     tasks_per_candidate=args.tasks_per_candidate)
            oracle_theta, oracle_curve = cem(sampler, "task", train, rng, iterations=args.iterations,
                                             population=args.population, tasks_per_candidate=args.tasks_per_candidate)
            sweep_seeds = rng.integers(0, 2**31, 64)
            force, force_train_rate = best_fixed_force(sampler, train[:64], sweep_seeds)
            policy = FunctionPolicy(parametric_grasp_action)
            results = {
                "oracle (trained)": run(sampler, policy, test, test_seeds, [{"features": "task", "theta": oracle_theta.tolist()}] * len(test)),
                "DR (trained)": run(sampler, policy, test, test_seeds, [{"features": "none", "theta": dr_theta.tolist()}] * len(test)),
                "oracle (analytic)": run(sampler, FunctionPolicy(_oracle), test, test_seeds, [{}] * len(test)),
                f"best fixed force ({force:.1f} N)": run(sampler, policy, test, test_seeds, [{"features": "none", "theta": [float(np.log(force))]}] * len(test)),
            }
            wall = time.perf_counter() - t0
            row = {
                "seed": seed, "wall_s": round(wall, 1), "budget_episodes_per_policy": budget,
                "dr_theta": dr_theta.round(4).tolist(), "oracle_theta": oracle_theta.round(4).tolist(),
                "dr_curve": dr_curve, "oracle_curve": oracle_curve, "fixed_force_train_rate": force_train_rate,
                "test": {k: {"success": float(v.mean()), "ci95": ci95(v)} for k, v in results.items()},
            }
            row["gap"] = row["test"]["oracle (trained)"]["success"] - row["test"]["DR (trained)"]["success"]
            rows.append(row)
            print(f"seed {seed} ({wall:.0f} s, {budget} training episodes per policy, {len(test)} test tasks):")
            for name, value in row["test"].items():
                print(f"  {name:28s} {value['success']:.3f} ± {value['ci95']:.3f}")
            print(f"  adaptation gap (trained oracle - trained DR): {row['gap']:+.3f}")
    gaps = [r["gap"] for r in rows]
    print(f"gap over {len(rows)} seed(s): {np.mean(gaps):+.3f} (min {min(gaps):+.3f}); total wall {time.perf_counter() - started:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
