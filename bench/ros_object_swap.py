"""Online adaptation over ROS 2 when the object changes mid-run, against the same run with adaptation frozen.

    python bench/ros_object_swap.py [--bundle DIR] [--draw-seed S | --object-a A --object-b B] [--seeds 0 1 2]
                                    [--episodes-a 3] [--episodes-b 10] [--out runs/bench_swap.json]

Per seed (the sim node's object placement seed) and condition, the policy node and the simulated Panda
run as one graph (lockstep): ``--episodes-a`` episodes on object A with adaptation on, then the sim
swaps to object B at its next episode reset, without telling the policy node. In condition
``adapting`` the node keeps adapting its context on B's episodes; in ``frozen`` adaptation is switched
off at the swap, so B is grasped with the context adapted to A (the baseline). Reported: success on A,
success on B over all its episodes and over those after the first two (the context buffer then holds
only B's transitions), and wall time. Without ``--bundle`` the context grasp checkpoint
(``models/grasp_context_ppo``, trained on the demo distribution's spheres with 30-step attempts, which
``--distribution`` and ``--episode-steps`` default to) is exported. Objects A and B are drawn at random
from the test split unless both are given; the draw's seed is printed (``--draw-seed`` repeats it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(100, 200)))

import ros_nodes  # noqa: E402,F401  (loopback discovery before rclpy loads)

import numpy as np  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402
from ros_nodes.sim_robot_node import DISTRIBUTIONS, test_split  # noqa: E402

CONDITIONS = ("adapting", "frozen")


def run(bundle: Path, seed: int, condition: str, args: argparse.Namespace, log_dir: Path) -> dict:
    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": args.control_rate_hz},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "task_index": args.object_a, "seed": seed,
                              "distribution": args.distribution, "episode_steps": args.episode_steps},
    }
    start = time.monotonic()
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=bundle, overrides=overrides, log_dir=log_dir) as graph:
        results = graph.collect(String, f"/{SIM_ROBOT_NODE_NAME}/episode_result")
        if not graph.spin_until(lambda: len(results) >= args.episodes_a, args.timeout_s):
            raise RuntimeError(f"seed {seed} {condition}: object A episodes did not end")
        if condition == "frozen":
            graph.set_bool(f"/{POLICY_NODE_NAME}/set_adaptation", False)
        result = graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": args.object_b})[0]
        if not result.successful:
            raise RuntimeError(f"task_index={args.object_b} rejected: {result.reason}")

        def on_b() -> list[dict]:
            episodes = [json.loads(m.data) for m in results]
            return [e for e in episodes if e["task_index"] == args.object_b]

        if not graph.spin_until(lambda: len(on_b()) >= args.episodes_b, args.timeout_s):
            raise RuntimeError(f"seed {seed} {condition}: object B episodes did not end")
        episodes = [json.loads(m.data) for m in results]
    a = [e for e in episodes if e["task_index"] == args.object_a][: args.episodes_a]
    b = [e for e in episodes if e["task_index"] == args.object_b][: args.episodes_b]
    return {
        "seed": seed,
        "condition": condition,
        "object_a": a[0]["task_id"],
        "object_b": b[0]["task_id"],
        "success_a": [int(e["success"]) for e in a],
        "success_b": [int(e["success"]) for e in b],
        "success_b_after_2": float(np.mean([e["success"] for e in b[2:]])),
        "return_b_after_2": float(np.mean([e["return"] for e in b[2:]])),
        "wall_s": round(time.monotonic() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--object-a", type=int, default=None)
    parser.add_argument("--object-b", type=int, default=None)
    parser.add_argument("--draw-seed", type=int, default=None, help="seed of the random draw of A and B (default: fresh, printed)")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="demo")
    parser.add_argument("--episode-steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes-a", type=int, default=3)
    parser.add_argument("--episodes-b", type=int, default=10)
    parser.add_argument("--control-rate-hz", type=float, default=60.0)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if (args.object_a is None) != (args.object_b is None):
        parser.error("give both --object-a and --object-b, or neither (a random draw)")
    if args.object_a is None:
        seed = random.SystemRandom().randrange(2**31) if args.draw_seed is None else args.draw_seed
        args.object_a, args.object_b = (int(i) for i in np.random.default_rng(seed).choice(
            len(test_split(args.distribution)), size=2, replace=False))
        print(f"objects drawn with --draw-seed {seed}: A = {args.object_a}, B = {args.object_b}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="ros_object_swap_"))
    bundle = args.bundle
    if bundle is None:
        from metarl_robot.export import export_bundle

        bundle = export_bundle(REPO / "models" / "grasp_context_ppo" / "checkpoint.safetensors", tmp / "bundle")
    rows = []
    for seed in args.seeds:
        for condition in CONDITIONS:
            row = run(bundle, seed, condition, args, tmp / f"logs_{seed}_{condition}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'condition':<10}{'success on A':>14}{'on B, all':>12}{'on B, after 2':>15}{'return on B, after 2':>22}")
    for condition in CONDITIONS:
        mine = [r for r in rows if r["condition"] == condition]
        print(f"{condition:<10}{np.mean([np.mean(r['success_a']) for r in mine]):>14.2f}"
              f"{np.mean([np.mean(r['success_b']) for r in mine]):>12.2f}"
              f"{np.mean([r['success_b_after_2'] for r in mine]):>15.2f}"
              f"{np.mean([r['return_b_after_2'] for r in mine]):>22.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
