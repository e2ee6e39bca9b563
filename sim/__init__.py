"""PyBullet (and reference) meta-RL environments for metarl_robot, registered with Gymnasium.

Importing this package registers every id in :data:`ENVIRONMENTS` under the ``metarl/`` namespace.
Entry points are import strings, so an env's module (and PyBullet) loads only when the env is made.
Each id comes with the task distribution its tasks are drawn from, called as
``distribution(seed=, num_train=, num_test=)``.
"""

import gymnasium

from sim.grasp import GraspEnv, PandaGraspEnv, oracle_grasp_action, scripted_grasp_action
from sim.grasp_task import (
    GRASP_VALIDATORS,
    default_grasp_distribution,
    grasp_distribution,
    grasp_force_window,
    oracle_grip_force_n,
    validate_grasp_task,
)
from sim.robots import ROBOTS
from sim.scene import INTERFACE, GraspScene, robot_interface

__all__ = [
    "ENVIRONMENTS",
    "GRASP_VALIDATORS",
    "INTERFACE",
    "ROBOTS",
    "GraspEnv",
    "GraspScene",
    "PandaGraspEnv",
    "default_grasp_distribution",
    "grasp_distribution",
    "grasp_force_window",
    "oracle_grasp_action",
    "oracle_grip_force_n",
    "robot_interface",
    "scripted_grasp_action",
    "validate_grasp_task",
]

_GRASP = {"entry_point": "sim.grasp:GraspEnv", "distribution": "sim.grasp_task:grasp_distribution"}
ENVIRONMENTS: dict[str, dict] = {
    "metarl/PandaGrasp-v0": _GRASP,
    "metarl/KukaGrasp-v0": {**_GRASP, "kwargs": {"robot": "kuka_iiwa"}},
    "metarl/XArmGrasp-v0": {**_GRASP, "kwargs": {"robot": "xarm6"}},
    "metarl/Navigation2D-v0": {"entry_point": "sim.navigation:Navigation2DEnv", "distribution": "sim.navigation:navigation_distribution"},
    "metarl/SparsePointRobot-v0": {"entry_point": "sim.navigation:SparsePointRobotEnv", "distribution": "sim.navigation:sparse_point_distribution"},
    "metarl/BernoulliBandit-v0": {"entry_point": "sim.bandits:BernoulliBanditEnv", "distribution": "sim.bandits:bandit_distribution"},
    "metarl/TabularMDP-v0": {"entry_point": "sim.bandits:TabularMDPEnv", "distribution": "sim.bandits:tabular_mdp_distribution"},
    "metarl/HalfCheetahVel-v0": {"entry_point": "sim.half_cheetah:HalfCheetahVelEnv", "distribution": "sim.half_cheetah:cheetah_velocity_distribution"},
    "metarl/HalfCheetahDir-v0": {"entry_point": "sim.half_cheetah:HalfCheetahDirEnv", "distribution": "sim.half_cheetah:cheetah_direction_distribution"},
    "metarl/PandaReach-v0": {"entry_point": "sim.panda_tasks:PandaReachEnv", "distribution": "sim.panda_tasks:reach_distribution"},
    "metarl/PandaPush-v0": {"entry_point": "sim.panda_tasks:PandaPushEnv", "distribution": "sim.panda_tasks:push_distribution"},
}
"""Every env this package registers: Gymnasium id -> entry point, task distribution (``module:name``) and
the constructor kwargs the id fixes."""

for _env_id, _spec in ENVIRONMENTS.items():
    if _env_id not in gymnasium.registry:
        gymnasium.register(id=_env_id, entry_point=_spec["entry_point"], kwargs=_spec.get("kwargs", {}))
