"""metarl-robot: train, evaluate, export, verify, demo and deploy meta-policies."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CHECKPOINT = REPO_ROOT / "models" / "grasp_rl2" / "checkpoint.safetensors"
SHIPPED_CONFIG = REPO_ROOT / "configs" / "grasp_rl2.yaml"
"""The recipe of the shipped model: the default for `train` and for `demo --train`."""


def _fail(message: str) -> int:
    print(f"metarl-robot: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem, then where to read about the fix (exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(kind: type, low: float):
    """An argparse type: a ``kind`` (int or float) of at least ``low``, refused in one line otherwise."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun} >= {low:g}, got {text!r}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value

    parse.__name__ = f"{noun} >= {low:g}"
    return parse


def train_module(config_path: str | None, overrides: list[str]):
    """The algorithm package a config's ``method`` trains with, found through the family plug-ins."""
    from metarl_robot.config import ConfigError
    from metarl_robot.families import FamilyError, registry

    from metarl_robot.config import read_yaml

    method = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "method":
            method = value.strip()
    if method is None and config_path:
        data = read_yaml(config_path, "config file") or {}
        method = data.get("method") if isinstance(data, dict) else None
    try:
        return registry.algorithm(method)
    except FamilyError as err:
        raise ConfigError(str(err)) from None


def _existing_run(run: Path) -> str | None:
    """What marks ``run`` as holding a run already (its config or a checkpoint), or None."""
    for name in ("config.yaml", "checkpoints"):
        if (run / name).exists():
            return str(run / name)
    return None


def cmd_train(args: argparse.Namespace) -> int:
    from metarl_robot.config import ConfigError, load_config

    run = Path(args.run_dir)
    held = _existing_run(run)
    if args.resume:
        if args.config is not None:
            raise ConfigError(f"--resume continues {str(run)!r} as it was configured (its config.yaml); drop --config "
                              "and change values with --set KEY=VALUE, or start a new run with --config and a new --run-dir")
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"--resume: {str(run)!r} holds no run (no config.yaml); start it without --resume, "
                              "with --config CONFIG")
        source = str(run / "config.yaml")
    else:
        if held is not None:
            raise ConfigError(f"{str(run)!r} already holds a run ({held}); continue it with --resume, "
                              "or pass a new --run-dir to start another")
        source = args.config or str(SHIPPED_CONFIG)
    module = train_module(source, args.set)
    config = load_config(module.TrainConfig, source, args.set)
    from metarl_robot.algos.loop import check_run_fields

    check_run_fields(config)
    if args.resume and args.set:
        _record_overrides(run, args.set)
    path = module.train(config, args.run_dir, resume=args.resume, progress=not args.no_progress)
    run = Path(args.run_dir)
    print(f"checkpoint:   {path}\nconfig:       {run / 'config.yaml'}\ntensorboard:  tensorboard --logdir {run / 'tb'}")
    return 0


def _record_overrides(run: Path, overrides: list[str]) -> None:
    """Append a resume's ``--set`` overrides to ``RUN/resumes.log`` (config.yaml holds the result)."""
    import datetime

    with open(run / "resumes.log", "a", encoding="utf-8") as f:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        f.write(f"{stamp} --resume " + " ".join(f"--set {item}" for item in overrides) + "\n")


def _load_controller(args: argparse.Namespace, source: str, kind: str):
    """``(controller, config, label, adaptation)`` for one ``--bundle`` or ``--checkpoint``."""
    if kind == "bundle":
        from metarl_robot.runtime import load_controller

        controller = load_controller(source, providers=args.providers, seed=args.seed)
        manifest = controller.manifest
        return controller, manifest["provenance"]["config"], f"bundle {source} on {controller.provider}", manifest["adaptation"]
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.evaluation import torch_controller

    policy, data = load_checkpoint(source)
    adaptation = data["adaptation"]
    controller = torch_controller(policy, adaptation, seed=args.seed)
    return controller, data["config"], f"checkpoint {source}", adaptation


def _task_controller(args: argparse.Namespace, source: str, kind: str, *, seed: int):
    """A fresh controller of ``source`` for one evaluation task, seeded with the task's seed."""
    return _load_controller(argparse.Namespace(**{**vars(args), "seed": seed}), source, kind)[0]


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
    from metarl_robot.algos.common.tasks import build_task_distribution
    from metarl_robot.tasks import TaskError, load_task_file

    if args.task_file:
        if args.num_tasks is not None:
            raise TaskError("--num-tasks picks tasks of a split; with --task-file every task of the file runs: "
                            "drop --num-tasks or drop tasks from the file")
        # The env validates tasks of its own family (set_task raises TaskError naming the field); the
        # task takes effect only at the next reset, so checking them all up front changes nothing.
        family = getattr(getattr(env, "task", None), "family", None)
        return load_task_file(args.task_file, {family: env.set_task} if family else None)
    dist = build_task_distribution(config["tasks"])
    chosen = dist.split(args.split)
    if not chosen:
        raise TaskError(f"the {args.split!r} split of this config's task distribution is empty; "
                        f"set tasks.num_{args.split} in the training config or pick another --split")
    return chosen[: args.num_tasks] if args.num_tasks is not None else chosen


def cmd_eval(args: argparse.Namespace) -> int:
    from metarl_robot.evaluation import combine, evaluate, format_summary, write_report

    loaded, env, config = _load_controllers_and_env(args)
    tasks = _eval_tasks(args, config, env)
    adaptation = loaded[0][3]
    per_round = args.episodes_per_round or int(adaptation.get("episodes_per_step", 1))
    # In this process the loaded controller serves every task (evaluate resets it with the task's seed);
    # workers each make their own from the source, seeded the same way, so every backend agrees.
    kind, sources = ("bundle", args.bundle) if args.bundle else ("checkpoint", args.checkpoint)
    runs = [
        evaluate(controller if args.sampler == "serial" else functools.partial(_task_controller, args, source, kind),
                 env, tasks, rounds=args.rounds, episodes_per_round=per_round, seed=args.seed,
                 adapt=not args.no_adapt, sampler=args.sampler, num_workers=args.num_workers)
        for source, (controller, _, _, _) in zip(sources, loaded)
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


def cmd_migrate_checkpoint(args: argparse.Namespace) -> int:
    from metarl_robot.checkpoint import migrate_checkpoint

    path = migrate_checkpoint(args.old, args.new, overwrite=args.overwrite)
    print(f"checkpoint: {path} (version 2, safetensors + JSON, from {args.old})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from metarl_robot.verify import verify_bundle

    report = verify_bundle(args.bundle, checkpoint=args.checkpoint, trusted_keys=args.trusted_key)
    print(report.format())
    return 0 if report.ok else 1


def cmd_sign(args: argparse.Namespace) -> int:
    from metarl_robot.runtime import load_bundle
    from metarl_robot.runtime.integrity import sign_bundle

    path = sign_bundle(load_bundle(args.bundle), args.key)
    print(f"signed: {path}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from metarl_robot.runtime.integrity import generate_key_pair

    private, public = generate_key_pair(args.dir, args.name)
    print(f"private key: {private}  (sign with it: metarl-robot sign BUNDLE --key {private}; keep it secret)")
    print(f"public key:  {public}  (give it to robots: trusted_keys / verify --trusted-key {public})")
    return 0


def _gif_tasks(args: argparse.Namespace, env, env_id: str, registry: dict, config: dict | None):
    """The task to record: index ``--index`` of a task file, or of a split of the env's task distribution."""
    from metarl_robot.algos.common.tasks import resolve
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

    from metarl_robot.algos.common.tasks import resolve

    if args.policy == "random":
        env.action_space.seed(args.seed)
        return lambda obs: env.action_space.sample()
    if args.policy == "oracle":
        reference = getattr(env, "demonstrator", None)
        if not reference:
            raise ValueError(f"{type(env).__name__} has no demonstrator; use --policy random or a checkpoint")
        demonstrate = resolve(reference)
        return lambda obs: np.asarray(demonstrate(np.asarray(obs)[None], [task]))[0]
    if Path(args.policy).is_dir():
        from metarl_robot.runtime import load_controller

        # A bundle acts through the torch-free runtime, as on the robot (its manifest decides sampling).
        controller = load_controller(args.policy, providers=["cpu"], seed=args.seed)
        scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
        return lambda obs: controller.act(obs) / scale
    from metarl_robot.evaluation import torch_controller

    policy, data = checkpoint
    controller = torch_controller(policy, data["adaptation"], seed=args.seed, explore=False)
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    # The controller commands physical units; the env takes normalised actions. It acts on its prior
    # (context or initial parameters, without exploration noise): one episode leaves nothing to adapt from.
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
        checkpoint, config = None, None
        if args.policy not in ("random", "oracle") and Path(args.policy).is_dir():
            from metarl_robot.runtime import load_bundle

            config = load_bundle(args.policy).manifest["provenance"].get("config")
        elif args.policy not in ("random", "oracle"):
            from metarl_robot.checkpoint import load_checkpoint

            checkpoint = load_checkpoint(args.policy)
            config = checkpoint[1].get("config")
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


VERB_GROUP = "metarl_robot.cli_verbs"
"""Entry-point group of command-line verbs other packages add: ``name = module:add_parser`` where
``add_parser(subparsers)`` adds the verb's subparser with ``func`` set."""


def _verb_entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=VERB_GROUP), key=lambda ep: ep.name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metarl-robot", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB", parser_class=_Parser)

    p = sub.add_parser("train", help="meta-train a policy; writes checkpoints, TensorBoard logs and the resolved config")
    p.add_argument("--config", default=None, help=f"YAML config (default: {SHIPPED_CONFIG.relative_to(REPO_ROOT)}; "
                   "with --resume, the run's own config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. ppo.lr=1e-3")
    p.add_argument("--run-dir", default="runs/grasp", help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR as it was configured (its config.yaml, "
                   "plus any --set) from its latest good checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="meta-test before/after adaptation on test tasks (JSON + PNG)")
    p.add_argument("--checkpoint", nargs="+", help="training checkpoint(s) (.safetensors), evaluated in PyTorch; several "
                   "(e.g. one per training seed) are pooled: mean and CI over tasks and seeds")
    p.add_argument("--bundle", nargs="+", help="exported bundle(s), evaluated with the torch-free runtime (several are pooled)")
    p.add_argument("--providers", nargs="+", default=["cpu"], help="execution providers for --bundle, in preference order")
    p.add_argument("--task-file", help="YAML task file (your own objects); default: the config's test split")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--num-tasks", type=_at_least(int, 1), default=None, help="first N tasks of the split (default: all)")
    p.add_argument("--rounds", "--episodes", dest="rounds", type=_at_least(int, 1), default=3,
                   help="rounds per task, adapting after each; round 0 is before adaptation (default: %(default)s)")
    p.add_argument("--episodes-per-round", type=_at_least(int, 1), default=None,
                   help="episodes per round (default: the policy's own: 1 for context methods, the trajectories per "
                        "inner step for gradient methods)")
    p.add_argument("--no-adapt", action="store_true", help="never adapt (the non-adaptive baseline of the same policy)")
    p.add_argument("--sampler", choices=["serial", "subprocess", "ray"], default="serial",
                   help="where the tasks run: this process, worker processes or Ray actors; every choice gives "
                        "the same results (default: %(default)s)")
    p.add_argument("--num-workers", type=_at_least(int, 0), default=0,
                   help="workers of the subprocess and ray samplers, 0 = one per CPU core (default: %(default)s)")
    p.add_argument("--env-id", help="override the env id from the checkpoint's config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval", help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint to an ONNX bundle")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "migrate-checkpoint",
        help="convert a version-1 .pt checkpoint to .safetensors (read with torch.load(weights_only=True), never run)",
    )
    p.add_argument("old", help="version-1 checkpoint (.pt)")
    p.add_argument("new", nargs="?", help="new checkpoint (default: OLD with the .safetensors suffix)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_migrate_checkpoint)

    p = sub.add_parser("verify", help="check a bundle: schema, checksums, ONNX checker, parity")
    p.add_argument("bundle")
    p.add_argument("--checkpoint", help="also check parity against this checkpoint in PyTorch")
    p.add_argument("--trusted-key", action="append", metavar="PUBLIC.pem",
                   help="require a signature by this ed25519 public key (repeatable: any one of them)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("sign", help="sign a bundle's digest with an ed25519 key (writes BUNDLE/signature.json)")
    p.add_argument("bundle")
    p.add_argument("--key", required=True, metavar="PRIVATE.pem", help="private key from `metarl-robot keygen`")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("keygen", help="make an ed25519 key pair for signing bundles")
    p.add_argument("dir", help="folder to write NAME.pem (private, mode 600) and NAME.pub.pem into")
    p.add_argument("--name", default="bundle_signing", help="file name stem (default: %(default)s)")
    p.set_defaults(func=cmd_keygen)

    for entry_point in _verb_entry_points():
        # A verb another package provides (the ROS 2 verbs live with the nodes, in ros_nodes.cli): its
        # entry point adds the subparser. A package that fails to import only loses its own verbs.
        try:
            entry_point.load()(sub)
        except ImportError as err:
            logging.getLogger("metarl_robot.cli").debug("verb %s unavailable: %s", entry_point.name, err)

    p = sub.add_parser("gif", help="record one episode of an env as an animated GIF")
    p.add_argument("--env-id", required=True,
                   help="a registered id, e.g. metarl/Navigation2D-v0 (sim's ids are registered), or module:id")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="split of the env's task distribution to take the task from (default: %(default)s)")
    p.add_argument("--task-file", help="YAML task file to take the task from instead of a split")
    p.add_argument("--index", type=_at_least(int, 0), default=0, help="index of the task in the split or task file")
    p.add_argument("--task-seed", type=int, default=None,
                   help="seed of the task distribution (default: the checkpoint config's, else 0)")
    p.add_argument("--policy", default="random",
                   help="random, oracle (the env's demonstrator), a checkpoint .safetensors or an exported bundle "
                        "folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="reset seed (and the random policy's seed)")
    p.add_argument("--max-steps", type=_at_least(int, 1), default=200, help="stop after this many steps (default: %(default)s)")
    p.add_argument("--fps", type=_at_least(float, 0.0), default=0.0, help="frames per second (default: the env's render_fps)")
    p.add_argument("--out", default="runs/rollout.gif", help="GIF to write (default: %(default)s)")
    p.set_defaults(func=cmd_gif)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from metarl_robot.checkpoint import CheckpointError
    from metarl_robot.config import ConfigError
    from metarl_robot.tasks import TaskError

    known: tuple[type[Exception], ...] = (ConfigError, TaskError, CheckpointError)
    try:
        from metarl_robot.runtime import BundleError

        known += (BundleError,)
    except ImportError:
        pass
    try:
        from metarl_robot.export import ExportError

        known += (ExportError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except known as err:
        return _fail(str(err))
    except OSError as err:
        if err.errno is None:  # raised by this project with its own message
            return _fail(str(err))
        if isinstance(err, FileNotFoundError):
            return _fail(f"{err.filename!r} does not exist (check the path)")
        if isinstance(err, FileExistsError):
            return _fail(f"cannot create {err.filename!r}: a file is in the way; choose another folder (--out / --run-dir)")
        # A full disk, a read-only folder, a missing permission: say which file and what to do.
        where = f" {err.filename!r}" if err.filename else ""
        if args.verbose:
            logging.getLogger("metarl_robot.cli").exception("%s", err)
        return _fail(f"cannot write or read{where}: {err.strerror or err}; free some disk space or choose a writable "
                     "folder (--out / --run-dir)")
    except ValueError as err:
        if args.verbose:
            logging.getLogger("metarl_robot.cli").exception("%s", err)
        return _fail(f"{err} (run with -v for the traceback)")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
