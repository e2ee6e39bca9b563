"""RMA: a base policy trained with a latent of the privileged task parameters, and an adaptation module
that estimates that latent from the recent history on the robot; and metric-based (prototypical) task
inference trained the same way, comparing the trial's support set with one prototype per training task
(see :mod:`.algo`). Policies are
:class:`~metarl_robot.recurrent_policy.RecurrentPolicy` with the ``window`` cell and export as bundles
of the ``recurrent`` family (the history window is the state the robot carries)."""

from metarl_robot.algos.common import TasksConfig
from metarl_robot.algos.rma.algo import RMA, train
from metarl_robot.algos.rma.config import AdaptationConfig, AdaptationModuleConfig, BaseTeacherConfig, RL2PPOConfig, TrainConfig

METHODS: tuple[str, ...] = ("rma", "prototypical")
"""The ``method`` names this package trains."""

__all__ = ["METHODS", "RMA", "AdaptationConfig", "AdaptationModuleConfig", "BaseTeacherConfig", "RL2PPOConfig",
           "TasksConfig", "TrainConfig", "train"]
