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

import inspect
import json
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metarl_robot.tasks import TaskSpec

if TYPE_CHECKING:
    from metarl_robot.sampling import Sampler


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
    controller: Controller | Callable[..., Controller],
    env,
    tasks: Sequence[TaskSpec],
    *,
    rounds: int = 3,
    episodes_per_round: int = 1,
    seed: int = 0,
    adapt: bool = True,
    sampler: str | Sampler = "serial",
    num_workers: int = 1,
) -> dict[str, Any]:
    """Meta-test ``controller`` on ``tasks`` in ``env`` (a MetaEnv with an ``interface``).

    Commands from the controller are in physical units; they are mapped back to the env's
    normalised action space with the interface's action scale. With ``adapt=False`` the controller
    never adapts (the non-adaptive baseline of the same policy): ``adapt()`` is never called and, as on
    the robot with adaptation switched off, ``set_learning(False)`` is, so a recurrent memory stays at
    its prior and a gradient policy sends its mean action instead of exploring.

    Each task is one trial of :mod:`metarl_robot.sampling` (the rollout loop training uses too), run
    by ``sampler``: ``"serial"`` in this process on ``env`` itself, ``"subprocess"`` or ``"ray"`` on
    ``num_workers`` workers (0: one per CPU core) that rebuild the env from ``env.unwrapped.spec``
    (make it with :func:`metarl_robot.envs.make_meta_env` or ``gymnasium.make``), or a sampler you
    made (left open). Every task starts from a fresh controller: ``controller`` may be a factory,
    called as ``controller(seed=task_seed)`` in the worker (e.g. ``functools.partial(load_controller,
    bundle_dir, providers=["cpu"])``), or a controller, of which each task gets a copy as it was
    passed. Then ``reset(seed=task_seed)`` where ``reset`` takes a seed (a stochastic controller then
    draws independent noise per task), ``reset()`` otherwise, and ``set_task(task)`` for a controller
    that has it (an oracle); no other controller is told the task. The env's reset seeds are drawn
    from ``seed`` task by task, episode by episode, and the task seeds from ``seed`` too, so the same
    arguments give the same results on every backend and with any number of workers.

    A controller that cannot be pickled (the runtime's ONNX controllers) cannot be copied: the serial
    sampler then runs it in place, reset before each task as on the robot; workers need a factory.
    """
    if rounds < 1 or episodes_per_round < 1:
        raise ValueError(f"rounds and episodes_per_round must be >= 1, got {rounds}, {episodes_per_round}")
    from metarl_robot.sampling import EpisodeRequest, SamplingError, SerialSampler, make_requests, make_sampler

    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    trials = ControllerTrials(controller, scale, episodes_per_round, adapt)
    episodes = rounds * episodes_per_round
    # The env's reset seeds, drawn in the order this protocol has always drawn them.
    rng = np.random.default_rng(seed)
    reset_seeds = [tuple(int(rng.integers(2**31)) for _ in range(episodes)) for _ in tasks]
    requests = [
        EpisodeRequest(r.index, r.task, r.seed, episodes, reset_seeds=reset_seeds[r.index])
        for r in make_requests(tasks, seed=seed, episodes=episodes)
    ]
    if not isinstance(sampler, str):
        records = sampler.sample(trials, requests)
    else:
        if sampler == "serial":
            runner: Any = SerialSampler(env=env, copy_policy=_picklable(trials))
        else:
            spec = getattr(env.unwrapped, "spec", None)
            if spec is None:
                raise ValueError(
                    f"sampler={sampler!r} rebuilds the env in its workers from env.unwrapped.spec, and this "
                    f"{type(env.unwrapped).__name__} has none: make it with metarl_robot.envs.make_meta_env"
                )
            if not _picklable(trials):
                raise SamplingError(
                    f"the controller ({type(controller).__name__}) cannot be pickled, so it cannot be sent to "
                    f"{sampler} workers; pass a factory instead, called as factory(seed=...) in each worker, "
                    "e.g. functools.partial(metarl_robot.runtime.load_controller, bundle_dir, providers=['cpu'])"
                )
            runner = make_sampler(sampler, spec, num_workers=num_workers, requests_per_batch=len(requests))
        try:
            records = runner.sample(trials, requests)
        finally:
            runner.close()
    per_task = []
    for request in requests:
        mine = [e for e in records if e.request_index == request.index]
        rounds_of = [mine[k * episodes_per_round : (k + 1) * episodes_per_round] for k in range(rounds)]
        per_task.append(
            {
                "task": request.task.to_dict(),
                "returns": [float(np.mean([e.total_reward for e in r])) for r in rounds_of],
                "success": [float(np.mean([float(e.succeeded) for e in r])) for r in rounds_of],
            }
        )
    results = {"rounds": rounds, "episodes_per_round": episodes_per_round, "adapt": adapt, "seed": seed, "tasks": per_task}
    return summarize(results)


def reset_controller(controller: Any, seed: int) -> None:
    """``controller.reset(seed=seed)`` where ``reset`` takes a seed (a stochastic controller then draws
    fresh noise), ``controller.reset()`` otherwise."""
    reset = controller.reset
    if "seed" in inspect.signature(reset).parameters:
        reset(seed=seed)
    else:
        reset()


class ControllerTrials:
    """One task of the meta-test protocol as a sampler trial (an ``EpisodePolicy``).

    ``reset`` makes the task's fresh controller, ``act`` maps its command to the env's normalised
    action, ``observe`` hands it the transition with the command that was sent, and ``end_episode``
    calls ``adapt()`` at the end of every round but the last (unless ``adapt`` is False), once the
    controller holds the episodes one adaptation step takes (``episodes_ready >= episodes_per_step``).
    """

    def __init__(self, controller: Any, scale: np.ndarray, episodes_per_round: int, adapt: bool) -> None:
        self.controller, self.scale = controller, np.asarray(scale, dtype=np.float32)
        self.episodes_per_round, self.adapt = int(episodes_per_round), bool(adapt)

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        task_seed = int(rng.integers(2**31))
        if callable(self.controller) and not hasattr(self.controller, "act"):
            self._active = self.controller(seed=task_seed)
        else:
            self._active = self.controller
        reset_controller(self._active, task_seed)
        if callable(getattr(self._active, "set_task", None)):
            self._active.set_task(task)
        if not self.adapt and callable(getattr(self._active, "set_learning", None)):
            # Frozen as on the robot with adaptation switched off: a family that adapts inside act()
            # (a recurrent memory) stops adapting there too, and one that explores to adapt stops exploring.
            self._active.set_learning(False)
        self._episodes_done, self._command = 0, None

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        self._command = self._active.act(obs)
        return self._command / self.scale, {}

    def observe(self, obs, action, reward: float, next_obs, done: bool) -> None:
        self._active.observe(obs, self._command, reward, next_obs, done)

    def end_episode(self) -> None:
        self._episodes_done += 1
        if self.adapt and self._episodes_done % self.episodes_per_round == 0 and self._batch_full():
            self._active.adapt()

    def _batch_full(self) -> bool:
        """Whether the controller holds the episodes its adaptation step takes, by the rule the robot's
        loop applies (:meth:`~metarl_robot.runtime.Controller.schedule`): a gradient controller
        (cadence ``episodes``) steps on ``episodes_per_step`` episodes, so with rounds shorter than
        that it adapts at the end of the round that fills its batch, not on a partial one. Other
        cadences, and controllers without a schedule, adapt at every round's end."""
        schedule = getattr(self._active, "schedule", None)
        if not callable(schedule):
            return True
        rule = schedule()
        return rule.cadence != "episodes" or rule.at_episode_end(self._active.episodes_ready)

    def __getstate__(self) -> dict[str, Any]:
        # What travels to the workers: the controller as passed (or its factory), not a trial's state.
        return {k: v for k, v in self.__dict__.items() if k not in ("_active", "_episodes_done", "_command")}


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


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


def report_figure(results: dict[str, Any], title: str = "meta-test"):
    """The figure of :func:`write_report`: success (on [0, 1], its error bars clipped there) and return
    against adaptation rounds, under a title wrapped to fit the image."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["summary"]
    k = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, key, label in ((axes[0], "success", "success rate"), (axes[1], "return", "episode return")):
        mean = np.array([r[f"{key}_mean"] for r in rows], dtype=float)
        err = np.nan_to_num(np.array([r[f"{key}_ci95"] for r in rows], dtype=float))
        if key == "success":
            # A rate lives in [0, 1]: the interval is cut there rather than drawn below zero.
            low, high = np.clip(mean - err, 0.0, 1.0), np.clip(mean + err, 0.0, 1.0)
            yerr = np.stack([mean - low, high - mean])
            ax.set_ylim(0.0, 1.05)
        else:
            yerr = err
        ax.errorbar(k, mean, yerr=yerr, marker="o", capsize=3)
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel(label)
        ax.set_xticks(k)
    text = f"{title}: {results['num_tasks']} task runs, {results['episodes_per_round']} episode(s) per step, mean ± 95% CI"
    fig.suptitle("\n".join(textwrap.wrap(text, 90)), fontsize=9)
    fig.tight_layout()
    return fig


def write_report(results: dict[str, Any], out_dir: str | Path, title: str = "meta-test") -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.png`` (success and return against adaptation rounds)."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "eval.json", out_dir / "eval.png"
    json_path.write_text(json.dumps(results, indent=2))
    fig = report_figure(results, title)
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


class ForgetBetweenAttempts:
    """The ablation "memory within an attempt only": the controller ``factory(seed=...)`` makes, reset at
    the end of every episode (attempt), so nothing one attempt taught reaches the next. For a recurrent
    policy this zeroes the memory and the previous-step inputs between attempts; within an attempt it
    acts as trained. ``adapt()`` does nothing (there is nothing carried to adapt)."""

    def __init__(self, factory: Callable[..., Controller]) -> None:
        self.factory = factory
        self._inner: Any = None

    def reset(self, seed: int | None = None) -> None:
        self._inner = self.factory(seed=0 if seed is None else seed)
        self._inner.reset()

    def set_learning(self, enabled: bool) -> None:
        self._inner.set_learning(enabled)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._inner.act(obs)

    def observe(self, obs, action, reward, next_obs, done) -> None:
        self._inner.observe(obs, action, reward, next_obs, done)
        if done:
            self._inner.reset()

    def adapt(self) -> None:
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory, "_inner": None}


class OracleController:
    """A controller that is told the task: acts with the env's task-aware demonstrator and never adapts.

    ``demonstrate(obs[N, D], tasks) -> actions[N, A]`` returns normalised actions (the env's
    ``demonstrator`` reference); commands are those actions times the interface's action scale. The
    upper reference line of the meta-test protocol. :func:`evaluate` tells it each task through
    :meth:`set_task`; until then it acts for the task ``env`` had when it was made.
    """

    def __init__(self, env, demonstrate=None):
        if demonstrate is None:
            from metarl_robot.algos.common.tasks import resolve

            reference = getattr(env, "demonstrator", None)
            if not reference:
                raise ValueError(f"{type(env).__name__} has no demonstrator; pass demonstrate=")
            demonstrate = resolve(reference)
        self.demonstrate, self.task = demonstrate, getattr(env, "task", None)
        self.scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)

    def set_task(self, task: TaskSpec) -> None:
        self.task = task

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.demonstrate(np.asarray(obs)[None], [self.task]))[0]
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
