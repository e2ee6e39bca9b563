"""Is one adaptation step limited by the noise of its gradient? Return after one step as its batch grows.

    python bench/step_batch_size.py --checkpoint CKPT [--episodes 20 80 320] [--eval-tasks 20]

A gradient checkpoint's inner step is a policy-gradient estimate from the episodes of one window (20
on 2D navigation). This script takes the same step, on the same held-out tasks and seeds, from
windows of every size in ``--episodes``, and prints the return before and after it (the mean over
the window's episodes, exploration noise included, as in every meta-test of this project). The
step's loss is a mean over the window's steps, so a larger window changes only the estimate's noise,
not its scale: if the return after one step keeps improving with the window, one step from the
robot's window is noise-limited, and a better initialisation cannot close what a better estimate
would. The checkpoint's own window size is marked.

The environment and tasks are the checkpoint's training config's (``config.yaml`` beside its
``checkpoints/`` folder, or ``--config``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import add_checkpoint_arguments, gradient_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--episodes", type=int, nargs="+", default=[20, 80, 320])
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.episodes):
        parser.error(f"--episodes must be positive window sizes, got {args.episodes}")
    from metarl_robot.evaluation import evaluate
    from metarl_robot.families.gradient_torch import GradientTorchController

    _, policy, data, env, tasks = gradient_run(parser, args.checkpoint, args.config, args.eval_tasks)
    own = int(data["adaptation"]["episodes_per_step"])
    print(f"{args.checkpoint}: {len(tasks)} held-out tasks, seed {args.seed}, one step from windows of "
          f"{args.episodes} episodes (trained with {own})\n")
    print("| episodes in the window | before the step | after one step | s |\n| ---: | --- | --- | ---: |")
    rows = []
    for k in args.episodes:
        start = time.perf_counter()
        controller = GradientTorchController(policy, {**data["adaptation"], "episodes_per_step": k}, seed=args.seed)
        result = evaluate(controller, env, tasks, rounds=2, episodes_per_round=k, seed=args.seed)
        before, after = result["summary"]
        rows.append({"episodes": k, "before": before, "after": after, "wall_s": time.perf_counter() - start})
        mark = " (trained)" if k == own else ""
        print(f"| {k}{mark} | {before['return_mean']:.2f} ± {before['return_ci95']:.2f} | "
              f"{after['return_mean']:.2f} ± {after['return_ci95']:.2f} | {rows[-1]['wall_s']:.0f} |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
