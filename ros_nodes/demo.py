"""The driver behind ``make demo``: online adaptation over ROS 2 on objects drawn at random.

``python -m ros_nodes.demo --bundle BUNDLE --out OUTDIR [--objects 5] [--object-seed S]`` draws
``--objects`` distinct objects at random from the sim robot's test split (the seed is printed; pass it
back to see the same objects), starts the node graph (policy node + simulated Panda, lockstep so it
runs faster than real time), and for each object swaps it in (the ``task_index`` parameter of the sim
node), resets the policy's adaptation and runs N episodes. It prints per object and on average the
success of the first episode (before any adaptation) and of the later ones (after adaptation), beside
the same numbers for the best single fixed grip force (chosen on the train split, run in-process on
the same objects). It writes ``OUTDIR/demo_episodes.csv``, ``OUTDIR/demo.png`` and the node logs.
"""

from __future__ import annotations

import argparse
import csv
import json
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ros_nodes  # noqa: F401  (keeps DDS discovery on loopback before rclpy loads)

from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import String

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME
from ros_nodes.graph import DEFAULT_PARAMS_FILE, GraphError, NodeGraph, policy_status
from ros_nodes.sim_robot_node import DISTRIBUTIONS, test_split

EPISODE_RESULT_TOPIC = f"/{SIM_ROBOT_NODE_NAME}/episode_result"
CSV_FIELDS = ("object", "task_index", "task_id", "episode", "episode_on_object", "success", "crushed",
              "episode_return")


class DemoRun:
    """Runs episodes on one object after another through a :class:`NodeGraph`, collecting results."""

    def __init__(self, graph: NodeGraph, episode_timeout_s: float) -> None:
        self.graph = graph
        self.episode_timeout_s = episode_timeout_s
        self.results = graph.collect(String, EPISODE_RESULT_TOPIC)
        self.diagnostics = graph.collect(DiagnosticArray, "/diagnostics", 10)
        self.rows: list[dict[str, Any]] = []
        self.adaptations: dict[str, int] = {}

    def switch_object(self, label: str, task_index: int) -> str:
        """Pause the policy, put object ``task_index`` on the table, forget the old adaptation, resume."""
        graph = self.graph
        if graph.lifecycle_state() == "active":
            graph.change_state("deactivate")
        result = graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": task_index})[0]
        if not result.successful:
            raise GraphError(f"object {label}: task_index={task_index} rejected: {result.reason}")
        reset = graph.trigger(f"/{SIM_ROBOT_NODE_NAME}/reset_episode")
        graph.trigger(f"/{POLICY_NODE_NAME}/reset_adaptation")
        graph.spin_for(0.3)  # episode results of the aborted episode, if any, arrive before we count
        self.results.clear()
        graph.change_state("activate")
        print(f"[demo] object {label}: {reset.message}")
        return reset.message

    def run_episodes(self, label: str, task_index: int, episodes: int) -> None:
        """Run ``episodes`` episodes on the current object, record them, then pause the policy."""
        for n in range(1, episodes + 1):
            if not self.graph.spin_until(lambda count=n: len(self.results) >= count, self.episode_timeout_s):
                raise GraphError(f"object {label}: episode {n} did not end within {self.episode_timeout_s:g} s")
            result = json.loads(self.results[n - 1].data)
            self.rows.append({
                "object": label,
                "task_index": task_index,
                "task_id": result["task_id"],
                "episode": len(self.rows) + 1,
                "episode_on_object": n,
                "success": int(result["success"]),
                "crushed": int(result["crushed"]),
                "episode_return": result["return"],
            })
            print(f"[demo] object {label} episode {n}/{episodes}: task={result['task_id']} "
                  f"success={result['success']} crushed={result['crushed']} return={result['return']:.2f}")
        # A few more ticks let the policy adapt on the last episode end; pausing it then keeps the
        # count from running on into an episode that is not recorded.
        self.graph.spin_for(0.2)
        self.graph.change_state("deactivate")
        self.adaptations[label] = self._adaptations_since_reset()

    def _adaptations_since_reset(self) -> int:
        """The policy node's count of adaptations since the last reset, from a fresh diagnostics message."""
        seen = len(self.diagnostics)
        self.graph.spin_until(lambda: len(self.diagnostics) > seen, 3.0)
        return int(policy_status(self.diagnostics)[2].get("adaptations_since_reset", "0"))


def draw_objects(count: int, seed: int, num_test_tasks: int) -> list[int]:
    """``count`` distinct test-split indices drawn at random with ``seed`` (no hand-picking)."""
    import numpy as np

    if not 1 <= count <= num_test_tasks:
        raise ValueError(f"--objects must be between 1 and {num_test_tasks} (the test split's size), got {count}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(num_test_tasks, size=count, replace=False))


SWEEP_TASKS = 32
"""Train-split objects of the fixed-force sweep."""


def fixed_force_baseline(task_indices: Sequence[int], episodes: int, seed: int, distribution: str = "suite",
                         force_n: float | None = None) -> tuple[float, dict[int, list[bool]]]:
    """The best single grip force of a sweep on the train split of the sim robot's distribution, and its
    successes on each test object over ``episodes`` scripted episodes (placement seeds ``seed + k``)."""
    from sim import default_grasp_distribution, grasp_distribution
    from sim.grasp import GraspEnv, run_scripted_episode
    from sim.grasp_bench import FIXED_FORCES_N, success_rate

    distribution = grasp_distribution(seed=0) if distribution == "suite" else default_grasp_distribution()
    env = GraspEnv()
    try:
        train = list(distribution.train_tasks)[:SWEEP_TASKS]
        force = force_n if force_n is not None else max(FIXED_FORCES_N, key=lambda f: success_rate(env, train, f))
        outcomes = {}
        for index in task_indices:
            env.set_task(distribution.test_tasks[index])
            outcomes[index] = [bool(run_scripted_episode(env, force, seed=seed + k)["success"]) for k in range(episodes)]
    finally:
        env.close()
    return force, outcomes


def _rate(values: Sequence[bool | int]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "n/a"


def summarize(
    rows: Sequence[dict[str, Any]],
    adaptations: dict[str, int],
    baseline: dict[int, list[bool]] | None = None,
    force_n: float | None = None,
) -> str:
    """A table: per object and on average, success of the first episode (before adaptation) and of the
    later ones (after), for the policy and, beside it, for the best fixed grip force."""
    head = f"{'object':<8}{'task':<12}{'policy first':>14}{'policy later':>14}{'adaptations':>13}"
    if baseline is not None:
        head += f"{'fixed first':>13}{'fixed later':>13}"
    lines = [head]
    firsts, laters, fixed_firsts, fixed_laters = [], [], [], []
    for label in dict.fromkeys(row["object"] for row in rows):
        mine = [row for row in rows if row["object"] == label]
        later = [r["success"] for r in mine[1:]]
        firsts.append(mine[0]["success"])
        laters.extend(later)
        line = (
            f"{label:<8}{mine[0]['task_id']:<12}{_rate([mine[0]['success']]):>14}{_rate(later):>14}"
            f"{adaptations.get(label, 0):>13}"
        )
        if baseline is not None:
            fixed = baseline[mine[0]["task_index"]]
            fixed_firsts.append(fixed[0])
            fixed_laters.extend(fixed[1:])
            line += f"{_rate(fixed[:1]):>13}{_rate(fixed[1:]):>13}"
        lines.append(line)
    mean = f"{'mean':<8}{'':<12}{_rate(firsts):>14}{_rate(laters):>14}{'':>13}"
    if baseline is not None:
        mean += f"{_rate(fixed_firsts):>13}{_rate(fixed_laters):>13}"
    lines.append(mean)
    if force_n is not None:
        lines.append(f"(fixed: the scripted grasp at {force_n:g} N; by default the best force of a sweep on {SWEEP_TASKS} "
                     "train-split objects)")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Success per episode, the object swap marked, and the running success rate per object."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    episodes = [row["episode"] for row in rows]
    colours = ["tab:green" if row["success"] else ("tab:red" if row["crushed"] else "tab:gray") for row in rows]
    ax.scatter(episodes, [row["success"] for row in rows], color=colours, s=80, zorder=3)
    labels = list(dict.fromkeys(row["object"] for row in rows))
    for label in labels:
        mine = [row for row in rows if row["object"] == label]
        running = [sum(r["success"] for r in mine[: i + 1]) / (i + 1) for i in range(len(mine))]
        label_text = f"object {label} ({mine[0]['task_id']}): running success"
        ax.plot([r["episode"] for r in mine], running, marker=".", label=label_text)
    for label in labels[1:]:
        swap = next(row["episode"] for row in rows if row["object"] == label) - 0.5
        ax.axvline(swap, color="black", linestyle="--")
        ax.text(swap + 0.1, 1.05, f"swap to {label}", fontsize=9)
    ax.set_xlabel("episode (green: success, red: crushed, grey: failed)")
    ax.set_ylabel("success")
    ax.set_ylim(-0.05, 1.15)
    ax.set_xticks(episodes)
    ax.legend(loc="center right", fontsize=8)
    ax.set_title("Online adaptation over ROS 2: success per episode")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ros_nodes.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="exported bundle directory")
    parser.add_argument("--out", required=True, help="output directory (CSV, plot, node logs)")
    parser.add_argument("--episodes-per-object", type=int, default=6)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS_FILE), help="ROS 2 parameter file")
    parser.add_argument("--objects", type=int, default=5, help="objects drawn at random from the test split")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="suite",
                        help="whose test split: the grasp suite's 64 objects (default) or the demo's 16 spheres")
    parser.add_argument("--object-seed", type=int, default=None,
                        help="seed of the draw (default: a fresh one, printed so the run can be repeated)")
    parser.add_argument("--control-rate-hz", type=float, default=40.0,
                        help="policy rate; the sim runs lockstep, so above 10 Hz is faster than real time")
    parser.add_argument("--episode-timeout-s", type=float, default=60.0)
    parser.add_argument("--fixed-force", type=float, default=None,
                        help="the fixed-force baseline's force in N (default: the best of a sweep on the train split)")
    args = parser.parse_args(argv)
    if args.episodes_per_object < 1:
        parser.error("--episodes-per-object must be >= 1")

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    seed = secrets.randbelow(2**31) if args.object_seed is None else args.object_seed
    try:
        objects = draw_objects(args.objects, seed, len(test_split(args.distribution)))
    except ValueError as err:
        parser.error(str(err))
    labels = [chr(ord("A") + i) if i < 26 else f"O{i}" for i in range(len(objects))]
    print(f"[demo] object seed {seed}: {args.distribution} test-split objects {objects} (repeat with --object-seed {seed})")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": float(args.control_rate_hz)},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "task_index": objects[0], "distribution": args.distribution},
    }
    start = time.monotonic()
    graph = NodeGraph(args.params, bundle_path=args.bundle, overrides=overrides, log_dir=out)
    try:
        with graph:
            print(f"[demo] graph up on ROS_DOMAIN_ID={graph.domain_id} in {time.monotonic() - start:.1f} s")
            run = DemoRun(graph, args.episode_timeout_s)
            for label, task_index in zip(labels, objects):
                run.switch_object(label, task_index)
                run.run_episodes(label, task_index, args.episodes_per_object)
    except GraphError as err:
        print(f"[demo] error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
        return 130

    print("[demo] the fixed-force baseline on the same objects (in-process, scripted grasp) ...")
    force, baseline = fixed_force_baseline(objects, args.episodes_per_object, seed=0, distribution=args.distribution,
                                           force_n=args.fixed_force)
    csv_path, png_path = out / "demo_episodes.csv", out / "demo.png"
    write_csv(run.rows, csv_path)
    plot(run.rows, png_path)
    print()
    print(summarize(run.rows, run.adaptations, baseline, force))
    print()
    print(f"[demo] finished in {time.monotonic() - start:.1f} s")
    print(f"[demo] episodes: {csv_path}")
    print(f"[demo] plot:     {png_path}")
    for path in sorted(graph.log_paths.values()):
        print(f"[demo] log:      {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
