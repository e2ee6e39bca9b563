"""A tiny grasp-like checkpoint and its exported bundle, shared by the export, verify and runtime tests.

tests/test_export.py and tests/test_verify.py import these helpers from here; the bundle is exported
once per test session.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

OBS_DIM, ACT_DIM, CONTEXT_DIM, BUFFER_SIZE = 10, 4, 8, 60
ACTION_SCALE = [0.15, 0.15, 0.15, 60.0]
FINGER_JOINTS = ["panda_finger_joint1", "panda_finger_joint2"]
JOINT_NAMES = [f"panda_joint{i}" for i in range(1, 8)] + FINGER_JOINTS
INTERFACE: dict[str, Any] = {
    "robot": "franka_panda",
    "control_rate_hz": 10.0,
    "joint_names": JOINT_NAMES,
    "observation_layout": [
        {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
        {"name": "object_position", "source": "object_pose", "field": "position", "size": 3},
        {"name": "finger_position", "source": "joint_states", "field": "position", "joints": FINGER_JOINTS, "size": 2},
        {"name": "finger_effort", "source": "joint_states", "field": "effort", "joints": FINGER_JOINTS, "size": 2},
    ],
    "action": {
        "mode": "cartesian_velocity",
        "names": ["ee_vx", "ee_vy", "ee_vz", "grip_force"],
        "units": ["m/s", "m/s", "m/s", "N"],
        "scale": ACTION_SCALE,
        "low": [-s for s in ACTION_SCALE],
        "high": ACTION_SCALE,
    },
}
"""Shaped like ``sim.INTERFACE`` (the grasp env's robot contract), without importing pybullet."""
ADAPTATION: dict[str, Any] = {
    "buffer_size": BUFFER_SIZE,
    "cadence": "episode",
    "reward_source": {"type": "topic", "topic": "reward"},
}


def make_policy(seed: int = 0):
    """A ContextPolicy with non-trivial normaliser statistics and an actor that reaches the action clip."""
    import torch

    from metarl_robot.policies import ContextPolicy

    torch.manual_seed(seed)
    policy = ContextPolicy(obs_dim=OBS_DIM, act_dim=ACT_DIM, action_scale=ACTION_SCALE)
    with torch.no_grad():
        policy.obs_norm.update(torch.randn(500, OBS_DIM) * torch.linspace(0.5, 20.0, OBS_DIM) + 0.5)
        policy.actor[-1].weight.mul_(150.0)
        policy.encoder_head.bias.uniform_(-0.5, 0.5)
    return policy.eval()


def make_checkpoint(path: Path, *, seed: int = 0, drop: tuple[str, ...] = (), **overrides: Any) -> Path:
    """Save a grasp-like checkpoint; ``drop`` removes keys by dotted path (``"interface.action.mode"``)."""
    from metarl_robot.checkpoint import save_checkpoint

    fields: dict[str, Any] = {
        "method": "context_ppo",
        "interface": copy.deepcopy(INTERFACE),
        "adaptation": copy.deepcopy(ADAPTATION),
        "config": {"algo": "context_ppo", "hidden_sizes": (64, 64), "lr": 3e-4, "out": Path("runs/x")},
        "seed": seed,
        "iteration": 7,
        "metrics": {"return_mean": 1.5, "success_rate": float("nan")},
    }
    fields.update(overrides)
    for key in drop:
        *parents, last = key.split(".")
        section = fields
        for parent in parents:
            section = section[parent]
        del section[last]
    return save_checkpoint(path, make_policy(seed), **fields)


_BUNDLES: dict[str, Path] = {}


def memo_key(name: str) -> str:
    """The key a bundle exported once per session is kept under: its name, and in a mutation run that
    serves only some test files from the export cache (``tests/mutation.py``), the test file too, so a
    test of export never receives the bundle the cache served to another file."""
    if os.environ.get("METARL_TEST_EXPORT_CACHE_ONLY"):
        return name + "@" + os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[0]
    return name


def exported_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path of one bundle exported per test session (read-only: copy it before modifying)."""
    key = memo_key("grasp")
    if key not in _BUNDLES:
        from metarl_robot.export import export_bundle

        root = tmp_path_factory.mktemp("shared_bundle")
        checkpoint = make_checkpoint(root / "grasp.safetensors")
        _BUNDLES[key] = export_bundle(checkpoint, root / "bundle")
    return _BUNDLES[key]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle exported from :func:`make_checkpoint` (shared: do not modify)."""
    return exported_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def checkpoint_path(bundle_dir: Path) -> Path:
    """The checkpoint ``bundle_dir`` was exported from."""
    return bundle_dir.parent / "grasp.safetensors"


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared bundle that a test may modify."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
