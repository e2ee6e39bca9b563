"""A method family defined entirely in this test module proves the plug-in protocol is complete.

The "toy offset" family: the policy commands ``clip(W obs + offset, -1, 1) * scale`` and adapts by
setting ``offset`` to the reward-weighted mean of the normalised commands it has sent. Nothing here
edits or monkeypatches a project file: the family is registered with
:func:`metarl_robot.families.register`, and then the project's own export, verify, runtime loader
(with torch blocked, in a fresh interpreter), evaluation and control loop run it.

The module imports no torch at import time (the torch-blocked interpreter imports it to register
the family); its PyTorch half is built inside functions, as a real plug-in's ``*_torch`` module would be.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metarl_robot.families.base import BuiltGraphs, Family, TorchControllerBase
from metarl_robot.runtime.base import BundleController, check_done, load_vector, scalar

REPO_ROOT = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM, BUFFER = 10, 4, 12
SCALE = [0.15, 0.15, 0.15, 60.0]


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    init_std: float = 0.3


# ------------------------------------------------------------------------------ the runtime half
class ToyController(BundleController):
    """On the robot: act with the current offset; adapt from a ring buffer of (command, reward)."""

    family = "toy_offset"
    _STATE = ("offset",)

    def __init__(self, bundle, providers=None, **kwargs: Any) -> None:
        super().__init__(bundle, providers, **kwargs)
        self.buffer_size = int(bundle.adaptation["buffer_size"])
        self._offset = np.zeros((1, self.act_dim), np.float32)
        self._obs = np.zeros((1, self.obs_dim), np.float32)
        self._commands = np.zeros((1, self.buffer_size, self.act_dim), np.float32)
        self._rewards = np.zeros((1, self.buffer_size), np.float32)
        self._mask = np.zeros((1, self.buffer_size), np.float32)
        self._next = 0

    def reset(self) -> None:
        self._offset.fill(0.0)
        self._commands.fill(0.0)
        self._rewards.fill(0.0)
        self._mask.fill(0.0)
        self._next = 0

    def act(self, obs: Any) -> np.ndarray:
        load_vector(self._obs[0], obs, "obs")
        command = self._policy_session.run(None, {"obs": self._obs, "offset": self._offset})[0][0]
        if not np.isfinite(command).all():
            raise ValueError("non-finite command")
        return command

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        staged = np.zeros(self.act_dim, np.float32)
        load_vector(staged, action, "action")
        value = scalar(reward, "reward")
        check_done(done)
        self._commands[0, self._next], self._rewards[0, self._next], self._mask[0, self._next] = staged, value, 1.0
        self._next = (self._next + 1) % self.buffer_size

    def adapt(self) -> np.ndarray:
        feed = {"command": self._commands, "reward": self._rewards, "mask": self._mask}
        self._offset[...] = self._adapt_session.run(None, feed)[0]
        self.num_adapt_steps += 1
        return self._offset[0].copy()

    def status(self) -> dict[str, str]:
        return {"adaptation_family": self.family, "transitions": str(int(self._mask.sum()))}

    def _warmup_feeds(self):
        return (
            {"obs": np.zeros_like(self._obs), "offset": np.zeros_like(self._offset)},
            {"command": np.zeros_like(self._commands), "reward": np.zeros_like(self._rewards), "mask": np.zeros_like(self._mask)},
        )


class ToyFamily(Family):
    name = "toy_offset"
    adaptation_kind = "offset_average"
    policy_class = "ToyOffsetPolicy"
    graph_io = {
        "policy": (("obs", "offset"), ("command",)),
        "adapt": (("command", "reward", "mask"), ("offset",)),
    }

    def check_adaptation(self, check, adaptation: Mapping[str, Any]) -> dict[str, int]:
        check.positive_int(adaptation, "buffer_size", "adaptation")
        check.positive_int(adaptation, "steps", "adaptation")
        check.key(adaptation, "cadence", str, "adaptation")
        check.key(adaptation, "reward_source", dict, "adaptation")
        return {"buffer_size": int(adaptation["buffer_size"])}

    def expected_shapes(self, graph: str, dims: Mapping[str, int]):
        obs, act, n = dims["obs_dim"], dims["act_dim"], dims["buffer_size"]
        if graph == "policy":
            return {"obs": (None, obs), "offset": (None, act), "command": (None, act)}
        return {"command": (1, n, act), "reward": (1, n), "mask": (1, n), "offset": (1, act)}

    def controller(self, bundle, providers: Sequence[str] | None = None, *, seed=None, **kwargs: Any):
        return ToyController(bundle, providers, **kwargs)

    def probe_feed(self, bundle, obs: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        offset = np.where(rng.random((len(obs), int(bundle.action["dim"]))) < 0.5, -50.0, 50.0)
        return {"obs": obs.astype(np.float32), "offset": offset.astype(np.float32)}

    # -------------------------------------------------------------------------- the PyTorch half
    def build_policy(self, spec: Mapping[str, Any]) -> Any:
        return _policy_class()(spec["obs_dim"], spec["act_dim"], spec["action_scale"], ToyConfig(**spec["config"]))

    def adaptation_section(self, policy, adaptation, require, where) -> dict[str, Any]:
        return {
            "kind": self.adaptation_kind,
            "buffer_size": int(require(adaptation, "buffer_size", "adaptation.buffer_size")),
            "steps": 1,
            "cadence": str(require(adaptation, "cadence", "adaptation.cadence")),
            "reward_source": dict(require(adaptation, "reward_source", "adaptation.reward_source")),
        }

    def build_graphs(self, policy, adaptation, staging: Path, opset) -> BuiltGraphs:
        import torch

        from metarl_robot.export import cpu_session, onnx_export
        from metarl_robot.parity import max_abs_diff

        n = int(adaptation["buffer_size"])
        modules = _graph_modules(policy)
        batch = torch.export.Dim("batch")
        onnx_export(
            modules["policy"], (torch.zeros(2, OBS_DIM), torch.zeros(2, ACT_DIM)), staging / "policy.onnx", "policy",
            ["obs", "offset"], ["command"], {"obs": {0: batch}, "offset": {0: batch}}, opset,
        )
        onnx_export(
            modules["adapt"], (torch.zeros(1, n, ACT_DIM), torch.zeros(1, n), torch.ones(1, n)), staging / "adapt.onnx",
            "adapt", ["command", "reward", "mask"], ["offset"], None, opset,
        )
        rng = np.random.default_rng(0)
        sessions = {g: cpu_session(staging / f"{g}.onnx") for g in ("policy", "adapt")}
        arrays, parity = {}, {}
        for graph in ("policy", "adapt"):
            inputs = _sample_inputs(graph, rng, n)
            expected = _reference(policy, graph, inputs)
            actual = sessions[graph].run(None, inputs)[0]
            parity[graph] = max_abs_diff(graph, actual, expected, np.asarray(SCALE))
            arrays.update({f"{graph}/inputs/{k}": v for k, v in inputs.items()})
            arrays[f"{graph}/outputs/{self.graph_io[graph][1][0]}"] = expected
        np.savez(staging / "test_vectors.npz", **arrays)
        dims = {"obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "buffer_size": n}
        return BuiltGraphs(dims=dims, files=["policy.onnx", "adapt.onnx", "test_vectors.npz"], parity=parity)

    def torch_controller(self, policy, adaptation, *, seed: int = 0, explore: bool = True):
        return ToyTorchController(policy, int(adaptation["buffer_size"]))

    def checkpoint_parity(self, policy, bundle, sessions, rng, batches: int):
        n = int(bundle.adaptation["buffer_size"])
        from metarl_robot.parity import max_abs_diff

        diffs = {}
        for graph in ("policy", "adapt"):
            worst = 0.0
            for _ in range(batches):
                inputs = _sample_inputs(graph, rng, n)
                actual = sessions[graph].run(None, inputs)[0]
                worst = max(worst, max_abs_diff(graph, actual, _reference(policy, graph, inputs), np.asarray(SCALE)))
            diffs[graph] = worst
        return diffs, "initial offset", 0.0


class ToyTorchController(TorchControllerBase):
    """The runtime controller's semantics in PyTorch, for evaluation of a checkpoint."""

    family = "toy_offset"
    state_names = ("offset",)

    def __init__(self, policy, buffer_size: int) -> None:
        self.policy, self.buffer_size = policy, buffer_size
        self.obs_dim, self.act_dim = policy.obs_dim, policy.act_dim
        self.reset()

    def reset(self) -> None:
        self.offset = np.zeros((1, self.act_dim), np.float32)
        self.items: list[tuple[np.ndarray, float]] = []

    def act(self, obs):
        inputs = {"obs": np.asarray(obs, np.float32)[None], "offset": self.offset}
        return _reference(self.policy, "policy", inputs)[0]

    def observe(self, obs, action, reward, next_obs, done) -> None:
        self.items = (self.items + [(np.asarray(action, np.float32), float(reward))])[-self.buffer_size :]

    def adapt(self):
        n = self.buffer_size
        inputs = {"command": np.zeros((1, n, self.act_dim), np.float32), "reward": np.zeros((1, n), np.float32),
                  "mask": np.zeros((1, n), np.float32)}
        for i, (command, reward) in enumerate(self.items):
            inputs["command"][0, i], inputs["reward"][0, i], inputs["mask"][0, i] = command, reward, 1.0
        self.offset = _reference(self.policy, "adapt", inputs)
        return self.offset


TOY = ToyFamily()


def _policy_class():
    import torch
    from torch import nn

    class ToyOffsetPolicy(nn.Module):
        def __init__(self, obs_dim: int, act_dim: int, action_scale, config: ToyConfig = ToyConfig()) -> None:
            super().__init__()
            self.obs_dim, self.act_dim, self.config = obs_dim, act_dim, config
            self.weight = nn.Parameter(torch.randn(act_dim, obs_dim) * config.init_std)
            self.register_buffer("action_scale", torch.as_tensor(action_scale, dtype=torch.float32))

        def command(self, obs, offset):
            return torch.clamp(obs @ self.weight.T + offset, -1.0, 1.0) * self.action_scale

        def adapt(self, command, reward, mask):
            weight = (mask * reward).unsqueeze(-1)
            total = (weight * command / self.action_scale).sum(dim=1)
            return total / torch.clamp(mask.sum(dim=1, keepdim=True), min=1.0)

    return ToyOffsetPolicy


def _graph_modules(policy):
    from torch import nn

    class PolicyGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, obs, offset):
            return self.policy.command(obs, offset)

    class AdaptGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, command, reward, mask):
            return self.policy.adapt(command, reward, mask)

    return {"policy": PolicyGraph().eval(), "adapt": AdaptGraph().eval()}


def _sample_inputs(graph: str, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    if graph == "policy":
        b = int(rng.integers(1, 6))
        return {"obs": rng.normal(0, 3, (b, OBS_DIM)).astype(np.float32),
                "offset": rng.normal(0, 1, (b, ACT_DIM)).astype(np.float32)}
    return {"command": (rng.uniform(-1.2, 1.2, (1, n, ACT_DIM)) * SCALE).astype(np.float32),
            "reward": rng.normal(size=(1, n)).astype(np.float32),
            "mask": (rng.random((1, n)) < 0.7).astype(np.float32)}


def _reference(policy, graph: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    import torch

    modules = _graph_modules(policy)
    names = TOY.graph_io[graph][0]
    with torch.no_grad():
        return modules[graph](*(torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in names)).numpy()


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def toy_registered():
    from metarl_robot import families

    families.register(TOY, replace=True)
    yield TOY
    families.unregister(TOY.name)


@pytest.fixture
def toy_bundle(toy_registered, tmp_path: Path) -> Path:
    import torch

    from metarl_robot.checkpoint import save_checkpoint
    from metarl_robot.export import export_bundle
    from tests.runtime.conftest import INTERFACE

    torch.manual_seed(0)
    policy = _policy_class()(OBS_DIM, ACT_DIM, SCALE)
    checkpoint = save_checkpoint(
        tmp_path / "toy.safetensors",
        policy,
        method="toy_offset",
        interface=copy.deepcopy(INTERFACE),
        adaptation={"buffer_size": BUFFER, "cadence": "episode", "reward_source": {"type": "topic", "topic": "reward"}},
        config={"algo": "toy"},
        seed=0,
    )
    return export_bundle(checkpoint, tmp_path / "bundle")


# --------------------------------------------------------------------------------------- tests
def test_registry_refuses_an_unknown_family_naming_the_registered_ones() -> None:
    from metarl_robot import families

    with pytest.raises(families.FamilyError, match="unknown method family 'toy_offset'.*'context'.*'gradient'"):
        families.get("toy_offset")
    with pytest.raises(families.FamilyError, match="already registered"):
        families.register(families.get("context"))


def test_toy_family_exports_verifies_and_evaluates(toy_bundle: Path, tmp_path: Path) -> None:
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.evaluation import torch_controller
    from metarl_robot.runtime import load_controller
    from metarl_robot.verify import verify_bundle

    manifest = json.loads((toy_bundle / "manifest.json").read_text())
    assert manifest["method"]["family"] == "toy_offset"
    assert manifest["graphs"]["adapt"]["inputs"]["command"] == [1, BUFFER, ACT_DIM]
    report = verify_bundle(toy_bundle, checkpoint=tmp_path / "toy.safetensors")
    assert report.ok, report.format()
    assert any(c.name == "onnxruntime vs PyTorch checkpoint" and c.status == "pass" for c in report.checks), report

    # The bundle on the runtime and the checkpoint in PyTorch behave alike, adaptation included.
    runtime = load_controller(toy_bundle, ["cpu"])
    policy, data = load_checkpoint(tmp_path / "toy.safetensors")
    twin = torch_controller(policy, data["adaptation"])
    rng = np.random.default_rng(1)
    for _ in range(3):
        for _ in range(5):
            obs = rng.normal(size=OBS_DIM).astype(np.float32)
            command = runtime.act(obs)
            np.testing.assert_allclose(command, twin.act(obs), atol=1e-5 * max(SCALE))
            reward = float(rng.normal())
            runtime.observe(obs, command, reward, obs, False)
            twin.observe(obs, command, reward, obs, False)
        np.testing.assert_allclose(runtime.adapt()[None], twin.adapt(), atol=1e-6)
    assert runtime.status()["transitions"] == "12"
    assert np.abs(runtime.get_state()["offset"]).max() > 0


def test_toy_bundle_loads_and_runs_through_the_control_loop_with_torch_blocked(toy_bundle: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["onnx"] = None
        import numpy as np
        from metarl_robot import families
        from tests.test_toy_family import TOY, OBS_DIM
        families.register(TOY)
        from metarl_robot.runtime import load_controller
        controller = load_controller({str(toy_bundle)!r}, ["cpu"])
        obs = np.ones(OBS_DIM, np.float32)
        command = controller.act(obs)
        controller.observe(obs, command, 1.0, obs, True)
        print(controller.adapt().tolist(), controller.status())

        # The one control loop runs it, as the ROS node would, with no family-specific code.
        from metarl_robot.contract import JointStateSample, PoseSample, RobotInputs
        from metarl_robot.runtime import RobotLoop

        loop = RobotLoop.load({str(toy_bundle)!r}, ["cpu"])
        loop.start()
        joints = loop.contract.observed_joints
        commands = []
        for step in range(6):
            now = 10.0 + 0.1 * step
            robot = RobotInputs(
                JointStateSample.create(joints, [0.01] * len(joints), [], [-1.0] * len(joints), now),
                {{s: PoseSample.create([0.5, 0.0, 0.1], [0, 0, 0, 1], now) for s in ("ee_pose", "object_pose")}},
            )
            command = loop.tick(now, robot)
            assert command is not None and command.hold is None, command
            commands.append(command.values.copy())
            loop.add_reward(1.0)
            if step == 2:
                loop.end_episode(True, now, robot)
        level, message, values = loop.status()
        assert values["adaptation_family"] == "toy_offset", values
        assert loop.adaptation_steps == 1, loop.adaptation_steps
        assert int(values["transitions"]) >= 3, values
        # Same observation every tick: only the adapted offset can change the command.
        assert np.array_equal(commands[0], commands[2]) and not np.array_equal(commands[2], commands[4])
        assert not any(m.startswith("torch") for m in sys.modules if sys.modules[m] is not None)
        print("loop", level, message)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "'adaptation_family': 'toy_offset'" in result.stdout


def test_edited_toy_manifest_is_refused(toy_bundle: Path) -> None:
    """The family's own manifest check runs inside load_bundle."""
    from metarl_robot.runtime import BundleError, load_bundle

    path = toy_bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["adaptation"]["buffer_size"] = 0
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        load_bundle(toy_bundle)


def test_training_methods_are_found_through_the_family_plug_ins() -> None:
    from metarl_robot.algos import context_ppo, gradient
    from metarl_robot.families import FamilyError, registry

    assert registry.algorithm(None) is context_ppo
    for method in gradient.METHODS:
        assert registry.algorithm(method) is gradient
    with pytest.raises(FamilyError, match=r"method: 'evolution' is not one of \[.*'context_ppo'.*'maml'"):
        registry.algorithm("evolution")
