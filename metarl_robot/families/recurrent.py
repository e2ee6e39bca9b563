"""The recurrent family (RL²): a GRU or LSTM policy whose memory is the adaptation
(``adaptation.kind`` "recurrent_memory").

A recurrent bundle holds one graph, ``policy.onnx``, one control step::

    (obs, prev_command, prev_reward, prev_done, noise, state_in) -> (command, state_out)

``state`` is the packed recurrent state, ``[h]`` for a GRU, ``[h, c]`` for an LSTM and the history
window of the last ``window_steps`` core inputs for RMA's ``window`` cell, the support set's summed
embedding and weight for the metric-based ``prototype`` cell, PEARL's posterior and latent for the ``pearl``
cell (whose ``noise`` input also carries the latent's draw: ``adaptation.noise_size`` values) (the manifest's
``adaptation.state_layout`` says where each part sits). The robot keeps it: it feeds ``state_out``
back as the next step's ``state_in``, zeroes it at a new trial (new object, new task) and carries it
across the attempts of a trial. There is no adapt graph: every control step already updates the
memory, so ``adapt()`` has nothing to compute (see docs/recurrent.md).

Runtime half here (numpy only): the graph's names and shapes, the manifest section and its checks, the
on-robot :class:`~metarl_robot.runtime.recurrent_controller.RecurrentController`. The PyTorch half
(model rebuild, export, parity, PyTorch controller) is :mod:`metarl_robot.families.recurrent_torch`,
imported when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metarl_robot.families.base import BuiltGraphs, Family, Require, Shape, saturating_noise

CELLS = ("gru", "lstm", "window", "prototype", "pearl")
INITIAL_STATES = ("zeros",)


class RecurrentFamily(Family):
    name = "recurrent"
    adaptation_kind = "recurrent_memory"
    policy_class = "RecurrentPolicy"
    algorithms = ("metarl_robot.algos.rl2", "metarl_robot.algos.rma", "metarl_robot.algos.pearl")
    graph_io = {
        "policy": (
            ("obs", "prev_command", "prev_reward", "prev_done", "noise", "state_in"),
            ("command", "state_out"),
        ),
    }
    graph_files = {"policy": "policy.onnx"}
    parity_labels = {
        "policy_sequence": "the policy graph over long sequences from non-zero states (state_out fed back)",
        "policy": "the policy graph on single steps",
    }

    # ------------------------------------------------------------------ runtime half
    def check_adaptation(self, check, adaptation: Mapping[str, Any]) -> dict[str, int]:
        from metarl_robot.runtime.bundle import BundleError

        where = check.where
        cell = check.key(adaptation, "cell", str, "adaptation")
        if cell not in CELLS:
            raise BundleError(f"{where}: 'adaptation.cell' is {cell!r}, expected one of {list(CELLS)}")
        hidden = check.positive_int(adaptation, "hidden_size", "adaptation")
        state_size = check.positive_int(adaptation, "state_size", "adaptation")
        if cell == "window":
            steps = check.positive_int(adaptation, "window_steps", "adaptation")
            if state_size % steps:
                raise BundleError(
                    f"{where}: 'adaptation.state_size' is {state_size}, not a whole number of {steps} window steps"
                )
            expected = state_size
        elif cell == "prototype":
            expected = check.positive_int(adaptation, "embedding_dim", "adaptation") + 1
        elif cell == "pearl":
            expected = 3 * check.positive_int(adaptation, "latent_dim", "adaptation") + 1
        else:
            expected = hidden * (2 if cell == "lstm" else 1)
        if state_size != expected:
            raise BundleError(
                f"{where}: 'adaptation.state_size' is {state_size}, but a {cell} with hidden_size {hidden} carries "
                f"{expected} values"
            )
        layout = check.key(adaptation, "state_layout", list, "adaptation")
        wanted = [{"name": "h", "offset": 0, "size": hidden}]
        if cell == "window":
            wanted = [{"name": "history", "offset": 0, "size": state_size}]
        if cell == "pearl":
            k = (state_size - 1) // 3
            wanted = [{"name": "posterior_mean", "offset": 0, "size": k}, {"name": "posterior_log_precision", "offset": k, "size": k},
                      {"name": "latent", "offset": 2 * k, "size": k}, {"name": "started", "offset": 3 * k, "size": 1}]
        if cell == "prototype":
            wanted = [{"name": "support_mean", "offset": 0, "size": state_size - 1},
                      {"name": "support_log_weight", "offset": state_size - 1, "size": 1}]
        if cell == "lstm":
            wanted.append({"name": "c", "offset": hidden, "size": hidden})
        if layout != wanted:
            raise BundleError(f"{where}: 'adaptation.state_layout' is {layout!r}, expected {wanted!r}")
        initial = check.key(adaptation, "initial_state", str, "adaptation")
        if initial not in INITIAL_STATES:
            raise BundleError(f"{where}: 'adaptation.initial_state' is {initial!r}, expected one of {list(INITIAL_STATES)}")
        for key, value in (("reset_between_trials", True), ("carry_across_episodes", True)):
            if adaptation.get(key) is not value:
                raise BundleError(
                    f"{where}: 'adaptation.{key}' must be {str(value).lower()} (what RL² was trained for), got "
                    f"{adaptation.get(key, 'nothing')!r}"
                )
        if not isinstance(adaptation.get("sample_actions"), bool):
            raise BundleError(f"{where}: 'adaptation.sample_actions' must be true or false, got {adaptation.get('sample_actions')!r}")
        steps = check.key(adaptation, "steps", int, "adaptation")
        if steps != 0:
            raise BundleError(f"{where}: 'adaptation.steps' must be 0 (a recurrent bundle has no adapt graph), got {steps}")
        check.key(adaptation, "cadence", str, "adaptation")
        check.key(adaptation, "reward_source", dict, "adaptation")
        check.optional_skill(adaptation)
        noise_size = check.positive_int(adaptation, "noise_size", "adaptation") if cell == "pearl" else None
        return {"state_size": state_size, **({"noise_size": noise_size} if noise_size else {})}

    def expected_shapes(self, graph: str, dims: Mapping[str, int]) -> dict[str, Shape]:
        obs, act, state = dims["obs_dim"], dims["act_dim"], dims["state_size"]
        return {
            "obs": (None, obs),
            "prev_command": (None, act),
            "prev_reward": (None, 1),
            "prev_done": (None, 1),
            "noise": (None, dims.get("noise_size", act)),
            "state_in": (None, state),
            "command": (None, act),
            "state_out": (None, state),
        }

    def controller(self, bundle, providers: Sequence[str] | None = None, *, seed: int | None = None, **kwargs: Any):
        from metarl_robot.runtime.recurrent_controller import RecurrentController

        return RecurrentController(bundle, providers, seed=seed, **kwargs)

    def probe_feed(self, bundle, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random previous steps and states, with exploration noise large enough to saturate every action."""
        n, act = len(obs), int(bundle.action["dim"])
        scale = np.asarray(bundle.action["scale"], dtype=np.float64)
        noise = saturating_noise(rng, n, int(bundle.adaptation.get("noise_size", act)))
        return {
            "obs": obs.astype(np.float32),
            "prev_command": (rng.uniform(-1.5, 1.5, size=(n, act)) * scale).astype(np.float32),
            "prev_reward": rng.normal(0.0, 3.0, size=(n, 1)).astype(np.float32),
            "prev_done": (rng.random((n, 1)) < 0.2).astype(np.float32),
            "noise": noise,
            "state_in": rng.uniform(-1.0, 1.0, size=(n, int(bundle.adaptation["state_size"]))).astype(np.float32),
        }

    # ------------------------------------------------------------------ PyTorch half
    def build_policy(self, spec: Mapping[str, Any]) -> Any:
        from metarl_robot.recurrent_policy import RecurrentPolicy, RecurrentPolicyConfig

        config = dict(spec["config"])
        for key in ("embed_sizes", "head_sizes", "critic_sizes", "adaptation_sizes", "encoder_sizes", "embedding_sizes", "context_sizes"):
            if key in config:
                config[key] = tuple(config[key])
        return RecurrentPolicy(spec["obs_dim"], spec["act_dim"], spec["action_scale"], RecurrentPolicyConfig(**config))

    def adaptation_section(self, policy: Any, adaptation: Mapping[str, Any], require: Require, where: str) -> dict[str, Any]:
        from metarl_robot.families import recurrent_torch

        return recurrent_torch.adaptation_section(policy, adaptation, require, where)

    def build_graphs(self, policy: Any, adaptation: Mapping[str, Any], staging, opset: int | None) -> BuiltGraphs:
        from metarl_robot.families import recurrent_torch

        return recurrent_torch.build_graphs(policy, adaptation, staging, opset)

    def torch_controller(self, policy: Any, adaptation: Mapping[str, Any], *, seed: int = 0, explore: bool = True):
        from metarl_robot.families import recurrent_torch

        return recurrent_torch.RecurrentTorchController(policy, adaptation, seed=seed, explore=explore)

    def checkpoint_parity(self, policy: Any, bundle, sessions, rng: np.random.Generator, batches: int):
        from metarl_robot.families import recurrent_torch

        return recurrent_torch.checkpoint_parity(policy, bundle, sessions, rng, batches)


FAMILY = RecurrentFamily()
