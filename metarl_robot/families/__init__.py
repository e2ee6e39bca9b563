"""Method families as plug-ins: how a family's model exports, what its manifest section holds, how its
controller runs on the robot and in PyTorch.

A family is a :class:`~metarl_robot.families.base.Family` registered under its ``method.family`` name
in :mod:`metarl_robot.families.registry`, the one place that maps names to plug-ins. Export, verify,
the runtime, evaluation, the CLI and the ROS node ask the registry and never name a family. See
docs/architecture.md for the protocol and a walk-through of adding a family.

Importing this package is cheap and torch-free: the built-in families load on first use.
"""

from metarl_robot.families.registry import FamilyError, for_policy_class, get, names, register, unregister

__all__ = ["FamilyError", "for_policy_class", "get", "names", "register", "unregister"]
