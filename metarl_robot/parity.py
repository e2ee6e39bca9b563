"""How far an exported graph may stray from PyTorch: the one tolerance and the one distance that
export, verify and every family's parity checks use. Numpy only."""

from __future__ import annotations

import math

import numpy as np

PARITY_TOLERANCE = 1e-5
"""Largest difference allowed between onnxruntime and PyTorch (or stored) outputs, as measured by
:func:`max_abs_diff`; export and verify use the same bar."""


def max_abs_diff(
    graph: str, actual: np.ndarray, expected: np.ndarray, action_scale: np.ndarray, *, output: str | None = None
) -> float:
    """Largest absolute difference between two outputs of ``graph`` (``inf`` if shapes differ).

    Commands (``output`` "command"; by default the policy graph's output) are compared in normalised
    action units, ``command / action_scale``, so every action dimension gets the same relative
    precision whatever its physical unit (a float32 command of 60 N cannot be reproduced to 1e-5 N);
    contexts, normalised actions and adapted parameters are compared as they are.
    """
    if actual.shape != expected.shape:
        return math.inf
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    if (output == "command") if output is not None else graph == "policy":
        diff = diff / np.asarray(action_scale, dtype=np.float64)
    return float(np.max(diff)) if diff.size else 0.0
