"""GradientController: act/observe/adapt against PyTorch's inner step, episode bookkeeping, input
validation, load_controller dispatch, and torch-free use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl_robot.checkpoint import load_checkpoint
from metarl_robot.runtime import (
    AdaptiveController,
    BundleError,
    GradientController,
    load_bundle,
    load_controller,
)
from metarl_robot.verify import PARITY_TOLERANCE

from .gradient_fixtures import (
    VARIANTS,
    checkpoint_of,
    drive_episodes,
    exported_gradient_bundle,
    reference_adaptation,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def gradient_bundle(tmp_path_factory: pytest.TempPathFactory, variant: str) -> Path:
    return exported_gradient_bundle(tmp_path_factory, variant)


@pytest.fixture(scope="module")
def maml_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_gradient_bundle(tmp_path_factory, "maml")


@pytest.fixture
def controller(maml_bundle: Path) -> GradientController:
    return GradientController.load(maml_bundle, providers=["cpu"], seed=0)


@pytest.fixture(scope="module")
def maml_policy(maml_bundle: Path):
    return load_checkpoint(checkpoint_of(maml_bundle, "maml"))[0]


def executed_actions(policy, params: np.ndarray, episodes: list[dict], seed: int | np.random.Generator) -> list:
    """The normalised actions a controller seeded with ``seed`` sampled for ``episodes``, evaluated in
    PyTorch with its noise replayed from the same generator (pass a Generator to continue a replay)."""
    rng = np.random.default_rng(seed)
    actions = []
    for episode in episodes:
        noise = np.stack([rng.standard_normal(policy.act_dim, dtype=np.float32) for _ in episode["reward"]])
        prev = np.zeros_like(episode["command"])
        prev[1:] = episode["command"][:-1]  # the command sent the step before (zeros first), read on a skill
        inputs = policy.policy_inputs(torch.from_numpy(episode["obs"]), torch.from_numpy(prev))
        with torch.no_grad():
            action = policy.sample(torch.from_numpy(params), inputs, torch.from_numpy(noise))
        actions.append(action.numpy())
    return actions


# ---------------------------------------------------------------------------------------- basics
def test_load_exposes_the_bundle_contract(controller: GradientController, maml_bundle: Path) -> None:
    v = VARIANTS["maml"]
    bundle = load_bundle(maml_bundle)
    assert controller.provider == "CPUExecutionProvider"
    assert (controller.obs_dim, controller.act_dim) == (v.obs_dim, v.act_dim)
    assert controller.num_params == bundle.adaptation["num_params"] == controller.params.shape[0]
    assert (controller.episodes_per_step, controller.max_episode_steps) == (v.episodes_per_step, v.max_episode_steps)
    assert controller.advantage_config.gamma == 0.99 and controller.explore
    assert controller.episodes_ready == 0 and controller.episode_len == 0 and controller.num_adapt_steps == 0
    np.testing.assert_array_equal(controller.params, bundle.plugin.initial_params(bundle))
    assert controller.params.dtype == np.float32


def test_load_controller_picks_the_controller_for_the_family(maml_bundle: Path, bundle_dir: Path) -> None:
    gradient = load_controller(maml_bundle, providers=["cpu"], seed=3, explore=False)
    assert type(gradient) is GradientController and not gradient.explore
    assert type(load_controller(bundle_dir, providers=["cpu"])) is AdaptiveController
    assert type(load_controller(bundle_dir, providers=["cpu"], seed=3)) is AdaptiveController  # deterministic


def test_a_controller_refuses_a_bundle_of_the_other_family(maml_bundle: Path, bundle_dir: Path) -> None:
    message = r"is a 'gradient' bundle and AdaptiveController runs 'context'.*load_controller"
    with pytest.raises(BundleError, match=message):
        AdaptiveController.load(maml_bundle, ["cpu"])
    with pytest.raises(BundleError, match=r"is a 'context' bundle and GradientController runs 'gradient'"):
        GradientController.load(bundle_dir, ["cpu"])


def test_deterministic_act_is_the_policy_mean_clipped_and_scaled(controller: GradientController, maml_policy) -> None:
    controller.explore = False
    rng = np.random.default_rng(1)
    scale = maml_policy.action_scale.numpy().astype(np.float64)
    clipped = 0
    for _ in range(50):
        obs = rng.normal(3.0, 6.0, controller.obs_dim).astype(np.float32)
        command = controller.act(obs)
        assert command.shape == (controller.act_dim,) and command.dtype == np.float32
        with torch.no_grad():
            expected = maml_policy.command(torch.from_numpy(controller.params), torch.from_numpy(obs[None]))[0].numpy()
        assert np.max(np.abs(command - expected) / scale) <= PARITY_TOLERANCE
        assert np.all(np.abs(command) <= scale * (1 + 1e-6))
        clipped += int(np.any(np.isclose(np.abs(command), scale)))
    assert clipped, "the test policy should reach the action limits"
    assert controller.act_latency.count == 50


def test_exploration_is_seeded_and_reset_can_reseed(maml_bundle: Path) -> None:
    obs = np.linspace(-1.0, 1.0, VARIANTS["maml"].obs_dim)
    a = GradientController.load(maml_bundle, ["cpu"], seed=7)
    b = GradientController.load(maml_bundle, ["cpu"], seed=7)
    first = [a.act(obs) for _ in range(5)]
    np.testing.assert_array_equal(np.stack(first), np.stack([b.act(obs) for _ in range(5)]))
    assert len({c.tobytes() for c in first}) == 5, "exploring actions should differ"
    a.reset(seed=7)
    np.testing.assert_array_equal(np.stack(first), np.stack([a.act(obs) for _ in range(5)]))


# ------------------------------------------------------------------------------------ adaptation
def test_adapt_equals_torch_inner_step(variant: str, gradient_bundle: Path) -> None:
    """Every variant (all weights, CAVIA context, Meta-SGD with two steps): episodes of act -> observe,
    then adapt, against meta-training's advantages and GradientPolicy.inner_step on the same batch."""
    policy, ckpt = load_checkpoint(checkpoint_of(gradient_bundle, variant))
    v = VARIANTS[variant]
    controller = GradientController.load(gradient_bundle, ["cpu"], seed=11)
    params = controller.params
    lengths = [v.max_episode_steps, 1, 3, v.max_episode_steps - 1][: v.episodes_per_step]
    episodes = drive_episodes(controller, 5, lengths)
    assert controller.episodes_ready == len(lengths)

    adapted = controller.adapt()

    actions = executed_actions(policy, params, episodes, seed=11)
    expected = reference_adaptation(policy, ckpt["adaptation"], params, episodes, actions)
    np.testing.assert_allclose(adapted, expected, rtol=0, atol=PARITY_TOLERANCE)
    assert np.max(np.abs(adapted - params)) > 1e-3, "the step should move the parameters"
    np.testing.assert_array_equal(controller.params, adapted)
    assert controller.num_adapt_steps == v.steps and controller.adapt_latency.count == 1
    assert controller.episodes_ready == 0 and controller.episode_len == 0


def test_consecutive_adaptations_chain_from_the_adapted_parameters(maml_bundle: Path, maml_policy) -> None:
    controller = GradientController.load(maml_bundle, ["cpu"], seed=3)
    noise = np.random.default_rng(3)
    for round_ in range(3):
        params = controller.params
        episodes = drive_episodes(controller, round_, [5] * controller.episodes_per_step)
        actions = executed_actions(maml_policy, params, episodes, noise)
        expected = reference_adaptation(maml_policy, dict(controller.bundle.adaptation), params, episodes, actions)
        np.testing.assert_allclose(controller.adapt(), expected, rtol=0, atol=PARITY_TOLERANCE)
    assert controller.num_adapt_steps == 3


def test_a_changed_command_is_stored_as_command_over_scale(controller: GradientController, maml_policy) -> None:
    """A safety layer changed the command: the step uses what was executed, in normalised units."""
    rng = np.random.default_rng(4)
    scale = maml_policy.action_scale.numpy()
    params = controller.params
    episodes, actions = [], []
    for _ in range(controller.episodes_per_step):
        obs = rng.normal(3.0, 2.0, (4, controller.obs_dim)).astype(np.float32)
        sent = np.zeros((4, controller.act_dim), np.float32)
        for t in range(4):
            controller.act(obs[t])
            sent[t] = rng.uniform(-1.0, 1.0, controller.act_dim).astype(np.float32) * scale
            controller.observe(obs[t], sent[t], 1.0 + t, obs[t], t == 3)
        episodes.append({"obs": obs, "command": sent, "reward": np.arange(1.0, 5.0, dtype=np.float32)})
        actions.append(sent / scale)
    expected = reference_adaptation(maml_policy, dict(controller.bundle.adaptation), params, episodes, actions)
    np.testing.assert_allclose(controller.adapt(), expected, rtol=0, atol=PARITY_TOLERANCE)


def test_episodes_close_at_done_or_after_max_episode_steps(controller: GradientController) -> None:
    t = controller.max_episode_steps
    drive_episodes(controller, 0, [2 * t + 3], end_with_done=False)
    assert controller.episodes_ready == 2 and controller.episode_len == 3
    assert controller.status() == {"adaptation_family": "gradient", "episodes_ready": "2",
                                   "episodes_per_step": str(controller.episodes_per_step), "episode_len": "3"}
    drive_episodes(controller, 1, [1])  # its done closes the open episode, now 4 steps long
    assert controller.episodes_ready == 3 and controller.episode_len == 0


def test_adapt_uses_the_most_recent_episodes(maml_bundle: Path, maml_policy) -> None:
    controller = GradientController.load(maml_bundle, ["cpu"], seed=13)
    n, params = controller.episodes_per_step, controller.params
    episodes = drive_episodes(controller, 2, [2, 3, 4, 5, 6, 7, 8][: n + 2])
    assert controller.episodes_ready == n

    actions = executed_actions(maml_policy, params, episodes, seed=13)
    adaptation = dict(controller.bundle.adaptation)
    expected = reference_adaptation(maml_policy, adaptation, params, episodes[-n:], actions[-n:])
    np.testing.assert_allclose(controller.adapt(), expected, rtol=0, atol=PARITY_TOLERANCE)


def test_adapt_without_a_closed_episode_is_a_no_op(controller: GradientController) -> None:
    obs = np.ones(controller.obs_dim, dtype=np.float32)
    controller.observe(obs, controller.act(obs), 1.0, obs, False)
    before = controller.params
    np.testing.assert_array_equal(controller.adapt(), before)
    assert controller.num_adapt_steps == 0 and controller.adapt_latency.count == 0
    assert controller.episode_len == 1


def test_reset_restores_initial_params_and_drops_episodes(controller: GradientController) -> None:
    initial = controller.params
    drive_episodes(controller, 0, [3] * controller.episodes_per_step)
    controller.adapt()
    drive_episodes(controller, 1, [2, 2])
    assert np.max(np.abs(controller.params - initial)) > 1e-3

    controller.reset()

    np.testing.assert_array_equal(controller.params, initial)
    np.testing.assert_array_equal(controller.initial_params, initial)
    assert controller.episodes_ready == 0 and controller.episode_len == 0


def test_non_finite_adapted_params_are_refused_and_the_old_ones_kept(controller: GradientController) -> None:
    drive_episodes(controller, 0, [3, 3])
    before = controller.params

    class NaNSession:
        def run(self, outputs, feed):
            return [np.full_like(feed["params"], np.nan)]

    controller._adapt_session = NaNSession()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="non-finite parameters.*kept the old ones"):
        controller.adapt()
    np.testing.assert_array_equal(controller.params, before)
    assert controller.episodes_ready == 2 and controller.num_adapt_steps == 0


def test_warmup_and_params_copies_leave_state_untouched(controller: GradientController) -> None:
    drive_episodes(controller, 0, [3])
    params, acts, ready = controller.params, controller.act_latency.count, controller.episodes_ready
    controller.params[:] = 99.0
    controller.warmup(3)
    np.testing.assert_array_equal(controller.params, params)
    assert controller.act_latency.count == acts and controller.episodes_ready == ready
    obs = np.ones(controller.obs_dim)
    a = GradientController.load(controller.bundle.path, ["cpu"], seed=5)
    b = GradientController.load(controller.bundle.path, ["cpu"], seed=5)
    b.warmup(2)
    np.testing.assert_array_equal(a.act(obs), b.act(obs))


# ------------------------------------------------------------------------------------- validation
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    "obs, message",
    [
        (np.zeros(3), r"obs has shape \(3,\), expected \(10,\)"),
        (np.array([np.nan] + [0.0] * 9), r"obs has non-finite values at indices \[0\]"),
        (np.array([0.0] * 9 + [1e39]), "beyond float32 range"),
    ],
)
def test_act_rejects_bad_observations(controller: GradientController, obs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        controller.act(obs)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("obs", np.full(10, np.nan), "obs has non-finite values"),
        ("action", np.array([0.0, np.inf, 0.0, 0.0]), r"action has non-finite values at indices \[1\]"),
        ("action", np.zeros(2), r"action has shape \(2,\), expected \(4,\)"),
        ("next_obs", np.zeros(11), r"next_obs has shape \(11,\)"),
        ("reward", np.nan, "reward is not finite"),
        ("done", "yes", "done must be a bool"),
    ],
)
def test_observe_rejects_bad_transitions_and_keeps_the_buffer(
    controller: GradientController, field: str, value, message: str
) -> None:
    obs = np.ones(controller.obs_dim, dtype=np.float32)
    command = controller.act(obs)
    good = {"obs": obs, "action": command, "reward": 1.0, "next_obs": obs, "done": False}
    controller.observe(**good)
    controller.observe(**{**good, "done": True})
    command = controller.act(obs)
    good["action"] = command

    with pytest.raises(ValueError, match=message):
        controller.observe(**{**good, field: value})

    assert controller.episodes_ready == 1 and controller.episode_len == 0
    controller.observe(**good)  # the remembered action survives the refused call
    assert controller.episode_len == 1


def test_tampered_bundle_is_refused_at_load(maml_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(maml_bundle, tmp_path / "bundle"))
    data = bytearray((copy / "params.npy").read_bytes())
    data[-1] ^= 0x01
    (copy / "params.npy").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"params\.npy: sha256 mismatch"):
        load_controller(copy, ["cpu"])


# ------------------------------------------------------------------------------------ torch-free
def test_runtime_adapts_a_gradient_bundle_with_torch_blocked(maml_bundle: Path, tmp_path: Path, maml_policy) -> None:
    out = tmp_path / "run.npz"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["onnx"] = None
        import numpy as np
        from metarl_robot.runtime import load_controller
        from tests.runtime.gradient_fixtures import drive_episodes
        c = load_controller({str(maml_bundle)!r}, providers=["cpu"], seed=21)
        c.warmup(2)
        params = c.params
        episodes = drive_episodes(c, 9, [12, 1, 5, 11])
        adapted = c.adapt()
        loaded = sorted(m for m in sys.modules if m.startswith("metarl_robot"))
        allowed = ("metarl_robot.runtime", "metarl_robot.families", "metarl_robot.contract")
        assert all(m == "metarl_robot" or m.startswith(allowed) for m in loaded), loaded
        assert not any(m.endswith("_torch") for m in loaded), loaded
        arrays = {{"params": params, "adapted": adapted}}
        for i, e in enumerate(episodes):
            arrays.update({{f"{{i}}/{{k}}": v for k, v in e.items()}})
        np.savez({str(out)!r}, **arrays)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr

    with np.load(out) as run:
        arrays = dict(run)
    episodes = [{k: arrays[f"{i}/{k}"] for k in ("obs", "command", "reward")} for i in range(4)]
    actions = executed_actions(maml_policy, arrays["params"], episodes, seed=21)
    adaptation = load_bundle(maml_bundle).adaptation
    expected = reference_adaptation(maml_policy, dict(adaptation), arrays["params"], episodes, actions)
    np.testing.assert_allclose(arrays["adapted"], expected, rtol=0, atol=PARITY_TOLERANCE)
    assert np.max(np.abs(arrays["adapted"] - arrays["params"])) > 1e-3


def test_slots_of_an_earlier_batch_are_masked_out_of_a_smaller_one(maml_bundle: Path, maml_policy) -> None:
    """adapt() feeds the batch the closed episodes were copied into; after a full batch, a batch of
    fewer, shorter episodes must step on those alone (the earlier episodes stay in memory, masked)."""
    controller = GradientController.load(maml_bundle, ["cpu"], seed=17)
    n, t = controller.episodes_per_step, controller.max_episode_steps
    noise = np.random.default_rng(17)  # the controller's generator, replayed across both batches
    first = controller.params
    executed_actions(maml_policy, first, drive_episodes(controller, 4, [t] * n), noise)
    controller.adapt()
    params = controller.params
    episodes = drive_episodes(controller, 5, [2, 1][: max(1, n - 1)])
    actions = executed_actions(maml_policy, params, episodes, noise)
    expected = reference_adaptation(maml_policy, dict(controller.bundle.adaptation), params, episodes, actions)
    np.testing.assert_allclose(controller.adapt(), expected, rtol=0, atol=PARITY_TOLERANCE)


def test_a_failing_adapt_graph_is_a_value_error_that_keeps_params_and_episodes(controller: GradientController) -> None:
    """The control loop turns a ValueError from adapt() into a diagnostic; an execution provider's
    exception (CUDA's Inverse refuses a singular matrix) must arrive as one, not stop the node."""
    drive_episodes(controller, 0, [3, 3])
    before, ready = controller.params, controller.episodes_ready

    class FailingSession:
        def run(self, outputs, feed):
            raise RuntimeError("Matrix is singular at batch:0")

    real, controller._adapt_session = controller._adapt_session, FailingSession()  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"adapt graph failed \(RuntimeError: Matrix is singular.*kept the old"):
        controller.adapt()
    np.testing.assert_array_equal(controller.params, before)
    assert controller.episodes_ready == ready and controller.num_adapt_steps == 0
    controller._adapt_session = real
    assert np.max(np.abs(controller.adapt() - before)) > 0  # and the next adaptation works
