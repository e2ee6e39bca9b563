"""The launch files and the parameter file agree with the nodes and with what the package installs.

launch and launch_ros are not installable here, so the launch files are compiled and read with ast,
never imported or run.
"""

import ast
import configparser
import py_compile
from pathlib import Path

import pytest
import yaml

import ros_nodes
from ros_nodes import PACKAGE_NAME, POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME

REPO_ROOT = Path(ros_nodes.__file__).resolve().parent.parent
LAUNCH_DIR = REPO_ROOT / "launch"
POLICY_LAUNCH = LAUNCH_DIR / "policy.launch.py"
SIM_LAUNCH = LAUNCH_DIR / "sim_grasp.launch.py"
LAUNCH_FILES = (POLICY_LAUNCH, SIM_LAUNCH)
PARAMS_FILE = LAUNCH_DIR / "params.yaml"
PACKAGE_DIR = REPO_ROOT / "ros_nodes"
NODE_MODULES = {POLICY_NODE_NAME: PACKAGE_DIR / "policy_node.py", SIM_ROBOT_NODE_NAME: PACKAGE_DIR / "sim_robot_node.py"}
POLICY_PARAMETERS = PACKAGE_DIR / "policy_parameters.py"
"""Where the policy node's parameter table (``PARAMETER_DEFAULTS``) lives."""


def _constants(tree: ast.AST) -> dict:
    """Module-level ``NAME = literal`` assignments (strings, tuples, dicts of literals)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


def _node_actions(tree: ast.AST) -> dict[str, dict[str, object]]:
    """``{action class: {keyword: value}}`` for the Node/LifecycleNode calls, constants resolved."""
    constants = _constants(tree)
    actions = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Node", "LifecycleNode"):
            keywords = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Name) and kw.value.id in constants:
                    keywords[kw.arg] = constants[kw.value.id]
                elif isinstance(kw.value, ast.Constant):
                    keywords[kw.arg] = kw.value.value
                else:
                    keywords[kw.arg] = kw.value
            assert node.func.id not in actions, f"more than one {node.func.id} action"
            actions[node.func.id] = keywords
    return actions


def _declared_launch_arguments(tree: ast.AST) -> set[str]:
    """Names given literally to ``DeclareLaunchArgument``, plus those declared in a loop over ``TOPIC_ARGUMENTS``."""
    constants = _constants(tree)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument" and node.args:
            if isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
            elif isinstance(node.args[0], ast.Name):  # for argument, topic in TOPIC_ARGUMENTS.items()
                names.update(constants.get("TOPIC_ARGUMENTS", {}))
    return names


def _launch_configurations(tree: ast.AST) -> set[str]:
    """Names read with ``LaunchConfiguration("...")``."""
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "LaunchConfiguration"
        and node.args and isinstance(node.args[0], ast.Constant)
    }


def _declared_parameters(path: Path) -> set[str]:
    """Names passed literally to ``declare_parameter`` plus the keys of a ``PARAMETER_DEFAULTS`` dict."""
    names = set()
    sources = [path, POLICY_PARAMETERS] if path == NODE_MODULES[POLICY_NODE_NAME] else [path]
    for node in (n for source in sources for n in ast.walk(ast.parse(source.read_text()))):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "declare_parameter"
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
        if (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PARAMETER_DEFAULTS"
                and isinstance(node.value, ast.Dict)):
            names.update(key.value for key in node.value.keys)
    return names


def _policy_parameter_defaults() -> dict:
    for node in ast.parse(POLICY_PARAMETERS.read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PARAMETER_DEFAULTS":
            return ast.literal_eval(node.value)
    raise AssertionError("policy_parameters.py has no PARAMETER_DEFAULTS")


def _setup_cfg() -> configparser.ConfigParser:
    setup = configparser.ConfigParser()
    setup.read(PACKAGE_DIR / "setup.cfg")
    return setup


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_has_a_launch_description(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "launch.pyc"), doraise=True)
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    # Every launch argument read is declared (a typo would only fail at launch time).
    assert _launch_configurations(tree) <= _declared_launch_arguments(tree)


def test_launch_files_name_the_nodes_the_package_installs():
    policy = _node_actions(ast.parse(POLICY_LAUNCH.read_text()))
    assert set(policy) == {"LifecycleNode"}
    assert policy["LifecycleNode"]["name"] == policy["LifecycleNode"]["executable"] == POLICY_NODE_NAME
    sim = _node_actions(ast.parse(SIM_LAUNCH.read_text()))
    assert set(sim) == {"Node"}, "sim_grasp.launch.py starts the policy node only through policy.launch.py"
    assert sim["Node"]["name"] == sim["Node"]["executable"] == SIM_ROBOT_NODE_NAME
    assert policy["LifecycleNode"]["package"] == sim["Node"]["package"] == PACKAGE_NAME

    setup = _setup_cfg()
    assert setup["metadata"]["name"] == PACKAGE_NAME
    scripts = setup["options.entry_points"]["console_scripts"]
    assert f"{POLICY_NODE_NAME} = ros_nodes.policy_node:main" in scripts
    assert f"{SIM_ROBOT_NODE_NAME} = ros_nodes.sim_robot_node:main" in scripts
    root_setup = (REPO_ROOT / "setup.py").read_text()
    assert f'"{POLICY_NODE_NAME}=ros_nodes.policy_node:main"' in root_setup
    assert f'"{SIM_ROBOT_NODE_NAME}=ros_nodes.sim_robot_node:main"' in root_setup
    assert f"<name>{PACKAGE_NAME}</name>" in (PACKAGE_DIR / "package.xml").read_text()
    assert (PACKAGE_DIR / "resource" / PACKAGE_NAME).is_file()


def test_sim_launch_includes_the_policy_launch_file():
    tree = ast.parse(SIM_LAUNCH.read_text())
    constants = _constants(tree)
    assert constants["POLICY_LAUNCH_FILE"] == POLICY_LAUNCH.name
    includes = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "IncludeLaunchDescription"]
    assert len(includes) == 1
    # What it hands on, policy.launch.py declares; the sim file declares it too.
    handed_on = set(constants["POLICY_LAUNCH_ARGUMENTS"])
    assert handed_on <= _declared_launch_arguments(ast.parse(POLICY_LAUNCH.read_text()))
    assert handed_on <= _declared_launch_arguments(tree)
    assert {"bundle_path", "params_file", "task_index", "step_mode"} <= _declared_launch_arguments(tree)


def test_launch_files_set_only_parameters_the_nodes_declare():
    policy = _constants(ast.parse(POLICY_LAUNCH.read_text()))
    assert set(policy["POLICY_PARAMETER_ARGUMENTS"]) <= _declared_parameters(NODE_MODULES[POLICY_NODE_NAME])
    sim = _constants(ast.parse(SIM_LAUNCH.read_text()))
    assert set(sim["SIM_PARAMETER_ARGUMENTS"]) <= _declared_parameters(NODE_MODULES[SIM_ROBOT_NODE_NAME])
    for path, node, arguments in (
        (POLICY_LAUNCH, POLICY_NODE_NAME, policy["POLICY_PARAMETER_ARGUMENTS"]),
        (SIM_LAUNCH, SIM_ROBOT_NODE_NAME, sim["SIM_PARAMETER_ARGUMENTS"]),
    ):
        tree = ast.parse(path.read_text())
        assert set(arguments) <= _declared_launch_arguments(tree)
        # Parameters written out in the file (overrides["name"] = ..., {"name": ...}) are the node's.
        written = {
            target.slice.value
            for node_ in ast.walk(tree) if isinstance(node_, ast.Assign)
            for target in node_.targets
            if isinstance(target, ast.Subscript) and getattr(target.value, "id", "") == "overrides"
            and isinstance(target.slice, ast.Constant)
        }
        for literal in ast.walk(tree):
            if isinstance(literal, ast.Dict) and all(isinstance(k, ast.Constant) for k in literal.keys):
                keys = {k.value for k in literal.keys}
                if keys & _declared_parameters(NODE_MODULES[node]):
                    written |= keys
        assert written <= _declared_parameters(NODE_MODULES[node]), (path.name, written)


def test_policy_launch_remaps_the_node_topics():
    constants = _constants(ast.parse(POLICY_LAUNCH.read_text()))
    topics = constants["TOPIC_ARGUMENTS"]
    assert set(topics) == {"joint_states_topic", "joint_command_topic", "cmd_twist_topic", "gripper_command_topic",
                           "joint_trajectory_topic"}
    node_source = NODE_MODULES[POLICY_NODE_NAME].read_text()
    for topic in topics.values():
        assert f'"{topic}"' in node_source, f"the policy node has no topic {topic!r}"
    assert set(topics) <= _declared_launch_arguments(ast.parse(POLICY_LAUNCH.read_text()))
    assert "remappings=remappings" in POLICY_LAUNCH.read_text()


def test_the_package_installs_both_launch_files_and_the_parameters():
    setup = _setup_cfg()
    launch_files = setup["options.data_files"]["share/metarl_robot_ros/launch"].split()
    assert sorted(Path(p).name for p in launch_files) == sorted(p.name for p in LAUNCH_FILES)
    for entry in launch_files:
        assert (PACKAGE_DIR / entry).resolve().is_file(), entry
    config = setup["options.data_files"]["share/metarl_robot_ros/config"].split()
    assert [Path(p).name for p in config] == [PARAMS_FILE.name]
    assert (PACKAGE_DIR / config[0]).resolve() == PARAMS_FILE
    # The launch files find it where it is installed, or in the source tree (as here).
    from ros_nodes import launch_support

    assert launch_support.PARAMS_FILE == PARAMS_FILE.name
    assert Path(launch_support.default_params_file()).resolve() == PARAMS_FILE
    for path in LAUNCH_FILES:
        assert "default_params_file" in path.read_text(), path
    # The pip install (root setup.py) installs the same files by glob.
    root_setup = (REPO_ROOT / "setup.py").read_text()
    assert 'f"share/{ROS_PACKAGE}/launch", [str(p) for p in sorted(Path("launch").glob("*.launch.py"))]' in root_setup
    assert 'f"share/{ROS_PACKAGE}/config", [str(p) for p in sorted(Path("launch").glob("*.yaml"))]' in root_setup


def test_params_file_matches_the_nodes():
    params = yaml.safe_load(PARAMS_FILE.read_text())
    assert set(params) == {POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME}
    for node_name, module in NODE_MODULES.items():
        declared = _declared_parameters(module)
        given = set(params[node_name]["ros__parameters"])
        assert given <= declared, f"{node_name}: params.yaml sets undeclared {sorted(given - declared)}"
    # The policy node's section lists every parameter with a default, at that default (same type too).
    defaults = _policy_parameter_defaults()
    section = params[POLICY_NODE_NAME]["ros__parameters"]
    assert set(section) == set(defaults), f"params.yaml misses {sorted(set(defaults) - set(section))}"
    for name, default in defaults.items():
        assert section[name] == default and type(section[name]) is type(default), name
    # The sim node's section lists every declared parameter.
    assert set(params[SIM_ROBOT_NODE_NAME]["ros__parameters"]) == _declared_parameters(NODE_MODULES[SIM_ROBOT_NODE_NAME])


def test_namespaced_nodes_get_their_section_of_the_params_file(tmp_path):
    from ros_nodes.launch_support import check_log_level, check_params_file, node_parameters

    assert node_parameters(str(PARAMS_FILE), POLICY_NODE_NAME, False, {}) == [str(PARAMS_FILE)]
    file, section, overrides = node_parameters(str(PARAMS_FILE), POLICY_NODE_NAME, True, {"bundle_path": "/b"})
    assert section == yaml.safe_load(PARAMS_FILE.read_text())[POLICY_NODE_NAME]["ros__parameters"]
    assert overrides == {"bundle_path": "/b"}
    with pytest.raises(RuntimeError, match="does not exist"):
        check_params_file(str(tmp_path / "missing.yaml"))
    with pytest.raises(RuntimeError, match="log_level"):
        check_log_level("loud")
