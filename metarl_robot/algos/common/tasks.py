"""Where every method's tasks come from: the ``tasks`` config section and the distribution it names."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from metarl_robot.tasks import TaskDistribution


@dataclasses.dataclass(frozen=True)
class TasksConfig:
    distribution: str = "sim:default_grasp_distribution"
    """``module:function`` returning a TaskDistribution; called as ``function(seed=, num_train=, num_test=)``."""
    seed: int = 0
    num_train: int = 64
    num_test: int = 16
    num_validation: int = 0
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword arguments of the distribution function, e.g. ``{factors: {com_offset_fraction: 0.0}}``
    to switch a factor of ``sim:grasp_distribution`` off or change its range."""


def resolve(reference: str) -> Any:
    """Import ``module:attribute``; the error says what to write instead."""
    module, _, attr = reference.partition(":")
    if not module or not attr:
        raise ValueError(f"{reference!r}: write an import reference as 'module:attribute'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {reference!r}: {err}") from None


def build_task_distribution(tasks: Mapping[str, Any]) -> TaskDistribution:
    """The distribution a (plain-dict) ``tasks`` config section describes, validation split included
    when asked for; distribution functions without ``num_validation`` still work when it is 0."""
    make = resolve(tasks["distribution"])
    kwargs = {"seed": tasks["seed"], "num_train": tasks["num_train"], "num_test": tasks["num_test"], **tasks.get("kwargs", {})}
    if tasks.get("num_validation", 0):
        kwargs["num_validation"] = tasks["num_validation"]
    return make(**kwargs)
