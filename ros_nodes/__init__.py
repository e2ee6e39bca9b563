"""ROS 2 nodes for metarl_robot: the meta-policy as a lifecycle node, a simulated robot, a demo.

Every process that imports this package keeps DDS discovery on the local host. The environment
variable is set here, before any module of the package imports rclpy, and child processes started
by :mod:`ros_nodes.graph` inherit it.
"""

import os

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

PACKAGE_NAME = "metarl_robot_ros"
"""The colcon/ament package name under which the nodes are installed."""
POLICY_NODE_NAME = "metarl_policy_node"
"""Default name of the policy node (and its console script)."""
SIM_ROBOT_NODE_NAME = "metarl_sim_robot_node"
"""Default name of the simulated robot node (and its console script)."""
