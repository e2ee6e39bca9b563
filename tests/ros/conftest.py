"""Shared fixtures of the ROS tests: a DDS domain of the session's own, manifests and tiny bundles.

Every ROS process a test starts (in process or as a child) discovers peers on loopback only and on a
domain chosen at random per test session, so parallel runs on one machine never see each other.
Set ``METARL_TEST_ROS_DOMAIN_ID`` to pin the domain.
"""

import copy
import os
import random

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = (
    os.environ.get("METARL_TEST_ROS_DOMAIN_ID") or str(random.SystemRandom().randint(100, 200))
)

PANDA_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8)) + ("panda_finger_joint1", "panda_finger_joint2")
FINGERS = ("panda_finger_joint1", "panda_finger_joint2")

_GRASP_MANIFEST = {
    "observation": {
        "dim": 10,
        "layout": [
            {"name": "ee_position", "source": "ee_pose", "field": "position", "size": 3},
            {"name": "object_position", "source": "object_pose", "field": "position", "size": 3},
            {"name": "finger_position", "source": "joint_states", "field": "position", "joints": list(FINGERS),
             "size": 2},
            {"name": "finger_effort", "source": "joint_states", "field": "effort", "joints": list(FINGERS),
             "size": 2},
        ],
    },
    "action": {
        "mode": "cartesian_velocity",
        "dim": 4,
        "names": ["ee_vx", "ee_vy", "ee_vz", "grip_force"],
        "units": ["m/s", "m/s", "m/s", "N"],
        "low": [-0.15, -0.15, -0.15, -60.0],
        "high": [0.15, 0.15, 0.15, 60.0],
        "joint_names": list(PANDA_JOINTS),
    },
    "control_rate_hz": 10.0,
    "adaptation": {"buffer_size": 60, "cadence": "episode", "reward_source": {"type": "topic", "topic": "reward"}},
}


def grasp_manifest() -> dict:
    """A manifest shaped like the grasp bundles' (a fresh copy the caller may modify)."""
    return copy.deepcopy(_GRASP_MANIFEST)


@pytest.fixture(scope="session")
def ros_domain_id() -> int:
    return int(os.environ["ROS_DOMAIN_ID"])


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle exported from an untrained tiny grasp policy."""
    import metarl_robot.export as export
    import sim
    from metarl_robot.checkpoint import save_checkpoint
    from metarl_robot.policies import ContextPolicy, PolicyConfig

    root = tmp_path_factory.mktemp("bundle")
    policy = ContextPolicy(10, 4, [0.15, 0.15, 0.15, 60.0], PolicyConfig(hidden_sizes=(16, 16), context_dim=4))
    checkpoint = save_checkpoint(
        root / "untrained.safetensors",
        policy,
        method="context_ppo",
        interface=sim.INTERFACE,
        adaptation={"buffer_size": 60, "cadence": "episode", "reward_source": {"type": "topic", "topic": "reward"}},
        config={},
        seed=0,
        iteration=0,
        metrics={},
    )
    return export.export_bundle(checkpoint, root / "bundle")


@pytest.fixture(scope="session")
def point_bundle(tmp_path_factory):
    """A bundle of an untrained joint-velocity policy for the 2-D point robot of metarl_robot.testing."""
    import metarl_robot.export as export
    from metarl_robot.checkpoint import save_checkpoint
    from metarl_robot.policies import ContextPolicy, PolicyConfig
    from metarl_robot.testing import POINT_INTERFACE

    root = tmp_path_factory.mktemp("point_bundle")
    policy = ContextPolicy(2, 2, [0.1, 0.1], PolicyConfig(hidden_sizes=(8,), context_dim=2))
    checkpoint = save_checkpoint(
        root / "untrained.safetensors",
        policy,
        method="context_ppo",
        interface=POINT_INTERFACE,
        adaptation={"buffer_size": 20, "cadence": "episode", "reward_source": {"type": "topic", "topic": "reward"}},
        config={},
        seed=0,
        iteration=0,
        metrics={},
    )
    return export.export_bundle(checkpoint, root / "bundle")
