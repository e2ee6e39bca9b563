"""The gradient family (MAML, ProMP, Reptile, CAVIA, Meta-SGD): the robot adapts by taking a
policy-gradient step on the adapted parameters, run as an ONNX graph (``adaptation.kind``
"gradient_step").

Runtime half here (numpy only): the graphs' names and shapes, the manifest section and its checks,
``params.npy``, the on-robot :class:`~metarl_robot.runtime.gradient_controller.GradientController`. The
PyTorch half is in :mod:`metarl_robot.families.gradient_torch`, imported when called.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metarl_robot.families.base import BuiltGraphs, Family, Require, Shape, saturating_noise
from metarl_robot.runtime.advantages import INNER_LOSSES, AdvantageConfig

ADAPTED = ("policy_parameters", "context")
"""Values of ``adaptation.adapted``: every weight (MAML family) or a context (CAVIA)."""
EXPLORATION = ("gaussian",)
"""Values of ``adaptation.exploration`` the runtime can sample."""


class GradientFamily(Family):
    name = "gradient"
    adaptation_kind = "gradient_step"
    policy_class = "GradientPolicy"
    algorithms = ("metarl_robot.algos.gradient",)
    graph_io = {
        "policy": (("obs", "prev_command", "params", "noise"), ("command", "action")),
        "adapt": (("params", "obs", "prev_command", "action", "reward", "mask"), ("adapted_params",)),
    }
    retired_graph_io = {
        "policy": (
            (
                ("obs", "params", "noise"),
                "its policy graph does not read the previous command, which this runtime feeds every gradient "
                "policy (a policy on a motion skill needs it)",
            ),
        ),
        "adapt": (
            (
                ("params", "obs", "action", "advantage", "mask"),
                "its adapt graph takes advantages computed outside it; this runtime feeds rewards to an adapt "
                "graph that computes the advantages itself",
            ),
            (
                ("params", "obs", "action", "reward", "mask"),
                "its adapt graph does not read the previous commands, which this runtime feeds every gradient "
                "policy (a policy on a motion skill needs them)",
            ),
        ),
    }
    params_file = "params.npy"
    parity_labels = {"adapt_chained": "the adapt graph over chained steps (its own output fed back)"}

    # ------------------------------------------------------------------ runtime half
    def check_adaptation(self, check, adaptation: Mapping[str, Any]) -> dict[str, int]:
        from metarl_robot.runtime.bundle import BundleError, check_file_name

        where = check.where
        adapted = check.key(adaptation, "adapted", str, "adaptation")
        if adapted not in ADAPTED:
            raise BundleError(f"{where}: 'adaptation.adapted' is {adapted!r}, expected one of {list(ADAPTED)}")
        num_params = check.positive_int(adaptation, "num_params", "adaptation")
        inner_lr = check.key(adaptation, "inner_lr", (int, float, type(None)), "adaptation")
        learned = adaptation.get("inner_lr_learned", False)
        if not isinstance(learned, bool):
            raise BundleError(f"{where}: 'adaptation.inner_lr_learned' must be bool, got {learned!r}")
        if inner_lr is None and not learned:
            raise BundleError(
                f"{where}: 'adaptation.inner_lr' is null but 'adaptation.inner_lr_learned' is not true; a gradient "
                "step needs a step size"
            )
        if inner_lr is not None and (learned or not (math.isfinite(inner_lr) and inner_lr > 0)):
            raise BundleError(
                f"{where}: 'adaptation.inner_lr' must be a positive number (or null with inner_lr_learned true), "
                f"got {inner_lr!r} with inner_lr_learned {learned!r}"
            )
        inner_loss = adaptation.get("inner_loss", "policy_gradient")
        if inner_loss not in INNER_LOSSES:
            raise BundleError(f"{where}: 'adaptation.inner_loss' is {inner_loss!r}, expected one of {list(INNER_LOSSES)}; "
                              "re-export the bundle with this version")
        steps = check.key(adaptation, "steps", int, "adaptation")
        if steps < 0:
            raise BundleError(f"{where}: 'adaptation.steps' must be a non-negative integer, got {steps}")
        episodes = check.positive_int(adaptation, "episodes_per_step", "adaptation")
        max_steps = check.positive_int(adaptation, "max_episode_steps", "adaptation")
        check.key(adaptation, "cadence", str, "adaptation")
        advantages = check.key(adaptation, "advantages", dict, "adaptation")
        for field in dataclasses.fields(AdvantageConfig):
            if field.type in (bool, "bool"):
                if not isinstance(advantages.get(field.name), bool):
                    raise BundleError(
                        f"{where}: 'adaptation.advantages.{field.name}' must be true or false, got "
                        f"{advantages.get(field.name, 'nothing')!r}"
                    )
            else:
                check.key(advantages, field.name, (int, float), "adaptation.advantages")
        try:
            AdvantageConfig.from_mapping(advantages)
        except ValueError as err:
            raise BundleError(f"{where}: 'adaptation.advantages': {err}") from None
        exploration = check.key(adaptation, "exploration", str, "adaptation")
        if exploration not in EXPLORATION:
            raise BundleError(
                f"{where}: 'adaptation.exploration' is {exploration!r}; this runtime samples {list(EXPLORATION)}"
            )
        check.key(adaptation, "reward_source", dict, "adaptation")
        check.optional_skill(adaptation)
        name = check.key(adaptation, "initial_params_file", str, "adaptation")
        check_file_name(where, name)
        return {"num_params": num_params, "episodes": episodes, "max_episode_steps": max_steps}

    def files_named_in_adaptation(self, adaptation: Mapping[str, Any]) -> Sequence[str]:
        return (adaptation["initial_params_file"],)

    def expected_shapes(self, graph: str, dims: Mapping[str, int]) -> dict[str, Shape]:
        obs, act = dims["obs_dim"], dims["act_dim"]
        params, n, t = dims["num_params"], dims["episodes"], dims["max_episode_steps"]
        if graph == "policy":
            return {"obs": (None, obs), "prev_command": (None, act), "params": (params,), "noise": (None, act),
                    "command": (None, act), "action": (None, act)}
        return {
            "params": (params,),
            "obs": (n, t, obs),
            "prev_command": (n, t, act),
            "action": (n, t, act),
            "reward": (n, t),
            "mask": (n, t),
            "adapted_params": (params,),
        }

    def check_files(self, root: Path, adaptation: Mapping[str, Any], dims: Mapping[str, int]) -> None:
        read_params(root / adaptation["initial_params_file"], dims["num_params"])

    def initial_params(self, bundle) -> np.ndarray:
        """Where adaptation starts on a new task, float32 ``(P,)`` read from the params file (a fresh array)."""
        adaptation = bundle.adaptation
        return read_params(bundle.file_path(adaptation["initial_params_file"]), int(adaptation["num_params"]))

    def controller(self, bundle, providers: Sequence[str] | None = None, *, seed: int | None = None, **kwargs: Any):
        from metarl_robot.runtime.gradient_controller import GradientController

        return GradientController(bundle, providers, seed=seed, **kwargs)

    def probe_feed(self, bundle, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The initial parameters with exploration noise large enough to saturate every action."""
        noise = saturating_noise(rng, len(obs), int(bundle.action["dim"]))
        prev = np.zeros((len(obs), int(bundle.action["dim"])), dtype=np.float32)
        return {"obs": obs.astype(np.float32), "prev_command": prev, "params": self.initial_params(bundle), "noise": noise}

    # ------------------------------------------------------------------ PyTorch half
    def build_policy(self, spec: Mapping[str, Any]) -> Any:
        from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig

        config = dict(spec["config"])
        config["hidden_sizes"] = tuple(config["hidden_sizes"])
        return GradientPolicy(spec["obs_dim"], spec["act_dim"], spec["action_scale"], GradientPolicyConfig(**config))

    def adaptation_section(self, policy: Any, adaptation: Mapping[str, Any], require: Require, where: str) -> dict[str, Any]:
        from metarl_robot.families import gradient_torch

        return gradient_torch.adaptation_section(policy, adaptation, require, where)

    def build_graphs(self, policy: Any, adaptation: Mapping[str, Any], staging: Path, opset: int | None) -> BuiltGraphs:
        from metarl_robot.families import gradient_torch

        return gradient_torch.build_graphs(policy, adaptation, staging, opset)

    def torch_controller(self, policy: Any, adaptation: Mapping[str, Any], *, seed: int = 0, explore: bool = True):
        from metarl_robot.families import gradient_torch

        return gradient_torch.GradientTorchController(policy, adaptation, seed=seed, explore=explore)

    def checkpoint_parity(self, policy: Any, bundle, sessions, rng: np.random.Generator, batches: int):
        from metarl_robot.families import gradient_torch

        return gradient_torch.checkpoint_parity(policy, bundle, sessions, rng, batches)


def read_params(path: Path, num_params: int) -> np.ndarray:
    """The float32 vector of ``num_params`` finite values in the ``.npy`` file ``path``."""
    from metarl_robot.runtime.bundle import BundleError

    try:
        params = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: not a readable .npy array ({err}); re-export the bundle") from None
    if params.dtype != np.float32 or params.shape != (num_params,) or not np.isfinite(params).all():
        raise BundleError(
            f"{path}: must hold {num_params} finite float32 values (adaptation.num_params), got dtype "
            f"{params.dtype} shape {params.shape}; re-export the bundle"
        )
    return params


FAMILY = GradientFamily()
