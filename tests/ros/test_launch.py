"""The launch file and parameter file agree with the nodes (launch_ros itself is not installable here)."""

import ast
import configparser
import py_compile
from pathlib import Path

import yaml

import ros_nodes
from ros_nodes import PACKAGE_NAME, POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME

REPO_ROOT = Path(ros_nodes.__file__).resolve().parent.parent
LAUNCH_FILE = REPO_ROOT / "launch" / "grasp_demo.launch.py"
PARAMS_FILE = REPO_ROOT / "launch" / "params.yaml"
PACKAGE_DIR = REPO_ROOT / "ros_nodes"


def _string_constants(tree: ast.AST) -> dict[str, str]:
    return {
        node.targets[0].id: node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def _node_actions(tree: ast.AST) -> dict[str, dict[str, str]]:
    """``{action class: {keyword: value}}`` for the Node/LifecycleNode calls, constants resolved."""
    constants = _string_constants(tree)
    actions = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Node", "LifecycleNode"):
            keywords = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Name) and kw.value.id in constants:
                    keywords[kw.arg] = constants[kw.value.id]
                elif isinstance(kw.value, ast.Constant):
                    keywords[kw.arg] = kw.value.value
            actions[node.func.id] = keywords
    return actions


def _declared_parameters(path: Path) -> set[str]:
    """Names passed literally to ``declare_parameter`` plus the keys of a ``PARAMETER_DEFAULTS`` dict."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "declare_parameter"
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
        if (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PARAMETER_DEFAULTS"
                and isinstance(node.value, ast.Dict)):
            names.update(key.value for key in node.value.keys)
    return names


def test_launch_file_compiles(tmp_path):
    py_compile.compile(str(LAUNCH_FILE), cfile=str(tmp_path / "launch.pyc"), doraise=True)


def test_launch_file_names_the_nodes_the_package_installs():
    tree = ast.parse(LAUNCH_FILE.read_text())
    actions = _node_actions(tree)
    assert actions["LifecycleNode"]["name"] == actions["LifecycleNode"]["executable"] == POLICY_NODE_NAME
    assert actions["Node"]["name"] == actions["Node"]["executable"] == SIM_ROBOT_NODE_NAME
    assert actions["LifecycleNode"]["package"] == actions["Node"]["package"] == PACKAGE_NAME

    setup = configparser.ConfigParser()
    setup.read(PACKAGE_DIR / "setup.cfg")
    assert setup["metadata"]["name"] == PACKAGE_NAME
    scripts = setup["options.entry_points"]["console_scripts"]
    assert f"{POLICY_NODE_NAME} = ros_nodes.policy_node:main" in scripts
    assert f"{SIM_ROBOT_NODE_NAME} = ros_nodes.sim_robot_node:main" in scripts
    assert f"<name>{PACKAGE_NAME}</name>" in (PACKAGE_DIR / "package.xml").read_text()
    assert (PACKAGE_DIR / "resource" / PACKAGE_NAME).is_file()
    # The launch file finds params.yaml where setup.cfg installs it.
    assert "share/metarl_robot_ros/config" in setup["options.data_files"]
    assert '"config", "params.yaml"' in LAUNCH_FILE.read_text()


def test_params_file_matches_the_nodes():
    params = yaml.safe_load(PARAMS_FILE.read_text())
    assert set(params) == {POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME}
    for node_name, module in ((POLICY_NODE_NAME, "policy_node.py"), (SIM_ROBOT_NODE_NAME, "sim_robot_node.py")):
        declared = _declared_parameters(PACKAGE_DIR / module)
        given = set(params[node_name]["ros__parameters"])
        assert given <= declared, f"{node_name}: params.yaml sets undeclared {sorted(given - declared)}"
