"""The context family: a transition encoder infers a task context from recent experience and the policy
acts on observation and context (``adaptation.kind`` "context_encoder").

Runtime half here (numpy only): the graphs' names and shapes, the manifest section and its checks, the
on-robot :class:`~metarl_robot.runtime.controller.AdaptiveController`. The PyTorch half (model, export,
parity, PyTorch controller) is in :mod:`metarl_robot.families.context_torch`, imported when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metarl_robot.families.base import BuiltGraphs, Family, Require, Shape


class ContextFamily(Family):
    name = "context"
    adaptation_kind = "context_encoder"
    policy_class = "ContextPolicy"
    algorithms = ("metarl_robot.algos.context_ppo",)
    graph_io = {
        "policy": (("obs", "context"), ("command",)),
        "adapt": (("obs", "command", "reward", "next_obs", "mask"), ("context",)),
    }

    # ------------------------------------------------------------------ runtime half
    def check_adaptation(self, check, adaptation: Mapping[str, Any]) -> dict[str, int]:
        for key in ("adapted", "cadence"):
            check.key(adaptation, key, str, "adaptation")
        context_dim = check.positive_int(adaptation, "context_dim", "adaptation")
        check.positive_int(adaptation, "steps", "adaptation")
        check.positive_int(adaptation, "buffer_size", "adaptation")
        check.key(adaptation, "inner_lr", (int, float, type(None)), "adaptation")
        check.key(adaptation, "reward_source", dict, "adaptation")
        check.numbers(adaptation, "initial_context", "adaptation", context_dim)
        return {"context_dim": context_dim}

    def expected_shapes(self, graph: str, dims: Mapping[str, int]) -> dict[str, Shape]:
        obs, act, ctx = dims["obs_dim"], dims["act_dim"], dims["context_dim"]
        if graph == "policy":
            return {"obs": (None, obs), "context": (None, ctx), "command": (None, act)}
        return {
            "obs": (None, None, obs),
            "command": (None, None, act),
            "reward": (None, None, 1),
            "next_obs": (None, None, obs),
            "mask": (None, None),
            "context": (None, ctx),
        }

    def controller(self, bundle, providers: Sequence[str] | None = None, *, seed: int | None = None, **kwargs: Any):
        from metarl_robot.runtime.controller import AdaptiveController

        return AdaptiveController(bundle, providers, **kwargs)  # acts deterministically: no seed

    def probe_feed(self, bundle, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The prior context and contexts drawn well beyond what an encoder produces."""
        prior = np.asarray(bundle.adaptation["initial_context"], dtype=np.float32)
        context = np.tile(prior, (len(obs), 1))
        context[1::2] += rng.normal(0.0, 5.0, size=context[1::2].shape).astype(np.float32)
        return {"obs": obs.astype(np.float32), "context": context}

    # ------------------------------------------------------------------ PyTorch half
    def build_policy(self, spec: Mapping[str, Any]) -> Any:
        from metarl_robot.policies import ContextPolicy, PolicyConfig

        config = dict(spec["config"])
        config["hidden_sizes"] = tuple(config["hidden_sizes"])
        return ContextPolicy(spec["obs_dim"], spec["act_dim"], spec["action_scale"], PolicyConfig(**config))

    def adaptation_section(self, policy: Any, adaptation: Mapping[str, Any], require: Require, where: str) -> dict[str, Any]:
        from metarl_robot.families import context_torch

        return context_torch.adaptation_section(policy, adaptation, require, where)

    def build_graphs(self, policy: Any, adaptation: Mapping[str, Any], staging, opset: int | None) -> BuiltGraphs:
        from metarl_robot.families import context_torch

        return context_torch.build_graphs(policy, adaptation, staging, opset)

    def torch_controller(self, policy: Any, adaptation: Mapping[str, Any], *, seed: int = 0, explore: bool = True):
        from metarl_robot.families import context_torch

        return context_torch.TorchController(policy, int(adaptation["buffer_size"]))

    def checkpoint_parity(self, policy: Any, bundle, sessions, rng: np.random.Generator, batches: int):
        from metarl_robot.families import context_torch

        return context_torch.checkpoint_parity(policy, bundle, sessions, rng, batches)


FAMILY = ContextFamily()
