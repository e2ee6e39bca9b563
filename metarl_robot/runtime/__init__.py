"""The robot side of metarl_robot: load an exported bundle and run it with onnxruntime.

Imports only numpy, onnxruntime and the standard library, so it installs on a robot without torch.
"""

from metarl_robot.runtime.bundle import Bundle, BundleError, GraphSpec, load_bundle
from metarl_robot.runtime.controller import (
    DEFAULT_PROVIDERS,
    PROVIDER_ALIASES,
    AdaptiveController,
    LatencyStats,
    ProviderError,
    default_session_options,
    resolve_provider,
)

__all__ = [
    "DEFAULT_PROVIDERS",
    "PROVIDER_ALIASES",
    "AdaptiveController",
    "Bundle",
    "BundleError",
    "GraphSpec",
    "LatencyStats",
    "ProviderError",
    "default_session_options",
    "load_bundle",
    "resolve_provider",
]
