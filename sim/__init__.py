"""PyBullet simulation for metarl_robot: the Panda grasp task family and its Gymnasium env.

Importing this package registers ``metarl/PandaGrasp-v0``.
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

PANDA_GRASP_ID = "metarl/PandaGrasp-v0"

if PANDA_GRASP_ID not in gymnasium.registry:
    gymnasium.register(id=PANDA_GRASP_ID, entry_point="sim.grasp:PandaGraspEnv")
