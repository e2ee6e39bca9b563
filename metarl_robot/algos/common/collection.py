"""How a training run collects: the sampler its config names, and what the learner needs to know of the env.

Every method collects through :mod:`metarl_robot.sampling` (the rollout loop evaluation uses too): a
training config's ``sampler`` (``serial``, ``subprocess`` or ``ray``) and ``num_workers`` pick where
the episodes run, and the same seeds give the same episodes whichever is picked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from metarl_robot.sampling import SAMPLERS, Sampler, make_sampler


def resolve_sampler(sampler: str | None, asynchronous: bool | None, default: str) -> str:
    """The sampler a config asks for: ``sampler`` if given, else the older ``asynchronous`` switch
    (true: subprocess, false: serial), else ``default``. Raises ``ValueError`` when the two disagree."""
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not one of {list(SAMPLERS)}")
    if asynchronous is None:
        return sampler or default
    implied = "subprocess" if asynchronous else "serial"
    if sampler is not None and sampler != implied and not (asynchronous and sampler == "ray"):
        raise ValueError(
            f"sampler={sampler!r} and asynchronous={asynchronous} disagree; drop asynchronous (the older "
            "spelling of sampler: subprocess)"
        )
    return sampler or implied


def check_num_workers(num_workers: int) -> None:
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0: one per CPU core), got {num_workers}")


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """What a learner reads from its env before training: the robot interface and the spaces."""

    interface: dict[str, Any]
    obs_dim: int
    act_dim: int
    max_episode_steps: int | None


def open_sampler(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    sampler: str,
    num_workers: int,
    *,
    requests_per_batch: int,
    max_steps: int | None = None,
) -> tuple[Sampler, EnvInfo]:
    """The training sampler and the env's :class:`EnvInfo` (read from one env built here and closed)."""
    from metarl_robot.envs import make_meta_env

    env = make_meta_env(env_id, env_kwargs, unwrapped=True)
    try:
        steps = getattr(env, "max_episode_steps", None)
        info = EnvInfo(
            interface=dict(env.interface),
            obs_dim=int(np.prod(env.observation_space.shape)),
            act_dim=int(np.prod(env.action_space.shape)),
            max_episode_steps=int(steps) if steps else None,
        )
    finally:
        env.close()
    options = {"max_steps": max_steps} if max_steps else {}
    return make_sampler(sampler, env_id, env_kwargs, num_workers=num_workers, requests_per_batch=requests_per_batch, **options), info
