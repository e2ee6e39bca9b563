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
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "cryptography"}
"""cryptography is imported only to check a signed bundle against trusted keys."""


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
        "metarl_robot.families",
        "metarl_robot.families.context",
        "metarl_robot.families.gradient",
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
        from metarl_robot import families
        for name in families.names():
            families.get(name)  # every built-in family's runtime half loads without torch
        ours = sorted(m for m in sys.modules if m.startswith("metarl_robot"))
        allowed = ("metarl_robot.runtime", "metarl_robot.families", "metarl_robot.contract")
        assert all(m == "metarl_robot" or m.startswith(allowed) for m in ours), ours
        assert not any(m.endswith("_torch") for m in ours), ours
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


PACKAGE_DIR = REPO_ROOT / "metarl_robot"
FAMILY_RUNTIME_HALVES = ["__init__.py", "registry.py", "base.py", "context.py", "gradient.py", "recurrent.py"]
"""The family modules the torch-free runtime loads (a family's ``*_torch`` module is its PyTorch half)."""


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from a import b`` counts ``a.b`` when that is a
    module of this repository, else ``a``); with ``top_level_only``, imports inside functions are skipped."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):  # imports for type checkers only are not imports
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:
            continue  # TYPE_CHECKING blocks
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                names.add(candidate if _module_path(candidate) is not None else base)
    return names


def _module_path(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _check_runtime_imports(path: Path, names: set[str]) -> None:
    for name in names:
        root = name.split(".")[0]
        allowed = (
            name.startswith(("metarl_robot.runtime", "metarl_robot.families", "metarl_robot.contract"))
            and not name.endswith("_torch")
            or root in RUNTIME_THIRD_PARTY
            or root in sys.stdlib_module_names
            or root == "__future__"
        )
        assert allowed, (
            f"{path.relative_to(REPO_ROOT)} imports {name!r}; the runtime may use only numpy, onnxruntime, the "
            "standard library and the families' runtime halves"
        )


def test_runtime_sources_import_only_numpy_onnxruntime_stdlib_and_runtime() -> None:
    """A static check that also covers imports inside functions, which the subprocess tests may not reach."""
    sources = sorted(RUNTIME_DIR.glob("*.py"))
    assert sources
    for path in sources:
        _check_runtime_imports(path, _imports(path))
    # The families' runtime halves: at module level (what loading a bundle imports) the same rule holds;
    # their PyTorch methods import the *_torch half inside the method.
    for name in FAMILY_RUNTIME_HALVES:
        path = PACKAGE_DIR / "families" / name
        _check_runtime_imports(path, _imports(path, top_level_only=True))


def test_import_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    names = _imports(PACKAGE_DIR / "families" / "context.py")
    assert "metarl_robot.families.context_torch" in names  # imported inside a method
    assert "metarl_robot.families.context_torch" not in _imports(
        PACKAGE_DIR / "families" / "context.py", top_level_only=True
    )


def _package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        graph[module] = {n for n in _imports(path) if n.split(".")[0] in ("metarl_robot", "ros_nodes", "sim")}
    return graph


def test_metarl_robot_never_imports_ros_nodes_or_sim() -> None:
    for module, imported in _package_graph().items():
        bad = sorted(n for n in imported if n.split(".")[0] in ("ros_nodes", "sim"))
        assert not bad, f"{module} imports {bad}: the core knows neither the ROS nodes nor the simulator"


def test_no_import_circle_in_metarl_robot() -> None:
    """Every import counts, those inside functions too: a lazy import does not make a circle harmless.
    (A package's ``__init__`` importing its own submodules is not an edge back from them.)"""
    graph = _package_graph()
    edges = {
        m: {n for n in imported if n in graph and n != m and not m.startswith(n + ".")}
        for m, imported in graph.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
