"""The outer training loop every method shares: resume, warm start, iterate, log, checkpoint.

A method supplies an object with ``iteration``, ``metrics``, ``checkpoint_path``, ``restore()``,
``save()``, ``warm_start()``, ``train_iteration() -> metrics`` (one collect-and-update step that
advances ``iteration``), ``progress(metrics) -> dict`` (the progress bar's fields) and ``close()``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metarl_robot.config import save_config

log = logging.getLogger("metarl_robot.train")

KEEP_LAST = 3
"""Checkpoints kept besides ``last.safetensors``: ``iter_NNNNNN.safetensors`` of the latest saves."""
BEST_KEYS = ("success/after_adaptation", "return/after_adaptation", "return/trial")
"""Training metrics that rank checkpoints for ``best.safetensors``, compared in this order."""


def _rank(metrics: Mapping[str, Any]) -> tuple[list[str], tuple[float, ...]] | None:
    """The :data:`BEST_KEYS` ``metrics`` has, and their values; None when it has none or one is NaN."""
    keys = [k for k in BEST_KEYS if k in metrics]
    values = tuple(float(metrics[k]) for k in keys)
    return (keys, values) if keys and all(v == v for v in values) else None


def _copy_atomically(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` in one rename. A copy, not a hard link: damage to one file
    must not reach the other."""
    import shutil

    tmp = target.with_name(target.name + ".tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _after_last_event_file(folder: Path) -> None:
    """Wait (at most a second) until the clock's second is past the newest event file's."""
    stamps = []
    for path in folder.glob("events.out.tfevents.*"):
        try:
            stamps.append(int(path.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if 0 < wait <= 1.5:
            time.sleep(wait)


def keep_history(checkpoint: Path, iteration: int, metrics: Mapping[str, Any], keep_last: int = KEEP_LAST) -> None:
    """After a save: keep ``iter_NNNNNN.safetensors`` of the last ``keep_last`` saves, and
    ``best.safetensors`` (with ``best.json``) for the save whose training metrics rank highest
    (:data:`BEST_KEYS`), copies written by a rename."""
    folder = checkpoint.parent
    _copy_atomically(checkpoint, folder / f"iter_{iteration:06d}.safetensors")
    for old in sorted(folder.glob("iter_*.safetensors"))[:-keep_last]:
        old.unlink(missing_ok=True)
    ranked = _rank(metrics)
    if ranked is None:
        return
    keys, rank = ranked
    record = folder / "best.json"
    try:
        best = json.loads(record.read_text(encoding="utf-8"))
        previous = tuple(best["rank"]) if best["keys"] == keys else None
    except (OSError, ValueError, KeyError, TypeError):
        previous = None
    if previous is None or rank > previous:
        _copy_atomically(checkpoint, folder / "best.safetensors")
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps({"iteration": iteration, "keys": keys, "rank": list(rank)}), encoding="utf-8")
        os.replace(tmp, record)


def check_run_fields(config: Any) -> None:
    """The fields every method's config shares, checked when it is loaded (not iterations into a run)."""
    from metarl_robot.config import ConfigError

    for name, low in (("seed", 0), ("iterations", 0), ("checkpoint_every", 1)):
        value = getattr(config, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{name}: must be a whole number >= {low}, got {value!r}")


def run_training(algo: Any, config: Any, run_dir: Path, *, resume: bool, progress: bool, desc: str) -> Path:
    """Write ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors`` while ``algo``
    trains for ``config.iterations``; returns the final checkpoint's path and closes ``algo``."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from metarl_robot.checkpoint import pin_code_version

    check_run_fields(config)
    pin_code_version()  # checkpoints name the commit training started from

    try:
        resumed = bool(resume and algo.restore())
        if resumed:
            log.info("resumed from %s at iteration %d", algo.checkpoint_path, algo.iteration)
        save_config(config, run_dir / "config.yaml")
        # A resumed run drops what the interrupted one logged after its checkpoint, so no step is logged
        # twice. TensorBoard applies the purge to the files before the new one, ordered by the creation
        # second in their names: the new file must not share a second with the last one.
        if resumed:
            _after_last_event_file(run_dir / "tb")
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=algo.iteration + 1 if resumed else None)
        # A resumed run never repeats the warm start: its checkpoint already holds it (a warm-start-only
        # run, iterations: 0, can be resumed with more iterations to fine-tune it).
        warm_rounds = getattr(getattr(config, "warm_start", None), "rounds", 0)  # a method may have no warm start
        if algo.iteration == 0 and warm_rounds > 0 and not resumed:
            warm = algo.warm_start()
            for key, value in warm.items():
                writer.add_scalar(key, value, 0)
                log.info("%s = %.4g", key, value)
            algo.metrics = dict(warm)  # what a warm-start-only run's checkpoint reports
        bar = tqdm(total=config.iterations, initial=algo.iteration, disable=not progress, desc=desc, unit="it")
        start = time.perf_counter()
        while algo.iteration < config.iterations:
            algo.metrics = {**algo.train_iteration(), "time/wall_s": time.perf_counter() - start}
            for key, value in algo.metrics.items():
                writer.add_scalar(key, value, algo.iteration)
            bar.set_postfix(**algo.progress(algo.metrics))
            bar.update(1)
            if algo.iteration % config.checkpoint_every == 0 or algo.iteration == config.iterations:
                algo.save()
                keep_history(algo.checkpoint_path, algo.iteration, algo.metrics)
        bar.close()
        writer.close()
        if not algo.checkpoint_path.exists():
            algo.save()
            keep_history(algo.checkpoint_path, algo.iteration, algo.metrics)
        return algo.checkpoint_path
    finally:
        algo.close()


def restore_checkpoint(algo: Any, method: str | Sequence[str]) -> dict[str, Any] | None:
    """Resume ``algo`` from ``algo.checkpoint_path``: the policy's weights, the optimizer's state (where
    ``algo.optimizer`` is not None and the checkpoint has one), the numpy and torch RNG states, the
    iteration and the metrics. Returns the checkpoint's fields (for a method's own extras), or ``None``
    when there is no checkpoint. A checkpoint of another method (``method``: its name, or the names it
    may continue) or env raises ``CheckpointError``."""
    import torch

    from metarl_robot.checkpoint import CheckpointError, checkpoint_exists, load_checkpoint

    if not checkpoint_exists(algo.checkpoint_path):
        return None
    policy, data = _latest_good(algo.checkpoint_path, load_checkpoint, CheckpointError)
    if data.get("method") not in ((method,) if isinstance(method, str) else tuple(method)) or data["policy"]["obs_dim"] != algo.obs_dim:
        raise CheckpointError(
            f"{algo.checkpoint_path} was written by a different method or env; use a new --run-dir to start afresh"
        )
    algo.policy.load_state_dict(policy.state_dict())
    if getattr(algo, "optimizer", None) is not None and data.get("optimizer"):
        algo.optimizer.load_state_dict(data["optimizer"])
    algo.rng.bit_generator.state = data["rng"]["numpy"]
    torch.set_rng_state(data["rng"]["torch"])
    algo.iteration, algo.metrics = int(data["iteration"]), dict(data.get("metrics", {}))
    return data


def _latest_good(path: Path, load, error: type[Exception]):
    """``load(path)``; when the latest checkpoint is truncated or corrupt, the newest kept one that loads
    (``iter_NNNNNN.safetensors``), with a warning naming both. Raises when none loads."""
    try:
        return load(path)
    except error as err:
        problem = err
    for older in sorted(path.parent.glob("iter_*.safetensors"), reverse=True):
        try:
            loaded = load(older)
        except error:
            continue
        log.warning("%s cannot be read (%s); resuming from %s instead", path, problem, older)
        return loaded
    raise problem
