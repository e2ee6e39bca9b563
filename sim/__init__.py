"""PyBullet (and reference) meta-RL environments for metarl_robot, registered with Gymnasium.

Importing this package registers every id in :data:`ENVIRONMENTS` under the ``metarl/`` namespace.
Entry points are import strings, so an env's module (and PyBullet) loads only when the env is made.
Each id comes with the task distribution its tasks are drawn from, called as
``distribution(seed=, num_train=, num_test=)``.
"""

import gymnasium

from sim.grasp import PandaGraspEnv, scripted_grasp_action
from sim.grasp_task import (
    GRASP_VALIDATORS,
    default_grasp_distribution,
    grasp_force_window,
    oracle_grip_force_n,
    validate_grasp_task,
)
from sim.scene import INTERFACE, GraspScene

__all__ = [
    "ENVIRONMENTS",
    "GRASP_VALIDATORS",
    "INTERFACE",
    "GraspScene",
    "PandaGraspEnv",
    "default_grasp_distribution",
    "grasp_force_window",
    "oracle_grip_force_n",
    "scripted_grasp_action",
    "validate_grasp_task",
]

ENVIRONMENTS: dict[str, dict[str, str]] = {
    "metarl/PandaGrasp-v0": {"entry_point": "sim.grasp:PandaGraspEnv", "distribution": "sim.grasp_task:default_grasp_distribution"},
    "metarl/Navigation2D-v0": {"entry_point": "sim.navigation:Navigation2DEnv", "distribution": "sim.navigation:navigation_distribution"},
    "metarl/BernoulliBandit-v0": {"entry_point": "sim.bandits:BernoulliBanditEnv", "distribution": "sim.bandits:bandit_distribution"},
    "metarl/TabularMDP-v0": {"entry_point": "sim.bandits:TabularMDPEnv", "distribution": "sim.bandits:tabular_mdp_distribution"},
    "metarl/HalfCheetahVel-v0": {"entry_point": "sim.half_cheetah:HalfCheetahVelEnv", "distribution": "sim.half_cheetah:cheetah_velocity_distribution"},
    "metarl/HalfCheetahDir-v0": {"entry_point": "sim.half_cheetah:HalfCheetahDirEnv", "distribution": "sim.half_cheetah:cheetah_direction_distribution"},
    "metarl/PandaReach-v0": {"entry_point": "sim.panda_tasks:PandaReachEnv", "distribution": "sim.panda_tasks:reach_distribution"},
    "metarl/PandaPush-v0": {"entry_point": "sim.panda_tasks:PandaPushEnv", "distribution": "sim.panda_tasks:push_distribution"},
}
"""Every env this package registers: Gymnasium id -> entry point and task distribution (``module:name``)."""

for _env_id, _spec in ENVIRONMENTS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_spec["entry_point"])
