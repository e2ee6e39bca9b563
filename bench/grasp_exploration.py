"""How much exploration noise and how large an inner step a cloned grasp policy tolerates.

For a gradient-policy grasp checkpoint (e.g. the warm start of configs/maml_grasp.yaml alone:
``metarl-robot train --config configs/maml_grasp.yaml --set iterations=0 --run-dir runs/grasp_clone``),
on the first ``--tasks`` train objects with the meta-test protocol:

1. success while sampling with each ``--log-stds`` (no adaptation, ``--episodes`` attempts per object);
2. success before and after one inner policy-gradient step of each ``--inner-lrs`` (log std fixed to
   ``--step-log-std``), the step taken on ``--episodes`` attempts per object.

    python bench/grasp_exploration.py runs/grasp_clone/checkpoints/last.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--log-stds", type=float, nargs="+", default=[-2.0, -3.0, -4.0, -5.0])
    parser.add_argument("--inner-lrs", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    parser.add_argument("--step-log-std", type=float, default=-4.0)
    args = parser.parse_args(argv)

    import torch

    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.context_ppo.algo import build_task_distribution
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.envs import make_meta_env
    from metarl_robot.evaluation import evaluate
    from metarl_robot.families.gradient_torch import GradientTorchController

    policy, data = load_checkpoint(args.checkpoint)
    env = make_meta_env(data["config"]["env_id"], data["config"].get("env_kwargs", {}), unwrapped=True)
    tasks = build_task_distribution(data["config"]["tasks"]).split("train")[: args.tasks]
    log_std = slice(policy.weights.numel() - policy.act_dim, None)

    def run(rounds: int) -> list[float]:
        controller = GradientTorchController(policy, data["adaptation"], seed=0)
        results = evaluate(controller, env, tasks, rounds=rounds, episodes_per_round=args.episodes, seed=0)
        return [row["success_mean"] for row in results["summary"]]

    print(f"{args.checkpoint}: {len(tasks)} train objects x {args.episodes} attempts\n")
    print("| log std | std | success |\n| --- | --- | --- |")
    for value in args.log_stds:
        with torch.no_grad():
            policy.weights[log_std] = value
        print(f"| {value:g} | {torch.exp(torch.tensor(value)).item():.3f} | {run(1)[0]:.2f} |", flush=True)
    print(f"\n| inner lr (log std {args.step_log_std:g}) | success before | after one step |\n| --- | --- | --- |")
    with torch.no_grad():
        policy.weights[log_std] = args.step_log_std
    for lr in args.inner_lrs:
        policy.inner_lr.fill_(lr)
        before, after = run(2)
        print(f"| {lr:g} | {before:.2f} | {after:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
