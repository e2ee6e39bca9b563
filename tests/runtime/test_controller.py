"""AdaptiveController: act/observe/adapt against PyTorch, input validation, providers, torch-free use."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.runtime import (
    AdaptiveController,
    BundleError,
    LatencyStats,
    ProviderError,
    load_bundle,
    resolve_provider,
)
from metarl_robot.verify import PARITY_TOLERANCE

from .conftest import ACT_DIM, ACTION_SCALE, BUFFER_SIZE, CONTEXT_DIM, OBS_DIM

REPO_ROOT = Path(__file__).resolve().parents[2]
SCALE = np.asarray(ACTION_SCALE, dtype=np.float64)


@pytest.fixture
def controller(bundle_dir: Path) -> AdaptiveController:
    return AdaptiveController.load(bundle_dir, providers=["cpu"])


@pytest.fixture(scope="module")
def policy(checkpoint_path: Path):
    return load_checkpoint(checkpoint_path)[0]


def random_obs(rng: np.random.Generator, policy) -> np.ndarray:
    mean = policy.obs_norm.mean.numpy()
    std = np.sqrt(policy.obs_norm.var.numpy())
    return (mean + std * rng.normal(0.0, 2.0, OBS_DIM)).astype(np.float32)


def torch_command(policy, obs: np.ndarray, context: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return policy.command(torch.from_numpy(obs[None]), torch.from_numpy(context[None]))[0].numpy()


def torch_context(policy, transitions: list[tuple]) -> np.ndarray:
    obs, command, reward, next_obs = (np.stack([t[i] for t in transitions]) for i in range(4))
    with torch.no_grad():
        context = policy.encode_commands(
            torch.from_numpy(obs[None]),
            torch.from_numpy(command[None]),
            torch.tensor(reward, dtype=torch.float32).reshape(1, -1, 1),
            torch.from_numpy(next_obs[None]),
            torch.ones(1, len(transitions)),
        )
    return context[0].numpy()


# ---------------------------------------------------------------------------------------- basics
def test_load_exposes_the_bundle_contract(controller: AdaptiveController, bundle_dir: Path) -> None:
    assert controller.provider == "CPUExecutionProvider"
    assert controller.session_providers == {"policy": "CPUExecutionProvider", "adapt": "CPUExecutionProvider"}
    assert (controller.obs_dim, controller.act_dim, controller.context_dim) == (OBS_DIM, ACT_DIM, CONTEXT_DIM)
    assert controller.buffer_size == BUFFER_SIZE and controller.buffer_len == 0
    assert controller.num_adapt_steps == 0
    assert controller.manifest["format"] == "metarl_robot.bundle"
    assert controller.bundle == load_bundle(bundle_dir)
    np.testing.assert_array_equal(controller.context, np.float32(controller.bundle.adaptation["initial_context"]))
    assert controller.context.shape == (CONTEXT_DIM,) and controller.context.dtype == np.float32


def test_act_returns_physical_command_matching_torch(controller: AdaptiveController, policy) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        obs = random_obs(rng, policy)
        command = controller.act(obs)
        assert command.shape == (ACT_DIM,) and command.dtype == np.float32
        assert np.all(np.abs(command) <= SCALE * (1 + 1e-6))
        expected = torch_command(policy, obs, controller.context)
        assert np.max(np.abs(command - expected) / SCALE) <= PARITY_TOLERANCE
    assert controller.act_latency.count == 50


def test_act_accepts_lists_and_float64(controller: AdaptiveController) -> None:
    obs = np.linspace(-1, 1, OBS_DIM)
    np.testing.assert_array_equal(controller.act(obs), controller.act(obs.tolist()))


def test_chained_adaptation_matches_torch(controller: AdaptiveController, policy) -> None:
    """Episodes of act -> observe, adapting after each: the buffer wraps and the context keeps changing."""
    rng = np.random.default_rng(2)
    seen: list[tuple] = []
    contexts = [controller.context]
    for episode in range(5):
        obs = random_obs(rng, policy)
        for step in range(25):
            command = controller.act(obs)
            expected = torch_command(policy, obs, controller.context)
            assert np.max(np.abs(command - expected) / SCALE) <= PARITY_TOLERANCE
            next_obs = random_obs(rng, policy)
            reward = float(rng.normal())
            controller.observe(obs, command, reward, next_obs, done=step == 24)
            seen.append((obs, command, reward, next_obs))
            obs = next_obs
        context = controller.adapt()
        np.testing.assert_allclose(context, torch_context(policy, seen[-BUFFER_SIZE:]), rtol=0, atol=PARITY_TOLERANCE)
        np.testing.assert_array_equal(controller.context, context)
        contexts.append(context)
    assert controller.num_adapt_steps == 5
    assert controller.buffer_len == BUFFER_SIZE
    assert controller.adapt_latency.count == 5
    assert all(np.max(np.abs(a - b)) > 1e-4 for a, b in zip(contexts, contexts[1:]))


def test_ring_buffer_keeps_the_most_recent_transitions(controller: AdaptiveController, policy) -> None:
    rng = np.random.default_rng(3)
    transitions = []
    for i in range(BUFFER_SIZE + 15):
        obs, next_obs = random_obs(rng, policy), random_obs(rng, policy)
        command = rng.uniform(-1, 1, ACT_DIM).astype(np.float32) * SCALE.astype(np.float32)
        controller.observe(obs, command, float(i), next_obs, False)
        transitions.append((obs, command, float(i), next_obs))
        assert controller.buffer_len == min(i + 1, BUFFER_SIZE)

    context = controller.adapt()
    np.testing.assert_allclose(context, torch_context(policy, transitions[-BUFFER_SIZE:]), atol=PARITY_TOLERANCE)
    assert np.max(np.abs(context - torch_context(policy, transitions[:BUFFER_SIZE]))) > 1e-4


def test_reset_restores_initial_context_and_empties_buffer(controller: AdaptiveController) -> None:
    initial = controller.context
    obs = np.ones(OBS_DIM, dtype=np.float32)
    for _ in range(10):
        controller.observe(obs, controller.act(obs), 1.0, obs * 2, False)
    adapted = controller.adapt()
    assert np.max(np.abs(adapted - initial)) > 1e-4

    controller.reset()

    assert controller.buffer_len == 0
    np.testing.assert_array_equal(controller.context, initial)
    np.testing.assert_allclose(controller.adapt(), initial, atol=1e-6)
    assert controller.num_adapt_steps == 2


def test_warmup_leaves_state_untouched(controller: AdaptiveController) -> None:
    obs = np.ones(OBS_DIM, dtype=np.float32)
    controller.observe(obs, controller.act(obs), 1.0, obs, False)
    controller.adapt()
    context, acts = controller.context, controller.act_latency.count

    controller.warmup(5)

    np.testing.assert_array_equal(controller.context, context)
    assert controller.buffer_len == 1 and controller.num_adapt_steps == 1
    assert controller.act_latency.count == acts and controller.adapt_latency.count == 1


def test_context_is_a_copy(controller: AdaptiveController) -> None:
    controller.context[:] = 99.0
    assert np.all(controller.context < 1.0)


# ------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "obs, message",
    [
        (np.zeros(OBS_DIM - 1), r"obs has shape \(9,\), expected \(10,\)"),
        (np.zeros((1, OBS_DIM)), r"obs has shape \(1, 10\), expected \(10,\)"),
        (0.5, r"obs has shape \(\), expected \(10,\)"),
        (np.array([np.nan] + [0.0] * (OBS_DIM - 1)), r"obs has non-finite values at indices \[0\]"),
        (np.array([0.0] * (OBS_DIM - 1) + [np.inf]), r"non-finite values at indices \[9\]: \[inf\]"),
        (np.array([0.0] * (OBS_DIM - 1) + [1e39]), "beyond float32 range"),
        (np.array(["a"] * OBS_DIM), "obs must hold numbers"),
    ],
)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_act_rejects_bad_observations(controller: AdaptiveController, obs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        controller.act(obs)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("obs", np.zeros(3), r"obs has shape \(3,\)"),
        ("action", np.zeros(ACT_DIM + 1), r"action has shape \(5,\), expected \(4,\)"),
        ("action", np.array([0.0, np.nan, 0.0, 0.0]), r"action has non-finite values at indices \[1\]"),
        ("next_obs", np.full(OBS_DIM, np.nan), "next_obs has non-finite values"),
        ("reward", np.nan, "reward is not finite"),
        ("reward", [1.0, 2.0], "reward must be a single number"),
        ("done", "yes", "done must be a bool"),
        ("done", 2, "done must be a bool"),
    ],
)
def test_observe_rejects_bad_transitions_and_keeps_the_buffer(
    controller: AdaptiveController, field: str, value, message: str
) -> None:
    good = {
        "obs": np.ones(OBS_DIM, dtype=np.float32),
        "action": np.zeros(ACT_DIM, dtype=np.float32),
        "reward": 1.0,
        "next_obs": np.ones(OBS_DIM, dtype=np.float32),
        "done": False,
    }
    controller.observe(**good)
    context_before = controller.adapt()

    with pytest.raises(ValueError, match=message):
        controller.observe(**{**good, field: value})

    assert controller.buffer_len == 1
    np.testing.assert_array_equal(controller.adapt(), context_before)


def test_observe_accepts_numpy_scalars(controller: AdaptiveController) -> None:
    obs = np.ones(OBS_DIM, dtype=np.float32)
    controller.observe(obs, np.zeros(ACT_DIM), np.float32(0.5), obs, np.bool_(True))
    controller.observe(obs, np.zeros(ACT_DIM), np.array([0.5]), obs, 0)
    assert controller.buffer_len == 2


# -------------------------------------------------------------------------------------- providers
def test_cpu_alias_and_full_names_resolve() -> None:
    assert resolve_provider(["cpu"]) == "CPUExecutionProvider"
    assert resolve_provider(["CPU"]) == "CPUExecutionProvider"
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    assert resolve_provider(["CPUExecutionProvider"]) == "CPUExecutionProvider"


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="CUDA is available")
def test_default_and_preference_lists_fall_through_to_cpu_on_a_cpu_machine(bundle_dir: Path) -> None:
    assert resolve_provider(None) == "CPUExecutionProvider"
    assert resolve_provider(["tensorrt", "cuda", "cpu"]) == "CPUExecutionProvider"
    assert AdaptiveController.load(bundle_dir).provider == "CPUExecutionProvider"


def test_unknown_provider_is_refused_with_the_valid_names(bundle_dir: Path) -> None:
    valid = r"unknown execution provider 'gpu'; valid names are \['cpu', 'cuda', 'tensorrt'\]"
    with pytest.raises(ProviderError, match=valid):
        AdaptiveController.load(bundle_dir, providers=["gpu", "cpu"])
    with pytest.raises(ValueError, match="providers is empty"):
        resolve_provider([])


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="CUDA is available")
def test_unavailable_provider_is_refused_naming_what_is_available(bundle_dir: Path) -> None:
    message = r"\['CUDAExecutionProvider'\] is available.*available: \[.*'CPUExecutionProvider'\]"
    with pytest.raises(ProviderError, match=message):
        AdaptiveController.load(bundle_dir, providers=["cuda"])


def test_fallback_is_reported_and_never_claimed(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime says CUDA is available, but the session runs on CPU: the controller says CPU."""
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA really is available")
    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    with caplog.at_level(logging.INFO, logger="metarl_robot.runtime"), pytest.warns(UserWarning):
        controller = AdaptiveController.load(bundle_dir, providers=["cuda", "cpu"])

    assert controller.provider == "CPUExecutionProvider"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "fell back from CUDAExecutionProvider to CPUExecutionProvider" in warnings[0].getMessage()
    assert controller.act(np.zeros(OBS_DIM)).shape == (ACT_DIM,)


def test_provider_choice_is_logged_at_info(bundle_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="metarl_robot.runtime"):
        AdaptiveController.load(bundle_dir, providers=["cpu"])
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("running on CPUExecutionProvider" in message for message in infos)


def test_session_options_are_used(bundle_dir: Path) -> None:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    controller = AdaptiveController.load(bundle_dir, ["cpu"], session_options=options)
    assert controller.act(np.zeros(OBS_DIM)).shape == (ACT_DIM,)


def test_tampered_bundle_is_refused_at_load(bundle_copy: Path) -> None:
    (bundle_copy / "adapt.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match=r"adapt\.onnx: sha256 mismatch"):
        AdaptiveController.load(bundle_copy, ["cpu"])


# ---------------------------------------------------------------------------------------- latency
def test_latency_stats_percentiles_over_the_most_recent_durations() -> None:
    stats = LatencyStats(capacity=100)
    assert np.isnan(stats.p50_s) and stats.summary()["count"] == 0
    for i in range(150):
        stats.record(i * 1e-6)
    assert stats.count == 150 and len(stats) == 100
    assert stats.durations_s().min() == pytest.approx(50e-6)
    assert stats.p50_s == pytest.approx(99.5e-6)
    assert stats.percentile_s(100) == pytest.approx(149e-6)
    assert stats.summary()["max_us"] == pytest.approx(149.0)
    assert stats.p99_s <= stats.percentile_s(100)
    stats.reset()
    assert len(stats) == 0 and stats.count == 0
    with pytest.raises(ValueError):
        LatencyStats(capacity=0)


# ------------------------------------------------------------------------------------ torch-free
def test_runtime_loads_and_runs_a_bundle_with_torch_blocked(bundle_dir: Path, controller: AdaptiveController) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["onnx"] = None
        import numpy as np
        from metarl_robot.runtime import AdaptiveController
        c = AdaptiveController.load({str(bundle_dir)!r}, providers=["cpu"])
        c.warmup(2)
        obs = np.linspace(-1.0, 1.0, {OBS_DIM}, dtype=np.float32)
        command = c.act(obs)
        c.observe(obs, command, 1.0, obs, True)
        context = c.adapt()
        loaded = sorted(m for m in sys.modules if m.startswith("metarl_robot"))
        allowed = ("metarl_robot.runtime", "metarl_robot.families", "metarl_robot.contract")
        assert all(m == "metarl_robot" or m.startswith(allowed) for m in loaded), loaded
        assert not any(m.endswith("_torch") for m in loaded), loaded
        print(" ".join(repr(float(x)) for x in [*command, *context]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr

    values = np.array([float(v) for v in result.stdout.split()], dtype=np.float32)
    obs = np.linspace(-1.0, 1.0, OBS_DIM, dtype=np.float32)
    command = controller.act(obs)
    controller.observe(obs, command, 1.0, obs, True)
    np.testing.assert_array_equal(values[:ACT_DIM], command)
    np.testing.assert_array_equal(values[ACT_DIM:], controller.adapt())
