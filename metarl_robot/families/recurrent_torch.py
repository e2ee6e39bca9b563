"""The recurrent family's PyTorch half: the step graph a :class:`~metarl_robot.recurrent_policy.RecurrentPolicy`
exports, its parity checks over long sequences and its test vectors, and the runtime controller's
semantics in PyTorch.

``policy.onnx`` computes ``RecurrentPolicy.command(obs, prev_command, prev_reward, prev_done, noise,
state_in) -> (command, state_out)``. The core is a ``torch.nn.GRU``/``nn.LSTM`` run for one step, which
the dynamo exporter writes as an ONNX ``GRU``/``LSTM`` node; a GRU node must carry
``linear_before_reset=1`` (PyTorch applies the reset gate after the hidden-state matmul). Parity is
checked the way the robot runs the graph: from random non-zero states, feeding ``state_out`` back as
``state_in`` for hundreds of steps, against the float64 PyTorch model doing the same. Imported only
through the plug-in in :mod:`metarl_robot.families.recurrent`, when torch is needed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import nn

from metarl_robot.export import ExportError, cpu_session, jsonable, onnx_export, single_threaded_torch
from metarl_robot.families import registry
from metarl_robot.families.base import BuiltGraphs, TorchControllerBase
from metarl_robot.parity import max_abs_diff
from metarl_robot.recurrent_policy import RecurrentPolicy
from metarl_robot.skills import manifest_section

FAMILY = registry.get("recurrent")
INPUTS, OUTPUTS = FAMILY.graph_io["policy"]
POLICY_FILE = FAMILY.graph_files["policy"]
TEST_VECTORS_FILE = "test_vectors.npz"
PARITY_BATCHES = 50
"""Random single-step batches in the export-time parity check."""
PARITY_SEQUENCES = 8
"""Sequences in the export-time long-sequence parity check."""
SEQUENCE_STEPS = 256
"""Steps per parity sequence (the issue asks for at least 200), each from a non-zero initial state."""
CADENCES = ("step",)


class PolicyGraph(nn.Module):
    """What ``policy.onnx`` computes: one control step, raw inputs in, physical command and next state out."""

    def __init__(self, policy: RecurrentPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs, prev_command, prev_reward, prev_done, noise, state_in):
        return self.policy.command(obs, prev_command, prev_reward, prev_done, noise, state_in)


# ------------------------------------------------------------------------------------ manifest
def adaptation_section(
    policy: RecurrentPolicy, adaptation: Mapping[str, Any], require: Callable[..., Any], where: str
) -> dict[str, Any]:
    """The manifest's ``adaptation`` section of a recurrent bundle from the checkpoint's ``adaptation``."""
    cadence = require(adaptation, "cadence", "adaptation.cadence")
    if cadence not in CADENCES:
        raise ExportError(f"{where}: 'adaptation.cadence' must be one of {list(CADENCES)} for a recurrent policy, got {cadence!r}")
    reward_source = require(adaptation, "reward_source", "adaptation.reward_source")
    if not isinstance(reward_source, Mapping):
        raise ExportError(f"{where}: 'adaptation.reward_source' must be a mapping, got {type(reward_source).__name__}")
    sample_actions = adaptation.get("sample_actions", True)
    if not isinstance(sample_actions, bool):
        raise ExportError(f"{where}: 'adaptation.sample_actions' must be true or false, got {sample_actions!r}")
    section = {
        "kind": "recurrent_memory",
        "cell": policy.config.cell,
        "hidden_size": policy.hidden_size,
        "state_size": policy.state_size,
        "state_layout": policy.state_layout,
        "initial_state": "zeros",
        "reset_between_trials": True,
        "carry_across_episodes": True,
        "sample_actions": sample_actions,
        "steps": 0,
        "cadence": cadence,
        "reward_source": jsonable(reward_source),
    }
    if policy.config.cell == "window":
        section["window_steps"] = int(policy.config.window_steps)
        section["latent_dim"] = int(policy.config.latent_dim)
    if policy.config.cell == "pearl":
        section.update(latent_dim=int(policy.config.latent_dim), noise_size=int(policy.noise_size), squash=policy.config.squash)
    elif policy.config.squash != "clip":
        section["squash"] = policy.config.squash
    if policy.config.cell == "prototype":
        section.update(embedding_dim=int(policy.config.embedding_dim), num_prototypes=int(policy.config.num_prototypes),
                       comparison=policy.config.comparison, latent_dim=int(policy.config.latent_dim))
    if "episodes_per_trial" in adaptation:
        section["episodes_per_trial"] = int(adaptation["episodes_per_trial"])
    if policy.skill is not None:
        # The command is computed by a motion skill inside the graph (metarl_robot.skills), from the
        # observation and the dimensions the policy learned; the others are not the policy's decisions.
        section["skill"] = manifest_section(policy.skill)
    return section


# ------------------------------------------------------------------------------------ export
def export_policy(policy: RecurrentPolicy, path: Path, opset: int | None) -> None:
    batch = torch.export.Dim("batch")
    example = (
        torch.zeros(2, policy.obs_dim),
        torch.zeros(2, policy.act_dim),
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.zeros(2, policy.noise_size),
        torch.zeros(2, policy.state_size),
    )
    onnx_export(PolicyGraph(policy).eval(), example, path, "policy", INPUTS, OUTPUTS, {n: {0: batch} for n in INPUTS}, opset)


def build_graphs(policy: RecurrentPolicy, adaptation: Mapping[str, Any], staging: Path, opset: int | None) -> BuiltGraphs:
    """Write ``policy.onnx`` and the test vectors; return single-step and long-sequence parity."""
    export_policy(policy, staging / POLICY_FILE, opset)
    session = cpu_session(staging / POLICY_FILE)
    rng = np.random.default_rng(0)
    with single_threaded_torch():
        exact = float64_copy(policy)
        diffs = {
            "policy": step_parity(policy, session, rng, batches=PARITY_BATCHES, exact=exact),
            "policy_sequence": sequence_parity(policy, session, rng, sequences=PARITY_SEQUENCES, steps=SEQUENCE_STEPS, exact=exact),
        }
        write_test_vectors(policy, staging / TEST_VECTORS_FILE, exact=exact)
    dims = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "state_size": policy.state_size, "noise_size": policy.noise_size}
    return BuiltGraphs(dims=dims, files=[POLICY_FILE, TEST_VECTORS_FILE], parity=diffs)


def checkpoint_parity(policy: RecurrentPolicy, bundle, sessions, rng: np.random.Generator, batches: int):
    """Single-step parity on ``batches`` fresh batches and sequence parity on ``max(2, batches // 10)``
    fresh 200-step sequences from non-zero states; the starting point compared is the initial state
    (the manifest says zeros; the graph must keep a zero state's command finite and the sizes agree)."""
    session = sessions["policy"]
    with single_threaded_torch():
        exact = float64_copy(policy)
        diffs = {
            "policy": step_parity(policy, session, rng, batches=batches, exact=exact),
            "policy_sequence": sequence_parity(policy, session, rng, sequences=max(2, batches // 10), steps=200, exact=exact),
        }
    stored = int(bundle.adaptation["state_size"])
    start = 0.0 if stored == policy.state_size and bundle.adaptation["cell"] == policy.config.cell else math.inf
    return diffs, "initial state (zeros, size and cell)", start


def float64_copy(policy: RecurrentPolicy) -> RecurrentPolicy:
    return copy.deepcopy(policy).double().eval()


# ------------------------------------------------------------------------------------ parity
def sample_step(policy: RecurrentPolicy, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """Random float32 step inputs (not the state) that exercise the normaliser clip and both action clips:
    observations 4 standard deviations around the normaliser's statistics, previous commands to 1.5x the
    scale, rewards of several units, sparse done flags, standard normal noise (a quarter of rows zero)."""
    mean = policy.obs_norm.mean.numpy()
    std = np.sqrt(policy.obs_norm.var.numpy() + 1e-8)
    scale = policy.action_scale.numpy()
    noise = rng.normal(size=(batch, policy.noise_size)) * (rng.random((batch, 1)) < 0.75)
    return {
        "obs": (mean + std * rng.normal(0.0, 4.0, size=(batch, policy.obs_dim))).astype(np.float32),
        "prev_command": (rng.uniform(-1.5, 1.5, size=(batch, policy.act_dim)) * scale).astype(np.float32),
        "prev_reward": rng.normal(0.0, 3.0, size=(batch, 1)).astype(np.float32),
        "prev_done": (rng.random((batch, 1)) < 0.1).astype(np.float32),
        "noise": noise.astype(np.float32),
    }


def sample_state(policy: RecurrentPolicy, rng: np.random.Generator, batch: int) -> np.ndarray:
    """A non-zero state: ``h`` in (-1, 1) as a GRU/LSTM output is; an LSTM's ``c`` wider (it is unbounded);
    a history window of normalised inputs, a few units wide."""
    h = policy.hidden_size
    if policy.config.cell == "window":
        return rng.normal(0.0, 1.5, size=(batch, policy.state_size)).astype(np.float32)
    if policy.config.cell == "pearl":  # a posterior (precision >= 1), a latent, the started flag
        k = policy.config.latent_dim
        parts = [rng.normal(0.0, 1.0, (batch, k)), rng.uniform(0.0, 5.0, (batch, k)), rng.normal(0.0, 1.0, (batch, k)),
                 (rng.random((batch, 1)) < 0.8).astype(np.float64)]
        return np.concatenate(parts, axis=1).astype(np.float32)
    if policy.config.cell == "prototype":  # a mean embedding in (-1, 1) and log(1 + summed relevance), up to ~500 steps in
        mean = rng.uniform(-0.9, 0.9, size=(batch, policy.state_size - 1))
        return np.concatenate([mean, rng.uniform(0.0, 6.0, size=(batch, 1))], axis=1).astype(np.float32)
    state = rng.uniform(-0.95, 0.95, size=(batch, policy.state_size))
    if policy.config.cell == "lstm":
        state[:, h:] = rng.normal(0.0, 1.5, size=(batch, h))
    return state.astype(np.float32)


@torch.no_grad()
def reference_step(exact: RecurrentPolicy, inputs: Mapping[str, np.ndarray], state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(command, state_out)`` in float64 of the float64 policy ``exact`` for one step.

    Built from the functions training optimises, not from the exported one-step ``command``: the
    sequence unroll the update runs (:meth:`RecurrentPolicy.unroll`, here over one step) and the
    Gaussian head it evaluates (:meth:`RecurrentPolicy.distribution`), so a slip in the export path (an
    observation normaliser left out, a state packed differently) shows as a parity failure. The pearl
    cell draws its latent only in the one-step path, so its reference is that path.
    """
    tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name], dtype=np.float64)) for name in INPUTS[:-1]]
    state_t = torch.from_numpy(np.asarray(state, np.float64))
    if exact.config.cell == "pearl":
        command, next_state = exact.command(*tensors, state_t)
        return command.numpy(), next_state.numpy()
    obs, prev_command, prev_reward, prev_done, noise = tensors
    features, next_state = exact.unroll(obs[:, None], exact.normalised_action(prev_command)[:, None],
                                        prev_reward[:, None], prev_done[:, None], state_t)
    dist = exact.distribution(features[:, 0])
    action = dist.mean + dist.stddev * noise[..., : exact.act_dim]
    command = exact.to_command(obs, exact.squashed(action), prev_command)
    return command.numpy(), next_state.numpy()


def step_parity(
    policy: RecurrentPolicy, session: onnxruntime.InferenceSession, rng: np.random.Generator, *, batches: int,
    exact: RecurrentPolicy | None = None,
) -> float:
    """Largest single-step difference (command in normalised units, state as is) over ``batches`` random
    batches with random non-zero states."""
    exact = float64_copy(policy) if exact is None else exact
    scale = policy.action_scale.numpy()
    worst = 0.0
    for _ in range(batches):
        batch = int(rng.integers(1, 9))
        inputs = {**sample_step(policy, rng, batch), "state_in": sample_state(policy, rng, batch)}
        command, state = session.run(None, inputs)
        ref_command, ref_state = reference_step(exact, inputs, inputs["state_in"])
        worst = max(
            worst,
            max_abs_diff("policy", command, ref_command, scale, output="command"),
            max_abs_diff("policy", state, ref_state, scale, output="state_out"),
        )
        if not math.isfinite(worst):
            break
    return worst


def run_sequence(
    session: onnxruntime.InferenceSession, steps: Mapping[str, np.ndarray], state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Run the graph over ``steps`` (``[T, B, *]`` arrays of every input but the state) from ``state``,
    feeding ``state_out`` back: ``(commands [T, B, A], states [T, B, S])``."""
    commands, states = [], []
    for t in range(len(steps["obs"])):
        command, state = session.run(None, {**{k: v[t] for k, v in steps.items()}, "state_in": state})
        commands.append(command)
        states.append(state)
    return np.stack(commands), np.stack(states)


def reference_sequence(exact: RecurrentPolicy, steps: Mapping[str, np.ndarray], state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the float64 policy computes over the same sequence, its own state fed back."""
    commands, states = [], []
    current = np.asarray(state, np.float64)
    for t in range(len(steps["obs"])):
        command, current = reference_step(exact, {k: v[t] for k, v in steps.items()}, current)
        commands.append(command)
        states.append(current)
    return np.stack(commands), np.stack(states)


def sample_sequence(policy: RecurrentPolicy, rng: np.random.Generator, steps: int, batch: int) -> dict[str, np.ndarray]:
    """``[T, B, *]`` step inputs (everything but the state) of one random sequence."""
    rows = [sample_step(policy, rng, batch) for _ in range(steps)]
    return {name: np.stack([row[name] for row in rows]) for name in INPUTS[:-1]}


def sequence_parity(
    policy: RecurrentPolicy, session: onnxruntime.InferenceSession, rng: np.random.Generator, *, sequences: int,
    steps: int, exact: RecurrentPolicy | None = None,
) -> float:
    """Largest difference, over ``sequences`` random sequences of ``steps`` steps each from a random
    non-zero state, between the graph with its own ``state_out`` fed back and the float64 policy with its
    own state fed back (commands in normalised units, states as they are)."""
    exact = float64_copy(policy) if exact is None else exact
    scale = policy.action_scale.numpy()
    worst = 0.0
    for _ in range(sequences):
        batch = int(rng.integers(1, 5))
        inputs, state = sample_sequence(policy, rng, steps, batch), sample_state(policy, rng, batch)
        commands, states = run_sequence(session, inputs, state)
        ref_commands, ref_states = reference_sequence(exact, inputs, state)
        worst = max(
            worst,
            max_abs_diff("policy", commands, ref_commands, scale, output="command"),
            max_abs_diff("policy", states, ref_states, scale, output="state_out"),
        )
        if not math.isfinite(worst):
            break
    return worst


def write_test_vectors(policy: RecurrentPolicy, path: Path, *, exact: RecurrentPolicy | None = None) -> None:
    """One seeded single-step batch from non-zero states (``policy/...``, what verify replays) and one
    200-step sequence of 2 rows from a non-zero state (``policy_sequence/inputs/<name>`` ``[T, B, *]``,
    ``policy_sequence/inputs/state_in`` ``[B, S]``, ``policy_sequence/outputs/<name>`` ``[T, B, *]``), which a
    torch-free check replays with ``state_out`` fed back."""
    exact = float64_copy(policy) if exact is None else exact
    rng = np.random.default_rng(12345)
    arrays: dict[str, np.ndarray] = {}
    inputs = {**sample_step(policy, rng, 16), "state_in": sample_state(policy, rng, 16)}
    outputs = reference_step(exact, inputs, inputs["state_in"])
    arrays.update({f"policy/inputs/{k}": v for k, v in inputs.items()})
    arrays.update({f"policy/outputs/{k}": v.astype(np.float32) for k, v in zip(OUTPUTS, outputs)})
    steps, state = sample_sequence(policy, rng, 200, 2), sample_state(policy, rng, 2)
    outputs = reference_sequence(exact, steps, state)
    arrays.update({f"policy_sequence/inputs/{k}": v for k, v in steps.items()})
    arrays["policy_sequence/inputs/state_in"] = state
    arrays.update({f"policy_sequence/outputs/{k}": v.astype(np.float32) for k, v in zip(OUTPUTS, outputs)})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# ------------------------------------------------------------------------------------ the PyTorch controller
class RecurrentTorchController(TorchControllerBase):
    """The runtime's :class:`~metarl_robot.runtime.recurrent_controller.RecurrentController` semantics over a
    PyTorch :class:`~metarl_robot.recurrent_policy.RecurrentPolicy`: the same state handling and the same
    noise stream for the same seed (numpy's generator, standard normal float32)."""

    family = "recurrent"
    cadence = "step"

    def __init__(self, policy: RecurrentPolicy, adaptation: Mapping[str, Any], *, seed: int = 0, explore: bool = True):
        self.policy = policy
        self.obs_dim, self.act_dim = policy.obs_dim, policy.act_dim
        self._sample_actions = bool(adaptation.get("sample_actions", True))
        self.explore = bool(explore) and self._sample_actions
        self.state_layout = policy.state_layout
        self.state_names = tuple(str(part["name"]) for part in self.state_layout)
        self._learning = True
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.state = np.zeros((1, self.policy.state_size), np.float32)
        self.prev_command = np.zeros((1, self.act_dim), np.float32)
        self.prev_reward = np.zeros((1, 1), np.float32)
        self.prev_done = np.zeros((1, 1), np.float32)
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def set_learning(self, enabled: bool) -> None:
        self._learning = bool(enabled)
        self.explore = self._sample_actions and self._learning

    def act(self, obs) -> np.ndarray:
        if self.explore:
            noise = self._rng.standard_normal(self.policy.noise_size, dtype=np.float32)[None]
        else:
            noise = np.zeros((1, self.policy.noise_size), np.float32)
        inputs = [np.asarray(obs, np.float32)[None], self.prev_command, self.prev_reward, self.prev_done, noise, self.state]
        with torch.no_grad():
            command, state = self.policy.command(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
        if self._learning:
            self.state = state.numpy().astype(np.float32)
        return command[0].numpy()

    def observe(self, obs, action, reward, next_obs, done) -> None:
        if not self._learning:
            return
        self.prev_command = np.asarray(action, np.float32).reshape(1, self.act_dim).copy()
        self.prev_reward = np.full((1, 1), float(reward), np.float32)
        self.prev_done = np.full((1, 1), float(bool(done)), np.float32)

    def adapt(self) -> np.ndarray:
        return self.state[0].copy()

    def status(self) -> dict[str, str]:
        return {"adaptation_family": self.family, "cell": self.policy.config.cell}

    def get_state(self) -> dict[str, np.ndarray]:
        return {str(p["name"]): self.state[:, int(p["offset"]) : int(p["offset"]) + int(p["size"])].copy() for p in self.state_layout}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.state_names):
            raise ValueError(f"state must have exactly the keys {sorted(self.state_names)}, got {sorted(state)}")
        parts = [np.asarray(state[str(p["name"])], np.float32).reshape(1, int(p["size"])) for p in self.state_layout]
        self.state = np.concatenate(parts, axis=1)
