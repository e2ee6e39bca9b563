"""metarl-robot: train, evaluate, export, verify, demo and deploy meta-policies."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # ROS 2 is imported lazily: the rest of the CLI works without rclpy
    from ros_nodes.graph import NodeGraph

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CHECKPOINT = REPO_ROOT / "models" / "grasp_context_ppo" / "checkpoint.pt"
SHIPPED_CONFIG = REPO_ROOT / "configs" / "grasp_meta_imitation.yaml"
"""The recipe of the shipped model: the default for `train` and for `demo --train`."""


def _fail(message: str) -> int:
    print(f"metarl-robot: error: {message}", file=sys.stderr)
    return 2


def _train_module(config_path: str | None, overrides: list[str]):
    """The algorithm package a config trains with: gradient-based when it names a ``method``."""
    import yaml

    from metarl_robot.config import ConfigError

    method = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "method":
            method = value.strip()
    if method is None and config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        method = data.get("method") if isinstance(data, dict) else None
    if method is None:
        from metarl_robot.algos import context_ppo

        return context_ppo
    from metarl_robot.algos import gradient

    if method not in gradient.METHODS:
        raise ConfigError(f"method: {method!r} is not one of {list(gradient.METHODS)} (omit it for context_ppo)")
    return gradient


def cmd_train(args: argparse.Namespace) -> int:
    from metarl_robot.config import load_config

    module = _train_module(args.config, args.set)
    config = load_config(module.TrainConfig, args.config, args.set)
    path = module.train(config, args.run_dir, resume=args.resume, progress=not args.no_progress)
    run = Path(args.run_dir)
    print(f"checkpoint:   {path}\nconfig:       {run / 'config.yaml'}\ntensorboard:  tensorboard --logdir {run / 'tb'}")
    return 0


def _load_controller(args: argparse.Namespace, source: str, kind: str):
    """``(controller, config, label, adaptation)`` for one ``--bundle`` or ``--checkpoint``."""
    if kind == "bundle":
        from metarl_robot.runtime import load_controller

        controller = load_controller(source, providers=args.providers, seed=args.seed)
        manifest = controller.manifest
        return controller, manifest["provenance"]["config"], f"bundle {source} on {controller.provider}", manifest["adaptation"]
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.evaluation import GradientTorchController, TorchController
    from metarl_robot.gradient_policy import GradientPolicy

    policy, data = load_checkpoint(source)
    adaptation = data["adaptation"]
    if isinstance(policy, GradientPolicy):
        controller = GradientTorchController(policy, adaptation, seed=args.seed)
    else:
        controller = TorchController(policy, int(adaptation["buffer_size"]))
    return controller, data["config"], f"checkpoint {source}", adaptation


def _load_controllers_and_env(args: argparse.Namespace):
    from metarl_robot.envs import make_meta_env

    if bool(args.checkpoint) == bool(args.bundle):
        raise ValueError("give --checkpoint CKPT [CKPT ...] or --bundle DIR [DIR ...], not both or neither")
    kind, sources = ("bundle", args.bundle) if args.bundle else ("checkpoint", args.checkpoint)
    loaded = [_load_controller(args, source, kind) for source in sources]
    config = loaded[0][1]
    env = make_meta_env(args.env_id or config["env_id"], config.get("env_kwargs", {}), unwrapped=True)
    return loaded, env, config


def _eval_tasks(args: argparse.Namespace, config: dict, env):
    from metarl_robot.algos.context_ppo.algo import build_task_distribution
    from metarl_robot.tasks import TaskError, load_task_file

    if args.task_file:
        # The env validates tasks of its own family (set_task raises TaskError naming the field); the
        # task takes effect only at the next reset, so checking them all up front changes nothing.
        family = getattr(getattr(env, "task", None), "family", None)
        return load_task_file(args.task_file, {family: env.set_task} if family else None)
    dist = build_task_distribution(config["tasks"])
    chosen = dist.split(args.split)
    if not chosen:
        raise TaskError(f"the {args.split!r} split of this config's task distribution is empty; "
                        f"set tasks.num_{args.split} in the training config or pick another --split")
    return chosen[: args.num_tasks] if args.num_tasks else chosen


def cmd_eval(args: argparse.Namespace) -> int:
    from metarl_robot.evaluation import combine, evaluate, format_summary, write_report

    loaded, env, config = _load_controllers_and_env(args)
    tasks = _eval_tasks(args, config, env)
    adaptation = loaded[0][3]
    per_round = args.episodes_per_round or int(adaptation.get("episodes_per_step", 1))
    runs = [
        evaluate(controller, env, tasks, rounds=args.rounds, episodes_per_round=per_round, seed=args.seed, adapt=not args.no_adapt)
        for controller, _, _, _ in loaded
    ]
    labels = [label for _, _, label, _ in loaded]
    results = runs[0] if len(runs) == 1 else combine(runs, labels)
    results["evaluated"] = labels[0] if len(labels) == 1 else labels
    title = labels[0] if len(labels) == 1 else f"{len(labels)} runs pooled"
    json_path, png_path = write_report(results, args.out, title=title)
    print(f"{title}: {len(tasks)} tasks x {len(runs)} run(s), {args.rounds} rounds of {per_round} episode(s) "
          "(round 0 = before adaptation)")
    print(format_summary(results))
    print(f"results: {json_path}\nplot:    {png_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from metarl_robot.export import export_bundle

    path = export_bundle(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"bundle: {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from metarl_robot.verify import verify_bundle

    report = verify_bundle(args.bundle, checkpoint=args.checkpoint)
    print(report.format())
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.train:
        print(f"[demo] training a fresh meta-policy with {args.train} (the recipe of the shipped one)")
        from metarl_robot.algos.context_ppo import TrainConfig, train
        from metarl_robot.config import load_config

        checkpoint = train(load_config(TrainConfig, args.train), out / "train", progress=True)
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
               "--object-a", str(args.object_a), "--object-b", str(args.object_b)]
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


def _gif_tasks(args: argparse.Namespace, env, env_id: str, registry: dict, config: dict | None):
    """The task to record: index ``--index`` of a task file, or of a split of the env's task distribution."""
    from metarl_robot.algos.context_ppo.algo import resolve
    from metarl_robot.tasks import TaskError, load_task_file

    if args.task_file:
        family = env.task.family
        tasks = load_task_file(args.task_file, {family: env.set_task})
        where = f"task file {args.task_file}"
    else:
        if config is not None and "tasks" in config:
            reference, seed = config["tasks"]["distribution"], config["tasks"]["seed"]
        elif env_id in registry:
            reference, seed = registry[env_id]["distribution"], 0
        else:
            raise TaskError(f"no task distribution is registered for {env_id!r}; pass --task-file FILE")
        if args.task_seed is not None:
            seed = args.task_seed
        # Each split is drawn task by task from its own stream, so asking for index + 1 tasks gives the
        # same task at that index as any larger split would.
        sizes = {"num_train": 1, "num_test": 0, f"num_{args.split}": max(1, args.index + 1)}
        tasks = resolve(reference)(seed=seed, **sizes).split(args.split)
        where = f"the {args.split} split of {reference} (seed {seed})"
    if not 0 <= args.index < len(tasks):
        raise TaskError(f"--index {args.index} is out of range: {where} has {len(tasks)} task(s)")
    return tasks[args.index]


def _gif_policy(args: argparse.Namespace, env, task, checkpoint):
    """``act(obs) -> action`` in the env's action space for ``--policy`` (``checkpoint``: its loaded
    ``(policy, data)`` when ``--policy`` is a checkpoint)."""
    import numpy as np

    from metarl_robot.algos.context_ppo.algo import resolve

    if args.policy == "random":
        env.action_space.seed(args.seed)
        return lambda obs: env.action_space.sample()
    if args.policy == "oracle":
        reference = getattr(env, "demonstrator", None)
        if not reference:
            raise ValueError(f"{type(env).__name__} has no demonstrator; use --policy random or a checkpoint")
        demonstrate = resolve(reference)
        return lambda obs: np.asarray(demonstrate(np.asarray(obs)[None], [task]))[0]
    from metarl_robot.evaluation import TorchController

    policy, data = checkpoint
    controller = TorchController(policy, int(data["adaptation"]["buffer_size"]))
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    # The controller commands physical units; the env takes normalised actions. It acts on its prior
    # context: one episode leaves nothing to adapt from before the episode ends.
    return lambda obs: controller.act(obs) / scale


def cmd_gif(args: argparse.Namespace) -> int:
    import importlib

    import gymnasium as gym

    from metarl_robot.envs import make_meta_env
    from metarl_robot.rendering import record_rollout, write_gif

    module_name, _, env_id = args.env_id.rpartition(":")
    module_name = module_name or "sim"
    try:
        module = importlib.import_module(module_name)  # registers the module's env ids
        env = make_meta_env(env_id, {"render_mode": "rgb_array"}, unwrapped=True)
    except (ImportError, gym.error.Error) as err:
        return _fail(f"cannot make {args.env_id!r}: {err}")
    try:
        checkpoint = None
        if args.policy not in ("random", "oracle"):
            from metarl_robot.checkpoint import load_checkpoint

            checkpoint = load_checkpoint(args.policy)
        config = checkpoint[1].get("config") if checkpoint else None
        task = _gif_tasks(args, env, env_id, getattr(module, "ENVIRONMENTS", {}), config)
        env.set_task(task)
        act = _gif_policy(args, env, task, checkpoint)
        frames = record_rollout(env, act, seed=args.seed, max_steps=args.max_steps)
        fps = args.fps or env.metadata.get("render_fps") or 10
        path = write_gif(frames, args.out, fps)
    except ValueError as err:
        return _fail(str(err))
    finally:
        env.close()
    print(f"{path}: {len(frames)} frames at {fps:g} fps of {env_id} on task {task.task_id or task.family!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metarl-robot", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,export,verify,demo,deploy,gif}")

    p = sub.add_parser("train", help="meta-train a policy; writes checkpoints, TensorBoard logs and the resolved config")
    p.add_argument("--config", default=str(SHIPPED_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. ppo.lr=1e-3")
    p.add_argument("--run-dir", default="runs/grasp", help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="meta-test before/after adaptation on test tasks (JSON + PNG)")
    p.add_argument("--checkpoint", nargs="+", help="training checkpoint(s) (.pt), evaluated in PyTorch; several "
                   "(e.g. one per training seed) are pooled: mean and CI over tasks and seeds")
    p.add_argument("--bundle", nargs="+", help="exported bundle(s), evaluated with the torch-free runtime (several are pooled)")
    p.add_argument("--providers", nargs="+", default=["cpu"], help="execution providers for --bundle, in preference order")
    p.add_argument("--task-file", help="YAML task file (your own objects); default: the config's test split")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--num-tasks", type=int, default=0, help="first N tasks of the split (0 = all)")
    p.add_argument("--rounds", "--episodes", dest="rounds", type=int, default=3,
                   help="rounds per task, adapting after each; round 0 is before adaptation (default: %(default)s)")
    p.add_argument("--episodes-per-round", type=int, default=0,
                   help="episodes per round (default: the policy's own: 1 for context methods, the trajectories per "
                        "inner step for gradient methods)")
    p.add_argument("--no-adapt", action="store_true", help="never adapt (the non-adaptive baseline of the same policy)")
    p.add_argument("--env-id", help="override the env id from the checkpoint's config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval", help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint to an ONNX bundle")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="check a bundle: schema, checksums, ONNX checker, parity")
    p.add_argument("bundle")
    p.add_argument("--checkpoint", help="also check parity against this checkpoint in PyTorch")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="export, start the sim robot and the adapting policy node, swap the object")
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--train", nargs="?", const=str(SHIPPED_CONFIG), default=None, metavar="CONFIG",
                   help="train a fresh policy first (default config: the shipped model's recipe, ~6 min on 2 cores)")
    p.add_argument("--episodes-per-object", type=int, default=6)
    p.add_argument("--object-a", type=int, default=0, help="test-split index of the first object (default: %(default)s)")
    p.add_argument("--object-b", type=int, default=11,
                   help="test-split index of the object swapped in (default %(default)s: a held-out sphere that the "
                        "shipped policy fails first and grasps after adapting, in `metarl-robot eval`)")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)

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

    p = sub.add_parser("gif", help="record one episode of an env as an animated GIF")
    p.add_argument("--env-id", required=True,
                   help="a registered id, e.g. metarl/Navigation2D-v0 (sim's ids are registered), or module:id")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="split of the env's task distribution to take the task from (default: %(default)s)")
    p.add_argument("--task-file", help="YAML task file to take the task from instead of a split")
    p.add_argument("--index", type=int, default=0, help="index of the task in the split or task file")
    p.add_argument("--task-seed", type=int, default=None,
                   help="seed of the task distribution (default: the checkpoint config's, else 0)")
    p.add_argument("--policy", default="random",
                   help="random, oracle (the env's demonstrator) or a checkpoint .pt (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="reset seed (and the random policy's seed)")
    p.add_argument("--max-steps", type=int, default=200, help="stop after this many steps (default: %(default)s)")
    p.add_argument("--fps", type=float, default=0.0, help="frames per second (default: the env's render_fps)")
    p.add_argument("--out", default="runs/rollout.gif", help="GIF to write (default: %(default)s)")
    p.set_defaults(func=cmd_gif)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from metarl_robot.checkpoint import CheckpointError
    from metarl_robot.config import ConfigError
    from metarl_robot.tasks import TaskError

    known: tuple[type[Exception], ...] = (ConfigError, TaskError, CheckpointError, FileNotFoundError, FileExistsError)
    try:
        from metarl_robot.runtime import BundleError

        known += (BundleError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except known as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
