"""What several bench scripts share: one episode of a runtime-protocol controller, a gradient
checkpoint with the environment and held-out tasks of the config it was trained with, and the share of
a gap to an optimum that adaptation closes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np



def gap_closed(after: float, before: float, optimum: float) -> float:
    """Fraction of the gap from ``before`` to ``optimum`` that ``after`` closes; NaN when the optimum does
    not score above ``before`` (there is no gap, and a ratio would say the opposite of what happened)."""
    return float((after - before) / (optimum - before)) if optimum > before else float("nan")

def run_attempt(controller, env, scale: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One episode of ``controller`` (the runtime's Controller protocol, physical commands) in ``env``
    (task already set), reset with ``seed``: ``(first observation, last observation, info of the last
    step)``. The controller observes every transition."""
    obs, _ = env.reset(seed=seed)
    first, done, info = obs.copy(), False, {}
    while not done:
        command = controller.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(command / scale)
        done = terminated or truncated
        controller.observe(obs, command, reward, next_obs, done)
        obs = next_obs
    return first, obs, info


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--config``, the two arguments :func:`gradient_run` reads."""
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="the training config (default: the run folder's config.yaml)")


def gradient_run(parser: argparse.ArgumentParser, checkpoint: Path, config: Path | None, num_tasks: int) -> tuple[Any, ...]:
    """``(train config, policy, checkpoint data, env, the first num_tasks test tasks)`` of a gradient
    checkpoint; its training config is ``config`` or the run folder's ``config.yaml`` (a missing one
    ends the script with one line naming ``--config``)."""
    config_path = config or checkpoint.resolve().parent.parent / "config.yaml"
    if not config_path.is_file():
        parser.error(f"no training config at {config_path}; pass --config with the config the checkpoint was trained with")

    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.context_ppo.algo import build_task_distribution
    from metarl_robot.algos.gradient import TrainConfig
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.config import load_config, to_dict
    from metarl_robot.envs import make_meta_env

    train_config = load_config(TrainConfig, config_path)
    policy, data = load_checkpoint(checkpoint)
    env = make_meta_env(train_config.env_id, train_config.env_kwargs, unwrapped=True)
    tasks = build_task_distribution(to_dict(train_config.tasks)).split("test")[:num_tasks]
    return train_config, policy, data, env, tasks


class EnvsByConfig:
    """One meta-env per (env id, env kwargs) of the training configs a bench evaluates: checkpoints of the
    same env share it, and an oracle trained with the task in its observation gets its own."""

    def __init__(self) -> None:
        self._envs: dict[str, Any] = {}

    def __call__(self, run_config: dict) -> Any:
        import json

        from metarl_robot.envs import make_meta_env

        key = json.dumps([run_config["env_id"], run_config.get("env_kwargs", {})], sort_keys=True)
        if key not in self._envs:
            self._envs[key] = make_meta_env(run_config["env_id"], run_config.get("env_kwargs", {}), unwrapped=True)
        return self._envs[key]
