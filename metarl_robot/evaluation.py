"""One meta-test protocol for every method: performance before and after adaptation.

For each test task, a fresh controller (no knowledge of the task) runs ``episodes_per_task``
consecutive episodes, adapting between them as it would on the robot. Episode 0 is "before
adaptation"; episodes 1..K-1 are after 1..K-1 adaptation rounds. Results are reported per episode
index as mean and 95% confidence interval over tasks (normal approximation, 1.96 standard errors),
written as JSON and as a PNG curve.

The controller is anything with the runtime's interface (``reset``, ``act``, ``observe``,
``adapt``): :class:`metarl_robot.runtime.AdaptiveController` evaluates the deployed ONNX bundle
itself; :class:`TorchController` evaluates a checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from metarl_robot.tasks import TaskSpec


class Controller(Protocol):
    def reset(self) -> None: ...
    def act(self, obs: np.ndarray) -> np.ndarray: ...
    def observe(self, obs, action, reward, next_obs, done) -> None: ...
    def adapt(self) -> Any: ...


class TorchController:
    """The runtime's controller semantics over a PyTorch :class:`~metarl_robot.policies.ContextPolicy`."""

    def __init__(self, policy, buffer_size: int):
        import torch

        self._torch, self.policy, self.buffer_size = torch, policy, buffer_size
        self.reset()

    def reset(self) -> None:
        self._buffer: list[tuple[np.ndarray, ...]] = []
        with self._torch.no_grad():
            self.context = self.policy.initial_context(1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            obs_t = self._torch.as_tensor(np.asarray(obs, np.float32)[None])
            return self.policy.command(obs_t, self.context)[0].numpy()

    def observe(self, obs, action, reward, next_obs, done) -> None:
        item = (np.asarray(obs, np.float32), np.asarray(action, np.float32), np.float32(reward), np.asarray(next_obs, np.float32))
        self._buffer = (self._buffer + [item])[-self.buffer_size :]

    def adapt(self):
        t = self._torch
        if not self._buffer:
            return self.context
        obs, cmd, rew, nxt = (np.stack(x) for x in zip(*self._buffer))
        with t.no_grad():
            self.context = self.policy.encode_commands(
                t.as_tensor(obs[None]), t.as_tensor(cmd[None]), t.as_tensor(rew[None, :, None]),
                t.as_tensor(nxt[None]), t.ones(1, len(obs)),
            )
        return self.context


def ci95(values: Sequence[float]) -> float:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan")
    return float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def evaluate(
    controller: Controller,
    env,
    tasks: Sequence[TaskSpec],
    *,
    episodes_per_task: int = 3,
    seed: int = 0,
    adapt: bool = True,
) -> dict[str, Any]:
    """Meta-test ``controller`` on ``tasks`` in ``env`` (a MetaEnv with an ``interface``).

    Commands from the controller are in physical units; they are mapped back to the env's
    normalised action space with the interface's action scale.
    """
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    rng = np.random.default_rng(seed)
    per_task = []
    for task in tasks:
        controller.reset()
        env.set_task(task)
        returns, successes = [], []
        for _ in range(episodes_per_task):
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            total, done, info = 0.0, False, {}
            while not done:
                command = controller.act(obs)
                next_obs, reward, terminated, truncated, info = env.step(command / scale)
                done = bool(terminated or truncated)
                controller.observe(obs, command, float(reward), next_obs, done)
                total += float(reward)
                obs = next_obs
            returns.append(total)
            successes.append(float(bool(info.get("success", False))))
            if adapt:
                controller.adapt()
        per_task.append({"task": task.to_dict(), "returns": returns, "success": successes})
    summary = []
    for k in range(episodes_per_task):
        r = [t["returns"][k] for t in per_task]
        s = [t["success"][k] for t in per_task]
        summary.append(
            {"episode": k, "adaptation_rounds": k if adapt else 0, "return_mean": float(np.mean(r)), "return_ci95": ci95(r),
             "success_mean": float(np.mean(s)), "success_ci95": ci95(s)}
        )
    return {"num_tasks": len(tasks), "episodes_per_task": episodes_per_task, "seed": seed, "summary": summary, "tasks": per_task}


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
    k = [r["episode"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "success", "success rate"), (axes[1], "return", "episode return")):
        mean = np.array([r[f"{key}_mean"] for r in rows])
        err = np.nan_to_num(np.array([r[f"{key}_ci95"] for r in rows]))
        ax.errorbar(k, mean, yerr=err, marker="o", capsize=3)
        ax.set_xlabel("adaptation rounds (episodes seen)")
        ax.set_ylabel(label)
        ax.set_xticks(k)
    fig.suptitle(f"{title}: {results['num_tasks']} tasks, mean ± 95% CI")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path


def format_summary(results: dict[str, Any]) -> str:
    lines = [f"{'episode':>7} {'rounds':>6} {'success':>15} {'return':>19}"]
    for r in results["summary"]:
        lines.append(
            f"{r['episode']:>7} {r['adaptation_rounds']:>6} {r['success_mean']:>7.2f} ± {r['success_ci95']:<5.2f} "
            f"{r['return_mean']:>9.2f} ± {r['return_ci95']:<6.2f}"
        )
    return "\n".join(lines)
