"""The gradient family's PyTorch half: export of gradient-based meta-policies
(:class:`~metarl_robot.gradient_policy.GradientPolicy`), the policy graph, the adaptation-step graph,
their parity checks and test vectors, and the runtime controller's semantics in PyTorch.

``policy.onnx`` computes ``(command, action)`` from a raw observation, the previous command (which
only a policy on a motion skill reads), the adapted parameters and standard-normal noise. ``adapt.onnx`` computes one inner policy-gradient step from the episodes the
robot collected, ``params - inner_lr * grad L(params; obs, action, advantage, mask)`` with the
advantages computed from ``reward`` inside the graph (a reward-model context policy's step fits its
reward model to ``reward`` itself, and has no advantage nodes): ``torch.func.grad`` does not export directly, so
the step is traced to plain aten operations with ``make_fx`` (the backward pass becomes ordinary
forward operations) and that trace is exported; then
:func:`~metarl_robot.families.gradient_onnx.add_advantages` puts the robot's advantage code in front
of it as ONNX nodes. The adapt graph has fixed shapes ``[episodes_per_step, max_episode_steps]``; the
runtime pads shorter batches with ``mask = 0``.

Imported only through the plug-in in :mod:`metarl_robot.families.gradient`, when torch is needed; the
bundle format is in docs/bundle.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from metarl_robot.export import ExportError, cpu_session, float32_list, jsonable, onnx_export, single_threaded_torch
from metarl_robot.families import registry
from metarl_robot.families.base import BuiltGraphs, TorchControllerBase
from metarl_robot.families.gradient_onnx import add_advantages
from metarl_robot.gradient_policy import GradientPolicy, adaptation_step
from metarl_robot.skills import manifest_section
from metarl_robot.parity import PARITY_TOLERANCE, max_abs_diff
from metarl_robot.runtime.advantages import AdvantageConfig, advantages_float64, compute_advantages

CHAINED_STEPS = 3
"""Adapt-graph steps chained (each onnxruntime output fed back as the next input) in the parity check:
the most adaptation steps the benchmarks evaluate. A policy-gradient step amplifies a perturbation of
its input parameters severalfold, so any float32 chain, PyTorch's own included, drifts from the exact
float64 chain by about 1e-5 after four or five steps (``bench/chained_step_drift.py``, BENCHMARKS.md)."""
CHAINS = 3
"""Independent chains of :func:`chained_steps` steps in the parity check."""


def chained_steps(adaptation: Mapping[str, Any]) -> int:
    """Adapt-graph steps chained in the parity check: as many as the robot takes under its guard
    (``adaptation.guard.validated_steps``, what meta-training validated), or :data:`CHAINED_STEPS` when
    the bundle declares none. Past the validated steps the step map of a policy with a small action std
    amplifies float32 rounding of its input parameters faster than any export can follow: a grasp policy
    validated for two steps stays within 3e-7 of float64 over two chained steps and leaves it by 2e-5
    on the third, where PyTorch's own float32 chain is off by 7e-3 (``bench/chained_step_drift.py``)."""
    guard = adaptation.get("guard") or {}
    steps = guard.get("validated_steps") if isinstance(guard, Mapping) else None
    return int(steps) if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 else CHAINED_STEPS
FAMILY = registry.get("gradient")
IO = FAMILY.graph_io
GRAPH_FILES = FAMILY.graph_files
PARAMS_FILE = FAMILY.params_file
TEST_VECTORS_FILE = "test_vectors.npz"
EXPORT_MARGIN = 0.2
"""A float32 graph is kept only if its parity error on the export's batches is within this share of the
tolerance; otherwise the graph computes in float64. `metarl-robot verify` draws other batches (seeded
from the manifest), and float32's error has a long tail: a three-step reward-model context bundle at
3.8e-6 on one set of batches reached 1.3e-5 on another."""
PARITY_BATCHES = 50
"""Random batches per graph in the export-time parity check."""


class GradientPolicyGraph(nn.Module):
    """What ``policy.onnx`` computes: ``(command, action)`` with ``action = mean + std * noise`` in
    normalised units and ``command = clip(action, -1, 1) * action_scale`` in physical units, or what the
    policy's skill makes of the clipped action after ``prev_command``."""

    def __init__(self, policy: GradientPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(
        self, obs: torch.Tensor, prev_command: torch.Tensor, params: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.policy.policy_inputs(obs, prev_command)
        action = self.policy.sample(params, inputs, noise)
        return self.policy.to_command(inputs, action), action


class TracedGraph(nn.Module):
    """An ``nn.Module`` around a ``make_fx`` trace, which is what ``torch.onnx.export`` takes."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.graph_module(*args)


def _slice_backward_as_pad(default: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``slice_backward`` as zero padding: the values of the default decomposition (zeros with a slice
    scattered in), but one ``Pad`` in ONNX per weight tensor instead of a ``ScatterND``, which is cheaper."""

    def decompose(grad, input_sizes, dim, start, end, step):
        if step != 1:
            return default(grad, input_sizes, dim, start, end, step)
        size = input_sizes[dim]
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, start), size)
        pad = [0, 0] * (grad.dim() - 1 - dim) + [start, size - end]
        return torch.ops.aten.constant_pad_nd(grad, pad, 0.0)

    return decompose


def trace_adaptation_step(
    policy: GradientPolicy, episodes: int, max_episode_steps: int, internal: torch.dtype = torch.float32
) -> torch.fx.GraphModule:
    """:func:`~metarl_robot.gradient_policy.adaptation_step` of ``policy`` traced to core aten operations
    for float32 inputs of shape ``[episodes, max_episode_steps]``; with ``internal=torch.float64`` the
    step is computed in float64 (a float64 copy of the policy, inputs cast up, the result cast down)."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    table = dict(core_aten_decompositions())
    slice_backward = torch.ops.aten.slice_backward.default
    if slice_backward in table:
        table[slice_backward] = _slice_backward_as_pad(table[slice_backward])
    example = _example_inputs(policy, episodes, max_episode_steps)
    if internal == torch.float32:
        return make_fx(adaptation_step(policy), decomposition_table=table)(*example)
    step = adaptation_step(copy.deepcopy(policy).to(internal).eval())

    def cast_step(*inputs: torch.Tensor) -> torch.Tensor:
        return step(*(x.to(internal) for x in inputs)).to(torch.float32)

    return make_fx(cast_step, decomposition_table=table)(*example)


class CastPolicyGraph(nn.Module):
    """:class:`GradientPolicyGraph` computed in ``internal`` precision between float32 inputs and
    outputs (the argument names are the graph's input names, which the exporter's dynamic shapes use)."""

    def __init__(self, graph: nn.Module, internal: torch.dtype) -> None:
        super().__init__()
        self.inner, self.internal = graph, internal  # not "graph": the exporter's graph module has one

    def forward(
        self, obs: torch.Tensor, prev_command: torch.Tensor, params: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        command, action = self.inner(*(x.to(self.internal) for x in (obs, prev_command, params, noise)))
        return command.to(torch.float32), action.to(torch.float32)


def _example_inputs(policy: GradientPolicy, episodes: int, max_episode_steps: int) -> tuple[torch.Tensor, ...]:
    shape = (episodes, max_episode_steps)
    return (
        policy.initial_adapted().detach().clone(),
        torch.zeros(*shape, policy.obs_dim),
        torch.zeros(*shape, policy.act_dim),
        torch.zeros(*shape, policy.act_dim),
        torch.zeros(shape),
        torch.ones(shape),
    )


def export_graph(
    policy: GradientPolicy,
    graph: str,
    path: Path,
    opset: int | None,
    *,
    episodes: int,
    max_episode_steps: int,
    internal: torch.dtype = torch.float32,
    advantages: AdvantageConfig | None = None,
) -> None:
    """Write ``graph`` ("policy" or "adapt") of ``policy`` to ``path`` as ONNX, with float32 inputs and
    outputs, computing in ``internal`` precision; the adapt graph computes its advantages from rewards
    with the ``advantages`` settings (in float64), which it requires: a default could not be the
    checkpoint's."""
    inputs, outputs = IO[graph]
    if graph == "adapt" and advantages is None:
        raise TypeError("export_graph: the adapt graph needs the checkpoint's advantage settings (advantages=)")
    if graph == "policy":
        batch = torch.export.Dim("batch")
        module: nn.Module = GradientPolicyGraph(policy).eval()
        if internal != torch.float32:
            module = CastPolicyGraph(GradientPolicyGraph(copy.deepcopy(policy).to(internal)).eval(), internal)
        args: tuple[torch.Tensor, ...] = (
            torch.zeros(2, policy.obs_dim),
            torch.zeros(2, policy.act_dim),
            policy.initial_adapted().detach().clone(),
            torch.zeros(2, policy.act_dim),
        )
        dynamic_shapes: dict[str, Any] | None = {"obs": {0: batch}, "prev_command": {0: batch}, "params": None,
                                                 "noise": {0: batch}}
    else:
        try:
            module = TracedGraph(trace_adaptation_step(policy, episodes, max_episode_steps, internal))
        except Exception as err:  # tracing raises a variety of types
            raise ExportError(f"tracing the adaptation step (make_fx) failed: {err}") from err
        args, dynamic_shapes = _example_inputs(policy, episodes, max_episode_steps), None
        if not policy.reads_rewards:
            # The traced step reads advantages; add_advantages turns that input into rewards.
            inputs = tuple("advantage" if name == "reward" else name for name in inputs)
    onnx_export(module, args, path, graph, inputs, outputs, dynamic_shapes, opset)
    if graph == "adapt" and not policy.reads_rewards:  # a reward-model step reads the rewards themselves
        try:
            model = add_advantages(onnx.load(str(path)), advantages, float64_step=internal == torch.float64)
            onnx.save(model, str(path))
        except ValueError as err:
            raise ExportError(f"adding the advantage computation to the adapt graph failed: {err}") from err


def build_graphs(policy: GradientPolicy, adaptation: Mapping[str, Any], staging: Path, opset: int | None) -> BuiltGraphs:
    """Write the graphs, ``params.npy`` and test vectors into ``staging``; return parity, sizes and files.

    Each graph computes in float32 unless that misses the parity tolerance: then it is exported again
    computing in float64 between its float32 inputs and outputs. A policy with a tiny action std divides
    by its variance, and float32 cannot reproduce such a step (nor a chain of them) to 1e-5."""
    sizes = {"episodes": adaptation["episodes_per_step"], "max_episode_steps": adaptation["max_episode_steps"]}
    settings = {**sizes, "advantages": advantage_config(adaptation["advantages"])}
    chained = chained_steps(adaptation)
    # A skill's command (a log-scale force times a ratio of the previous one) reaches about 1.5e-5 of the
    # scale in float32 on some inputs: its policy graph computes in float64 from the start. So does its
    # adapt graph: a skill policy's grip is a force with a small std by design, its step divides by that
    # variance, and float32's error has a long tail there (a tiny skill run measured 0.8e-6 to 3.8e-6 over
    # twelve sets of 50 random batches, and 1.5e-5 on one batch outside them), so a float32 graph that
    # passed this gate could fail `metarl-robot verify`'s own batches.
    internal: dict[str, str] = {"policy": "float64", "adapt": "float64"} if policy.skill is not None else {}
    for graph in GRAPH_FILES:
        dtype = torch.float64 if internal.get(graph) == "float64" else torch.float32
        export_graph(policy, graph, staging / GRAPH_FILES[graph], opset, internal=dtype, **settings)
    sessions = {graph: cpu_session(staging / GRAPH_FILES[graph]) for graph in GRAPH_FILES}
    diffs = parity_max_abs_diff(policy, sessions, batches=PARITY_BATCHES, rng=np.random.default_rng(0),
                                chained_steps=chained, **settings)
    forced = dict(internal)
    for graph, checks in (("policy", ("policy",)), ("adapt", ("adapt", "adapt_chained"))):
        if graph in forced or all(diffs[check] <= EXPORT_MARGIN * PARITY_TOLERANCE for check in checks):
            continue
        export_graph(policy, graph, staging / GRAPH_FILES[graph], opset, internal=torch.float64, **settings)
        sessions[graph] = cpu_session(staging / GRAPH_FILES[graph])
        internal[graph] = "float64"
    if internal != forced:
        diffs = parity_max_abs_diff(policy, sessions, batches=PARITY_BATCHES, rng=np.random.default_rng(0),
                                chained_steps=chained, **settings)
    write_test_vectors(policy, staging / TEST_VECTORS_FILE, **settings)
    with open(staging / PARAMS_FILE, "wb") as f:
        np.save(f, initial_params(policy), allow_pickle=False)
    dims = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "num_params": policy.num_adapted, **sizes}
    return BuiltGraphs(dims=dims, files=[*GRAPH_FILES.values(), PARAMS_FILE, TEST_VECTORS_FILE], parity=diffs,
                       internal_dtypes=internal)


def checkpoint_parity(policy: GradientPolicy, bundle, sessions, rng: np.random.Generator, batches: int):
    """Graph parity on fresh batches and chained adaptation steps, and ``params.npy`` against the
    checkpoint's initial parameters."""
    adaptation = bundle.adaptation
    diffs = parity_max_abs_diff(
        policy,
        sessions,
        batches=batches,
        rng=rng,
        episodes=int(adaptation["episodes_per_step"]),
        max_episode_steps=int(adaptation["max_episode_steps"]),
        advantages=advantage_config(adaptation["advantages"]),
        chained_steps=chained_steps(adaptation),
    )
    expected = initial_params(policy)
    stored = FAMILY.initial_params(bundle)
    start_diff = float(np.max(np.abs(expected - stored))) if stored.shape == expected.shape else math.inf
    return diffs, "initial params", start_diff


# ---------------------------------------------------------------------------- checkpoint -> manifest
def adaptation_section(
    policy: GradientPolicy,
    adaptation: Mapping[str, Any],
    require: Callable[[Mapping[str, Any], str, str], Any],
    where: str,
) -> dict[str, Any]:
    """The manifest's ``adaptation`` section of a gradient bundle from the checkpoint's ``adaptation``.

    ``require(section, key, dotted_name)`` returns a value or raises the "missing key" ExportError.
    """

    def integer(key: str, minimum: int) -> int:
        value = require(adaptation, key, f"adaptation.{key}")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ExportError(f"{where}: 'adaptation.{key}' must be an integer >= {minimum}, got {value!r}")
        return value

    kind = require(adaptation, "kind", "adaptation.kind")
    if kind != "gradient_step":
        raise ExportError(f"{where}: 'adaptation.kind' is {kind!r}; a GradientPolicy adapts by 'gradient_step'")
    steps = integer("steps", 0)
    episodes = integer("episodes_per_step", 1)
    max_episode_steps = integer("max_episode_steps", 1)
    cadence = require(adaptation, "cadence", "adaptation.cadence")
    if not isinstance(cadence, str):
        raise ExportError(f"{where}: 'adaptation.cadence' must be a string, got {cadence!r}")
    reward_source = require(adaptation, "reward_source", "adaptation.reward_source")
    if not isinstance(reward_source, Mapping):
        raise ExportError(f"{where}: 'adaptation.reward_source' must be a mapping, got {type(reward_source).__name__}")
    advantages = require(adaptation, "advantages", "adaptation.advantages")
    if isinstance(advantages, AdvantageConfig):
        advantages = dataclasses.asdict(advantages)
    if not isinstance(advantages, Mapping):
        raise ExportError(f"{where}: 'adaptation.advantages' must be a mapping, got {type(advantages).__name__}")
    names = [f.name for f in dataclasses.fields(AdvantageConfig)]
    fields = {name: require(advantages, name, f"adaptation.advantages.{name}") for name in names}
    try:
        advantage_config = AdvantageConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ExportError(f"{where}: 'adaptation.advantages': {err}") from None

    learned = bool(policy.config.learn_inner_lr) or policy.reads_rewards
    return {
        "kind": "gradient_step",
        "adapted": "context" if policy.adapts_context else "policy_parameters",
        "num_params": policy.num_adapted,
        "inner_lr": None if learned else float32_list(policy.inner_lr[:1])[0],
        "inner_lr_learned": learned,
        "steps": steps,
        "episodes_per_step": episodes,
        "max_episode_steps": max_episode_steps,
        "cadence": cadence,
        "advantages": jsonable(advantage_config),
        "exploration": "gaussian",
        "reward_source": jsonable(reward_source),
        **({"skill": manifest_section(policy.skill)} if policy.skill is not None else {}),
        **({"inner_loss": policy.config.inner_loss} if policy.reads_rewards else {}),
        "initial_params_file": PARAMS_FILE,
    }


def advantage_config(section: "AdvantageConfig | Mapping[str, Any]") -> AdvantageConfig:
    """The advantage settings of a checkpoint's or manifest's ``adaptation.advantages``."""
    return section if isinstance(section, AdvantageConfig) else AdvantageConfig.from_mapping(section)


def initial_params(policy: GradientPolicy) -> np.ndarray:
    """``policy.initial_adapted()`` as the float32 vector stored in ``params.npy``."""
    return policy.initial_adapted().detach().cpu().numpy().astype(np.float32).reshape(-1)


# ---------------------------------------------------------------------------- parity
def sample_inputs(
    policy: GradientPolicy,
    graph: str,
    rng: np.random.Generator,
    *,
    episodes: int,
    max_episode_steps: int,
    batch: int | None = None,
    params: np.ndarray | None = None,
    on_policy: bool | None = None,
    long_episodes: bool = False,
) -> dict[str, np.ndarray]:
    """Random float32 inputs for ``graph`` that exercise the observation clip, the action clip and the mask.

    ``params`` defaults to the initial parameters with a small random perturbation; observations are
    spread 4 standard deviations around the normaliser statistics. Policy graph: ``batch`` (default
    random 1..8) rows, noise of standard deviation 2 (so actions pass the clip) or, one time in five,
    zeros. Adapt graph: masks whose episodes have random lengths (often 1-3 steps, sometimes empty or
    full), with random holes one time in five, and rewards of random scale and offset; ``on_policy``
    (default: a coin flip) batches are what the robot feeds, actions sampled from the policy at
    ``params``; otherwise actions of standard deviation 1.5 (normalised units). ``long_episodes`` draws
    every episode's length from the second half of the horizon, with no holes: the batches a robot
    collects, on which chained steps are checked.
    """
    mean = policy.obs_norm.mean.numpy()
    std = np.sqrt(policy.obs_norm.var.numpy() + 1e-8)

    def observations(*shape: int) -> np.ndarray:
        return (mean + std * rng.normal(0.0, 4.0, size=(*shape, policy.obs_dim))).astype(np.float32)

    if params is None:
        spread = 0.3 if policy.adapts_context else 0.05
        params = initial_params(policy) + rng.normal(0.0, spread, policy.num_adapted).astype(np.float32)
    params = np.asarray(params, dtype=np.float32)
    scale = policy.action_scale.numpy()

    def previous_commands(*shape: int) -> np.ndarray:
        """Commands of either sign up to 1.2x the scale (a skill's open gripper is a negative force),
        zeros (an episode's start) one row in four."""
        prev = rng.uniform(-1.2, 1.2, size=(*shape, policy.act_dim)) * scale
        return (prev * (rng.random((*shape, 1)) >= 0.25)).astype(np.float32)

    if graph == "policy":
        batch = int(rng.integers(1, 9)) if batch is None else batch
        noise = rng.normal(0.0, 2.0, size=(batch, policy.act_dim)) * (rng.random() >= 0.2)
        return {"obs": observations(batch), "prev_command": previous_commands(batch), "params": params,
                "noise": noise.astype(np.float32)}
    shape = (episodes, max_episode_steps)
    short = rng.integers(1, min(3, max_episode_steps) + 1, size=episodes)
    anywhere = rng.integers(0, max_episode_steps + 1, size=episodes)
    lengths = np.where(rng.random(episodes) < 0.4, short, anywhere)
    if long_episodes:
        lengths = rng.integers(max(1, max_episode_steps // 2), max_episode_steps + 1, size=episodes)
    mask = np.arange(max_episode_steps)[None, :] < lengths[:, None]
    if rng.random() < 0.2 and not long_episodes:
        mask &= rng.random(shape) < 0.7
    mask = mask.astype(np.float32)
    obs = observations(*shape)
    prev = previous_commands(*shape)
    if on_policy if on_policy is not None else rng.random() < 0.5:
        noise = torch.from_numpy(rng.normal(size=(*shape, policy.act_dim)).astype(np.float32))
        inputs = policy.policy_inputs(torch.from_numpy(obs), torch.from_numpy(prev))
        with torch.no_grad():
            action = policy.sample(torch.from_numpy(params), inputs, noise).numpy()
    else:
        action = rng.normal(0.0, 1.5, size=(*shape, policy.act_dim)).astype(np.float32)
    size = 10.0 ** rng.uniform(-1.0, 1.0)  # rewards of any scale and offset: the advantages normalise them
    reward = (size * (rng.normal(0.0, 3.0) + rng.normal(size=shape))).astype(np.float32)
    return {"params": params, "obs": obs, "prev_command": prev, "action": action, "reward": reward, "mask": mask}


def float64_copy(policy: GradientPolicy) -> GradientPolicy:
    """A float64 copy of ``policy``, to evaluate the exact function the float32 graphs approximate."""
    return copy.deepcopy(policy).double().eval()


def reference_outputs(
    exact: GradientPolicy, graph: str, inputs: Mapping[str, np.ndarray], advantages: AdvantageConfig | None = None
) -> tuple[np.ndarray, ...]:
    """What PyTorch computes for ``graph`` on ``inputs`` with the float64 policy ``exact``
    (:func:`float64_copy`), returned as float32 in the graph's output order.

    The adapt graph's reference is what training does, all in float64: the advantages of
    ``inputs["reward"]`` by :func:`~metarl_robot.runtime.advantages.compute_advantages` with
    ``advantages`` (not rounded to float32; a reward-model policy's step reads the rewards themselves), then
    :meth:`GradientPolicy.inner_step` (autograd), not the traced ``torch.func`` function the graph was
    made from.
    """
    if graph == "adapt":
        if advantages is None:
            raise TypeError("reference_outputs: the adapt graph's reference needs the bundle's advantage settings")
        signal = inputs["reward"] if exact.reads_rewards else advantages_float64(
            inputs["obs"], inputs["reward"], inputs["mask"], advantages
        )
        inputs = {**inputs, "advantage": signal}
        names: Sequence[str] = ("params", "obs", "prev_command", "action", "advantage", "mask")
    else:
        names = IO[graph][0]
    tensors = {name: torch.from_numpy(np.ascontiguousarray(inputs[name])).double() for name in names}
    if graph == "policy":
        with torch.no_grad():
            outputs = GradientPolicyGraph(exact)(*(tensors[name] for name in names))
    else:
        t = tensors
        policy_inputs = exact.policy_inputs(t["obs"], t["prev_command"])
        stepped = exact.inner_step(t["params"], policy_inputs, t["action"], t["advantage"], t["mask"], create_graph=False)
        outputs = (stepped.detach(),)
    return tuple(out.numpy().astype(np.float32) for out in outputs)


def output_diff(
    graph: str, actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], action_scale: np.ndarray
) -> float:
    """Largest :func:`~metarl_robot.verify.max_abs_diff` over the outputs of ``graph``."""
    names = IO[graph][1]
    if len(actual) != len(names):
        return math.inf
    return max(
        max_abs_diff(graph, a, e, action_scale, output=name) for name, a, e in zip(names, actual, expected)
    )


def parity_max_abs_diff(
    policy: GradientPolicy,
    sessions: Mapping[str, onnxruntime.InferenceSession],
    *,
    batches: int,
    rng: np.random.Generator,
    episodes: int,
    max_episode_steps: int,
    chained_steps: int = CHAINED_STEPS,
    chains: int = CHAINS,
    advantages: AdvantageConfig,
) -> dict[str, float]:
    """Largest difference between onnxruntime and float64 PyTorch: ``policy`` and ``adapt`` over
    ``batches`` random batches each, and ``adapt_chained`` over ``chains`` chains of ``chained_steps``
    adapt steps from the initial parameters, each onnxruntime output fed back as the next input while
    PyTorch follows its own chain. Chained batches are on-policy (see :func:`sample_inputs`), as on the
    robot: off-policy random actions make repeated steps diverge, which says nothing about the export.
    The adapt graph's reference computes the advantages with ``advantages`` (see :func:`reference_outputs`)."""
    with single_threaded_torch():
        return _parity(policy, sessions, batches, rng, episodes, max_episode_steps, chained_steps, chains, advantages)


def _parity(policy, sessions, batches, rng, episodes, max_episode_steps, chained_steps, chains, advantages) -> dict[str, float]:
    exact = float64_copy(policy)
    scale = policy.action_scale.numpy()
    sizes = {"episodes": episodes, "max_episode_steps": max_episode_steps}
    diffs: dict[str, float] = {}
    for graph in ("policy", "adapt"):
        worst = 0.0
        for _ in range(batches):
            inputs = sample_inputs(policy, graph, rng, **sizes)
            actual = sessions[graph].run(None, inputs)
            worst = max(worst, output_diff(graph, actual, reference_outputs(exact, graph, inputs, advantages), scale))
            if not math.isfinite(worst):
                break
        diffs[graph] = worst
    worst = 0.0
    for _ in range(chains):
        ours = theirs = initial_params(policy)
        for _ in range(chained_steps):
            batch = sample_inputs(policy, "adapt", rng, params=ours, on_policy=True, long_episodes=True, **sizes)
            ours = sessions["adapt"].run(None, batch)[0]
            (theirs,) = reference_outputs(exact, "adapt", {**batch, "params": theirs}, advantages)
            worst = max(worst, max_abs_diff("adapt", ours, theirs, scale))
    diffs["adapt_chained"] = worst
    return diffs


def write_test_vectors(
    policy: GradientPolicy, path: Path, *, episodes: int, max_episode_steps: int, advantages: AdvantageConfig
) -> None:
    """Store one seeded random batch per graph with the PyTorch outputs (keys in docs/bundle.md)."""
    rng = np.random.default_rng(12345)
    exact = float64_copy(policy)
    arrays: dict[str, np.ndarray] = {}
    for graph, batch in (("policy", 16), ("adapt", None)):
        inputs = sample_inputs(policy, graph, rng, batch=batch, episodes=episodes, max_episode_steps=max_episode_steps)
        for name, array in inputs.items():
            arrays[f"{graph}/inputs/{name}"] = array
        for name, array in zip(IO[graph][1], reference_outputs(exact, graph, inputs, advantages)):
            arrays[f"{graph}/outputs/{name}"] = array
    with open(path, "wb") as f:
        np.savez(f, **arrays)


class GradientTorchController(TorchControllerBase):
    """The runtime's gradient-adaptation semantics over a PyTorch :class:`~metarl_robot.gradient_policy.GradientPolicy`.

    ``act`` samples a Gaussian action (``explore``; the mean otherwise) and returns the command;
    ``observe`` stores the episode (with the command sent the step before, zeros at an episode's start,
    which a policy on a skill reads); ``adapt`` computes advantages over the stored episodes with the
    robot's numpy code and takes ``adaptation["steps"]`` inner policy-gradient steps, then forgets the
    episodes (they were collected by the old parameters).
    """

    family = "gradient"
    cadence = "episodes"
    state_names = ("params",)

    def __init__(self, policy, adaptation: Mapping[str, Any], *, explore: bool = True, seed: int = 0):
        self.policy, self.explore = policy, explore
        self.steps = int(adaptation.get("steps", 1))
        self.max_episode_steps = int(adaptation["max_episode_steps"])
        self.episodes_per_step = int(adaptation["episodes_per_step"])
        self.obs_dim, self.act_dim = policy.obs_dim, policy.act_dim
        self.advantages = AdvantageConfig(**adaptation.get("advantages", {}))
        self._generator = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Start a new task; ``seed`` re-seeds the exploration noise (``None`` keeps the stream going)."""
        if seed is not None:
            self._generator.manual_seed(seed)
        self.params = self.policy.initial_adapted().detach().clone()
        self._episodes: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]] = []
        self._current: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._prev = np.zeros(self.act_dim, np.float32)

    @property
    def episodes_ready(self) -> int:
        """Closed episodes the next :meth:`adapt` would use (at most ``episodes_per_step``), as the runtime's."""
        return len(self._episodes)

    def act(self, obs: np.ndarray) -> np.ndarray:
        t = torch
        with t.no_grad():
            inputs = self.policy.policy_inputs(t.as_tensor(np.asarray(obs, np.float32)[None]), t.as_tensor(self._prev[None]))
            noise = t.randn(1, self.policy.act_dim, generator=self._generator) if self.explore else t.zeros(1, self.policy.act_dim)
            action = self.policy.sample(self.params, inputs, noise)
            command = self.policy.to_command(inputs, action)[0].numpy()
        self._last = (command, action[0].numpy())
        return command

    def observe(self, obs, action, reward, next_obs, done) -> None:
        command = np.asarray(action, np.float32)
        if self._last is not None and (np.array_equal(command, self._last[0]) or self.policy.skill is not None):
            normalised = self._last[1]
        else:
            normalised = command / self.policy.action_scale.numpy()
        self._current.append((np.asarray(obs, np.float32), self._prev.copy(), normalised, float(reward)))
        self._prev = command.copy()
        if done or len(self._current) >= self.max_episode_steps:
            self._episodes = (self._episodes + [self._current])[-self.episodes_per_step :]
            self._current = []
            self._prev = np.zeros(self.act_dim, np.float32)

    def adapt(self):
        t = torch
        if not self._episodes:
            return self.params
        n, steps = len(self._episodes), self.max_episode_steps
        obs = np.zeros((n, steps, self.policy.obs_dim), np.float32)
        prev = np.zeros((n, steps, self.policy.act_dim), np.float32)
        act = np.zeros((n, steps, self.policy.act_dim), np.float32)
        rew = np.zeros((n, steps), np.float32)
        mask = np.zeros((n, steps), np.float32)
        for i, episode in enumerate(self._episodes):
            for j, (o, c, a, r) in enumerate(episode):
                obs[i, j], prev[i, j], act[i, j], rew[i, j], mask[i, j] = o, c, a, r, 1.0
        adv = rew if self.policy.reads_rewards else compute_advantages(obs, rew, mask, self.advantages)
        inputs = self.policy.policy_inputs(t.as_tensor(obs), t.as_tensor(prev))
        args = [t.as_tensor(x) for x in (act, adv, mask)]
        for _ in range(self.steps):
            self.params = self.policy.inner_step(self.params, inputs, *args, create_graph=False).detach()
        self._episodes, self._current = [], []
        self._prev = np.zeros(self.act_dim, np.float32)
        return self.params
