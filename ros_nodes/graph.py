"""Start the node graph of the launch files without ``launch_ros``: ``python -m ros_nodes.graph``.

:class:`NodeGraph` runs the policy node and the simulated robot as child processes with the same
parameter file the launch files use (``--ros-args --params-file``), discovery on loopback and the
caller's ``ROS_DOMAIN_ID``, optionally in a namespace, drives the policy node to *active* through its
lifecycle services, and stops everything on exit (children that outlive a killed graph process exit
on their own). ``metarl-robot deploy`` is built on it. ::

    with NodeGraph("launch/params.yaml", bundle_path="bundles/grasp", log_dir="out") as graph:
        results = graph.collect(String, "/metarl_sim_robot_node/episode_result")
        graph.spin_until(lambda: len(results) >= 3, timeout_s=60)
        graph.set_parameters(SIM_ROBOT_NODE_NAME, {"task_index": 1})
        graph.trigger(f"/{POLICY_NODE_NAME}/reset_adaptation")
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ros_nodes  # noqa: F401  (keeps DDS discovery on loopback before rclpy loads)

import rclpy
import yaml
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile
from rclpy.signals import SignalHandlerOptions
from rclpy.validate_namespace import validate_namespace
from std_srvs.srv import SetBool, Trigger

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME
from ros_nodes._runner import PARENT_PID_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS_FILE = REPO_ROOT / "launch" / "params.yaml"
NODE_MODULES = {POLICY_NODE_NAME: "ros_nodes.policy_node", SIM_ROBOT_NODE_NAME: "ros_nodes.sim_robot_node"}

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE,
    "cleanup": Transition.TRANSITION_CLEANUP,
    "activate": Transition.TRANSITION_ACTIVATE,
    "deactivate": Transition.TRANSITION_DEACTIVATE,
}


class GraphError(RuntimeError):
    """The graph could not be started or driven; the message says which node and why."""


def normalize_namespace(namespace: str | None) -> str:
    """``""`` for the root namespace, else the absolute form (``robot1`` -> ``/robot1``).

    Raises :class:`GraphError` naming the problem when ``namespace`` is not a valid ROS 2 namespace.
    """
    text = (namespace or "").strip()
    if text in ("", "/"):
        return ""
    text = "/" + text.strip("/")
    try:
        validate_namespace(text)
    except Exception as err:  # rclpy's InvalidNamespaceException says which character and where
        raise GraphError(f"namespace {namespace!r} is not a valid ROS 2 namespace: {err}") from None
    return text


class NodeGraph:
    """The policy node and the simulated robot as child processes, plus a driver node to talk to them.

    ``overrides`` maps a node name to parameters that replace those of ``params_file`` (they are
    written to a second parameter file); ``bundle_path`` is shorthand for the policy node's.
    ``log_dir`` receives ``<node>.log`` with each child's output and the ROS log files; without it
    the children write to this process's terminal. ``activate=False`` leaves the policy node
    unconfigured. ``start_robot=False`` starts only the policy node (for a real robot).
    ``namespace`` puts every node (the driver too) in that namespace (``--ros-args -r __ns:=/ns``):
    their relative topics move with it, the node sections of the parameter files still apply, and
    the lifecycle and parameter calls below address the namespaced nodes. An override naming a
    parameter the node does not declare fails :meth:`start` instead of being silently ignored.
    """

    def __init__(
        self,
        params_file: str | Path | None = DEFAULT_PARAMS_FILE,
        *,
        bundle_path: str | Path | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        log_dir: str | Path | None = None,
        domain_id: int | None = None,
        activate: bool = True,
        start_robot: bool = True,
        namespace: str | None = None,
        remappings: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.params_file = Path(params_file) if params_file else None
        self.overrides: dict[str, dict[str, Any]] = {name: dict(p) for name, p in (overrides or {}).items()}
        if bundle_path is not None:
            self.overrides.setdefault(POLICY_NODE_NAME, {})["bundle_path"] = str(Path(bundle_path).resolve())
        self.log_dir = Path(log_dir) if log_dir else None
        self.domain_id = int(domain_id if domain_id is not None else os.environ.get("ROS_DOMAIN_ID", "0"))
        self.namespace = normalize_namespace(namespace)
        """``""`` (root) or the absolute namespace of every node of the graph."""
        self.remappings = {name: [tuple(pair) for pair in pairs] for name, pairs in (remappings or {}).items()}
        """Per node, ``(from, to)`` topic remappings (``--ros-args -r from:=to``)."""
        for name, pairs in self.remappings.items():
            if name not in NODE_MODULES:
                raise GraphError(f"remappings name node {name!r}; the graph's nodes are {sorted(NODE_MODULES)}")
            for source, target in pairs:
                if not source or not target or ":=" in source or ":=" in target:
                    raise GraphError(f"remapping {source!r} -> {target!r} of {name}: expected two topic names")
        self.activate_on_start = activate
        self.node_names = [POLICY_NODE_NAME] + ([SIM_ROBOT_NODE_NAME] if start_robot else [])
        self.startup_timeout_s = startup_timeout_s
        self.processes: dict[str, subprocess.Popen] = {}
        self.log_paths: dict[str, Path] = {}
        self._log_files: list[Any] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._overrides_file: Path | None = None
        self._namespaced_params_file: Path | None = None
        self._context: rclpy.Context | None = None
        self._executor: SingleThreadedExecutor | None = None
        self.node: Node | None = None
        """The driver node living in this process: create subscriptions and clients on it."""

    # --------------------------------------------------------------------------------- startup
    def __enter__(self) -> NodeGraph:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def child_env(self) -> dict[str, str]:
        """The environment of the child processes: loopback discovery, this graph's domain."""
        env = dict(os.environ)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env["ROS_DOMAIN_ID"] = str(self.domain_id)
        env[PARENT_PID_ENV] = str(os.getpid())
        env["PYTHONUNBUFFERED"] = "1"
        env["RCUTILS_COLORIZED_OUTPUT"] = "0"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if self.log_dir is not None:
            env["ROS_LOG_DIR"] = str(self.log_dir / "ros_logs")
        return env

    def node_path(self, node_name: str) -> str:
        """The fully qualified name of ``node_name`` in this graph (``/ns/metarl_policy_node``)."""
        return f"{self.namespace}/{node_name}"

    def command(self, node_name: str) -> list[str]:
        """The command line that starts ``node_name``."""
        cmd = [sys.executable, "-m", NODE_MODULES[node_name], "--ros-args"]
        if self.namespace:
            cmd += ["-r", f"__ns:={self.namespace}"]
        for source, target in self.remappings.get(node_name, ()):
            cmd += ["-r", f"{source}:={target}"]
        params_file = self._namespaced_params_file or self.params_file
        if params_file is not None:
            cmd += ["--params-file", str(params_file)]
        if self._overrides_file is not None:
            cmd += ["--params-file", str(self._overrides_file)]
        return cmd

    def start(self) -> None:
        """Start the children and the driver node; configure and activate the policy node."""
        if self.params_file is not None and not self.params_file.is_file():
            raise GraphError(f"parameter file {str(self.params_file)!r} does not exist")
        try:
            self._start_processes()
            self._start_driver()
            self.wait_for_service(f"{self.node_path(POLICY_NODE_NAME)}/change_state", ChangeState)
            if SIM_ROBOT_NODE_NAME in self.processes:
                self.wait_for_service(f"{self.node_path(SIM_ROBOT_NODE_NAME)}/set_parameters", SetParameters)
            self._check_overrides()
            if self.activate_on_start:
                self.change_state("configure")
                self.change_state("activate")
        except BaseException:
            self.stop()
            raise

    def _check_overrides(self) -> None:
        """Refuse overrides a node did not take: undeclared names, or values it does not hold (wrong type).

        ROS 2 ignores a parameter file's undeclared parameters without a word, so this asks each node.
        """
        for name, params in self.overrides.items():
            if name not in self.processes or not params:
                continue
            path = self.node_path(name)
            declared = set(self.call(ListParameters, f"{path}/list_parameters", ListParameters.Request()).result.names)
            unknown = sorted(set(params) - declared)
            if unknown:
                raise GraphError(
                    f"{name} declares no parameter {', '.join(map(repr, unknown))}; "
                    f"it declares: {', '.join(sorted(declared))}"
                )
            names = list(params)
            values = self.call(GetParameters, f"{path}/get_parameters", GetParameters.Request(names=names)).values
            for param, value in zip(names, values):
                actual = parameter_value_to_python(value)
                if not _same_value(params[param], actual):
                    raise GraphError(
                        f"{name} did not take {param}={params[param]!r} (it holds {actual!r}): "
                        f"the value has the wrong type or is out of range; see the node's log"
                    )

    def _work_dir(self) -> Path:
        """Where the generated parameter files go: the log directory, else a temporary one."""
        if self.log_dir is not None:
            target_dir = self.log_dir
        else:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="metarl_graph_")
            target_dir = Path(self._tmp.name)
        target_dir.mkdir(parents=True, exist_ok=True)
        return target_dir

    def _node_key(self, name: str) -> str:
        """The key of a node's section in a parameter file: its name, or its full name in a namespace.

        A section keyed by the bare node name matches only the node in the root namespace.
        """
        return self.node_path(name) if self.namespace else name

    def _start_processes(self) -> None:
        if self.namespace and self.params_file is not None:
            # Re-key the file's sections of bare node names so they still apply in the namespace.
            content = yaml.safe_load(self.params_file.read_text()) or {}
            if not isinstance(content, dict):
                raise GraphError(f"parameter file {str(self.params_file)!r} is not a mapping of node names")
            rekeyed = {
                (self._node_key(key) if isinstance(key, str) and "/" not in key and "*" not in key else key): value
                for key, value in content.items()
            }
            self._namespaced_params_file = self._work_dir() / "graph_params.yaml"
            self._namespaced_params_file.write_text(yaml.safe_dump(rekeyed, sort_keys=False))
        if self.overrides:
            self._overrides_file = self._work_dir() / "graph_overrides.yaml"
            content = {self._node_key(name): {"ros__parameters": params} for name, params in self.overrides.items()}
            self._overrides_file.write_text(yaml.safe_dump(content, sort_keys=False))
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.child_env()
        for name in self.node_names:
            output = None
            if self.log_dir is not None:
                self.log_paths[name] = self.log_dir / f"{name}.log"
                output = open(self.log_paths[name], "w")
                self._log_files.append(output)
            # A session of their own: a terminal's Ctrl-C reaches only this process, which then
            # stops the children in order (policy on hold first).
            self.processes[name] = subprocess.Popen(
                self.command(name),
                env=env,
                cwd=str(REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=True,
            )

    def _start_driver(self) -> None:
        self._context = rclpy.Context()
        rclpy.init(context=self._context, domain_id=self.domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(
            f"metarl_graph_driver_{os.getpid()}", namespace=self.namespace or None, context=self._context
        )
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)

    # ---------------------------------------------------------------------------------- health
    def check_alive(self) -> None:
        """Raise :class:`GraphError` with the end of its log if a child process has exited."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise GraphError(f"{name} exited with code {code}{self._log_tail(name)}")

    def _log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_paths.get(name)
        if path is None or not path.is_file():
            return ""
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        return f"; last lines of {path}:\n" + "\n".join(tail)

    # -------------------------------------------------------------------------------- spinning
    def spin_for(self, seconds: float) -> None:
        """Process the driver node's callbacks for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def spin_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Spin until ``condition()`` holds (True) or ``timeout_s`` passes (False); fails if a child dies."""
        end = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() >= end:
                return False
            self.check_alive()
            self._executor.spin_once(timeout_sec=0.05)
        return True

    def collect(self, msg_type: type, topic: str, qos: QoSProfile | int = 100) -> list:
        """Subscribe the driver node to ``topic``; the returned list fills as messages arrive while spinning.

        A relative ``topic`` resolves in the graph's namespace, as the nodes' own relative topics do.
        """
        messages: list = []
        self.node.create_subscription(msg_type, topic, messages.append, qos)
        return messages

    # -------------------------------------------------------------------------------- services
    def wait_for_service(self, name: str, srv_type: type, timeout_s: float | None = None) -> None:
        """Block until service ``name`` is offered; raises :class:`GraphError` on timeout or a dead child."""
        client = self.node.create_client(srv_type, name)
        try:
            ok = self.spin_until(client.service_is_ready, timeout_s or self.startup_timeout_s)
        finally:
            self.node.destroy_client(client)
        if not ok:
            raise GraphError(f"service {name} did not appear within {timeout_s or self.startup_timeout_s:g} s")

    def call(self, srv_type: type, name: str, request: Any = None, timeout_s: float = 30.0) -> Any:
        """Call service ``name`` and return its response; raises :class:`GraphError` on timeout."""
        client = self.node.create_client(srv_type, name)
        try:
            if not self.spin_until(client.service_is_ready, timeout_s):
                raise GraphError(f"service {name} is not available")
            future = client.call_async(request if request is not None else srv_type.Request())
            if not self.spin_until(future.done, timeout_s):
                raise GraphError(f"service {name} did not answer within {timeout_s:g} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def trigger(self, name: str, timeout_s: float = 30.0) -> Trigger.Response:
        """Call a ``std_srvs/Trigger`` service."""
        return self.call(Trigger, name, timeout_s=timeout_s)

    def set_bool(self, name: str, value: bool, timeout_s: float = 30.0) -> SetBool.Response:
        """Call a ``std_srvs/SetBool`` service."""
        return self.call(SetBool, name, SetBool.Request(data=bool(value)), timeout_s=timeout_s)

    def set_parameters(self, node_name: str, values: Mapping[str, Any]) -> list[SetParametersResult]:
        """Set parameters of a running node; returns one result per parameter (check ``successful``)."""
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
        )
        return list(self.call(SetParameters, f"{self.node_path(node_name)}/set_parameters", request).results)

    def change_state(self, transition: str) -> None:
        """Run a lifecycle transition of the policy node; raises :class:`GraphError` if it fails."""
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        response = self.call(ChangeState, f"{self.node_path(POLICY_NODE_NAME)}/change_state", request)
        if not response.success:
            raise GraphError(
                f"{POLICY_NODE_NAME}: transition {transition!r} failed (state: {self.lifecycle_state()}); "
                f"see its log{self._log_tail(POLICY_NODE_NAME, 10)}"
            )

    def lifecycle_state(self) -> str:
        """The policy node's lifecycle state label (``unconfigured``, ``inactive``, ``active``, ...)."""
        return self.call(GetState, f"{self.node_path(POLICY_NODE_NAME)}/get_state").current_state.label

    def node_interfaces(self, node_name: str, timeout_s: float = 3.0) -> dict[str, list[tuple[str, str]]]:
        """``{"publishers"|"subscriptions"|"services": [(name, type), ...]}`` of a running node.

        From the ROS graph as this process has discovered it; waits up to ``timeout_s`` for the node's
        topics to be seen (until they stop changing). Types are written ``pkg/msg/Type``; the parameter,
        lifecycle and logger services every node offers are left out of ``services``.
        """
        namespace = self.namespace or "/"
        node = self.node

        def lookup() -> dict[str, list[tuple[str, str]]]:
            found = {}
            for key, get in (
                ("publishers", node.get_publisher_names_and_types_by_node),
                ("subscriptions", node.get_subscriber_names_and_types_by_node),
                ("services", node.get_service_names_and_types_by_node),
            ):
                try:
                    entries = get(node_name, namespace)
                except Exception:  # the node is not discovered yet
                    entries = []
                found[key] = sorted((name, ", ".join(types)) for name, types in entries)
            found["services"] = [
                (name, kind) for name, kind in found["services"] if not _is_standard_service(kind)
            ]
            return found

        # Discovery brings a node's endpoints in over a few moments: wait until they stop changing.
        result, unchanged = lookup(), 0
        end = time.monotonic() + timeout_s
        while unchanged < 3 and time.monotonic() < end:
            self.spin_for(0.1)
            latest = lookup()
            unchanged = unchanged + 1 if latest == result and latest["publishers"] else 0
            result = latest
        return result

    # -------------------------------------------------------------------------------- shutdown
    def stop(self, timeout_s: float = 10.0) -> None:
        """Put the policy on hold, stop the children (SIGINT, then SIGTERM, then SIGKILL), free everything."""
        policy = self.processes.get(POLICY_NODE_NAME)
        if self.node is not None and policy is not None and policy.poll() is None:
            try:
                if self.lifecycle_state() == "active":
                    self.change_state("deactivate")
            except (GraphError, KeyboardInterrupt):
                pass
        for name in reversed(list(self.processes)):
            _terminate(self.processes[name], timeout_s)
        self.processes.clear()
        for handle in self._log_files:
            handle.close()
        self._log_files.clear()
        if self.node is not None:
            self._executor.shutdown()
            self.node.destroy_node()
            self.node = None
        if self._context is not None:
            rclpy.try_shutdown(context=self._context)
            self._context = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _same_value(expected: Any, actual: Any) -> bool:
    """Whether a node's parameter value is the one asked for (1 and 1.0 alike; lists element-wise)."""
    if isinstance(expected, (list, tuple)):
        return (isinstance(actual, (list, tuple)) and len(actual) == len(expected)
                and all(_same_value(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return float(expected) == float(actual)
    return expected == actual


_STANDARD_SERVICE_PACKAGES = ("rcl_interfaces/srv/", "lifecycle_msgs/srv/", "type_description_interfaces/srv/")


def _is_standard_service(kind: str) -> bool:
    """The parameter, lifecycle, logger-level and type-description services rclpy adds to every node."""
    return kind.startswith(_STANDARD_SERVICE_PACKAGES)


def policy_status(arrays: Sequence[Any], node_name: str = POLICY_NODE_NAME) -> tuple[int, str, dict[str, str]]:
    """``(level, message, values)`` of the newest status of ``node_name`` in collected
    ``/diagnostics`` DiagnosticArrays; ``(-1, "", {})`` when there is none yet."""
    for array in reversed(arrays):
        for status in array.status:
            if status.name.startswith(f"{node_name}:"):
                level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
                return level, status.message, {kv.key: kv.value for kv in status.values}
    return -1, "", {}


def _terminate(process: subprocess.Popen, timeout_s: float) -> None:
    for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ros_nodes.graph``: run the graph until Ctrl-C/SIGTERM or a node exits."""
    parser = argparse.ArgumentParser(prog="python -m ros_nodes.graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS_FILE), help="ROS 2 parameter file (launch/params.yaml)")
    parser.add_argument("--bundle", help="bundle directory; overrides the policy node's bundle_path")
    parser.add_argument("--log-dir", help="write each node's output to <log-dir>/<node>.log")
    parser.add_argument("--no-robot", action="store_true", help="start only the policy node (real robot)")
    parser.add_argument("--namespace", default="", help="namespace of the nodes and their topics (default: none)")
    args = parser.parse_args(argv)

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        graph = NodeGraph(args.params, bundle_path=args.bundle, log_dir=args.log_dir, start_robot=not args.no_robot,
                          namespace=args.namespace)
    except GraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        graph.start()
        names = ", ".join(graph.node_path(name) for name in graph.node_names)
        print(f"graph running on ROS_DOMAIN_ID={graph.domain_id}: {names}; Ctrl-C to stop")
        for name, path in graph.log_paths.items():
            print(f"  {name} log: {path}")
        while True:
            graph.check_alive()
            graph.spin_for(0.5)
    except KeyboardInterrupt:
        print("stopping the graph")
        return 0
    except GraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        graph.stop()


if __name__ == "__main__":
    sys.exit(main())
