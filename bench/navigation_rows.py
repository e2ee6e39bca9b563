"""Every 2D-navigation row on the same held-out goals, in one run: learned methods beside the baselines.

    python bench/navigation_rows.py [--row LABEL CKPT [CKPT ...]] [--frozen-row LABEL CKPT [CKPT ...]]
                                    [--oracle CKPT [CKPT ...]] [--eval-tasks 20] [--rounds 3] [--out DIR]

Each ``--row`` is a learned method, its checkpoints (one per training seed) pooled over goals x seeds and
evaluated with adaptation on; each ``--frozen-row`` the same with adaptation off (the policy's mean
action, never adapted: the method with adaptation frozen). ``--oracle`` gives the checkpoints of the
MAML paper's oracle, a policy trained with the goal in its observation
(``metarl-robot train --config configs/oracle_navigation.yaml``), evaluated in that env. Always run
beside them, on the same goals and seeds:

* the scripted optimum (drives straight at the goal it is told, no exploration noise);
* the classical controller an engineer would write (:class:`sim.navigation_baselines.TrilaterationController`:
  three probing moves, the goal solved from the rewards, then straight at it). It knows that the reward
  is minus the distance, which no learned row is told;
* standing still (every command zero): what a policy that does not adapt can be compared with, since
  goals lie symmetrically around the start.

Without ``--row`` the shipped navigation checkpoints are evaluated (``models/cavia_imitation_navigation``
and ``models/maml_navigation``). The goals are the first ``--eval-tasks`` of the first row's config's
test split; every row uses the protocol of ``metarl-robot eval`` (``--rounds`` rounds of the first row's
episodes per adaptation step, round 0 before adaptation, eval seed ``--seed``). Prints a table of return
and success per round, the share of the gap from each row's own unadapted return to the scripted optimum
closed after one step (learned rows that adapt; the baselines do not start from an unadapted policy), and each
row's evaluation seconds; writes ``results.json`` and ``return.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import EnvsByConfig, gap_closed  # noqa: E402

SHIPPED = [
    ("identify, then imitate (models/cavia_imitation_navigation)", [ROOT / "models/cavia_imitation_navigation/checkpoint.safetensors"]),
    ("MAML-TRPO, three-step (models/maml_navigation)", [ROOT / "models/maml_navigation/checkpoint.safetensors"]),
]


class StandStill:
    """Commands zero displacement forever."""

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(2, np.float32)

    def observe(self, obs, action, reward, next_obs, done) -> None:
        pass

    def adapt(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", nargs="+", action="append", default=[], metavar="LABEL CKPT",
                        help="a learned method: a label, then its checkpoints (pooled), adaptation on")
    parser.add_argument("--frozen-row", nargs="+", action="append", default=[], metavar="LABEL CKPT",
                        help="a learned method with adaptation off (its mean action, never adapted)")
    parser.add_argument("--oracle", nargs="+", default=[], metavar="CKPT",
                        help="checkpoints of the oracle policy (trained with configs/oracle_navigation.yaml)")
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_navigation_rows"))
    args = parser.parse_args(argv)
    for spec in args.row + args.frozen_row:
        if len(spec) < 2:
            parser.error(f"--row/--frozen-row {spec[0]!r} names no checkpoint: give LABEL CKPT [CKPT ...]")
    rows = [(spec[0], [Path(p) for p in spec[1:]]) for spec in args.row] if args.row else SHIPPED
    frozen = [(spec[0], [Path(p) for p in spec[1:]]) for spec in args.frozen_row]
    for _, paths in rows + frozen + [("", [Path(p) for p in args.oracle])]:
        for path in paths:
            if not path.is_file():
                parser.error(f"no checkpoint at {path}: train it first or fix the path")

    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.common.tasks import build_task_distribution
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.evaluation import OracleController, combine, evaluate, torch_controller, write_comparison
    from sim.navigation_baselines import TrilaterationController

    _, first = load_checkpoint(rows[0][1][0])
    config = first["config"]
    env_for = EnvsByConfig()
    env = env_for(config)
    tasks = build_task_distribution(config["tasks"]).split("test")[: args.eval_tasks]
    protocol = {"rounds": args.rounds, "episodes_per_round": int(first["adaptation"]["episodes_per_step"]), "seed": args.seed}

    def pooled(paths: list[Path], adapt: bool) -> dict:
        runs = []
        for path in paths:
            policy, data = load_checkpoint(path)
            runs.append(evaluate(torch_controller(policy, data["adaptation"], seed=args.seed), env_for(data["config"]),
                                 tasks, adapt=adapt, **protocol))
        return combine(runs, [str(p) for p in paths])

    curves: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    def timed(label: str, make) -> None:
        start = time.perf_counter()
        curves[label] = make()
        seconds[label] = time.perf_counter() - start
        print(f"[{seconds[label]:.0f} s] {label}", flush=True)

    for label, paths in rows:
        timed(label, lambda paths=paths: pooled(paths, True))
    for label, paths in frozen:
        timed(f"{label}, adaptation frozen", lambda paths=paths: pooled(paths, False))
    if args.oracle:
        timed("oracle policy (goal in its observation)", lambda: pooled([Path(p) for p in args.oracle], False))
    optimum_key = "scripted optimum (told the goal, no exploration noise)"
    timed(optimum_key, lambda: evaluate(OracleController(env), env, tasks, adapt=False, **protocol))
    timed("classical: trilaterate from three probing moves, then drive", lambda: evaluate(TrilaterationController(), env, tasks, **protocol))
    timed("standing still", lambda: evaluate(StandStill(), env, tasks, **protocol))

    optimum = curves[optimum_key]["summary"][0]["return_mean"]
    head = " | ".join(f"{k} step{'s' if k != 1 else ''}" for k in range(args.rounds))
    lines = [f"| row | {head} | success after 1 step | gap closed after 1 step | eval s |",
             "|---" * (args.rounds + 4) + "|"]
    learned = {label for label, _ in rows} | {f"{label}, adaptation frozen" for label, _ in frozen}
    for label, results in curves.items():
        summary = results["summary"]
        cells = [f"{r['return_mean']:.2f} ± {np.nan_to_num(r['return_ci95']):.2f}" for r in summary]
        after = summary[min(1, len(summary) - 1)]
        gap = gap_closed(after["return_mean"], summary[0]["return_mean"], optimum)
        moved = abs(after["return_mean"] - summary[0]["return_mean"]) > 1e-9
        gap_text = f"{gap:.0%}" if label in learned and moved and not np.isnan(gap) else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {after['success_mean']:.2f} | {gap_text} | {seconds[label]:.0f} |")
    print(f"\n2D navigation: {len(tasks)} held-out goals (the first of the test split), rounds of "
          f"{protocol['episodes_per_round']} episodes, eval seed {args.seed}; return mean ± 95% CI over goals x seeds\n")
    print("\n".join(lines))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"num_tasks": len(tasks), "protocol": protocol, "eval_wall_s": seconds, "curves": curves,
              "rows": {label: [str(p) for p in paths] for label, paths in rows + frozen},
              "oracle": [str(p) for p in args.oracle], "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    png = write_comparison(curves, out / "return.png", f"2D navigation: {len(tasks)} held-out goals")
    print(f"\nresults: {out / 'results.json'}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
