"""Tiny gradient-based (GradientPolicy) checkpoints and their exported bundles, shared by the gradient
export, verify and runtime tests.

Five variants cover what the adapt graph can adapt: every weight (``maml``, on the grasp-like
interface of conftest.py), every weight of a policy on the ``grasp_force`` motion skill, which reads the
previous command (``maml_skill``, same interface), a context vector with two gradient updates per adaptation step (``cavia``), a context vector moved by
fitting a reward model to the window's rewards (``cavia_reward_model``) and every weight with
learned per-parameter step sizes (``meta_sgd``), the last three on a 2-D navigation interface. Each bundle is exported once per
test session.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from .conftest import INTERFACE as GRASP_INTERFACE
from .conftest import memo_key

NAV_SCALE = [0.1, 0.1]
NAV_INTERFACE: dict[str, Any] = {
    "robot": "point_mass",
    "control_rate_hz": 10.0,
    "joint_names": ["x", "y"],
    "observation_layout": [
        {"name": "position", "source": "joint_states", "field": "position", "joints": ["x", "y"], "size": 2}
    ],
    "action": {
        "mode": "position_delta",
        "names": ["dx", "dy"],
        "units": ["m", "m"],
        "scale": NAV_SCALE,
        "low": [-s for s in NAV_SCALE],
        "high": NAV_SCALE,
    },
}
"""Shaped like ``sim.navigation.NAVIGATION_INTERFACE``, without importing the simulator."""


@dataclasses.dataclass(frozen=True)
class Variant:
    method: str
    interface: dict[str, Any]
    hidden_sizes: tuple[int, ...] = (16, 16)
    context_dim: int = 0
    learn_inner_lr: bool = False
    inner_lr: float = 0.1
    episodes_per_step: int = 4
    max_episode_steps: int = 12
    steps: int = 1
    gae_lambda: float = 1.0
    guard: dict[str, Any] | None = None
    """The ``adaptation.guard`` section to declare (none when ``None``)."""
    skill: str = ""
    inner_updates: int = 1
    inner_loss: str = "policy_gradient"

    @property
    def obs_dim(self) -> int:
        return sum(entry["size"] for entry in self.interface["observation_layout"])

    @property
    def action_scale(self) -> list[float]:
        return list(self.interface["action"]["scale"])

    @property
    def act_dim(self) -> int:
        return len(self.action_scale)

    def adaptation(self) -> dict[str, Any]:
        return {
            "kind": "gradient_step",
            "steps": self.steps,
            "episodes_per_step": self.episodes_per_step,
            "max_episode_steps": self.max_episode_steps,
            "cadence": "episodes",
            "reward_source": {"type": "topic", "topic": "reward"},
            "advantages": {"gamma": 0.99, "gae_lambda": self.gae_lambda, "normalize": True, "baseline_ridge": 1e-5},
            **({"guard": dict(self.guard)} if self.guard is not None else {}),
        }


VARIANTS = {
    "maml": Variant("maml_trpo", GRASP_INTERFACE, episodes_per_step=4, max_episode_steps=12),
    "maml_skill": Variant("maml_trpo", GRASP_INTERFACE, episodes_per_step=3, max_episode_steps=9, skill="grasp_force"),
    "cavia": Variant(
        "cavia_trpo", NAV_INTERFACE, context_dim=3, inner_lr=0.5, episodes_per_step=3, max_episode_steps=10,
        inner_updates=2,
    ),
    "cavia_reward_model": Variant(
        "cavia_trpo", NAV_INTERFACE, context_dim=3, inner_lr=0.5, episodes_per_step=4, max_episode_steps=9,
        inner_loss="reward_model", steps=2,
    ),
    "meta_sgd": Variant(
        "meta_sgd_trpo",
        NAV_INTERFACE,
        learn_inner_lr=True,
        episodes_per_step=5,
        max_episode_steps=8,
        steps=2,
        gae_lambda=0.95,
    ),
}


OVERSHOOT = Variant(
    "cavia_trpo", NAV_INTERFACE, context_dim=3, inner_lr=5.0, episodes_per_step=3, max_episode_steps=10,
    guard={"signal": "return", "max_drop": 0.3, "validated_steps": 3},
)
"""CAVIA with an inner step ten times too long, so adaptation overshoots, and a guard against it
(tests/runtime/test_guard.py, tests/ros/test_guard_node.py); not one of the VARIANTS every gradient test covers."""

_ALL_VARIANTS = {**VARIANTS, "cavia_overshoot": OVERSHOOT}


def make_gradient_policy(variant: str = "maml", seed: int = 0):
    """A GradientPolicy with skewed normaliser statistics, perturbed weights (the mean reaches the action
    clip), a non-uniform log std, and for Meta-SGD non-uniform step sizes."""
    import torch

    from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig

    v = _ALL_VARIANTS[variant]
    torch.manual_seed(seed)
    layout = []
    for entry in v.interface["observation_layout"]:
        layout.append((entry["name"], sum(size for _, _, size in layout), entry["size"]))
    config = GradientPolicyConfig(
        hidden_sizes=v.hidden_sizes, context_dim=v.context_dim, inner_lr=v.inner_lr, learn_inner_lr=v.learn_inner_lr,
        skill=v.skill, skill_layout=tuple(layout) if v.skill else (), inner_updates=v.inner_updates,
        inner_loss=v.inner_loss, model_hidden_sizes=(12, 12),
    )
    policy = GradientPolicy(v.obs_dim, v.act_dim, v.action_scale, config)
    with torch.no_grad():
        spread = torch.linspace(0.5, 20.0, v.obs_dim) if v.obs_dim > 2 else torch.tensor([0.5, 2.0])
        policy.obs_norm.update(torch.randn(500, v.obs_dim) * spread + 0.5)
        policy.weights.add_(torch.randn_like(policy.weights) * 0.3)
        policy.weights[-v.act_dim :] = torch.linspace(-0.7, 0.2, v.act_dim)
        if v.learn_inner_lr:
            policy.inner_lr.uniform_(0.02, 0.2)
        if policy.reads_rewards:
            policy.model_weights.add_(torch.randn_like(policy.model_weights) * 0.3)
            policy.inner_lr.uniform_(0.2, 2.0)
    return policy.eval()


def make_gradient_checkpoint(path: Path, variant: str = "maml", *, seed: int = 0, **overrides: Any) -> Path:
    """Save a checkpoint of :func:`make_gradient_policy` with the fields gradient training writes."""
    from metarl_robot.checkpoint import save_checkpoint

    v = _ALL_VARIANTS[variant]
    fields: dict[str, Any] = {
        "method": v.method,
        "interface": copy.deepcopy(v.interface),
        "adaptation": v.adaptation(),
        "config": {"method": v.method.split("_trpo")[0], "policy": {"hidden_sizes": v.hidden_sizes, "skill": v.skill}},
        "seed": seed,
        "iteration": 1,
        "metrics": {},
    }
    fields.update(overrides)
    return save_checkpoint(path, make_gradient_policy(variant, seed), **fields)


_BUNDLES: dict[str, Path] = {}


def exported_gradient_bundle(tmp_path_factory: pytest.TempPathFactory, variant: str = "maml") -> Path:
    """The path of the ``variant`` bundle, exported once per test session (read-only: copy it before
    modifying); its checkpoint is ``<bundle>/../<variant>.safetensors``."""
    key = memo_key(variant)
    if key not in _BUNDLES:
        from metarl_robot.export import export_bundle

        root = tmp_path_factory.mktemp(f"gradient_{variant}")
        checkpoint = make_gradient_checkpoint(root / f"{variant}.safetensors", variant)
        _BUNDLES[key] = export_bundle(checkpoint, root / "bundle")
    return _BUNDLES[key]


def checkpoint_of(bundle: Path, variant: str) -> Path:
    return bundle.parent / f"{variant}.safetensors"


def graph_advantages(bundle: Path, feed: dict[str, Any]):
    """The advantages ``[N, T]`` the bundle's adapt graph computes inside itself for ``feed`` (its
    intermediate tensor ``adv/advantage`` made an output), float32 as its step reads them."""
    import numpy as np
    import onnx
    import onnxruntime

    from metarl_robot.families.gradient_onnx import PREFIX

    model = onnx.load(str(bundle / "adapt.onnx"))
    model.graph.output.append(onnx.helper.make_tensor_value_info(PREFIX + "advantage", onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([PREFIX + "advantage"], feed)[0])


def drive_episodes(controller, seed: int, lengths: list[int], *, end_with_done: bool = True) -> list[dict[str, Any]]:
    """Run one episode of ``act -> observe`` per entry of ``lengths`` on ``controller`` with random
    observations and rewards from ``seed``; return what was fed, per episode (``obs``, ``command``,
    ``reward`` arrays). Torch-free, so the torch-blocked subprocess test can use it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    episodes = []
    for length in lengths:
        obs = rng.normal(3.0, 2.0, controller.obs_dim).astype(np.float32)
        record: dict[str, list] = {"obs": [], "command": [], "reward": []}
        for t in range(length):
            command = controller.act(obs)
            next_obs = rng.normal(3.0, 2.0, controller.obs_dim).astype(np.float32)
            reward = float(rng.normal())
            controller.observe(obs, command, reward, next_obs, end_with_done and t == length - 1)
            for key, value in (("obs", obs), ("command", command), ("reward", reward)):
                record[key].append(value)
            obs = next_obs
        episodes.append({key: np.asarray(values, dtype=np.float32) for key, values in record.items()})
    return episodes


def reference_adaptation(policy, adaptation: dict[str, Any], params, episodes: list[dict[str, Any]], actions: list):
    """What meta-training computes for one adaptation on ``episodes`` (oldest first) whose normalised
    executed actions are ``actions``: advantages with compute_advantages, then ``adaptation["steps"]``
    calls of GradientPolicy.inner_step (float32 PyTorch) on the padded batch."""
    import dataclasses as dc

    import numpy as np
    import torch

    from metarl_robot.runtime.advantages import AdvantageConfig, compute_advantages

    n, t = adaptation["episodes_per_step"], adaptation["max_episode_steps"]
    obs = np.zeros((n, t, policy.obs_dim), np.float32)
    prev = np.zeros((n, t, policy.act_dim), np.float32)
    action = np.zeros((n, t, policy.act_dim), np.float32)
    reward = np.zeros((n, t), np.float32)
    mask = np.zeros((n, t), np.float32)
    for i, (episode, executed) in enumerate(zip(episodes, actions)):
        length = len(episode["reward"])
        obs[i, :length], action[i, :length], reward[i, :length] = episode["obs"], executed, episode["reward"]
        prev[i, 1:length] = episode["command"][: length - 1]  # what was sent the step before; zeros first
        mask[i, :length] = 1.0
    fields = {f.name: adaptation["advantages"][f.name] for f in dc.fields(AdvantageConfig)}
    # A reward-model step reads the rewards themselves; every other step their advantages.
    advantage = reward if policy.reads_rewards else compute_advantages(obs, reward, mask, AdvantageConfig(**fields))
    phi = torch.as_tensor(np.asarray(params, np.float32))
    inputs = policy.policy_inputs(torch.from_numpy(obs), torch.from_numpy(prev))
    batch = [torch.from_numpy(x) for x in (action, advantage, mask)]
    for _ in range(adaptation["steps"]):
        phi = policy.inner_step(phi, inputs, *batch, create_graph=False).detach()
    return phi.numpy()
