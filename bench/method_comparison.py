"""Every gradient-based method of the toolkit on 2D navigation, same budget, same meta-test protocol.

Each method starts from configs/maml_navigation.yaml in the MAML paper's one-step setup (``BASE``)
with only what makes it that method changed, trains for ``--iterations`` meta-iterations, and is evaluated on the same
held-out goals before and after one and two adaptation steps of 20 episodes. Runs resume from
``--out``, so a finished method is only evaluated again.

    python bench/method_comparison.py --iterations 40 --eval-tasks 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = ["inner.steps=1", "inner.loss_every_step=false"]
"""The MAML paper's one-step setup; configs/maml_navigation.yaml itself trains three steps (a method's
own overrides come after these)."""

METHODS: dict[str, list[str]] = {
    "MAML-TRPO": [],
    "FOMAML-TRPO": ["inner.first_order=true"],
    "MAML-PPO": ["outer=ppo", "ppo.lr=0.01"],  # 1e-3 barely moved in 40 iterations (BENCHMARKS.md)
    "ProMP": ["method=promp", "promp.lr=0.01"],
    "CAVIA": ["method=cavia", "policy.context_dim=4", "policy.inner_lr=1.0"],
    "Meta-SGD": ["method=meta_sgd", "policy.learn_inner_lr=true"],
    "Reptile": ["method=reptile", "inner.steps=2"],
    "multi-task PPO (fine-tuned)": ["method=multitask_ppo", "ppo.lr=0.001", "ppo.epochs=10"],
}


def slug(name: str) -> str:
    """A folder name for a variant: lower case, runs of other characters as one ``-``."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split()) or "variant"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                        help="built-in methods to run (none: only the --variant rows)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "OVERRIDE"),
                        help="one more row: a name, then config overrides after BASE (e.g. --variant "
                             "'Reptile, 5 steps' method=reptile inner.steps=5); repeatable")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_methods"))
    args = parser.parse_args(argv)
    variants = {v[0]: v[1:] for v in args.variant}
    clash = sorted(set(variants) & set(METHODS))
    if clash:
        parser.error(f"--variant {clash[0]!r} is the name of a built-in method; give the variant its own name")
    methods = {**{name: METHODS[name] for name in args.methods}, **variants}

    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.context_ppo.algo import build_task_distribution
    from metarl_robot.algos.gradient import TrainConfig, train
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.config import load_config, to_dict
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import OracleController, evaluate, write_comparison
    from metarl_robot.families.gradient_torch import GradientTorchController

    out = Path(args.out)
    rows, curves, report = [], {}, {}
    base = load_config(TrainConfig, ROOT / "configs" / "maml_navigation.yaml", [*BASE, f"seed={args.seed}"])
    eval_env = make_meta_env(base.env_id, base.env_kwargs, unwrapped=True)
    eval_tasks = build_task_distribution(to_dict(base.tasks)).split("test")[: args.eval_tasks]
    # The scripted optimum on the same goals: the top of the gap each row's one step is measured against.
    optimum = evaluate(OracleController(eval_env), eval_env, eval_tasks, adapt=False, rounds=1,
                       episodes_per_round=base.inner.episodes_per_step, seed=0)["summary"][0]["return_mean"]
    for name, overrides in methods.items():
        config = load_config(TrainConfig, ROOT / "configs" / "maml_navigation.yaml",
                             [*BASE, *overrides, f"iterations={args.iterations}", f"seed={args.seed}"])
        # Built-in methods keep their first word as the run folder (earlier runs resume); a variant
        # gets its whole name, so two variants of one method never share a run.
        run_dir = out / (name.split(" ")[0].lower() if name in METHODS else slug(name))
        start = time.perf_counter()
        path = train(config, run_dir, resume=True, progress=False)
        train_s = time.perf_counter() - start
        policy, data = load_checkpoint(path)
        env = make_meta_env(config.env_id, config.env_kwargs, unwrapped=True)
        tasks = build_task_distribution(to_dict(config.tasks)).split("test")[: args.eval_tasks]
        controller = GradientTorchController(policy, data["adaptation"], seed=0)
        results = evaluate(controller, env, tasks, rounds=3, episodes_per_round=config.inner.episodes_per_step, seed=0)
        curves[name] = results
        cells = [f"{r['return_mean']:.1f} ± {r['return_ci95']:.1f}" for r in results["summary"]]
        before, after = (results["summary"][k]["return_mean"] for k in (0, 1))
        gap = (after - before) / (optimum - before)
        rows.append(f"| {name} | {' | '.join(cells)} | {gap:.0%} | {train_s:.0f} |")
        report[name] = {"overrides": overrides, "summary": results["summary"], "gap_closed_after_1_step": gap,
                        "scripted_optimum": optimum, "train_s_this_run": train_s,
                        "wall_s_total": data["metrics"].get("time/wall_s")}
        print(rows[-1], flush=True)
    print(f"\n2D navigation, {args.iterations} meta-iterations of 20 tasks x 20 episodes, seed {args.seed}; "
          f"return on {args.eval_tasks} held-out goals, mean ± 95% CI over goals\n")
    print("| method | 0 steps | 1 step | 2 steps | gap closed after 1 step | train s (this run) |\n|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nscripted optimum on these goals: {optimum:.2f}; gap closed = (1 step - 0 steps) / (optimum - 0 steps), "
          "from each row's own unadapted return")
    if "MAML-TRPO" in report:
        reference = report["MAML-TRPO"]["summary"][1]["return_mean"]
        for name, row in report.items():
            print(f"1-step return of {name} vs MAML-TRPO's: {reference / row['summary'][1]['return_mean']:.0%}")
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"  # rows of earlier invocations stay; this run's replace theirs
    earlier = json.loads(results_path.read_text()) if results_path.exists() else {}
    results_path.write_text(json.dumps({**earlier, **report}, indent=2))
    print(f"\nplot: {write_comparison(curves, out / 'return.png', '2D navigation: every method, same budget')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
