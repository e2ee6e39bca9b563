"""The ROS 2 verbs of ``metarl-robot``: ``deploy`` (run a bundle as the policy node, optionally beside
the simulated robot) and ``demo`` (export the shipped model, start the sim robot and the adapting
policy node, swap the object mid-run).

They live with the nodes so that :mod:`metarl_robot` never imports ROS; ``metarl-robot`` finds them
through the ``metarl_robot.cli_verbs`` entry points in setup.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metarl_robot.cli import REPO_ROOT, SHIPPED_CHECKPOINT, SHIPPED_CONFIG, _fail

if TYPE_CHECKING:
    from ros_nodes.graph import NodeGraph


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.train:
        print(f"[demo] training a fresh meta-policy with {args.train} (the recipe of the shipped one)")
        from metarl_robot.cli import train_module
        from metarl_robot.config import load_config

        module = train_module(args.train, [])
        checkpoint = module.train(load_config(module.TrainConfig, args.train), out / "train", progress=True)
    else:
        checkpoint = Path(args.checkpoint)
        print(f"[demo] using the shipped checkpoint {checkpoint} (see models/README.md for the command that made it)")
    if not checkpoint.is_file():
        return _fail(f"checkpoint {checkpoint} not found; pass --checkpoint CKPT or --train")
    from metarl_robot.export import export_bundle
    from metarl_robot.verify import verify_bundle

    bundle = export_bundle(checkpoint, out / "bundle", overwrite=True)
    print(f"[demo] exported {bundle}")
    report = verify_bundle(bundle, checkpoint=checkpoint)
    print(report.format())
    if not report.ok:
        return _fail("the exported bundle failed verification")
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    command = [sys.executable, "-m", "ros_nodes.demo", "--bundle", str(bundle), "--out", str(out),
               "--episodes-per-object", str(args.episodes_per_object),
               "--objects", str(args.objects)]
    if args.object_seed is not None:
        command += ["--object-seed", str(args.object_seed)]
    print(f"[demo] starting the ROS 2 graph: {' '.join(command)}")
    return subprocess.call(command, env=env, cwd=REPO_ROOT)


def _parameter_file_sections(*paths: Path) -> dict[str, dict[str, Any]]:
    """``{node name: ros__parameters}`` merged over ROS 2 parameter files, later files winning."""
    import yaml

    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"parameter file {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(content, dict):
            raise ValueError(f"parameter file {str(path)!r} is not a mapping of node names to ros__parameters")
        for key, section in content.items():
            if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
                merged.setdefault(str(key).lstrip("/"), {}).update(section["ros__parameters"])
    return merged


def parse_node_overrides(
    items: Sequence[str], node_names: Sequence[str], reference: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``--set NODE.PARAM=VALUE`` items as ``{node: {param: value}}``, values parsed with ``yaml.safe_load``.

    ``NODE`` must be one of ``node_names``. Where ``reference`` (the parameter files' sections) holds
    the parameter, its type guides the parse: an integer for a float parameter becomes a float (ROS 2
    refuses 50 for a double), and a string parameter takes the text as given. Raises ``ValueError``
    naming the item.
    """
    import yaml

    from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME

    reference = reference or {}
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        key, equals, text = item.partition("=")
        node, dot, param = key.strip().partition(".")
        if not equals or not dot or not node or not param:
            raise ValueError(f"--set {item!r}: expected NODE.PARAM=VALUE, e.g. {POLICY_NODE_NAME}.control_rate_hz=50.0")
        if node not in node_names:
            hint = " (the simulated robot runs only with --sim)" if node == SIM_ROBOT_NODE_NAME else ""
            raise ValueError(f"--set {item!r}: no node {node!r} in this graph{hint}; its nodes: {', '.join(node_names)}")
        if node == POLICY_NODE_NAME and param == "bundle_path":
            raise ValueError(f"--set {item!r}: give the bundle with --bundle DIR")
        known = reference.get(node, {}).get(param)
        if isinstance(known, str):
            value: Any = text  # a string parameter takes the text as given (task_yaml='{mass: 0.2}', frame 123)
        else:
            try:
                value = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError as err:
                raise ValueError(f"--set {item!r}: the value is not valid YAML: {err}") from None
            if value is None or isinstance(value, dict):
                raise ValueError(f"--set {item!r}: a parameter value is a number, string, boolean or list")
            if isinstance(known, float) and type(value) is int:
                value = float(value)
        overrides.setdefault(node, {})[param] = value
    return overrides


def _say(message: str) -> None:
    print(f"[deploy] {message}", flush=True)


def _print_interfaces(graph: NodeGraph, node_name: str) -> None:
    """The node's topics and own services as the ROS graph shows them."""
    interfaces = graph.node_interfaces(node_name)
    everywhere = {"/rosout", "/parameter_events"}
    for kind in ("subscriptions", "publishers", "services"):
        entries = [(name, types) for name, types in interfaces[kind] if name not in everywhere]
        if entries:
            _say(f"{graph.node_path(node_name)} {kind}:")
            width = max(len(name) for name, _ in entries)
            for name, types in entries:
                print(f"           {name:<{width}}  {types}", flush=True)


def cmd_deploy(args: argparse.Namespace) -> int:
    bundle = Path(args.bundle).expanduser().resolve()
    if not bundle.is_dir():
        return _fail(f"bundle directory {bundle} does not exist (export one with `metarl-robot export CKPT --out DIR`)")
    if not (bundle / "manifest.json").is_file():
        return _fail(f"{bundle} is not a bundle: it has no manifest.json")
    if args.duration is not None and args.duration <= 0:
        return _fail("--duration must be > 0 seconds")
    try:
        # ros_nodes first: it keeps DDS discovery on loopback before rclpy loads.
        from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME
        from ros_nodes.graph import DEFAULT_PARAMS_FILE, GraphError, NodeGraph
    except ImportError as err:
        return _fail(f"deploy needs ROS 2's Python packages (rclpy and the message packages; "
                     f"`pip install -e '.[ros]'` or source a ROS 2 install): {err}")
    params = Path(args.params).expanduser().resolve() if args.params else DEFAULT_PARAMS_FILE
    if not params.is_file():
        return _fail(f"parameter file {params} does not exist")
    node_names = [POLICY_NODE_NAME] + ([SIM_ROBOT_NODE_NAME] if args.sim else [])
    try:
        reference = _parameter_file_sections(DEFAULT_PARAMS_FILE, params)
        overrides = parse_node_overrides(args.set, node_names, reference)
        remaps = [tuple(r.split(":=", 1)) for r in args.remap]
        bad = [r for r, pair in zip(args.remap, remaps) if len(pair) != 2 or not all(x.strip() for x in pair)]
        if bad:
            raise ValueError(f"--remap {bad[0]!r}: expected FROM:=TO, e.g. joint_command:=/forward_velocity_controller/commands")
        graph = NodeGraph(params, bundle_path=bundle, overrides=overrides, log_dir=args.log_dir,
                          start_robot=args.sim, namespace=args.namespace,
                          remappings={POLICY_NODE_NAME: remaps} if remaps else None)
    except (ValueError, GraphError) as err:
        return _fail(str(err))

    def stop_on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background of a script inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    running = False
    try:
        discovery = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "")
        _say(f"starting {', '.join(graph.node_path(n) for n in node_names)} on ROS_DOMAIN_ID={graph.domain_id} "
             f"(ROS_AUTOMATIC_DISCOVERY_RANGE={discovery}), parameters {params}")
        graph.start()
        running = True
        _say(f"{graph.node_path(POLICY_NODE_NAME)}: {graph.lifecycle_state()} (bundle {bundle})")
        if args.sim:
            _say(f"{graph.node_path(SIM_ROBOT_NODE_NAME)}: running (the simulated robot)")
        else:
            _say("no robot started: the policy holds until the robot's joint_states and pose topics arrive")
        _print_interfaces(graph, POLICY_NODE_NAME)
        for name, path in graph.log_paths.items():
            _say(f"{name} log: {path}")
        until = f"for {args.duration:g} s" if args.duration else "until Ctrl-C or SIGTERM"
        _say(f"running {until}")
        end = time.monotonic() + args.duration if args.duration else None
        while end is None or time.monotonic() < end:
            graph.check_alive()
            graph.spin_for(0.5 if end is None else max(0.0, min(0.5, end - time.monotonic())))
        _say("duration reached; stopping (the policy publishes a hold first)")
    except KeyboardInterrupt:
        _say("stopping (the policy publishes a hold first)" if running else "interrupted while starting")
    except GraphError as err:
        print(f"metarl-robot: error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        graph.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not running:
        return 130
    _say("stopped")
    return 0


def add_demo(sub: Any) -> None:
    """Add the ``demo`` verb to the ``metarl-robot`` subparsers."""
    p = sub.add_parser("demo", help="export, start the sim robot and the adapting policy node, run it on random objects")
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--train", nargs="?", const=str(SHIPPED_CONFIG), default=None, metavar="CONFIG",
                   help="train a fresh policy first (default config: the shipped model's recipe, ~6 min on 2 cores)")
    p.add_argument("--episodes-per-object", type=int, default=6)
    p.add_argument("--objects", type=int, default=5,
                   help="held-out objects drawn at random from the test split (default: %(default)s)")
    p.add_argument("--object-seed", type=int, default=None,
                   help="seed of the draw (default: a fresh one, printed so the run can be repeated)")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)


def add_deploy(sub: Any) -> None:
    """Add the ``deploy`` verb to the ``metarl-robot`` subparsers."""
    p = sub.add_parser(
        "deploy",
        help="run a bundle under ROS 2: the policy lifecycle node, active (with --sim: beside the simulated Panda)",
        description="Start the node graph of launch/policy.launch.py (or, with --sim, sim_grasp.launch.py) "
        "without ROS 2 launch, drive the policy node to active, print what runs, and run until Ctrl-C or "
        "SIGTERM; then the policy publishes a hold and the nodes stop. Uses the caller's ROS_DOMAIN_ID and "
        "keeps DDS discovery on loopback unless ROS_AUTOMATIC_DISCOVERY_RANGE is set.",
    )
    p.add_argument("--bundle", required=True, help="exported bundle directory")
    p.add_argument("--sim", action="store_true", help="also start the simulated Panda (metarl_sim_robot_node)")
    p.add_argument("--params", help="ROS 2 parameter file (default: launch/params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override a node parameter, e.g. metarl_policy_node.control_rate_hz=50.0 (value parsed as YAML)")
    p.add_argument("--log-dir", help="write each node's output to LOG_DIR/<node>.log (default: this terminal)")
    p.add_argument("--namespace", default="", help="namespace of the nodes and their topics (default: none)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="remap a topic of the policy node, e.g. joint_command:=/forward_velocity_controller/commands "
                        "or joint_states:=/franka/joint_states (repeatable)")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: run until Ctrl-C or SIGTERM)")
    p.set_defaults(func=cmd_deploy)


def cmd_replay(args: argparse.Namespace) -> int:
    from ros_nodes.recording import replay

    path = Path(args.recording)
    if not path.is_file():
        return _fail(f"recording {str(path)!r} does not exist; record one with the policy node's record_path parameter")
    try:
        report = replay(path, args.bundle, args.providers)
    except ImportError as err:
        return _fail(f"replay needs the mcap packages ({err}); install them with `make env`")
    except ValueError as err:
        return _fail(f"{path} cannot be replayed: {err}")
    if report.sessions == 0:
        return _fail(f"{path} holds no /metarl/session record: it was not written by the policy node's record_path")
    for line in report.mismatches[:10]:
        print(f"MISMATCH {line}")
    verdict = "PASS" if report.ok else "FAIL"
    print(f"{verdict}: {report.ticks - len(report.mismatches)} of {report.ticks} recorded commands reproduced bit for "
          f"bit ({report.sessions} activation(s))")
    return 0 if report.ok else 1


def add_replay(sub: Any) -> None:
    """Entry point of the ``replay`` verb."""
    p = sub.add_parser("replay", help="run a policy node recording (MCAP) through the runtime and check every command")
    p.add_argument("recording", help="MCAP file the policy node wrote (its record_path parameter)")
    p.add_argument("--bundle", help="the recorded bundle at another path (default: the path in the recording)")
    p.add_argument("--providers", nargs="+", help="execution providers (default: the recorded one)")
    p.set_defaults(func=cmd_replay)
