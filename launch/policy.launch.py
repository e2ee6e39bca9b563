"""The meta-policy lifecycle node alone, for a real robot: configured, then activated.

    ros2 launch metarl_robot_ros policy.launch.py bundle_path:=/abs/path/to/bundle
    ros2 launch metarl_robot_ros policy.launch.py bundle_path:=... namespace:=panda autostart:=false
    ros2 launch metarl_robot_ros policy.launch.py bundle_path:=... \\
        joint_states_topic:=/franka/joint_states joint_command_topic:=/forward_velocity_controller/commands

Arguments (``ros2 launch metarl_robot_ros policy.launch.py --show-args`` lists them):

``bundle_path``
    Exported bundle directory; when not empty it overrides the parameter file's ``bundle_path``.
``params_file``
    ROS 2 parameter file, default the package's installed ``config/params.yaml``. Its
    ``metarl_policy_node`` section applies in any namespace (in one, it is also passed as a parameter
    dict, which launch_ros keys to the node wherever it runs); other sections (``/**``) apply as usual.
``namespace``
    Namespace of the node; its relative topics (``joint_states``, ``cmd_twist``, ...) move with it.
``autostart``
    ``true`` (default): emit *configure*, then *activate* once configure has succeeded (a later
    deactivate, which also ends in *inactive*, does not re-activate it). A failed configure leaves
    the node unconfigured with the reason in its log and on ``/diagnostics``. ``false``: leave it
    unconfigured for ``ros2 lifecycle set`` or a lifecycle manager.
``log_level``
    ``debug``, ``info`` (default), ``warn``, ``error`` or ``fatal``.
``joint_states_topic``, ``joint_command_topic``, ``cmd_twist_topic``, ``gripper_command_topic``
    Where the node's topic of that name goes, applied as launch remappings (``remappings=[("joint_command",
    ...)]``). A joint-velocity bundle commanding ros2_control's forward velocity controller:
    ``joint_command_topic:=/forward_velocity_controller/commands``; a robot publishing its joint states
    elsewhere: ``joint_states_topic:=/franka/joint_states``. The defaults are the node's own names
    (relative, so they follow ``namespace``). The node's other topics (``ee_pose``, ``object_pose`` or
    the pose topics the bundle names, ``reward``, ``episode_end``) follow ``namespace``; to remap one,
    add it to ``TOPIC_ARGUMENTS`` below.

Discovery: the node gets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless that variable is set in
the launch environment, so DDS stays on this host until you say otherwise (``SUBNET`` for a robot on
the network). ``sim_grasp.launch.py`` includes this file with the simulated Panda beside it; without
``launch_ros``, ``metarl-robot deploy --bundle DIR`` starts the same node and drives it to active.
"""

import os

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "metarl_robot_ros"
POLICY_NODE = "metarl_policy_node"
PARAMS_FILE = "params.yaml"
DISCOVERY_RANGE = "ROS_AUTOMATIC_DISCOVERY_RANGE"

POLICY_PARAMETER_ARGUMENTS = ("bundle_path",)
"""Launch arguments that, when not empty, set the policy node's parameter of the same name."""
TOPIC_ARGUMENTS = {
    "joint_states_topic": "joint_states",
    "joint_command_topic": "joint_command",
    "cmd_twist_topic": "cmd_twist",
    "gripper_command_topic": "gripper_command",
}
"""Launch argument -> the policy node's topic it remaps (default: the topic's own name, no remapping)."""
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def default_params_file() -> str:
    """The installed ``share/metarl_robot_ros/config/params.yaml``, else the one beside this file (source tree)."""
    try:
        return os.path.join(get_package_share_directory(PACKAGE), "config", PARAMS_FILE)
    except PackageNotFoundError:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), PARAMS_FILE)


def node_section(params_file: str, node_name: str) -> dict:
    """The ``ros__parameters`` of ``node_name`` in ``params_file`` (keyed ``name`` or ``/name``), or ``{}``.

    Passed as a parameter dict, launch_ros writes it under a key that matches the node in whatever
    namespace it runs, where the file's own ``metarl_policy_node:`` key matches only the root namespace.
    """
    with open(params_file) as handle:
        content = yaml.safe_load(handle) or {}
    if not isinstance(content, dict):
        raise RuntimeError(f"params_file {params_file!r} is not a mapping of node names to ros__parameters")
    for key in (node_name, f"/{node_name}"):
        section = content.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            return dict(section["ros__parameters"])
    return {}


def _policy_node(context, *args, **kwargs):
    params_file = os.path.abspath(os.path.expanduser(LaunchConfiguration("params_file").perform(context)))
    if not os.path.isfile(params_file):
        raise RuntimeError(f"params_file {params_file!r} does not exist")
    overrides = {}
    for name in POLICY_PARAMETER_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context).strip()
        if value:
            overrides[name] = value
    if overrides.get("bundle_path"):
        overrides["bundle_path"] = os.path.abspath(os.path.expanduser(overrides["bundle_path"]))
        if not os.path.isdir(overrides["bundle_path"]):
            raise RuntimeError(f"bundle_path {overrides['bundle_path']!r} is not a directory")
    log_level = LaunchConfiguration("log_level").perform(context).strip().lower()
    if log_level not in LOG_LEVELS:
        raise RuntimeError(f"log_level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    remappings = []
    for argument, topic in TOPIC_ARGUMENTS.items():
        target = LaunchConfiguration(argument).perform(context).strip()
        if target and target != topic:
            remappings.append((topic, target))
    parameters = [params_file]
    namespace = LaunchConfiguration("namespace").perform(context).strip()
    if namespace.strip("/") or (context.launch_configurations.get("ros_namespace") or "").strip("/"):
        # In a namespace the file's "metarl_policy_node:" key no longer matches the node; its section does.
        section = node_section(params_file, POLICY_NODE)
        if section:
            parameters.append(section)
    if overrides:
        parameters.append(overrides)

    policy = LifecycleNode(
        package=PACKAGE,
        executable=POLICY_NODE,
        name=POLICY_NODE,
        namespace=namespace,
        parameters=parameters,
        remappings=remappings,
        ros_arguments=["--log-level", log_level],
        output="screen",
        # Loopback discovery unless the launch environment says otherwise.
        additional_env={DISCOVERY_RANGE: EnvironmentVariable(DISCOVERY_RANGE, default_value="LOCALHOST")},
    )
    if not IfCondition(LaunchConfiguration("autostart")).evaluate(context):
        return [policy]
    configure = EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=matches_action(policy),
            transition_id=Transition.TRANSITION_CONFIGURE,
        )
    )
    # Activate only after a successful configure (not after a later deactivate, which also ends inactive).
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=policy,
            start_state="configuring",
            goal_state="inactive",
            entities=[
                EmitEvent(
                    event=ChangeState(
                        lifecycle_node_matcher=matches_action(policy),
                        transition_id=Transition.TRANSITION_ACTIVATE,
                    )
                )
            ],
        )
    )
    return [activate_when_configured, policy, configure]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("bundle_path", default_value="", description="exported bundle directory"),
            DeclareLaunchArgument("params_file", default_value=default_params_file(),
                                  description="ROS 2 parameter file"),
            DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
            DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                                  description="configure, then activate after a successful configure"),
            DeclareLaunchArgument("log_level", default_value="info", choices=list(LOG_LEVELS),
                                  description="log level of the node"),
            *(
                DeclareLaunchArgument(argument, default_value=topic, description=f"remap the node's {topic} topic")
                for argument, topic in TOPIC_ARGUMENTS.items()
            ),
            OpaqueFunction(function=_policy_node),
        ]
    )
