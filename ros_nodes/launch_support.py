"""What both launch files need to turn launch arguments into node settings, kept in one place.

Imports neither ``launch`` nor ``rclpy``: the launch files pass in the strings they resolved, so this
module is testable here, where ``launch_ros`` is not installed.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from ros_nodes import PACKAGE_NAME

PARAMS_FILE = "params.yaml"
DISCOVERY_RANGE = "ROS_AUTOMATIC_DISCOVERY_RANGE"
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def default_params_file() -> str:
    """The installed ``share/metarl_robot_ros/config/params.yaml``, else the source tree's launch/params.yaml."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        get_package_share_directory = None
    if get_package_share_directory is not None:
        try:
            return os.path.join(get_package_share_directory(PACKAGE_NAME), "config", PARAMS_FILE)
        except (PackageNotFoundError, OSError):  # not installed, or no ament environment at all
            pass
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", PARAMS_FILE)


def check_params_file(path: str) -> str:
    """``path`` made absolute; raises ``RuntimeError`` naming it if it is not a file."""
    resolved = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(resolved):
        raise RuntimeError(f"params_file {resolved!r} does not exist")
    return resolved


def check_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise RuntimeError(f"log_level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def node_section(params_file: str, node_name: str) -> dict:
    """The ``ros__parameters`` of ``node_name`` in ``params_file`` (keyed ``name`` or ``/name``), or ``{}``.

    Passed as a parameter dict, launch_ros writes it under a key that matches the node in whatever
    namespace it runs, where the file's own ``node_name:`` key matches only the root namespace.
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


def node_parameters(params_file: str, node_name: str, namespaced: bool, overrides: dict[str, Any]) -> list:
    """The ``parameters=`` list of a node: the file, its own section again when it runs in a namespace
    (the file's key no longer matches it there), then the launch arguments' overrides."""
    parameters: list = [params_file]
    if namespaced:
        section = node_section(params_file, node_name)
        if section:
            parameters.append(section)
    if overrides:
        parameters.append(overrides)
    return parameters
