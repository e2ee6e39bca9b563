"""One meta-test protocol for every method: performance before and after adaptation.

For each test task, a fresh controller (no knowledge of the task) runs ``rounds`` rounds of
``episodes_per_round`` episodes, calling ``adapt()`` after each round as it would on the robot. Round 0
is "before adaptation"; round k is after k adaptation steps. A context method adapts after every
episode (one episode per round); a gradient method takes one policy-gradient step per round on the
round's episodes (the MAML protocol: e.g. 20 episodes per step). Results are reported per round as
mean and 95% confidence interval over tasks (and over training seeds when :func:`combine` pools the
runs of several seeds), written as JSON and as a PNG curve.

The controller is anything with the runtime's interface (``reset``, ``act``, ``observe``, ``adapt``):
the runtime's controllers evaluate the deployed ONNX bundle itself; :class:`TorchController` and
:class:`GradientTorchController` evaluate a checkpoint in PyTorch with the same semantics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from metarl_robot.runtime.advantages import AdvantageConfig, compute_advantages
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
    """Half-width of the 95% confidence interval of the mean (normal approximation); NaN below 2 values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan")
    return float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


class GradientTorchController:
    """The runtime's gradient-adaptation semantics over a PyTorch :class:`~metarl_robot.gradient_policy.GradientPolicy`.

    ``act`` samples a Gaussian action (``explore``; the mean otherwise) and returns the command;
    ``observe`` stores the episode; ``adapt`` computes advantages over the stored episodes with the
    robot's numpy code and takes ``adaptation["steps"]`` inner policy-gradient steps, then forgets the
    episodes (they were collected by the old parameters).
    """

    def __init__(self, policy, adaptation: Mapping[str, Any], *, explore: bool = True, seed: int = 0):
        import torch

        self._torch, self.policy, self.explore = torch, policy, explore
        self.steps = int(adaptation.get("steps", 1))
        self.max_episode_steps = int(adaptation["max_episode_steps"])
        self.episodes_per_step = int(adaptation["episodes_per_step"])
        self.advantages = AdvantageConfig(**adaptation.get("advantages", {}))
        self._generator = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        self.params = self.policy.initial_adapted().detach().clone()
        self._episodes: list[list[tuple[np.ndarray, np.ndarray, float]]] = []
        self._current: list[tuple[np.ndarray, np.ndarray, float]] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def act(self, obs: np.ndarray) -> np.ndarray:
        t = self._torch
        with t.no_grad():
            obs_t = t.as_tensor(np.asarray(obs, np.float32)[None])
            noise = t.randn(1, self.policy.act_dim, generator=self._generator) if self.explore else t.zeros(1, self.policy.act_dim)
            action = self.policy.sample(self.params, obs_t, noise)[0]
            command = (t.clamp(action, -1.0, 1.0) * self.policy.action_scale).numpy()
        self._last = (command, action.numpy())
        return command

    def observe(self, obs, action, reward, next_obs, done) -> None:
        command = np.asarray(action, np.float32)
        if self._last is not None and np.array_equal(command, self._last[0]):
            normalised = self._last[1]
        else:
            normalised = command / self.policy.action_scale.numpy()
        self._current.append((np.asarray(obs, np.float32), normalised, float(reward)))
        if done or len(self._current) >= self.max_episode_steps:
            self._episodes = (self._episodes + [self._current])[-self.episodes_per_step :]
            self._current = []

    def adapt(self):
        t = self._torch
        if not self._episodes:
            return self.params
        n, steps = len(self._episodes), self.max_episode_steps
        obs = np.zeros((n, steps, self.policy.obs_dim), np.float32)
        act = np.zeros((n, steps, self.policy.act_dim), np.float32)
        rew = np.zeros((n, steps), np.float32)
        mask = np.zeros((n, steps), np.float32)
        for i, episode in enumerate(self._episodes):
            for j, (o, a, r) in enumerate(episode):
                obs[i, j], act[i, j], rew[i, j], mask[i, j] = o, a, r, 1.0
        adv = compute_advantages(obs, rew, mask, self.advantages)
        args = [t.as_tensor(x) for x in (obs, act, adv, mask)]
        for _ in range(self.steps):
            self.params = self.policy.inner_step(self.params, *args, create_graph=False).detach()
        self._episodes, self._current = [], []
        return self.params


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
