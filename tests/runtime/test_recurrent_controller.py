"""The on-robot RL² controller: explicit recurrent state, carried across ticks and attempts, zeroed by reset.

The bundles are exported once per module from small random GRU and LSTM policies on the grasp-like
contract of tests/runtime/conftest.py; tests/test_recurrent_export.py imports the helpers below.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.runtime.conftest import ACTION_SCALE, ACT_DIM, INTERFACE, OBS_DIM

HIDDEN = 16
WINDOW_STEPS = 5
PEARL_LATENT = 3
"""The window cell's history length in these tests (RMA); its state is WINDOW_STEPS x the core's input (32)."""
ADAPTATION: dict[str, Any] = {
    "cadence": "step",
    "reward_source": {"type": "topic", "topic": "reward"},
    "sample_actions": True,
    "episodes_per_trial": 3,
}


def make_policy(cell: str, seed: int = 0):
    """A RecurrentPolicy with non-trivial normaliser statistics and an actor that reaches the action clip."""
    import torch

    from metarl_robot.recurrent_policy import RecurrentPolicy, RecurrentPolicyConfig

    torch.manual_seed(seed)
    options = {"embed_sizes": (32,), **{
        "window": {"window_steps": WINDOW_STEPS, "privileged_dim": 3},
        "prototype": {"num_prototypes": 7, "embedding_dim": 6, "privileged_dim": 3},
        "pearl": {"latent_dim": PEARL_LATENT, "context_sizes": (24,), "squash": "tanh", "embed_sizes": ()},
    }.get(cell, {})}
    policy = RecurrentPolicy(OBS_DIM, ACT_DIM, ACTION_SCALE, RecurrentPolicyConfig(cell=cell, hidden_size=HIDDEN, **options))
    with torch.no_grad():
        policy.obs_norm.update(torch.randn(500, OBS_DIM) * torch.linspace(0.5, 20.0, OBS_DIM) + 0.5)
        policy.actor[-1].weight.mul_(150.0)
        if cell == "prototype":  # the training tasks' latents (zeros until training sets them): the support matters
            policy.core.prototype_latents.uniform_(-1.0, 1.0)
    return policy.eval()


def make_checkpoint(path: Path, cell: str, **overrides: Any) -> Path:
    from metarl_robot.checkpoint import save_checkpoint

    fields: dict[str, Any] = {
        "method": "rl2",
        "interface": copy.deepcopy(INTERFACE),
        "adaptation": copy.deepcopy(ADAPTATION),
        "config": {"method": "rl2", "cell": cell},
        "seed": 0,
        "iteration": 3,
        "metrics": {},
    }
    fields.update(overrides)
    return save_checkpoint(path, make_policy(cell), **fields)


def export_recurrent(root: Path, cell: str) -> tuple[Path, Path]:
    """``(checkpoint, bundle)`` of a small random ``cell`` policy under ``root``."""
    from metarl_robot.export import export_bundle

    checkpoint = make_checkpoint(root / f"{cell}.safetensors", cell)
    return checkpoint, export_bundle(checkpoint, root / f"{cell}_bundle")


def state_names(cell: str) -> list[str]:
    """The parts of the packed state, in the manifest's order."""
    return {"gru": ["h"], "lstm": ["h", "c"], "window": ["history"], "prototype": ["support_mean", "support_log_weight"],
            "pearl": ["posterior_mean", "posterior_log_precision", "latent", "started"]}[cell]


def state_size(cell: str) -> int:
    return {"gru": HIDDEN, "lstm": 2 * HIDDEN, "window": WINDOW_STEPS * 32, "prototype": 7, "pearl": 3 * PEARL_LATENT + 1}[cell]


@pytest.fixture(scope="module", params=["gru", "lstm", "window", "prototype", "pearl"])
def recurrent_bundle(request, tmp_path_factory) -> tuple[str, Path, Path]:
    cell = request.param
    checkpoint, bundle = export_recurrent(tmp_path_factory.mktemp(f"rl2_{cell}"), cell)
    return cell, checkpoint, bundle


def _obs(rng: np.random.Generator) -> np.ndarray:
    return (3.0 + rng.normal(size=OBS_DIM)).astype(np.float32)


def test_state_is_explicit_updated_every_act_and_zeroed_by_reset(recurrent_bundle) -> None:
    from metarl_robot.runtime import load_controller
    from metarl_robot.runtime.recurrent_controller import RecurrentController

    cell, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)
    assert isinstance(ctl, RecurrentController) and ctl.cell == cell
    assert ctl.session_providers == {"policy": "CPUExecutionProvider"}  # no adapt graph
    assert sorted(ctl.get_state()) == sorted(state_names(cell))
    assert all(not v.any() for v in ctl.get_state().values())
    ctl.warmup()
    assert all(not v.any() for v in ctl.get_state().values()), "warmup must leave the state alone"

    rng = np.random.default_rng(0)
    states = []
    for step in range(6):
        obs = _obs(rng)
        command = ctl.act(obs)
        assert command.shape == (ACT_DIM,) and np.all(np.abs(command) <= np.asarray(ACTION_SCALE) + 1e-6)
        ctl.observe(obs, command, 1.0, obs, step == 2)  # an episode end at step 2: the state carries on
        states.append(ctl.state)
    assert all(not np.array_equal(a, b) for a, b in zip(states, states[1:]))
    assert ctl.steps_since_reset == 6
    before = ctl.state
    assert np.array_equal(ctl.adapt(), before) and np.array_equal(ctl.state, before)  # adapt computes nothing
    ctl.reset()
    assert all(not v.any() for v in ctl.get_state().values()) and ctl.steps_since_reset == 0


def test_get_and_set_state_round_trip_and_validate(recurrent_bundle) -> None:
    from metarl_robot.runtime import load_controller

    cell, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=1, explore=False)
    rng = np.random.default_rng(1)
    for _ in range(4):
        ctl.act(_obs(rng))
    saved = ctl.get_state()
    obs = _obs(rng)
    first = ctl.act(obs)
    ctl.set_state(saved)
    np.testing.assert_array_equal(ctl.act(obs), first)  # same state, same inputs, mean command: same output
    with pytest.raises(ValueError, match="exactly the keys"):
        ctl.set_state({"x": saved[state_names(cell)[0]]})
    bad = {k: np.full_like(v, np.nan) for k, v in saved.items()}
    current = ctl.get_state()
    with pytest.raises(ValueError, match="non-finite"):
        ctl.set_state(bad)
    assert all(np.array_equal(current[k], v) for k, v in ctl.get_state().items())


def test_bad_inputs_raise_and_leave_the_memory_alone(recurrent_bundle) -> None:
    from metarl_robot.runtime import load_controller

    _, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=2)
    rng = np.random.default_rng(2)
    ctl.act(_obs(rng))
    state = ctl.state
    bad = _obs(rng)
    bad[3] = np.inf
    with pytest.raises(ValueError, match="obs has non-finite"):
        ctl.act(bad)
    with pytest.raises(ValueError, match="has shape"):
        ctl.act(np.zeros(OBS_DIM + 1, np.float32))
    with pytest.raises(ValueError, match="reward is not finite"):
        ctl.observe(_obs(rng), np.zeros(ACT_DIM), float("nan"), _obs(rng), False)
    with pytest.raises(ValueError, match="done must be a bool"):
        ctl.observe(_obs(rng), np.zeros(ACT_DIM), 0.0, _obs(rng), 2)
    np.testing.assert_array_equal(ctl.state, state)


def test_the_previous_step_reaches_the_next_command(recurrent_bundle) -> None:
    """observe() records what the next act() reads: a different reward changes the next command."""
    from metarl_robot.runtime import load_controller

    cell, _, bundle = recurrent_bundle
    commands, states = [], []
    for reward in (0.0, 5.0):
        ctl = load_controller(bundle, ["cpu"], explore=False)
        obs = np.full(OBS_DIM, 3.0, np.float32)
        command = ctl.act(obs)
        ctl.observe(obs, command, reward, obs, False)
        commands.append(ctl.act(obs))
        states.append(ctl.state)
        if cell == "pearl":
            # PEARL holds the latent through an episode: the reward moves the posterior at once and the
            # command from the next episode on, when the latent is drawn again.
            ctl.observe(obs, commands[-1], 0.0, obs, True)
            commands.append(ctl.act(obs))
    assert not np.allclose(states[0], states[1])
    assert not np.allclose(commands[-1], commands[len(commands) // 2 - 1])
    if cell == "pearl":
        np.testing.assert_array_equal(commands[0], commands[2])  # same latent within the first episode


def test_set_learning_off_freezes_the_memory_and_sends_the_mean(recurrent_bundle) -> None:
    from metarl_robot.runtime import load_controller

    _, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=3)
    assert ctl.explore  # the manifest's sample_actions
    rng = np.random.default_rng(3)
    ctl.act(_obs(rng))
    ctl.set_learning(False)
    assert not ctl.explore and ctl.status()["memory"] == "frozen"
    state, obs = ctl.state, _obs(rng)
    a, b = ctl.act(obs), ctl.act(obs)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ctl.state, state)
    ctl.set_learning(True)
    ctl.act(obs)
    assert not np.array_equal(ctl.state, state)


def test_runtime_matches_its_pytorch_twin_over_a_trial(recurrent_bundle) -> None:
    """Same seed, same noise stream, same state handling: the bundle on onnxruntime and the checkpoint
    in PyTorch send the same commands over a trial of three attempts."""
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.evaluation import torch_controller
    from metarl_robot.runtime import load_controller

    _, checkpoint, bundle = recurrent_bundle
    runtime = load_controller(bundle, ["cpu"], seed=7)
    policy, data = load_checkpoint(checkpoint)
    twin = torch_controller(policy, data["adaptation"], seed=7)
    scale = np.asarray(ACTION_SCALE)
    rng = np.random.default_rng(4)
    for seed in (11, 12):
        runtime.reset(seed=seed)
        twin.reset(seed=seed)
        for attempt in range(3):
            for step in range(20):
                obs = _obs(rng)
                command = runtime.act(obs)
                np.testing.assert_allclose(command / scale, twin.act(obs) / scale, atol=1e-5)
                reward, done = float(rng.normal()), step == 19
                runtime.observe(obs, command, reward, obs, done)
                twin.observe(obs, command, reward, obs, done)
            for name, value in runtime.get_state().items():
                np.testing.assert_allclose(value, twin.get_state()[name], atol=1e-5)
