"""Grasp demo: the meta-policy lifecycle node driving the simulated Panda, configured and activated.

    ros2 launch metarl_robot_ros grasp_demo.launch.py bundle_path:=/path/to/bundle
    ros2 launch metarl_robot_ros grasp_demo.launch.py bundle_path:=... use_sim_robot:=false  # real robot

Parameters come from the package's installed ``params.yaml`` (or ``params_file:=``); a non-empty
``bundle_path`` overrides the file's. Once the policy node has been configured successfully it is
activated; a failed configure leaves it unconfigured with the reason in its log and on /diagnostics.
Without ``launch_ros`` use ``python -m ros_nodes.graph``, which starts the same graph.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "metarl_robot_ros"
POLICY_NODE = "metarl_policy_node"
SIM_ROBOT_NODE = "metarl_sim_robot_node"


def _nodes(context, *args, **kwargs):
    params_file = LaunchConfiguration("params_file").perform(context)
    bundle_path = LaunchConfiguration("bundle_path").perform(context)
    policy_params = [params_file] + ([{"bundle_path": bundle_path}] if bundle_path else [])
    loopback = {"ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")}

    policy = LifecycleNode(
        package=PACKAGE,
        executable=POLICY_NODE,
        name=POLICY_NODE,
        namespace="",
        parameters=policy_params,
        output="screen",
        additional_env=loopback,
    )
    sim_robot = Node(
        package=PACKAGE,
        executable=SIM_ROBOT_NODE,
        name=SIM_ROBOT_NODE,
        namespace="",
        parameters=[params_file],
        output="screen",
        condition=IfCondition(LaunchConfiguration("use_sim_robot")),
        additional_env=loopback,
    )
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
    return [activate_when_configured, sim_robot, policy, configure]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "params.yaml")
    return LaunchDescription(
        [
            DeclareLaunchArgument("bundle_path", default_value="", description="exported bundle directory"),
            DeclareLaunchArgument("params_file", default_value=default_params, description="ROS 2 parameter file"),
            DeclareLaunchArgument("use_sim_robot", default_value="true", description="start the simulated robot"),
            OpaqueFunction(function=_nodes),
        ]
    )
