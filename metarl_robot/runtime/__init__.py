"""The robot side of metarl_robot: load an exported bundle and run it with onnxruntime.

Imports only numpy, onnxruntime and the standard library, so it installs on a robot without torch.
:func:`load_controller` opens a bundle with the controller its family plug-in names
(:mod:`metarl_robot.families`); every controller implements :class:`Controller`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metarl_robot.runtime.advantages import AdvantageConfig, compute_advantages
from metarl_robot.runtime.base import (
    DEFAULT_PROVIDERS,
    PROVIDER_ALIASES,
    BundleController,
    Controller,
    LatencyStats,
    ProviderError,
    default_session_options,
    resolve_provider,
)
from metarl_robot.runtime.bundle import Bundle, BundleError, GraphSpec, load_bundle
from metarl_robot.runtime.controller import AdaptiveController
from metarl_robot.runtime.gradient_controller import GradientController
from metarl_robot.runtime.guard import AdaptationGuard, GuardError, GuardSettings, GuardSpec
from metarl_robot.runtime.loop import Hold, HoldKind, LoopSettings, LoopStats, RobotLoop, SafetyLimits
from metarl_robot.runtime.schedule import CADENCES, AdaptationSchedule


def load_controller(
    bundle_dir: str | Path,
    providers: Sequence[str] | None = None,
    *,
    seed: int | None = None,
    trusted_keys: Sequence[str | Path] | None = None,
    **kwargs: Any,
) -> Controller:
    """Validate the bundle at ``bundle_dir`` and open it with the controller of its family plug-in.

    ``seed`` seeds exploration noise where the family explores (others ignore it, so callers can pass
    one for any bundle). ``providers`` and ``kwargs`` go to the controller (``session_options`` for
    every family). ``trusted_keys``: ed25519 public-key PEM paths; when given, a bundle not signed by
    one of them is refused (see :func:`load_bundle`). Raises :class:`BundleError` for a bad bundle and
    :class:`ProviderError` for an unknown or unavailable provider.
    """
    bundle = load_bundle(bundle_dir, trusted_keys=trusted_keys)
    return bundle.plugin.controller(bundle, providers, seed=seed, **kwargs)


__all__ = [
    "CADENCES",
    "AdaptationSchedule",
    "Controller",
    "DEFAULT_PROVIDERS",
    "PROVIDER_ALIASES",
    "AdaptationGuard",
    "AdaptiveController",
    "AdvantageConfig",
    "Bundle",
    "BundleController",
    "BundleError",
    "GradientController",
    "GraphSpec",
    "GuardError",
    "GuardSettings",
    "GuardSpec",
    "Hold",
    "HoldKind",
    "LatencyStats",
    "LoopSettings",
    "LoopStats",
    "ProviderError",
    "RobotLoop",
    "SafetyLimits",
    "compute_advantages",
    "default_session_options",
    "load_bundle",
    "load_controller",
    "resolve_provider",
]
