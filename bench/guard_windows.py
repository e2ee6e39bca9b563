"""What a robot that leaves adaptation on sees: the shipped navigation bundle in the control loop
(``RobotLoop``, what the policy node runs) for many adaptation windows per goal, with and without the
adaptation guard.

For each held-out goal the loop drives the 2D navigation env through ``--windows`` windows of the
bundle's ``episodes_per_step`` episodes: the first with the meta-learned parameters, and one
adaptation due after each. Three deployments of the same bundle on the same goals and seeds:

* **guarded** (the node's defaults): rollback when a window loses more than the bundle's
  ``adaptation.guard.max_drop``, and no adaptation after its ``validated_steps``;
* **guarded, beyond validated** (``adapt_beyond_validated_steps``): rollbacks only;
* **unguarded, beyond validated** (``adaptation_guard: false``): every adaptation is kept.

It prints the mean return per window (95% CI over goals), the adaptations kept and the rollbacks.

    python bench/guard_windows.py --goals 20 --windows 8
    python bench/guard_windows.py --bundle OLD_ONE_STEP_BUNDLE --max-drop 2.56 --out runs/guard_windows_one_step.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEPLOYMENTS = {
    "guarded (defaults)": {"enabled": True, "beyond_validated": False},
    "guarded, beyond validated": {"enabled": True, "beyond_validated": True},
    "unguarded, beyond validated": {"enabled": False, "beyond_validated": True},
}


def run_goal(bundle: Path, task, guard: dict, windows: int, seed: int, max_drop: float = -1.0) -> dict:
    from metarl_robot.contract import JointStateSample, RobotInputs
    from metarl_robot.envs import make_meta_env
    from metarl_robot.runtime import GuardSettings, LoopSettings, RobotLoop

    env = make_meta_env("sim:metarl/Navigation2D-v0", unwrapped=True)
    loop = RobotLoop.load(bundle, ["cpu"], LoopSettings(guard=GuardSettings(**guard, max_drop=max_drop)), seed=seed)
    episodes = loop.controller.episodes_per_step
    scale = np.asarray(loop.controller.bundle.action["scale"], dtype=np.float64)
    loop.start()
    now, returns, holds = 1000.0, [], 0  # seconds on the loop's clock (a zero stamp reads as "unstamped")

    def inputs(position: np.ndarray) -> RobotInputs:
        return RobotInputs(JointStateSample.create(["x", "y"], position=position.tolist(), velocity=[0.0, 0.0],
                                                   effort=[0.0, 0.0], stamp_s=now), {})

    for episode in range(windows * episodes):
        obs, _ = env.reset(seed=seed * 100_000 + episode, options={"task": task})
        position, total, done, success = np.asarray(obs, dtype=np.float64), 0.0, False, False
        while not done:
            command = loop.tick(now, inputs(position))
            if command.hold is not None:  # e.g. outside the trained range: the robot holds where it is
                holds += 1
            step = (np.asarray(command.values, dtype=np.float64) - position) / scale  # position_delta target
            obs, reward, terminated, truncated, info = env.step(step)
            loop.add_reward(reward)
            position, total, done, success = np.asarray(obs, np.float64), total + reward, terminated or truncated, info["success"]
            now += 0.1
        loop.end_episode(success, now, inputs(position))
        returns.append(total)
    loop.tick(now, inputs(np.zeros(2)))  # the last window is judged when the next adaptation falls due
    window_means = [float(np.mean(returns[k * episodes:(k + 1) * episodes])) for k in range(windows)]
    return {"windows": window_means, "adaptations": loop.adaptation_steps, "rollbacks": loop.guard.rollbacks,
            "holds": holds, "event": loop.guard.last_event}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(ROOT / "models" / "maml_navigation" / "bundle"))
    parser.add_argument("--goals", type=int, default=10, help="held-out goals (the first of the test split)")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-drop", type=float, default=-1.0,
                        help="the guard_max_drop node parameter: -1 = the bundle's (a bundle without a guard section needs it)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "guard_windows.json"))
    args = parser.parse_args(argv)

    import logging

    import sim  # noqa: F401  (registers the envs)
    from sim.navigation import navigation_distribution

    logging.getLogger("metarl_robot").setLevel(logging.ERROR)  # the rollbacks are counted in the table

    tasks = navigation_distribution(num_train=1000, num_test=40).split("test")[: args.goals]
    start = time.perf_counter()
    report = {}
    print(f"{args.bundle}: {args.goals} held-out goals, {args.windows} windows, seed {args.seed}\n")
    header = " | ".join(f"w{k}" for k in range(args.windows))
    print(f"| deployment | {header} | adaptations kept | rollbacks | hold ticks |\n|---|{'---|' * args.windows}---|---|---|")
    for name, guard in DEPLOYMENTS.items():
        runs = [run_goal(Path(args.bundle), task, guard, args.windows, args.seed + i, args.max_drop) for i, task in enumerate(tasks)]
        table = np.array([r["windows"] for r in runs])
        mean, ci = table.mean(0), 1.96 * table.std(0, ddof=1) / np.sqrt(len(runs))
        cells = " | ".join(f"{m:.1f} ± {c:.1f}" for m, c in zip(mean, ci))
        kept = np.mean([r["adaptations"] - r["rollbacks"] for r in runs])
        rollbacks = sum(r["rollbacks"] for r in runs)
        holds = sum(r["holds"] for r in runs)
        print(f"| {name} | {cells} | {kept:.1f} | {rollbacks} | {holds} |", flush=True)
        report[name] = {"guard": guard, "runs": runs, "mean": mean.tolist(), "ci95": ci.tolist()}
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
