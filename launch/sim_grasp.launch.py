"""The simulated Panda grasping one object, driven by the meta-policy lifecycle node.

    ros2 launch metarl_robot_ros sim_grasp.launch.py bundle_path:=/abs/path/to/bundle
    ros2 launch metarl_robot_ros sim_grasp.launch.py bundle_path:=... task_index:=11 step_mode:=lockstep

Starts ``metarl_sim_robot_node`` (PyBullet, behind the topics of a real robot) and includes
``policy.launch.py`` for the policy node, so the simulated and the real-robot graph are one
definition: the policy node is configured, then activated once configure has succeeded.

Arguments (``--show-args`` lists them): ``bundle_path`` and ``params_file`` as in policy.launch.py
(the same parameter file feeds both nodes); ``task_index`` (index into the sim node's task list) and
``step_mode`` (``realtime`` or ``lockstep``: one simulation step per command) override the file's
values when not empty; ``namespace`` and ``log_level`` apply to both nodes.

Without ``launch_ros``: ``metarl-robot deploy --sim --bundle DIR`` starts the same graph.
"""


import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node

from ros_nodes.launch_support import (
    DISCOVERY_RANGE,
    LOG_LEVELS,
    check_log_level,
    check_params_file,
    default_params_file,
    node_parameters,
)

PACKAGE = "metarl_robot_ros"
SIM_ROBOT_NODE = "metarl_sim_robot_node"
POLICY_LAUNCH_FILE = "policy.launch.py"

SIM_PARAMETER_ARGUMENTS = ("task_index", "step_mode")
"""Launch arguments that, when not empty, set the sim robot node's parameter of the same name."""
POLICY_LAUNCH_ARGUMENTS = ("bundle_path", "params_file", "namespace", "log_level")
"""Launch arguments handed on to policy.launch.py."""
STEP_MODES = ("realtime", "lockstep")


def _sim_robot_node(context, *args, **kwargs):
    params_file = check_params_file(LaunchConfiguration("params_file").perform(context))
    overrides = {}
    task_index = LaunchConfiguration("task_index").perform(context).strip()
    if task_index:
        value = yaml.safe_load(task_index)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RuntimeError(f"task_index must be an integer >= 0, not {task_index!r}")
        overrides["task_index"] = value
    step_mode = LaunchConfiguration("step_mode").perform(context).strip()
    if step_mode:
        if step_mode not in STEP_MODES:
            raise RuntimeError(f"step_mode must be one of {', '.join(STEP_MODES)}, not {step_mode!r}")
        overrides["step_mode"] = step_mode
    log_level = check_log_level(LaunchConfiguration("log_level").perform(context))
    namespace = LaunchConfiguration("namespace").perform(context).strip()
    namespaced = bool(namespace.strip("/") or (context.launch_configurations.get("ros_namespace") or "").strip("/"))
    parameters = node_parameters(params_file, SIM_ROBOT_NODE, namespaced, overrides)
    return [
        Node(
            package=PACKAGE,
            executable=SIM_ROBOT_NODE,
            name=SIM_ROBOT_NODE,
            namespace=namespace,
            parameters=parameters,
            ros_arguments=["--log-level", log_level],
            output="screen",
            additional_env={DISCOVERY_RANGE: EnvironmentVariable(DISCOVERY_RANGE, default_value="LOCALHOST")},
        )
    ]


def generate_launch_description() -> LaunchDescription:
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([ThisLaunchFileDir(), POLICY_LAUNCH_FILE])),
        launch_arguments=[(name, LaunchConfiguration(name)) for name in POLICY_LAUNCH_ARGUMENTS],
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument("bundle_path", default_value="", description="exported bundle directory"),
            DeclareLaunchArgument("params_file", default_value=default_params_file(),
                                  description="ROS 2 parameter file of both nodes"),
            DeclareLaunchArgument("task_index", default_value="",
                                  description="object to simulate: index into the task list (empty: the file's)"),
            DeclareLaunchArgument("step_mode", default_value="",
                                  description="realtime | lockstep (one step per command); empty: the file's"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of both nodes"),
            DeclareLaunchArgument("log_level", default_value="info", choices=list(LOG_LEVELS),
                                  description="log level of both nodes"),
            OpaqueFunction(function=_sim_robot_node),
            policy,
        ]
    )
