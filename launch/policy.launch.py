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
``joint_states_topic``, ``joint_command_topic``, ``joint_trajectory_topic``, ``cmd_twist_topic``, ``gripper_command_topic``
    Where the node's topic of that name goes, applied as launch remappings (``remappings=[("joint_command",
    ...)]``). A joint-velocity bundle commanding ros2_control's forward velocity controller:
    ``joint_command_topic:=/forward_velocity_controller/commands``; a robot publishing its joint states
    elsewhere: ``joint_states_topic:=/franka/joint_states``; the stamped trajectory for a joint trajectory
    controller: ``joint_trajectory_topic:=/joint_trajectory_controller/joint_trajectory``. The defaults are the node's own names
    (relative, so they follow ``namespace``). The node's other topics (``ee_pose``, ``object_pose`` or
    the pose topics the bundle names, ``reward``, ``episode_end``) follow ``namespace``; to remap one,
    add it to ``TOPIC_ARGUMENTS`` below.

Discovery: the node gets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless that variable is set in
the launch environment, so DDS stays on this host until you say otherwise (``SUBNET`` for a robot on
the network). ``sim_grasp.launch.py`` includes this file with the simulated Panda beside it; without
``launch_ros``, ``metarl-robot deploy --bundle DIR`` starts the same node and drives it to active.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from ros_nodes.launch_support import (
    DISCOVERY_RANGE,
    LOG_LEVELS,
    check_log_level,
    check_params_file,
    default_params_file,
    node_parameters,
)

PACKAGE = "metarl_robot_ros"
POLICY_NODE = "metarl_policy_node"

POLICY_PARAMETER_ARGUMENTS = ("bundle_path",)
"""Launch arguments that, when not empty, set the policy node's parameter of the same name."""
TOPIC_ARGUMENTS = {
    "joint_states_topic": "joint_states",
    "joint_command_topic": "joint_command",
    "cmd_twist_topic": "cmd_twist",
    "gripper_command_topic": "gripper_command",
    "joint_trajectory_topic": "joint_trajectory",
}
"""Launch argument -> the policy node's topic it remaps (default: the topic's own name, no remapping)."""


def _policy_node(context, *args, **kwargs):
    params_file = check_params_file(LaunchConfiguration("params_file").perform(context))
    overrides = {}
    for name in POLICY_PARAMETER_ARGUMENTS:
        value = LaunchConfiguration(name).perform(context).strip()
        if value:
            overrides[name] = value
    if overrides.get("bundle_path"):
        overrides["bundle_path"] = os.path.abspath(os.path.expanduser(overrides["bundle_path"]))
        if not os.path.isdir(overrides["bundle_path"]):
            raise RuntimeError(f"bundle_path {overrides['bundle_path']!r} is not a directory")
    log_level = check_log_level(LaunchConfiguration("log_level").perform(context))
    remappings = []
    for argument, topic in TOPIC_ARGUMENTS.items():
        target = LaunchConfiguration(argument).perform(context).strip()
        if target and target != topic:
            remappings.append((topic, target))
    namespace = LaunchConfiguration("namespace").perform(context).strip()
    namespaced = bool(namespace.strip("/") or (context.launch_configurations.get("ros_namespace") or "").strip("/"))
    parameters = node_parameters(params_file, POLICY_NODE, namespaced, overrides)

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
