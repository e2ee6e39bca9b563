"""Gradient-based meta-RL against its baselines and an oracle, under the one meta-test protocol.

For each benchmark this script, in one run and for every seed given:

1. meta-trains the gradient-based method (e.g. MAML-TRPO) from its config;
2. trains the multi-task baseline (one policy on all tasks, no adaptation) with the same tasks, policy
   and per-iteration sample budget, and where the benchmark has one, an oracle policy trained the
   same way but with the task in its observation (the MAML paper's oracle);
3. evaluates on the held-out test tasks with ``metarl_robot.evaluation.evaluate``: the meta-learner
   before and after 1..K adaptation steps; the baseline without adaptation (domain randomisation) and
   fine-tuned with the same inner step (transfer learning); the oracle policy; the env's task-aware
   scripted controller (an upper bound: it acts without exploration noise);
4. pools seeds (mean and 95% CI over tasks x seeds), prints a markdown table, and writes
   ``results.json`` and ``<metric>.png`` under ``--out``.

Training resumes from ``--out``'s run folders, so an interrupted run continues where it stopped and a
finished one is only evaluated again. ``--export`` also exports the first seed's meta-learner as a
bundle and evaluates it with the torch-free runtime, which is what the robot runs.

    python bench/gradient_meta.py navigation --seeds 0 1 2
    python bench/gradient_meta.py cheetah-vel --seeds 0 --iterations 40
    python bench/gradient_meta.py cheetah-vel --meta-set method=cavia --meta-set policy.context_dim=4 \\
        --meta-set policy.inner_lr=1.0 --out runs/bench_cheetah_vel_cavia
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import EnvsByConfig, gap_closed  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Bench:
    meta: str
    """Config of the meta-learner."""
    baseline: str
    """Config of the multi-task baseline."""
    metric: str
    """The headline metric: return or success."""
    rounds: int
    """Evaluation rounds: before adaptation and after 1..rounds-1 steps."""
    label: str
    oracle: str = ""
    """Config of a policy trained with the task in its observation (the MAML paper's oracle), if any."""


BENCHES = {
    "navigation": Bench("configs/maml_navigation.yaml", "configs/multitask_navigation.yaml", "return", 4,
                        "2D navigation, MAML-TRPO", oracle="configs/oracle_navigation.yaml"),
    "cheetah-vel": Bench("configs/maml_cheetah_vel.yaml", "configs/multitask_cheetah_vel.yaml", "return", 3,
                         "half-cheetah velocity, MAML-TRPO"),
    "cheetah-dir": Bench("configs/maml_cheetah_dir.yaml", "configs/multitask_cheetah_dir.yaml", "return", 3,
                         "half-cheetah direction, MAML-TRPO"),
    "grasp": Bench("configs/maml_grasp.yaml", "configs/multitask_grasp.yaml", "success", 4, "Panda grasp, MAML"),
}


def train_run(config_path: str, run_dir: Path, overrides: list[str]) -> tuple[Path, float]:
    from metarl_robot.algos.gradient import TrainConfig, train
    from metarl_robot.config import load_config

    config = load_config(TrainConfig, ROOT / config_path, overrides)
    start = time.perf_counter()
    path = train(config, run_dir, resume=True, progress=True)
    return path, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", choices=sorted(BENCHES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=0, help="override both configs' iterations (0 = keep)")
    parser.add_argument("--eval-tasks", type=int, default=40, help="test tasks to evaluate on (default: %(default)s)")
    parser.add_argument("--episodes-per-round", type=int, default=0, help="default: the configs' inner batch")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--export", action="store_true", help="also export seed 0's meta-learner and evaluate the bundle")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for both configs")
    parser.add_argument("--meta-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for the meta-learner's config only (e.g. method=cavia policy.context_dim=4)")
    parser.add_argument("--out", default="", help="default: runs/bench_<bench>")
    args = parser.parse_args(argv)

    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.context_ppo.algo import build_task_distribution
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.config import ConfigError
    from metarl_robot.evaluation import OracleController, combine, evaluate, write_comparison
    from metarl_robot.families.gradient_torch import GradientTorchController

    bench = BENCHES[args.bench]
    out = Path(args.out or ROOT / "runs" / f"bench_{args.bench.replace('-', '_')}")
    overrides = list(args.set) + ([f"iterations={args.iterations}"] if args.iterations else [])
    start = time.perf_counter()
    roles = {"meta": bench.meta, "baseline": bench.baseline, **({"oracle": bench.oracle} if bench.oracle else {})}
    checkpoints: dict[str, list[Path]] = {role: [] for role in roles}
    wall: dict[str, list[float]] = {role: [] for role in roles}
    for seed in args.seeds:
        for role, config in roles.items():
            extra = args.meta_set if role == "meta" else []
            try:
                path, seconds = train_run(config, out / f"{role}_seed{seed}", [*overrides, *extra, f"seed={seed}"])
            except ConfigError as err:  # an override naming no config key, or a bad value: one line
                parser.error(f"{config}: {err}")
            checkpoints[role].append(path)
            wall[role].append(seconds)
            print(f"[{role} seed {seed}] {path} ({seconds:.0f} s this run)", flush=True)

    _, meta_data = load_checkpoint(checkpoints["meta"][0])
    config = meta_data["config"]
    env_for = EnvsByConfig()
    env = env_for(config)
    tasks = build_task_distribution(config["tasks"]).split("test")[: args.eval_tasks]
    per_round = args.episodes_per_round or int(meta_data["adaptation"]["episodes_per_step"])
    protocol = {"rounds": bench.rounds, "episodes_per_round": per_round, "seed": args.eval_seed}

    def run(role: str, adapt: bool) -> dict:
        results = []
        for path in checkpoints[role]:
            policy, data = load_checkpoint(path)
            controller = GradientTorchController(policy, data["adaptation"], seed=args.eval_seed)
            results.append(evaluate(controller, env_for(data["config"]), tasks, adapt=adapt, **protocol))
        return combine(results, [str(p) for p in checkpoints[role]])

    eval_start = time.perf_counter()
    curves = {
        f"{meta_data['method']} (meta-learned)": run("meta", True),
        "multi-task, fine-tuned (transfer)": run("baseline", True),
        "multi-task, no adaptation (DR)": run("baseline", False),
        "oracle (knows the task)": evaluate(OracleController(env), env, tasks, adapt=False, **protocol),
    }
    oracle_key = "oracle (knows the task)"
    if bench.oracle:
        oracle_key = "oracle policy (task in its observation)"
        curves[oracle_key] = run("oracle", False)
        curves["scripted optimum (no exploration noise)"] = curves.pop("oracle (knows the task)")
    if args.export:
        from metarl_robot.export import export_bundle
        from metarl_robot.runtime import load_controller

        bundle = export_bundle(checkpoints["meta"][0], out / "bundle", overwrite=True)
        controller = load_controller(bundle, providers=["cpu"], seed=args.eval_seed)
        curves[f"{meta_data['method']} seed {args.seeds[0]}, ONNX bundle (runtime)"] = evaluate(controller, env, tasks, **protocol)
    eval_seconds = time.perf_counter() - eval_start

    metric = bench.metric
    meta_key, transfer_key, dr_key = list(curves)[:3]
    table = ["| method | " + " | ".join(f"{k} step{'s' if k != 1 else ''}" for k in range(bench.rounds)) + " |",
             "|---" * (bench.rounds + 1) + "|"]
    for label, results in curves.items():
        cells = [f"{r[f'{metric}_mean']:.2f} ± {np.nan_to_num(r[f'{metric}_ci95']):.2f}" for r in results["summary"]]
        table.append(f"| {label} | " + " | ".join(cells) + " |")
    value = lambda key, k: curves[key]["summary"][k][f"{metric}_mean"]  # noqa: E731
    gaps = {
        "vs fine-tuned baseline": gap_closed(value(meta_key, 1), value(transfer_key, 1), value(oracle_key, 0)),
        "vs baseline without adaptation": gap_closed(value(meta_key, 1), value(dr_key, 0), value(oracle_key, 0)),
    }
    if bench.oracle:
        gaps["vs fine-tuned baseline, oracle = scripted optimum"] = gap_closed(
            value(meta_key, 1), value(transfer_key, 1), value("scripted optimum (no exploration noise)", 0))
    print(f"\n{bench.label}: {len(tasks)} test tasks x {len(args.seeds)} seed(s), {per_round} episodes per adaptation "
          f"step, {metric} mean ± 95% CI over tasks x seeds\n")
    print("\n".join(table))
    for name, gap in gaps.items():
        if np.isnan(gap):
            print(f"\nno gap between the baseline ({name}) and the oracle: the oracle does not score above it")
        else:
            print(f"\n1-step {metric} closes {gap:.0%} of the gap between the baseline ({name}) and the oracle")
    print(f"\ntraining wall time this run: meta {sum(wall['meta']):.0f} s, baseline {sum(wall['baseline']):.0f} s; "
          f"evaluation {eval_seconds:.0f} s; total {time.perf_counter() - start:.0f} s")

    out.mkdir(parents=True, exist_ok=True)
    report = {"bench": args.bench, "seeds": args.seeds, "num_tasks": len(tasks), "protocol": protocol, "metric": metric,
              "gap_closed_after_1_step": gaps, "train_wall_s": wall, "eval_wall_s": eval_seconds, "curves": curves,
              "checkpoints": {k: [str(p) for p in v] for k, v in checkpoints.items()}}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    png = write_comparison(curves, out / f"{metric}.png", f"{bench.label}: {len(tasks)} test tasks x {len(args.seeds)} seed(s)", metric)
    print(f"\nresults: {out / 'results.json'}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
