"""The robot's advantage computation as ONNX nodes, spliced in front of the exported adaptation step.

:func:`add_advantages` rewrites an adapt graph that takes ``advantage [N, T]`` into one that takes
``reward [N, T]`` and computes the advantages itself, exactly as
:func:`~metarl_robot.runtime.advantages.compute_advantages` does (the code meta-training uses), in
float64 between the float32 inputs and the float32 advantages the step reads:

* discounted returns as one product with the ``[T, T]`` tail matrix ``factor**(k - t)`` (built from a
  ``Range``, so onnxruntime folds it into a constant when the session opens and the file stays small);
* the linear feature baseline: features ``[clip(obs, +-10), clip(obs)^2, t, t^2, t^3, 1]`` (the time
  columns stored as computed by numpy), masked normal equations, the ridge added, solved with one
  ``com.microsoft.Inverse`` (ONNX has no linear solve; onnxruntime's CPU and CUDA providers implement
  it);
* GAE and the normalisation over the valid steps when more than one step is valid.

Why: with the advantages in numpy, the runtime's ``adapt()`` cost 2-4x the graph (about 30 numpy
calls of 5-10 microseconds each, and cold caches after the control loop ran); inside the graph they
are a few dozen vectorised kernels in the session that runs anyway.

numpy's code raises the ridge tenfold when a solve is not finite. Here the ridge is fixed: the normal
matrix is a Gram matrix of clipped, finite features plus a positive ridge, so it is positive definite,
and a non-finite result would surface as non-finite adapted parameters, which the runtime refuses (it
keeps the old ones). Imported by export only (onnx, numpy).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from metarl_robot.runtime.advantages import AdvantageConfig, baseline_features

CONTRIB_DOMAIN = "com.microsoft"
"""onnxruntime's operator domain, for ``Inverse``."""
PREFIX = "adv/"
"""Prefix of every node and tensor name this module adds, so none can clash with the step's."""


def _time_columns(steps: int) -> np.ndarray:
    """``[T, 4]`` float64: the baseline's ``t, t^2, t^3, 1`` columns exactly as numpy computes them."""
    features = baseline_features(np.zeros((1, steps, 0)))
    return np.ascontiguousarray(features[0])


def advantage_nodes(
    config: AdvantageConfig, episodes: int, steps: int, obs_dim: int, *, obs: str, reward: str, mask: str, out: str,
    out_type: int = TensorProto.FLOAT,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers computing advantages ``out [N, T]`` of type ``out_type`` (float32 as
    numpy's :func:`compute_advantages`, or float64 unrounded) from the float32 tensors named
    ``obs [N, T, D]``, ``reward [N, T]`` and ``mask [N, T]``."""
    n, t, d = episodes, steps, obs_dim
    features = 2 * d + 4
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), PREFIX + name))
        return PREFIX + name

    def node(op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [PREFIX + name], name=PREFIX + name, domain=domain, **attrs))
        return PREFIX + name

    f64 = TensorProto.DOUBLE
    m = node("Cast", [mask], "mask64", to=f64)
    r = node("Cast", [reward], "reward64", to=f64)
    o = node("Cast", [obs], "obs64", to=f64)

    # Tail matrices M[k, t] = factor**(k - t) for k >= t, else 0 (x @ M sums each row's discounted tail).
    lag_axis = node("Range", [const("zero", np.float64(0)), const("steps", np.float64(t)), const("one", np.float64(1))], "range")
    lag = node("Sub", [node("Unsqueeze", [lag_axis, const("axis1", np.array([1], np.int64))], "rows"),
                       node("Unsqueeze", [lag_axis, const("axis0", np.array([0], np.int64))], "cols")], "lag")
    ahead = node("GreaterOrEqual", [lag, const("zero_lag", np.float64(0))], "ahead")
    lag_clipped = node("Max", [lag, const("zero_max", np.float64(0))], "lag_clipped")

    def tail_matrix(factor: float, name: str) -> str:
        powers = node("Pow", [const(f"{name}_factor", np.float64(factor)), lag_clipped], f"{name}_powers")
        return node("Where", [ahead, powers, const(f"{name}_zero", np.float64(0))], f"{name}_tails")

    def discounted_tails(values: str, matrix: str, name: str) -> str:
        summed = node("MatMul", [node("Mul", [values, m], f"{name}_masked"), matrix], f"{name}_sums")
        return node("Mul", [summed, m], name)

    gamma_tails = tail_matrix(config.gamma, "gamma")
    gae_factor = config.gamma * config.gae_lambda
    gae_tails = gamma_tails if gae_factor == config.gamma else tail_matrix(gae_factor, "gae")
    returns = discounted_tails(r, gamma_tails, "returns")

    # Linear feature baseline: ridge regression of the returns on [clip(obs), clip(obs)^2, time columns].
    clipped = node("Clip", [o, const("low", np.float64(-10.0)), const("high", np.float64(10.0))], "obs_clipped")
    squared = node("Mul", [clipped, clipped], "obs_squared")
    time = node("Expand", [const("time", _time_columns(t)[None]), const("time_shape", np.array([n, t, 4], np.int64))], "time_columns")
    feats = node("Concat", [clipped, squared, time], "features", axis=2)
    rows = node("Reshape", [feats, const("rows_shape", np.array([n * t, features], np.int64))], "feature_rows")
    weight = node("Reshape", [m, const("weight_shape", np.array([n * t, 1], np.int64))], "weight")
    weighted = node("Mul", [rows, weight], "weighted_rows")
    gram = node("Gemm", [weighted, rows], "gram", transA=1)
    target = node("Gemm", [weighted, node("Reshape", [returns, const("return_shape", np.array([n * t, 1], np.int64))], "return_rows")],
                  "target", transA=1)
    ridged = node("Add", [gram, const("ridge", config.baseline_ridge * np.eye(features))], "ridged")
    inverse = node("Inverse", [ridged], "inverse", domain=CONTRIB_DOMAIN)
    first = node("MatMul", [inverse, target], "coef_first")
    residual = node("Sub", [target, node("MatMul", [ridged, first], "reproduced")], "residual")
    coef = node("Add", [first, node("MatMul", [inverse, residual], "correction")], "coef")  # one refinement step
    fitted = node("Reshape", [node("MatMul", [rows, coef], "fitted_rows"), const("nt_shape", np.array([n, t], np.int64))], "fitted")
    count = node("ReduceSum", [m], "count", keepdims=0)
    posed = node("Greater", [count, const("num_features", np.float64(features))], "posed")  # else no baseline (numpy's rule)
    values = node("Where", [posed, node("Mul", [fitted, m], "masked_fit"), const("no_baseline", np.float64(0))], "values")

    # GAE: deltas r + gamma * v[t+1] * mask[t+1] - v, their discounted tails with gamma * lambda.
    starts, ends, axes = const("from1", np.array([1], np.int64)), const("to_end", np.array([t], np.int64)), const("axis_t", np.array([1], np.int64))
    later = node("Mul", [node("Slice", [values, starts, ends, axes], "values_later"), node("Slice", [m, starts, ends, axes], "mask_later")], "next_valid")
    next_values = node("Concat", [later, const("last_column", np.zeros((n, 1)))], "next_values", axis=1)
    bootstrapped = node("Add", [r, node("Mul", [const("gamma", np.float64(config.gamma)), next_values], "discounted_next")], "bootstrapped")
    deltas = node("Mul", [node("Sub", [bootstrapped, values], "td"), m], "deltas")
    advantages = discounted_tails(deltas, gae_tails, "gae")

    if config.normalize:  # over the valid steps, when more than one is valid (else unchanged)
        mean = node("Div", [node("ReduceSum", [node("Mul", [advantages, m], "valid")], "total", keepdims=0), count], "mean")
        centred = node("Sub", [advantages, mean], "centred")
        spread = node("Mul", [node("Mul", [centred, centred], "squares"), m], "valid_squares")
        std = node("Sqrt", [node("Div", [node("ReduceSum", [spread], "spread", keepdims=0), count], "variance")], "std")
        scaled = node("Div", [centred, node("Add", [std, const("eps", np.float64(1e-8))], "denominator")], "scaled")
        normalised = node("Mul", [scaled, m], "normalised")
        several = node("Greater", [count, const("one_step", np.float64(1))], "several")
        advantages = node("Where", [several, normalised, advantages], "chosen")
    nodes.append(helper.make_node("Cast", [advantages], [out], name=PREFIX + "to_output_type", to=out_type))
    return nodes, inits


def add_advantages(
    model: onnx.ModelProto, config: AdvantageConfig, *, advantage: str = "advantage", reward: str = "reward",
    float64_step: bool = False,
) -> onnx.ModelProto:
    """``model`` (an adapt graph with inputs ``params, obs, action, advantage, mask``) with its
    ``advantage`` input replaced by ``reward`` of the same shape and the advantages computed inside
    (see the module docstring). Input order is kept; the model is changed in place and returned.

    ``float64_step``: the step computes in float64 and casts its float32 inputs up first; it then gets
    the advantages unrounded. Rounding them to float32 (as numpy's float32 result is) would make the
    graph depend on which way a float64 tie between the two implementations rounds, and a step that
    divides by a tiny variance amplifies that last bit to the parity tolerance and beyond."""
    graph = model.graph
    names = [i.name for i in graph.input]
    if advantage not in names or "obs" not in names or "mask" not in names:
        raise ValueError(f"adapt graph inputs are {names}; expected 'obs', '{advantage}' and 'mask'")
    position = names.index(advantage)
    old = graph.input[position]
    dims = [d.dim_value for d in old.type.tensor_type.shape.dim]
    obs_dims = [d.dim_value for d in graph.input[names.index("obs")].type.tensor_type.shape.dim]
    if len(dims) != 2 or len(obs_dims) != 3 or 0 in dims or 0 in obs_dims:
        raise ValueError(f"adapt graph needs static shapes: {advantage} {dims}, obs {obs_dims}")
    # The step's nodes read the computed advantages under a new name; the input becomes reward.
    internal = PREFIX + "advantage"
    consumers = [n for n in graph.node if advantage in n.input]
    if float64_step and not all(
        n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.DOUBLE for a in n.attribute) for n in consumers
    ):
        raise ValueError(f"float64_step: the step does not only cast '{advantage}' to float64 ({[n.op_type for n in consumers]})")
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == advantage:
                n.input[i] = internal
    out_type = TensorProto.DOUBLE if float64_step else TensorProto.FLOAT
    new_nodes, inits = advantage_nodes(config, dims[0], dims[1], obs_dims[2], obs="obs", reward=reward, mask="mask",
                                       out=internal, out_type=out_type)
    steps = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + steps)
    graph.initializer.extend(inits)
    graph.input.remove(old)
    graph.input.insert(position, helper.make_tensor_value_info(reward, TensorProto.FLOAT, dims))
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return model
