"""Import boundaries: the package never needs a simulator or ROS; the runtime never needs torch.

Each check runs in a fresh interpreter with the forbidden modules blocked (``sys.modules[name] = None``
makes ``import name`` raise ImportError), so an import anywhere in the chain fails the test.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIR = REPO_ROOT / "metarl_robot" / "runtime"
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime"}


def run_python(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, cwd=REPO_ROOT
    )


@pytest.mark.parametrize(
    "module",
    [
        "metarl_robot",
        "metarl_robot.tasks",
        "metarl_robot.envs",
        "metarl_robot.sampling",
        "metarl_robot.rendering",
        "metarl_robot.evaluation",
        "metarl_robot.cli",
        "metarl_robot.policies",
        "metarl_robot.checkpoint",
        "metarl_robot.export",
        "metarl_robot.gradient_export",
        "metarl_robot.verify",
        "metarl_robot.runtime",
    ],
)
def test_package_imports_without_pybullet_or_rclpy(module: str) -> None:
    result = run_python(
        f"""
        import sys
        sys.modules["pybullet"] = None
        sys.modules["rclpy"] = None
        import {module}
        """
    )
    assert result.returncode == 0, result.stderr


def test_top_level_package_stays_light() -> None:
    result = run_python(
        """
        import sys
        import metarl_robot
        heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "numpy") if m in sys.modules)
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr


def test_runtime_imports_with_torch_and_onnx_blocked() -> None:
    result = run_python(
        """
        import sys
        for name in ("torch", "onnx", "onnxscript", "pybullet", "rclpy"):
            sys.modules[name] = None
        import metarl_robot.runtime
        from metarl_robot.runtime import AdaptiveController, GradientController, load_bundle, load_controller
        ours = sorted(m for m in sys.modules if m.startswith("metarl_robot"))
        assert all(m == "metarl_robot" or m.startswith("metarl_robot.runtime") for m in ours), ours
        """
    )
    assert result.returncode == 0, result.stderr


def test_runtime_does_not_pull_in_torch_even_when_installed() -> None:
    result = run_python(
        """
        import sys
        import metarl_robot.runtime
        assert "torch" not in sys.modules and "onnx" not in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add("." if node.level else node.module or "")
    return roots


def test_runtime_sources_import_only_numpy_onnxruntime_stdlib_and_runtime() -> None:
    """A static check that also covers imports inside functions, which the subprocess tests may not reach."""
    sources = sorted(RUNTIME_DIR.glob("*.py"))
    assert sources
    for path in sources:
        for name in _imported_roots(path):
            root = name.split(".")[0]
            allowed = (
                name == "."
                or name.startswith("metarl_robot.runtime")
                or root in RUNTIME_THIRD_PARTY
                or root in sys.stdlib_module_names
                or root == "__future__"
            )
            assert allowed, (
                f"{path.relative_to(REPO_ROOT)} imports {name!r}; "
                "the runtime may use only numpy, onnxruntime and the standard library"
            )
