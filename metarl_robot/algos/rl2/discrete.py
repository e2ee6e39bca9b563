"""A discrete-action meta-env seen through continuous scores, so a Gaussian policy can act in it.

RL²'s reference tasks (Bernoulli bandits, tabular MDPs) take one of ``n`` actions; the recurrent
family's policy, like every bundle, commands a continuous vector clipped to ``[-1, 1]`` and scaled.
:class:`DiscreteScoresEnv` wraps such an env: its action is one score per discrete action and it takes
``argmax(clip(scores, -1, 1))`` (ties go to the lowest index). Observations, rewards, tasks and infos are
the wrapped env's. Its ``interface`` is the wrapped one with the action section describing the scores,
so a policy trained on it exports and verifies like any other.

Registered as ``metarl/DiscreteScores-v0`` when this module is imported; in a config::

    env_id: metarl_robot.algos.rl2.discrete:metarl/DiscreteScores-v0
    env_kwargs: {env_id: "sim:metarl/BernoulliBandit-v0", env_kwargs: {num_arms: 5, num_pulls: 10}}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from metarl_robot.envs import TaskEnv, make_meta_env
from metarl_robot.tasks import TaskSpec

ENV_ID = "metarl/DiscreteScores-v0"


def scores_to_action(scores: Any, n: int) -> int:
    """The discrete action of a score vector: ``argmax(clip(scores, -1, 1))``, the lowest index on ties."""
    values = np.asarray(scores, dtype=np.float32).reshape(-1)
    if values.shape != (n,):
        raise ValueError(f"expected {n} action scores, got shape {np.shape(scores)}")
    return int(np.argmax(np.clip(values, -1.0, 1.0)))


class DiscreteScoresEnv(TaskEnv):
    """``env_id`` (a discrete-action meta-env, built with ``env_kwargs``) acting on one score per action."""

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any] | None = None, render_mode: str | None = None) -> None:
        kwargs = dict(env_kwargs or {})
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        self.inner = make_meta_env(env_id, kwargs, unwrapped=True)
        space = self.inner.action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise ValueError(f"{env_id} has action space {space}; DiscreteScoresEnv wraps Discrete action spaces only")
        self.n = int(space.n)
        self.metadata = dict(getattr(self.inner, "metadata", {}))
        self.render_mode = render_mode
        self.observation_space = self.inner.observation_space
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.n,), np.float32)
        interface = copy.deepcopy(dict(self.inner.interface))
        inner_action = interface.get("action", {})
        names = [f"score_{i}" for i in range(self.n)]
        interface["action"] = {
            "mode": "discrete_argmax",
            "n": self.n,
            "names": names,
            "units": ["score"] * self.n,
            "scale": [1.0] * self.n,
            "low": [-1.0] * self.n,
            "high": [1.0] * self.n,
            "discrete": {"names": inner_action.get("names"), "units": inner_action.get("units")},
        }
        if not interface.get("joint_names"):
            # A bundle names what it commands; a discrete task has no joints, so it names the task family.
            interface["joint_names"] = [str(interface.get("robot", "discrete_env"))]
        self.interface = interface
        self.max_episode_steps = getattr(self.inner, "max_episode_steps", None)

    # the task lives in the wrapped env
    def validate_task(self, task: TaskSpec) -> None:
        validate = getattr(self.inner, "validate_task", None)
        if validate is not None:
            validate(task)

    def set_task(self, task: TaskSpec) -> None:
        self.inner.set_task(task)

    def _current_task(self) -> TaskSpec:
        return self.inner.task

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self.inner.reset(seed=seed, options=options)

    def step(self, action):
        return self.inner.step(scores_to_action(action, self.n))

    def render(self):
        return self.inner.render()

    def close(self) -> None:
        self.inner.close()


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=f"{__name__}:DiscreteScoresEnv")
