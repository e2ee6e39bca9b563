"""docs/ros_interface.md stays true to the nodes: parameters, topic and service names, holds, diagnostics.

The policy node's parameters come from ``PARAMETER_DEFAULTS``; the simulated robot's and every topic
and service name are read from the node modules' source (constructing the simulated robot would start
PyBullet), the diagnostic keys from the node, the control loop and every controller's ``status``, so
the test needs no DDS graph and runs in about a second.
"""

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)
from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from metarl_robot.runtime.loop import WAITING_HOLDS, HoldKind  # noqa: E402
from ros_nodes.policy_parameters import OPTIONAL_PARAMETERS, PARAMETER_DEFAULTS, READ_ONLY  # noqa: E402

pytestmark = [pytest.mark.ros]

REPO_ROOT = Path(ros_nodes.__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "ros_interface.md"
SOURCES = {
    POLICY_NODE_NAME: REPO_ROOT / "ros_nodes" / "policy_node.py",
    SIM_ROBOT_NODE_NAME: REPO_ROOT / "ros_nodes" / "sim_robot_node.py",
}
STATUS_SOURCES = [
    REPO_ROOT / "metarl_robot" / "runtime" / "loop.py",
    *sorted((REPO_ROOT / "metarl_robot" / "runtime").glob("*controller*.py")),
    *sorted((REPO_ROOT / "metarl_robot" / "families").glob("*.py")),
]
"""Where the rest of the policy node's diagnostic key/values come from: ``RobotLoop.status`` and the
``status`` of every family's controller."""
OPTIONAL_POLICY_PARAMETERS = {"robot_joint_names": list, "trusted_keys": list}
"""Policy-node parameters declared by type, without a default (documented with none)."""
ALWAYS_DOCUMENTED = ("joint_states", "/diagnostics")
LIFECYCLE_SERVICES = (
    "~/change_state",
    "~/get_state",
    "~/get_available_states",
    "~/get_available_transitions",
    "~/get_transition_graph",
)
CREATORS = {"create_subscription", "create_publisher", "create_lifecycle_publisher", "create_service"}
TYPE_WORDS = {"string": str, "double": float, "integer": int, "bool": bool, "string array": list}


# ------------------------------------------------------------------------------------- the document


def _node_section(node_name: str) -> str:
    """The text under the level-2 heading that is exactly the node's name."""
    sections = re.split(r"^## ", DOC.read_text(), flags=re.MULTILINE)
    matches = [s for s in sections if s.split("\n", 1)[0].strip() == node_name]
    assert len(matches) == 1, f"{DOC.name} needs exactly one section '## {node_name}', found {len(matches)}"
    return matches[0]


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of ``text`` as a list of ``{lower-case header: cell}`` rows."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            header = [cell.lower() for cell in _split_row(block[0])]
            tables.append([dict(zip(header, _split_row(row), strict=False)) for row in block[2:]])
        block = []
    return tables


def _table_with(section: str, node_name: str, *columns: str) -> list[dict[str, str]]:
    found = [t for t in _tables(section) if t and all(c in t[0] for c in columns)]
    assert len(found) == 1, (
        f"{DOC.name}, section {node_name}: expected one table with columns {list(columns)}, found {len(found)}"
    )
    return found[0]


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"{DOC.name}: expected one `name` in backticks, got {cell!r}"
    return match.group(1)


def _parameter_table(node_name: str) -> dict[str, dict[str, str]]:
    rows = _table_with(_node_section(node_name), node_name, "name", "type", "default", "takes effect")
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        name = _code(row["name"])
        assert name not in table, f"{DOC.name}, {node_name}: parameter {name!r} is listed twice"
        table[name] = row
    return table


def _documented_default(cell: str):
    """The value in the first backticks of a default cell, read as YAML; ``None`` when there is none."""
    match = re.search(r"`([^`]*)`", cell)
    return None if match is None else yaml.safe_load(match.group(1))


def _check_parameters(node_name: str, declared: dict[str, tuple[object, type, bool]]) -> None:
    """``declared``: name -> (default or None, Python type, read-only) as the code declares it."""
    table = _parameter_table(node_name)
    missing, extra = sorted(set(declared) - set(table)), sorted(set(table) - set(declared))
    assert not missing and not extra, (
        f"{DOC.name}, {node_name} parameter table: missing {missing}; documented but not declared {extra}"
    )
    problems = []
    for name, (default, kind, read_only) in sorted(declared.items()):
        row = table[name]
        documented = _documented_default(row["default"])
        if documented != default or type(documented) is not type(default):
            problems.append(
                f"{name}: documented default {row['default']!r} reads as {documented!r}, the code's is {default!r}"
            )
        if TYPE_WORDS.get(row["type"]) is not kind:
            problems.append(f"{name}: documented type {row['type']!r}, the code's is {kind.__name__}")
        if ("read-only" in row["takes effect"]) != read_only:
            problems.append(
                f"{name}: 'takes effect' says {row['takes effect']!r} but the parameter is "
                f"{'' if read_only else 'not '}read-only"
            )
    assert not problems, f"{DOC.name}, {node_name} parameter table:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------------------- the code


def _tree(node_name: str) -> ast.Module:
    return ast.parse(SOURCES[node_name].read_text())


def _declared_by_call(node_name: str) -> dict[str, tuple[object, bool]]:
    """``declare_parameter("name", default, describe(..., read_only=...))`` calls: name -> (default, read-only)."""
    declared = {}
    for node in ast.walk(_tree(node_name)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "declare_parameter"):
            continue
        if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            continue
        try:
            default = ast.literal_eval(node.args[1]) if len(node.args) > 1 else None
        except ValueError:  # declared by type (Parameter.Type.STRING_ARRAY), or by a module constant
            default = None
            if isinstance(node.args[1], ast.Name):  # a constant of the node's module (e.g. EPISODE_STEPS)
                module = importlib.import_module(f"ros_nodes.{node_name.removeprefix('metarl_')}")
                default = getattr(module, node.args[1].id)
        read_only = any(
            kw.arg == "read_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
            for arg in node.args[2:] if isinstance(arg, ast.Call) for kw in arg.keywords
        )
        declared[node.args[0].value] = (default, read_only)
    return declared


def _created_names(node_name: str) -> set[str]:
    """First string argument of every create_subscription/publisher/lifecycle_publisher/service call,
    also through a local alias such as ``sub = self.create_subscription``."""
    tree = _tree(node_name)
    aliases = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr in CREATORS
        for target in node.targets if isinstance(target, ast.Name)
    }
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr in CREATORS) or (
            isinstance(func, ast.Name) and func.id in aliases
        ):
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if strings:
                names.add(strings[0])
    return names


def _diagnostic_keys() -> set[str]:
    """Keys of the policy node's diagnostic status: dict literals and ``values["key"] = ...`` in the
    node's ``_publish_diagnostics`` and in every ``status`` method of the control loop and the controllers."""
    keys = set()
    trees = [(_tree(POLICY_NODE_NAME), "_publish_diagnostics")]
    trees += [(ast.parse(path.read_text()), "status") for path in STATUS_SOURCES]
    for tree, name in trees:
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef) and function.name == name:
                keys |= _keys_in(function)
    return keys


def _keys_in(function: ast.FunctionDef) -> set[str]:
    keys = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Dict):
            keys.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                keys.add(node.slice.value)
    return keys


# ------------------------------------------------------------------------------------------- tests


def test_policy_node_parameters_match_the_code():
    declared_by_call = _declared_by_call(POLICY_NODE_NAME)
    for name in OPTIONAL_POLICY_PARAMETERS:
        assert name in declared_by_call, f"policy_node.py no longer declares {name!r}; update the test and the doc"
    declared = {name: (default, type(default), name in READ_ONLY) for name, default in PARAMETER_DEFAULTS.items()}
    declared.update({name: (None, kind, name in READ_ONLY) for name, kind in OPTIONAL_POLICY_PARAMETERS.items()})
    assert set(declared) == set(PARAMETER_DEFAULTS) | set(OPTIONAL_PARAMETERS)
    _check_parameters(POLICY_NODE_NAME, declared)


def test_sim_robot_node_parameters_match_the_code():
    declared_by_call = _declared_by_call(SIM_ROBOT_NODE_NAME)
    assert declared_by_call, "no declare_parameter(\"name\", ...) call found in sim_robot_node.py"
    declared = {
        name: (default, type(default), read_only) for name, (default, read_only) in declared_by_call.items()
    }
    _check_parameters(SIM_ROBOT_NODE_NAME, declared)


@pytest.mark.parametrize("node_name", [POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME])
def test_every_topic_and_service_is_documented(node_name):
    section = _node_section(node_name)
    names = _created_names(node_name) | set(ALWAYS_DOCUMENTED if node_name == POLICY_NODE_NAME else ())
    if node_name == POLICY_NODE_NAME:
        names |= set(LIFECYCLE_SERVICES)
    assert len(names) > 5, f"found only {sorted(names)} in {SOURCES[node_name].name}; is the parser still right?"
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert not missing, f"{DOC.name}, section {node_name}: topics/services not documented: {missing}"


def test_hold_kinds_are_documented_with_their_level():
    rows = _table_with(_node_section(POLICY_NODE_NAME), POLICY_NODE_NAME, "kind", "level")
    documented = {_code(row["kind"]): row["level"] for row in rows}
    expected = {kind.value: "WARN" if kind in WAITING_HOLDS else "ERROR" for kind in HoldKind}
    missing, extra = sorted(set(expected) - set(documented)), sorted(set(documented) - set(expected))
    assert not missing and not extra, f"{DOC.name} hold kinds: missing {missing}; not in HoldKind {extra}"
    wrong = {kind: (documented[kind], level) for kind, level in expected.items() if documented[kind] != level}
    assert not wrong, f"{DOC.name} hold kinds with a wrong level (documented, code): {wrong}"


def test_diagnostic_keys_are_documented():
    keys = _diagnostic_keys()
    expected = {"lifecycle_state", "trigger", "hold_reason", "last_error", "control_ticks", "buffer_len", "episode_len"}
    assert expected <= keys, f"parser found only {sorted(keys)}"
    section = _node_section(POLICY_NODE_NAME)
    missing = sorted(key for key in keys if f"`{key}`" not in section)
    assert not missing, f"{DOC.name}: diagnostic keys not documented: {missing}"
