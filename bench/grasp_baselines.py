"""Classical grip-force baselines on the grasp suite's test split, in the one meta-test protocol.

Every row runs through :func:`metarl_robot.evaluation.evaluate` (attempt = episode = round, ``adapt()``
after each attempt, a fresh controller per task) on the same tasks with the same evaluation seeds, on
one subprocess sampler:

* **best fixed force**: the scripted grasp with the force that succeeds most often on the *train*
  split in a sweep (``--forces``), then evaluated on the test split;
* **oracle**: :class:`metarl_robot.evaluation.OracleController`, told each task (the force-window
  model's middle force and grasp point);
* **ramp**: :class:`sim.grasp_baselines.ForceRampController`, its starting force the best of the same
  sweep on the train split (``--ramp-starts``);
* **bisection**: :class:`sim.grasp_baselines.ForceBisectionController`, first force the best fixed
  force, bracket 0.3-60 N (the suite's lightest holding force to the motor limit);
* **ramp + bisection**: :class:`sim.grasp_baselines.RampBisectionController` from the ramp's start;
* the shipped checkpoint (``--checkpoint``) adapting, and frozen (``adapt=False``).

Success per attempt is the mean over tasks x evaluation seeds with a 95% CI over those pairs
(:func:`metarl_robot.evaluation.combine`); "gap closed" is (success - fixed) / (oracle - fixed), with
the fixed and oracle rows' success pooled over their attempts (neither adapts). ``--max-episode-steps``
runs the env with another attempt length (the suite's is 60 steps; 30 was the old one) for the timing diagnostic.

    python bench/grasp_baselines.py --out runs/grasp_baselines.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the checkpoint rows' torch, in each worker

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import run_attempt  # noqa: E402
from metarl_robot.envs import make_meta_env  # noqa: E402
from metarl_robot.evaluation import OracleController, combine, evaluate, torch_controller  # noqa: E402
from metarl_robot.sampling import make_sampler  # noqa: E402
from sim.grasp_baselines import (  # noqa: E402
    AttemptOutcome,
    FixedForceController,
    ForceBisectionController,
    ForceRampController,
    RampBisectionController,
)
from sim.grasp_task import EPISODE_STEPS, grasp_distribution  # noqa: E402

ENV_ID = "sim:metarl/PandaGrasp-v0"
ALL_ROWS = ("fixed", "oracle", "ramp", "bisection", "combined", "checkpoint", "checkpoint_frozen")


def run_row(controller, env, tasks, sampler, *, rounds: int, seeds: Sequence[int], adapt: bool = True) -> tuple[dict, float]:
    """The protocol on ``tasks`` for every evaluation seed, pooled over (task, seed); and its wall time."""
    start = time.perf_counter()
    runs = [evaluate(controller, env, tasks, rounds=rounds, seed=s, adapt=adapt, sampler=sampler) for s in seeds]
    return combine(runs, [f"seed {s}" for s in seeds]), time.perf_counter() - start


def sweep(make, values, env, tasks, sampler, seeds) -> tuple[float, dict[float, float], float]:
    """The value of ``values`` whose controller ``make(value)`` succeeds most often in one attempt."""
    start = time.perf_counter()
    rates = {}
    for value in values:
        result, _ = run_row(make(value), env, tasks, sampler, rounds=1, seeds=seeds)
        rates[float(value)] = result["summary"][0]["success_mean"]
    best = max(rates, key=lambda v: (rates[v], -v))  # ties: the gentler force
    return best, rates, time.perf_counter() - start


def choose_on_train(name: str, key: str, make, values, env, tasks, sampler, seeds, choices: dict, timings: dict) -> float:
    """:func:`sweep` ``values`` on the train ``tasks``; record the rates under ``choices[key]`` and the
    wall time under ``timings``, print them, and return the best value."""
    best, rates, wall = sweep(make, values, env, tasks, sampler, seeds)
    choices[key], timings[f"{name} sweep (train)"] = rates, wall
    print(f"{name} sweep on train ({wall:.0f} s): " + ", ".join(f"{v:g} N {r:.3f}" for v, r in rates.items()), flush=True)
    return best


def ramp_diagnostic(env, tasks, start_n: float, seed: int) -> dict:
    """One ramp attempt per task, run here so the attempt's own record can be read: when the pads
    first pressed, how many raises fitted, and how attempts ended."""
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    rng = np.random.default_rng(seed)
    outcomes: list[AttemptOutcome] = []
    successes = []
    for task in tasks:
        controller = ForceRampController(env.interface, start_n=start_n)
        env.set_task(task)
        _, _, info = run_attempt(controller, env, scale, int(rng.integers(2**31)))
        outcomes.append(controller.attempts[-1])
        successes.append(bool(info["success"]))
    contact = [o.contact_step for o in outcomes if o.contact_step >= 0]
    slipped = [o for o in outcomes if o.slipped]
    return {
        "tasks": len(tasks),
        "success": float(np.mean(successes)),
        "contact_step_median": float(np.median(contact)) if contact else None,
        "contact_step_p10_p90": [float(np.percentile(contact, 10)), float(np.percentile(contact, 90))] if contact else None,
        "raises_median": float(np.median([o.raises for o in outcomes])),
        "raises_max": int(max(o.raises for o in outcomes)),
        "outcomes": {label: sum(o.label == label for o in outcomes) for label in ("lifted", "slipped", "crushed", "missed")},
        "slipped_with_regrasp": sum(o.regrasps > 0 for o in slipped),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="evaluation seeds (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="attempts per task (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--sweep-tasks", type=int, default=64, help="train-split tasks of the sweeps (default: %(default)s)")
    parser.add_argument("--forces", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5, 7.0, 10.0, 15.0])
    parser.add_argument("--ramp-starts", type=float, nargs="+", default=[0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--checkpoint", default=str(ROOT / "models/grasp_context_ppo/checkpoint.safetensors"))
    parser.add_argument("--rows", nargs="+", default=list(ALL_ROWS), choices=ALL_ROWS)
    parser.add_argument("--fixed-force", type=float, help="skip the fixed-force sweep and use this force")
    parser.add_argument("--ramp-start", type=float, help="skip the ramp-start sweep and use this force")
    parser.add_argument("--max-episode-steps", type=int, default=None, help=f"diagnostic: attempts of this many steps instead of the suite's {EPISODE_STEPS}")
    parser.add_argument("--out", default="runs/grasp_baselines.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_start = os.getloadavg()
    env_kwargs = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
    env = make_meta_env(ENV_ID, env_kwargs, unwrapped=True)
    dist = grasp_distribution(seed=0, num_test=args.num_test)
    train, test = dist.train_tasks[: args.sweep_tasks], dist.test_tasks
    interface = env.interface
    steps = env_kwargs.get("max_episode_steps", EPISODE_STEPS)
    print(f"grasp suite test split: {len(test)} tasks x seeds {args.seeds} x {args.rounds} attempts, "
          f"{steps} steps per attempt; sweeps on {len(train)} train tasks; subprocess sampler, {args.workers} workers")

    rows: dict[str, dict] = {}
    timings: dict[str, float] = {}
    choices: dict[str, object] = {}
    with make_sampler("subprocess", env.unwrapped.spec, num_workers=args.workers) as sampler:
        if args.fixed_force is None:
            force = choose_on_train("fixed-force", "fixed_sweep_train", lambda f: FixedForceController(interface, force_n=f),
                                    args.forces, env, train, sampler, args.seeds, choices, timings)
        else:
            force = args.fixed_force
        choices["fixed_force_n"] = force
        needs_ramp = {"ramp", "combined"} & set(args.rows)
        if needs_ramp and args.ramp_start is None:
            start_n = choose_on_train("ramp start", "ramp_start_sweep_train", lambda f: ForceRampController(interface, start_n=f),
                                      args.ramp_starts, env, train, sampler, args.seeds, choices, timings)
        else:
            start_n = args.ramp_start if args.ramp_start is not None else args.ramp_starts[0]
        choices["ramp_start_n"] = start_n

        controllers = {
            "fixed": (f"best fixed force ({force:g} N)", FixedForceController(interface, force_n=force), True),
            "oracle": ("oracle (told the task)", OracleController(env), True),
            "ramp": (f"ramp (from {start_n:g} N, x1.35)", ForceRampController(interface, start_n=start_n), True),
            "bisection": (f"bisection (first {force:g} N)", ForceBisectionController(interface, first_n=force), True),
            "combined": (f"ramp + bisection (from {start_n:g} N)", RampBisectionController(interface, start_n=start_n), True),
        }
        if {"checkpoint", "checkpoint_frozen"} & set(args.rows):
            from metarl_robot.checkpoint import load_checkpoint

            policy, data = load_checkpoint(args.checkpoint)
            factory = functools.partial(torch_controller, policy, data["adaptation"])
            controllers["checkpoint"] = ("shipped checkpoint, adapting", factory, True)
            controllers["checkpoint_frozen"] = ("shipped checkpoint, frozen", factory, False)
        for key in args.rows:
            label, controller, adapt = controllers[key]
            result, wall = run_row(controller, env, test, sampler, rounds=args.rounds, seeds=args.seeds, adapt=adapt)
            result["label"] = label
            rows[key], timings[label] = result, wall
            means = " ".join(f"{r['success_mean']:.3f}" for r in result["summary"])
            print(f"  {label:40s} {means}   ({wall:.0f} s)", flush=True)

    diagnostic = None
    if "ramp" in args.rows:
        diagnostic = ramp_diagnostic(env, train, start_n, seed=args.seeds[0])
        choices["ramp_diagnostic_train"] = diagnostic

    def pooled(key: str) -> float | None:
        return float(np.mean([r["success_mean"] for r in rows[key]["summary"]])) if key in rows else None

    fixed, oracle = pooled("fixed"), pooled("oracle")
    header = "| row | " + " | ".join(f"attempt {k + 1}" for k in range(args.rounds)) + " | wall s |"
    lines = [header, "|" + " --- |" * (args.rounds + 2)]
    gap_lines = ["| row | " + " | ".join(f"attempt {k + 1}" for k in range(args.rounds)) + " |",
                 "|" + " --- |" * (args.rounds + 1)]
    for key, result in rows.items():
        cells = [f"{r['success_mean']:.3f} ± {r['success_ci95']:.3f}" for r in result["summary"]]
        lines.append(f"| {result['label']} | " + " | ".join(cells) + f" | {timings[result['label']]:.0f} |")
        if fixed is not None and oracle is not None and oracle > fixed:
            gaps = [(r["success_mean"] - fixed) / (oracle - fixed) for r in result["summary"]]
            result["gap_closed"] = gaps
            gap_lines.append(f"| {result['label']} | " + " | ".join(f"{g:+.0%}" for g in gaps) + " |")
    total = time.perf_counter() - started
    load_end = os.getloadavg()
    print("\nsuccess per attempt, mean ± 95% CI over tasks x seeds:\n" + "\n".join(lines))
    if len(gap_lines) > 2:
        print(f"\nfraction of the fixed -> oracle gap closed (fixed {fixed:.3f}, oracle {oracle:.3f}, pooled over attempts):\n"
              + "\n".join(gap_lines))
    if diagnostic:
        print(f"\nramp diagnostic (one attempt on each of {diagnostic['tasks']} train tasks, {steps} steps): "
              f"pads press at step {diagnostic['contact_step_median']:.0f} (median; 10-90%: {diagnostic['contact_step_p10_p90']}), "
              f"{diagnostic['raises_median']:.0f} raises (median, max {diagnostic['raises_max']}), outcomes {diagnostic['outcomes']}, "
              f"{diagnostic['slipped_with_regrasp']} of the slipped attempts lost the object and were regrasping at the end")
    print(f"\ntotal wall {total:.0f} s; load average (1, 5, 15 min) at start {load_start}, at end {load_end}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "choices": choices, "wall_s": timings, "total_wall_s": total,
                               "loadavg_start": load_start, "loadavg_end": load_end, "rows": rows}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
