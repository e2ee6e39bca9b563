"""Where one adaptation step sends the 2D navigation point: direction against distance.

    python bench/nav_step_error.py --checkpoint CKPT [--config YAML] [--goals 40] [--steps 1]

For each held-out goal the checkpoint's policy collects one window of exploring episodes (the window
its adaptation was trained with), takes ``--steps`` adaptation steps (each from a fresh window), then
runs one episode with its mean action. The point's final position ``p`` is split along the goal
``g``: the distance it reached along the goal's direction against the goal's distance ``|g|``, and
how far it ended off that line. A least-squares slope of reached against goal distance near 1 means
the step learned how far the goal is; near 0, only which way. Printed beside: the same for a point
that stands still, and the mean final error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import add_checkpoint_arguments, gradient_run, run_attempt  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--goals", type=int, default=40)
    parser.add_argument("--steps", type=int, default=1, help="adaptation steps before the mean-action episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from metarl_robot.families.gradient_torch import GradientTorchController

    config, policy, data, env, tasks = gradient_run(parser, args.checkpoint, args.config, args.goals)
    if "navigation" not in config.env_id.lower():
        parser.error(f"{config.env_id} is not the 2D navigation env; this script reads the point's position")
    scale = np.asarray(env.interface["action"]["scale"], np.float64)
    window = int(data["adaptation"]["episodes_per_step"])
    rows = []
    for i, task in enumerate(tasks):
        goal = np.array([task.params["goal_x"], task.params["goal_y"]], np.float64)
        controller = GradientTorchController(policy, data["adaptation"], seed=args.seed * 1000 + i)
        controller.reset(seed=args.seed * 1000 + i)
        env.set_task(task)
        episode = 0
        for _ in range(args.steps):
            for _ in range(window):
                run_attempt(controller, env, scale, seed=args.seed * 100000 + i * 1000 + episode)
                episode += 1
            controller.adapt()
        controller.explore = False  # the mean action; the episode it stores is never adapted on
        final = np.asarray(run_attempt(controller, env, scale, seed=args.seed * 100000 + i * 1000 + episode)[1][:2], np.float64)
        distance = float(np.linalg.norm(goal))
        direction = goal / max(distance, 1e-9)
        along = float(final @ direction)
        across = float(abs(final[0] * direction[1] - final[1] * direction[0]))
        rows.append({"goal": goal.tolist(), "final": final.tolist(), "goal_distance": distance, "along": along,
                     "across": across, "error": float(np.linalg.norm(final - goal))})
    d = np.array([r["goal_distance"] for r in rows])
    along = np.array([r["along"] for r in rows])
    slope, intercept = np.polyfit(d, along, 1)
    radial = np.abs(along - d)
    across = np.array([r["across"] for r in rows])
    error = np.array([r["error"] for r in rows])
    print(f"{args.checkpoint}: {len(rows)} held-out goals, {args.steps} adaptation step(s) of {window} episodes, "
          f"then the mean action\n")
    print("| | value |\n| --- | ---: |")
    print(f"| goal distance, mean (m) | {d.mean():.3f} |")
    print(f"| final error, mean (m) | {error.mean():.3f} |")
    print(f"| error along the goal's direction, mean abs (m) | {radial.mean():.3f} |")
    print(f"| error across it, mean (m) | {across.mean():.3f} |")
    print(f"| slope of reached against goal distance | {slope:.2f} |")
    print(f"| reached distance at zero goal distance (m) | {intercept:.3f} |")
    print(f"| standing still: final error, mean (m) | {d.mean():.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "steps": args.steps, "slope": slope,
                                        "intercept": intercept, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
