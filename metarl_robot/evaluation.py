"""One meta-test protocol for every method: performance before and after adaptation.

For each test task, a fresh controller (no knowledge of the task) runs ``rounds`` rounds of
``episodes_per_round`` episodes, calling ``adapt()`` after each round as it would on the robot. Round 0
is "before adaptation"; round k is after k adaptation steps. A context method adapts after every
episode (one episode per round); a gradient method takes one policy-gradient step per round on the
round's episodes (the MAML protocol: e.g. 20 episodes per step). Results are reported per round as
mean and 95% confidence interval over tasks (and over training seeds when :func:`combine` pools the
runs of several seeds), written as JSON and as a PNG curve.

The controller is anything with the runtime's interface (``reset``, ``act``, ``observe``, ``adapt``):
the runtime's controllers evaluate the deployed ONNX bundle itself; :func:`torch_controller` gives a
checkpoint's PyTorch twin with the same semantics, from the checkpoint's family plug-in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metarl_robot.tasks import TaskSpec


Controller = Any
"""Anything with ``reset``, ``act``, ``observe`` and ``adapt`` (e.g. :class:`metarl_robot.runtime.Controller`)."""


def torch_controller(policy: Any, adaptation: Mapping[str, Any], *, seed: int = 0, explore: bool = True) -> Controller:
    """The runtime controller's semantics over a checkpoint's PyTorch ``policy``, from its family plug-in."""
    from metarl_robot.families import for_policy_class

    return for_policy_class(type(policy).__name__).torch_controller(policy, adaptation, seed=seed, explore=explore)


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (normal approximation); NaN below 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan")
    return float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def evaluate(
    controller: Controller,
    env,
    tasks: Sequence[TaskSpec],
    *,
    rounds: int = 3,
    episodes_per_round: int = 1,
    seed: int = 0,
    adapt: bool = True,
) -> dict[str, Any]:
    """Meta-test ``controller`` on ``tasks`` in ``env`` (a MetaEnv with an ``interface``).

    Commands from the controller are in physical units; they are mapped back to the env's
    normalised action space with the interface's action scale. With ``adapt=False`` the controller
    never adapts (the non-adaptive baseline of the same policy).
    """
    if rounds < 1 or episodes_per_round < 1:
        raise ValueError(f"rounds and episodes_per_round must be >= 1, got {rounds}, {episodes_per_round}")
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    rng = np.random.default_rng(seed)
    per_task = []
    for task in tasks:
        controller.reset()
        env.set_task(task)
        returns, successes = [], []
        for k in range(rounds):
            round_returns, round_success = [], []
            for _ in range(episodes_per_round):
                obs, _ = env.reset(seed=int(rng.integers(2**31)))
                total, done, info = 0.0, False, {}
                while not done:
                    command = controller.act(obs)
                    next_obs, reward, terminated, truncated, info = env.step(command / scale)
                    done = bool(terminated or truncated)
                    controller.observe(obs, command, float(reward), next_obs, done)
                    total += float(reward)
                    obs = next_obs
                round_returns.append(total)
                round_success.append(float(bool(info.get("success", False))))
            returns.append(float(np.mean(round_returns)))
            successes.append(float(np.mean(round_success)))
            if adapt and k < rounds - 1:
                controller.adapt()
        per_task.append({"task": task.to_dict(), "returns": returns, "success": successes})
    results = {"rounds": rounds, "episodes_per_round": episodes_per_round, "adapt": adapt, "seed": seed, "tasks": per_task}
    return summarize(results)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Add ``num_tasks`` and the per-round ``summary`` (mean and 95% CI over the per-task values)."""
    per_task, adapt = results["tasks"], results["adapt"]
    summary = []
    for k in range(results["rounds"]):
        r = [t["returns"][k] for t in per_task]
        s = [t["success"][k] for t in per_task]
        summary.append(
            {"round": k, "adaptation_steps": k if adapt else 0, "return_mean": float(np.mean(r)), "return_ci95": ci95(r),
             "success_mean": float(np.mean(s)), "success_ci95": ci95(s)}
        )
    return {**results, "num_tasks": len(per_task), "summary": summary}


def combine(runs: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Pool the results of several runs (e.g. training seeds) on the same protocol: each (task, run)
    pair counts once in the mean and the 95% CI."""
    if not runs:
        raise ValueError("combine needs at least one result")
    keys = ("rounds", "episodes_per_round", "adapt")
    for run in runs[1:]:
        if any(run[k] != runs[0][k] for k in keys):
            raise ValueError(f"cannot pool results of different protocols ({', '.join(keys)} must match)")
    labels = list(labels) if labels is not None else [str(i) for i in range(len(runs))]
    tasks = [{**task, "run": label} for run, label in zip(runs, labels) for task in run["tasks"]]
    return summarize({**{k: runs[0][k] for k in keys}, "seed": [run["seed"] for run in runs], "runs": labels, "tasks": tasks})


def write_report(results: dict[str, Any], out_dir: str | Path, title: str = "meta-test") -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.png`` (success and return against adaptation rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "eval.json", out_dir / "eval.png"
    json_path.write_text(json.dumps(results, indent=2))
    rows = results["summary"]
    k = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "success", "success rate"), (axes[1], "return", "episode return")):
        mean = np.array([r[f"{key}_mean"] for r in rows])
        err = np.nan_to_num(np.array([r[f"{key}_ci95"] for r in rows]))
        ax.errorbar(k, mean, yerr=err, marker="o", capsize=3)
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel(label)
        ax.set_xticks(k)
    fig.suptitle(f"{title}: {results['num_tasks']} task runs, {results['episodes_per_round']} episode(s) per step, mean ± 95% CI")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def format_summary(results: dict[str, Any]) -> str:
    lines = [f"{'round':>5} {'adapted':>7} {'success':>15} {'return':>19}"]
    for r in results["summary"]:
        lines.append(
            f"{r['round']:>5} {r['adaptation_steps']:>7} {r['success_mean']:>7.2f} ± {r['success_ci95']:<5.2f} "
            f"{r['return_mean']:>9.2f} ± {r['return_ci95']:<6.2f}"
        )
    return "\n".join(lines)


class OracleController:
    """A controller that is told the task: acts with the env's task-aware demonstrator and never adapts.

    ``demonstrate(obs[N, D], tasks) -> actions[N, A]`` returns normalised actions (the env's
    ``demonstrator`` reference); commands are those actions times the interface's action scale. The
    upper reference line of the meta-test protocol.
    """

    def __init__(self, env, demonstrate=None):
        if demonstrate is None:
            from metarl_robot.algos.context_ppo.algo import resolve

            reference = getattr(env, "demonstrator", None)
            if not reference:
                raise ValueError(f"{type(env).__name__} has no demonstrator; pass demonstrate=")
            demonstrate = resolve(reference)
        self.env, self.demonstrate = env, demonstrate
        self.scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.demonstrate(np.asarray(obs)[None], [self.env.task]))[0]
        return np.clip(action, -1.0, 1.0).astype(np.float32) * self.scale

    def observe(self, obs, action, reward, next_obs, done) -> None:
        pass

    def adapt(self) -> None:
        return None


def write_comparison(curves: Mapping[str, dict[str, Any]], path: str | Path, title: str, metric: str = "return") -> Path:
    """One PNG with the ``metric`` curve (mean ± 95% CI per adaptation step) of several methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, results in curves.items():
        rows = results["summary"]
        steps = [r["round"] for r in rows]
        mean = np.array([r[f"{metric}_mean"] for r in rows])
        err = np.nan_to_num(np.array([r[f"{metric}_ci95"] for r in rows]))
        ax.errorbar(steps, mean, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel(f"average {metric}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
