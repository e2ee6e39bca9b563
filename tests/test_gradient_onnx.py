"""The advantage computation exported as ONNX nodes (metarl_robot.families.gradient_onnx) against the
numpy code meta-training runs (metarl_robot.runtime.advantages), and its splicing into an adapt graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from metarl_robot.families.gradient_onnx import CONTRIB_DOMAIN, add_advantages, advantage_nodes
from metarl_robot.runtime.advantages import AdvantageConfig, advantages_float64, compute_advantages


def advantage_session(config: AdvantageConfig, n: int, t: int, d: int, out_type: int = TensorProto.FLOAT):
    nodes, inits = advantage_nodes(config, n, t, d, obs="obs", reward="reward", mask="mask", out="advantage",
                                   out_type=out_type)
    graph = helper.make_graph(
        nodes, "advantages",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, [n, t, d]),
         helper.make_tensor_value_info("reward", TensorProto.FLOAT, [n, t]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [n, t])],
        [helper.make_tensor_value_info("advantage", out_type, [n, t])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(CONTRIB_DOMAIN, 1)],
                              ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def batches(rng: np.random.Generator, n: int, t: int, d: int):
    """Full, random-length, holed, one-step, empty and too-few-steps-for-the-baseline masks, with
    observations beyond the baseline's clip and rewards of any scale and offset."""
    lengths = {
        "full": np.full(n, t),
        "random": rng.integers(0, t + 1, n),
        "short": rng.integers(1, 3, n),
        "one step": np.array([1] + [0] * (n - 1)),
        "two steps": np.array([2] + [0] * (n - 1)),  # the fewest that are normalised
        "empty": np.zeros(n, int),
    }
    for kind, length in lengths.items():
        mask = (np.arange(t)[None] < length[:, None]).astype(np.float32)
        if kind == "random":
            mask *= rng.random((n, t)) < 0.8  # holes
        scale = 10.0 ** rng.uniform(-2, 2)
        reward = (scale * (rng.normal(0, 3) + rng.normal(size=(n, t)))).astype(np.float32)
        obs = rng.normal(0.0, 6.0, (n, t, d)).astype(np.float32)
        yield kind, obs, reward, mask


CONFIGS = [
    AdvantageConfig(),
    AdvantageConfig(gamma=0.9, gae_lambda=0.95),
    AdvantageConfig(gamma=1.0, gae_lambda=0.0, normalize=False, baseline_ridge=1e-3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["maml", "gae", "unnormalised"])
@pytest.mark.parametrize("size", [(5, 8, 2), (3, 7, 1), (4, 30, 10), (8, 60, 24)], ids=["small", "obs1", "grasp", "wide"])
def test_graph_advantages_equal_numpy_on_every_kind_of_batch(config: AdvantageConfig, size) -> None:
    n, t, d = size
    session = advantage_session(config, n, t, d)
    rng = np.random.default_rng(sum(size))
    for _ in range(4):
        for kind, obs, reward, mask in batches(rng, n, t, d):
            expected = compute_advantages(obs, reward, mask, config)
            (got,) = session.run(None, {"obs": obs, "reward": reward, "mask": mask})
            assert got.dtype == np.float32 and got.shape == (n, t)
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * scale, err_msg=kind)
            assert not got[mask == 0].any(), kind


def test_float64_output_is_numpys_unrounded_advantages() -> None:
    config = CONFIGS[1]
    session = advantage_session(config, 4, 30, 10, out_type=TensorProto.DOUBLE)
    rng = np.random.default_rng(3)
    for kind, obs, reward, mask in batches(rng, 4, 30, 10):
        (got,) = session.run(None, {"obs": obs, "reward": reward, "mask": mask})
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, advantages_float64(obs, reward, mask, config), rtol=0, atol=1e-9, err_msg=kind)


def test_numpy_uses_no_baseline_when_it_would_interpolate_the_returns() -> None:
    """With no more valid steps than features, a ridge regression fits the returns exactly and the
    advantages left are rounding noise that normalisation would blow up: no baseline then."""
    rng = np.random.default_rng(4)
    obs = rng.normal(size=(3, 5, 2)).astype(np.float32)  # 2 * 2 + 4 = 8 features
    reward = rng.normal(size=(3, 5)).astype(np.float32)
    mask = np.zeros((3, 5), np.float32)
    mask[0, :4] = mask[1, :4] = 1.0  # 8 valid steps: as many as features
    plain = compute_advantages(obs, reward, mask, AdvantageConfig(gae_lambda=1.0, normalize=False))
    gamma = 0.99
    returns = np.array([[sum(gamma ** (k - j) * reward[i, k] for k in range(j, 4)) for j in range(4)] for i in range(2)])
    np.testing.assert_allclose(plain[:2, :4], returns, rtol=1e-5)
    mask[2, 0] = 1.0  # one more: the baseline is fitted and subtracted
    fitted = compute_advantages(obs, reward, mask, AdvantageConfig(gae_lambda=1.0, normalize=False))
    assert np.abs(fitted[:2, :4] - returns).max() > 0.1


def step_model(inputs: dict[str, list[int]], consumer: str = "Identity") -> onnx.ModelProto:
    """A stand-in adapt graph: adapted_params = params + sum(advantage) through ``consumer``."""
    nodes = [
        helper.make_node(consumer, ["advantage"], ["a"], **({"to": TensorProto.DOUBLE} if consumer == "Cast" else {})),
        helper.make_node("ReduceSum", ["a"], ["total"], keepdims=0),
    ]
    if consumer == "Cast":
        nodes.append(helper.make_node("Cast", ["total"], ["total32"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("Add", ["params", "total32" if consumer == "Cast" else "total"], ["adapted_params"]))
    graph = helper.make_graph(
        nodes, "step", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("adapted_params", TensorProto.FLOAT, inputs["params"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


SHAPES = {"params": [3], "obs": [4, 6, 2], "action": [4, 6, 1], "advantage": [4, 6], "mask": [4, 6]}


@pytest.mark.parametrize("float64_step", [False, True])
def test_add_advantages_replaces_the_input_and_keeps_the_order(float64_step: bool) -> None:
    model = add_advantages(step_model(SHAPES, "Cast" if float64_step else "Identity"), CONFIGS[0],
                           float64_step=float64_step)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["params", "obs", "action", "reward", "mask"]
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    obs, reward = rng.normal(size=(4, 6, 2)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    mask = np.ones((4, 6), np.float32)
    mask[2:, 3:] = 0.0
    params = np.zeros(3, np.float32)
    (out,) = session.run(None, {"params": params, "obs": obs, "action": np.zeros((4, 6, 1), np.float32),
                                "reward": reward, "mask": mask})
    advantages = (advantages_float64 if float64_step else compute_advantages)(obs, reward, mask, CONFIGS[0])
    np.testing.assert_allclose(out, np.full(3, advantages.sum()), atol=1e-5)
    (cast,) = [n for n in model.graph.node if n.output == ["adv/advantage"]]  # what the step reads
    assert cast.op_type == "Cast" and cast.attribute[0].i == (TensorProto.DOUBLE if float64_step else TensorProto.FLOAT)
    if not float64_step:  # the default rounds to float32, as numpy's compute_advantages does
        default = add_advantages(step_model(SHAPES), CONFIGS[0])
        assert [n for n in default.graph.node if n.output == ["adv/advantage"]][0].attribute[0].i == TensorProto.FLOAT


def test_add_advantages_refuses_what_it_cannot_rewrite() -> None:
    with pytest.raises(ValueError, match="expected 'obs', 'returns' and 'mask'"):
        add_advantages(step_model(SHAPES), CONFIGS[0], advantage="returns")
    dynamic = step_model(SHAPES)
    dynamic.graph.input[3].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(ValueError, match="static shapes"):
        add_advantages(dynamic, CONFIGS[0])
    with pytest.raises(ValueError, match="does not only cast"):
        add_advantages(step_model(SHAPES, "Identity"), CONFIGS[0], float64_step=True)
    to_float = step_model(SHAPES, "Cast")
    to_float.graph.node[0].attribute[0].i = TensorProto.FLOAT  # a cast, but not up to float64
    with pytest.raises(ValueError, match="does not only cast"):
        add_advantages(to_float, CONFIGS[0], float64_step=True)
    for missing in ("obs", "mask"):
        model = step_model(SHAPES)
        model.graph.input.remove(next(i for i in model.graph.input if i.name == missing))
        with pytest.raises(ValueError, match="expected 'obs', 'advantage' and 'mask'"):
            add_advantages(model, CONFIGS[0])
    for name, shape in (("advantage", [4, 6, 1]), ("obs", [4, 6])):
        with pytest.raises(ValueError, match="static shapes"):
            add_advantages(step_model({**SHAPES, name: shape}), CONFIGS[0])
    dynamic_obs = step_model(SHAPES)
    dynamic_obs.graph.input[1].type.tensor_type.shape.dim[2].dim_param = "obs_dim"
    with pytest.raises(ValueError, match="static shapes"):
        add_advantages(dynamic_obs, CONFIGS[0])
    one_observation = add_advantages(step_model({**SHAPES, "obs": [4, 6, 1]}), CONFIGS[0])  # a 1-d observation is fine
    assert [i.name for i in one_observation.graph.input][3] == "reward"
