"""PEARL beside MAML-TRPO on the sparse 2D point robot, on the same test goals and evaluation seeds.

Rows (every one through :func:`metarl_robot.evaluation.evaluate`, test split of
``sparse_point_distribution(seed=0)``):

* **oracle**: straight to the goal (told the task);
* **stand still**: the zero command (what a policy that has not found the goal earns);
* **PEARL**, per checkpoint given (one per training seed): episodes 1..K of a trial, the latent drawn
  from the prior in the first and from the posterior over the trial so far in later ones (posterior
  sampling, commands sampled as in training); and the same with the posterior mean and mean actions;
* **MAML-TRPO**, per checkpoint: before adaptation and after one inner step of ``--maml-episodes``
  episodes (its training setting), per-episode return.

Training budgets are read from the checkpoints (environment steps), so "equal environment steps" can be
checked in the printout.

    python bench/pearl_sparse_point.py --pearl runs/pearl_sparse_s*/checkpoints/last.safetensors \\
        --maml runs/maml_sparse_s*/checkpoints/last.safetensors
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metarl_robot.checkpoint import load_checkpoint  # noqa: E402
from metarl_robot.envs import make_meta_env  # noqa: E402
from metarl_robot.evaluation import OracleController, evaluate, torch_controller  # noqa: E402
from sim.navigation import sparse_point_distribution  # noqa: E402


class StandStill:
    """The zero command, never adapting."""

    def reset(self, seed=None):
        pass

    def act(self, obs):
        return np.zeros(2, np.float32)

    def observe(self, *args):
        pass

    def adapt(self):
        return {}

    def set_learning(self, enabled):
        pass


def env_steps(data: dict) -> int:
    """Environment steps a checkpoint's training took (from its config)."""
    cfg, it = data["config"], int(data["iteration"])
    if data["method"] == "pearl":
        steps = 20  # the sparse point robot's episode
        initial = int(cfg["initial_trials_per_task"]) * int(cfg["tasks"]["num_train"]) * int(cfg["episodes_per_trial"]) * steps
        return initial + it * int(cfg["tasks_per_iteration"]) * int(cfg["episodes_per_trial"]) * steps
    inner = cfg["inner"]
    episodes = int(inner["episodes_per_step"]) * (int(inner["steps"]) + 1)
    return it * int(cfg["meta_batch_size"]) * episodes * 20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pearl", nargs="*", default=[])
    parser.add_argument("--maml", nargs="*", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--episodes", type=int, default=3, help="PEARL episodes per trial (default: %(default)s)")
    parser.add_argument("--maml-episodes", type=int, default=20, help="episodes per MAML adaptation step (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=20)
    parser.add_argument("--out", default="runs/pearl_sparse_point.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    env = make_meta_env("sim:metarl/SparsePointRobot-v0", {}, unwrapped=True)
    tasks = sparse_point_distribution(seed=0, num_test=args.num_test).test_tasks
    rows: dict[str, dict] = {}

    def run(label: str, controller, rounds: int, episodes_per_round: int = 1, adapt: bool = True) -> None:
        t0 = time.perf_counter()
        per_seed = [evaluate(controller, env, tasks, rounds=rounds, episodes_per_round=episodes_per_round, seed=s, adapt=adapt)
                    for s in args.seeds]
        returns = np.array([[t["returns"] for t in r["tasks"]] for r in per_seed])  # [seed, task, round]
        success = np.array([[t["success"] for t in r["tasks"]] for r in per_seed])
        flat_r, flat_s = returns.reshape(-1, rounds), success.reshape(-1, rounds)
        ci = 1.96 * flat_r.std(0, ddof=1) / math.sqrt(len(flat_r))
        rows[label] = {"return_mean": flat_r.mean(0).tolist(), "return_ci95": ci.tolist(), "success_mean": flat_s.mean(0).tolist(),
                       "wall_s": time.perf_counter() - t0}
        cells = " | ".join(f"{m:.2f} ± {c:.2f} ({s:.2f})" for m, c, s in zip(flat_r.mean(0), ci, flat_s.mean(0)))
        print(f"  {label:58s} {cells}", flush=True)

    print(f"sparse point robot, {len(tasks)} test goals x seeds {args.seeds}; return per episode (per adaptation round for MAML),"
          " ± 95% CI over goals x seeds, (success)", flush=True)
    run("oracle (told the goal)", OracleController(env), args.episodes)
    run("stand still", StandStill(), args.episodes)
    for kind, paths in (("pearl", args.pearl), ("maml", args.maml)):
        for path in paths:
            policy, data = load_checkpoint(path)
            name = f"{kind} {Path(path).parent.parent.name} ({env_steps(data):,} env steps)"
            factory = torch_controller(policy, data["adaptation"])
            if kind == "pearl":
                run(f"{name}, posterior sampling", torch_controller(policy, data["adaptation"], explore=True), args.episodes)
                run(f"{name}, posterior mean", torch_controller(policy, data["adaptation"], explore=False), args.episodes)
            else:
                run(f"{name}, before / after 1 step (return per episode)", factory, 2, episodes_per_round=args.maml_episodes)
    total = time.perf_counter() - started
    print(f"total wall {total:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "total_wall_s": total}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
