"""Learned grasp adaptation against the classical grip controllers, on the grasp suite's test split.

One script, one protocol (:func:`metarl_robot.evaluation.evaluate`: attempt = episode = round, a fresh
controller per task, the same tasks and evaluation seeds for every row), one subprocess sampler:

* **best fixed force**, chosen by a sweep on the *train* split; **oracle** (told each task);
* the classical feedback controllers of ``sim.grasp_baselines``: **ramp** (within an attempt; its
  starting force chosen on the train split), **bisection** (across attempts), **ramp + bisection**,
  and with ``--slip-law`` the memoryless **slip-law ramp** (a gradient policy's teacher);
* for every learned policy given (``--checkpoints`` and/or ``--bundles``, e.g. one per training seed):
  **adapting** (memory carried across the attempts of a trial), **memory within an attempt only**
  (:class:`metarl_robot.evaluation.ForgetBetweenAttempts`) and **frozen** (``adapt=False``: the memory
  and previous-step inputs stay at the trial's start, so no feedback at all);
* across the learned policies: the mean per attempt with a 95% CI over training seeds (t, n-1 dof).

A bundle row runs the torch-free runtime (onnxruntime) through a factory in each worker; a checkpoint
row runs the PyTorch policy. "gap closed" is ``(success - fixed) / (oracle - fixed)`` with the fixed and
oracle rows pooled over attempts (neither adapts).

    python bench/grasp_adaptation.py --checkpoints runs/grasp_rl2_s*/checkpoints/last.safetensors

``--env-id`` evaluates another arm (``sim:metarl/KukaGrasp-v0``, ``sim:metarl/XArmGrasp-v0``) with the
same policies (transfer without retraining) or with policies trained there.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from grasp_baselines import choose_on_train, run_row  # noqa: E402

from metarl_robot.envs import make_meta_env  # noqa: E402
from metarl_robot.evaluation import ForgetBetweenAttempts, OracleController, torch_controller  # noqa: E402
from metarl_robot.sampling import make_sampler  # noqa: E402
from sim.grasp_baselines import (  # noqa: E402
    FixedForceController,
    ForceBisectionController,
    ForceRampController,
    RampBisectionController,
    SlipLawRampController,
)
from sim.grasp_task import grasp_distribution  # noqa: E402

EPISODE_STEPS = 60


def _t95(n: int) -> float:
    """Two-sided 95% Student-t quantile for n - 1 degrees of freedom (n >= 2)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    return table.get(n - 1, 1.96)


def method_group(policy_config: dict, method: str) -> str:
    """What a learned policy's row is pooled under across training seeds: its method and core."""
    cell = policy_config.get("cell")
    return f"{method} ({cell})" if cell else method


def checkpoint_source(path: str):
    """``(controller factory, method group)`` of a checkpoint, loaded once."""
    from metarl_robot.checkpoint import load_checkpoint

    policy, data = load_checkpoint(path)
    config = dataclasses.asdict(policy.config) if dataclasses.is_dataclass(policy.config) else {}
    return functools.partial(torch_controller, policy, data["adaptation"]), method_group(config, str(data["method"]))


def bundle_group(path: str) -> str:
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return method_group(manifest.get("adaptation", {}), str(manifest["method"]["name"])) + ", bundle"


def bundle_factory(path: str):
    from metarl_robot.runtime import load_controller

    return functools.partial(load_controller, path, providers=["cpu"])


def learned_rows(label: str, factory, adapting_only: bool = False) -> dict[str, tuple[str, object, bool]]:
    """The rows of one learned policy: adapting, then (unless ``adapting_only``) memory within an
    attempt only and frozen, in the order of the ``learned`` kinds."""
    rows = {f"{label}": (f"{label}, adapting", factory, True)}
    if not adapting_only:
        rows[f"{label}|forget"] = (f"{label}, memory within an attempt only", ForgetBetweenAttempts(factory), True)
        rows[f"{label}|frozen"] = (f"{label}, frozen", factory, False)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="*", default=[], help="learned policies (checkpoints), e.g. one per training seed")
    parser.add_argument("--full-checkpoints", nargs="*", default=[],
                        help="learned policies that always get all three rows (adapting, memory within an attempt only, "
                             "frozen), even with --adapting-only (e.g. the shipped method beside others measured adapting only)")
    parser.add_argument("--bundles", nargs="*", default=[], help="learned policies (exported bundles), run by the torch-free runtime")
    parser.add_argument("--env-id", default="sim:metarl/PandaGrasp-v0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="evaluation seeds (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="attempts per task (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-test", type=int, default=64)
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="evaluate on the test split (reported figures) or the validation split (development: choosing "
                             "recipes without looking at the test objects)")
    parser.add_argument("--sweep-tasks", type=int, default=64, help="train-split tasks of the sweeps")
    parser.add_argument("--forces", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.5, 7.0, 10.0])
    parser.add_argument("--ramp-starts", type=float, nargs="+", default=[0.3, 0.5, 0.75, 1.0, 1.5])
    parser.add_argument("--fixed-force", type=float, help="skip the fixed-force sweep and use this force")
    parser.add_argument("--ramp-start", type=float, help="skip the ramp-start sweep and use this force")
    parser.add_argument("--no-classical", action="store_true", help="only the fixed force, the oracle and the learned rows")
    parser.add_argument("--slip-law", action="store_true",
                        help="also the memoryless slip-law ramp (the teacher of configs/maml_grasp_skill.yaml)")
    parser.add_argument("--adapting-only", action="store_true", help="learned policies: only the adapting row (development)")
    parser.add_argument("--max-episode-steps", type=int, default=EPISODE_STEPS)
    parser.add_argument("--out", default="runs/grasp_adaptation.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    env = make_meta_env(args.env_id, {"max_episode_steps": args.max_episode_steps}, unwrapped=True)
    dist = grasp_distribution(seed=0, num_test=args.num_test)
    train = dist.train_tasks[: args.sweep_tasks]
    test = dist.test_tasks if args.split == "test" else dist.validation_tasks
    interface = env.interface
    print(f"{args.env_id}: grasp suite {args.split} split, {len(test)} tasks x seeds {args.seeds} x {args.rounds} attempts, "
          f"{args.max_episode_steps} steps per attempt; sweeps on {len(train)} train tasks; {args.workers} workers", flush=True)

    rows: dict[str, dict] = {}
    timings: dict[str, float] = {}
    choices: dict[str, object] = {}
    learned: dict[str, dict[str, list[str]]] = {}  # method group -> row kind -> row keys (one per training seed)
    with make_sampler("subprocess", env.unwrapped.spec, num_workers=args.workers) as sampler:
        force = args.fixed_force
        if force is None:
            force = choose_on_train("fixed-force", "fixed_sweep_train", lambda f: FixedForceController(interface, force_n=f),
                                    args.forces, env, train, sampler, args.seeds, choices, timings)
        choices["fixed_force_n"] = force
        controllers: dict[str, tuple[str, object, bool]] = {
            "fixed": (f"best fixed force ({force:g} N)", FixedForceController(interface, force_n=force), True),
            "oracle": ("oracle (told the task)", OracleController(env), True),
        }
        if not args.no_classical:
            start_n = args.ramp_start
            if start_n is None:
                start_n = choose_on_train("ramp start", "ramp_start_sweep_train", lambda f: ForceRampController(interface, start_n=f),
                                          args.ramp_starts, env, train, sampler, args.seeds, choices, timings)
            choices["ramp_start_n"] = start_n
            controllers.update({
                "ramp": (f"ramp (from {start_n:g} N, x1.35)", ForceRampController(interface, start_n=start_n), True),
                "bisection": (f"bisection (first {force:g} N)", ForceBisectionController(interface, first_n=force), True),
                "combined": (f"ramp + bisection (from {start_n:g} N)", RampBisectionController(interface, start_n=start_n), True),
            })
            if args.slip_law:
                controllers["slip_law"] = (f"slip-law ramp (from {start_n:g} N; memoryless)",
                                           SlipLawRampController(interface, start_n=start_n), True)
        full = [(p, False) for p in args.full_checkpoints] + [(p, args.adapting_only) for p in args.checkpoints]
        sources = [(f"checkpoint {i} ({Path(p).parent.parent.name})", *checkpoint_source(p), only) for i, (p, only) in enumerate(full)]
        sources += [(f"bundle {i} ({Path(p).name})", bundle_factory(p), bundle_group(p), args.adapting_only)
                    for i, p in enumerate(args.bundles)]
        for label, factory, group, only in sources:
            rows_i = learned_rows(label, factory, only)
            controllers.update(rows_i)
            kinds = learned.setdefault(group, {"adapting": [], "forget": [], "frozen": []})
            for key, kind in zip(rows_i, ("adapting", "forget", "frozen")):
                kinds[kind].append(key)
        for key, (label, controller, adapt) in controllers.items():
            result, wall = run_row(controller, env, test, sampler, rounds=args.rounds, seeds=args.seeds, adapt=adapt)
            result["label"] = label
            rows[key], timings[label] = result, wall
            means = " ".join(f"{r['success_mean']:.3f}" for r in result["summary"])
            print(f"  {label:60s} {means}   ({wall:.0f} s)", flush=True)

    def pooled(key: str) -> float:
        return float(np.mean([r["success_mean"] for r in rows[key]["summary"]]))

    fixed, oracle = pooled("fixed"), pooled("oracle")
    attempts = " | ".join(f"attempt {k + 1}" for k in range(args.rounds))
    lines = [f"| row | {attempts} | wall s |", "|" + " --- |" * (args.rounds + 2)]
    for key, result in rows.items():
        cells = [f"{r['success_mean']:.3f} ± {r['success_ci95']:.3f}" for r in result["summary"]]
        result["gap_closed"] = [(r["success_mean"] - fixed) / (oracle - fixed) for r in result["summary"]] if oracle > fixed else None
        lines.append(f"| {result['label']} | " + " | ".join(cells) + f" | {timings[result['label']]:.0f} |")
    seed_lines = [f"| learned policies (training seeds) | {attempts} | gap closed |", "|" + " --- |" * (args.rounds + 2)]
    across: dict[str, list[dict[str, float]]] = {}
    for group, kind, keys in [(g, k, keys) for g, kinds in learned.items() for k, keys in kinds.items()]:
        if not keys:
            continue
        per_attempt = []
        for k in range(args.rounds):
            values = np.array([rows[key]["summary"][k]["success_mean"] for key in keys])
            ci = _t95(len(values)) * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
            per_attempt.append({"mean": float(values.mean()), "ci95_over_seeds": float(ci), "per_seed": values.tolist()})
        across[f"{group} | {kind}"] = per_attempt
        gaps = [(a["mean"] - fixed) / (oracle - fixed) for a in per_attempt] if oracle > fixed else []
        def cell(a: dict) -> str:  # one training seed has no spread to show
            return f"{a['mean']:.3f}" + (f" ± {a['ci95_over_seeds']:.3f}" if math.isfinite(a["ci95_over_seeds"]) else "")

        seed_lines.append(f"| {group}, {kind} ({len(keys)} seed{'s' if len(keys) > 1 else ''}) | " + " | ".join(map(cell, per_attempt))
                          + " | " + " / ".join(f"{g:+.0%}" for g in gaps) + " |")
    print("\nsuccess per attempt, mean ± 95% CI over tasks x evaluation seeds:\n" + "\n".join(lines))
    print(f"\nfixed {fixed:.3f}, oracle {oracle:.3f} (pooled over attempts); gap closed per row:")
    for result in rows.values():
        if result.get("gap_closed"):
            print(f"  {result['label']:60s} " + " ".join(f"{g:+.0%}" for g in result["gap_closed"]))
    if across:
        print("\nacross training seeds (mean ± 95% CI over seeds):\n" + "\n".join(seed_lines))
    total = time.perf_counter() - started
    print(f"\ntotal wall {total:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "choices": choices, "wall_s": timings, "total_wall_s": total,
                               "fixed_pooled": fixed, "oracle_pooled": oracle, "rows": rows, "across_seeds": across}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
