"""Process plumbing shared by the nodes' ``main()``: init, spin, signals, exit with the parent."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

PARENT_PID_ENV = "METARL_ROS_PARENT_PID"
"""Set by :class:`ros_nodes.graph.NodeGraph` so a child node exits when the graph process dies."""

_SPIN_TIMEOUT_S = 0.2


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_node(
    make_node: Callable[[], Node],
    args: Sequence[str] | None = None,
    before_exit: Callable[[Node], None] | None = None,
) -> None:
    """Create the node, spin it until SIGINT/SIGTERM or shutdown, then clean up.

    rclpy's own signal handlers are not installed: SIGINT and SIGTERM raise ``KeyboardInterrupt`` in
    the spin loop instead, so ``before_exit`` (e.g. publishing a hold command) still runs while the
    context is valid.
    """
    rclpy.init(args=list(args) if args is not None else None, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    node: Node | None = None
    try:
        try:
            node = make_node()
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            # A bad value in a parameter file or on the command line: say which, without a traceback.
            print(f"error: {err}; fix the parameter file or the --ros-args -p value", file=sys.stderr)
            rclpy.try_shutdown()
            raise SystemExit(2) from None
        # In a process of its own, what is loaded by now (rclpy, numpy, onnxruntime, the node) lives as
        # long as the process: keep the cyclic collector off it, so a full collection does not walk
        # it in the middle of a control tick. Not done for nodes created in another process.
        gc.collect()
        gc.freeze()
        _exit_with_parent(node)
        executor = make_executor(node)
        executor.add_node(node)
        profile_path = os.environ.get("METARL_PROFILE_NODE")  # development: where the node's CPU goes
        profiler = None
        if profile_path:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        while rclpy.ok():
            executor.spin_once(timeout_sec=_SPIN_TIMEOUT_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if profile_path and profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.{node.get_name() if node is not None else 'node'}")
        if node is not None:
            if before_exit is not None and rclpy.ok():
                try:
                    before_exit(node)
                except Exception as err:  # never let cleanup mask the original exit
                    node.get_logger().error(f"cleanup before exit failed: {err}")
            node.destroy_node()
        rclpy.try_shutdown()


EXECUTORS = ("single_threaded", "events")
"""Values of a node's ``executor`` parameter: rclpy's SingleThreadedExecutor, or its EventsExecutor
(callbacks dispatched from middleware events, far less overhead per message; rclpy.experimental)."""


def make_executor(node: Node):
    """The executor a node asks for with its read-only ``executor`` parameter (default single-threaded)."""
    kind = node.get_parameter("executor").value if node.has_parameter("executor") else "single_threaded"
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    return SingleThreadedExecutor()


def _exit_with_parent(node: Node) -> None:
    """When started by a graph process, shut down as soon as that process is gone (no orphans)."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:
        return
    parent_pid = int(expected)

    def check_parent() -> None:
        if os.getppid() != parent_pid:
            node.get_logger().warning(f"graph process {parent_pid} is gone; shutting down")
            raise KeyboardInterrupt

    node.create_timer(0.5, check_parent)
