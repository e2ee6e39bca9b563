"""Training checkpoints: one ``.safetensors`` file of tensors and JSON, with nothing in it that runs.

The file is a plain safetensors file. Its tensors are the policy's ``state_dict`` (named
``state_dict/<parameter>``) and, in checkpoints written during training for ``--resume``, the
optimizer's state tensors (``optimizer/...``) and torch's RNG state (``rng/torch``). Everything else is
one JSON document in the header metadata under the key ``metarl_robot.checkpoint``:

``format`` ("metarl_robot.checkpoint"), ``version`` (2), ``method`` (e.g. "context_ppo"), ``policy``
({class, obs_dim, act_dim, action_scale, config}; ``class`` is "ContextPolicy" or "GradientPolicy"),
``state_dict``, ``interface`` (the env's robot contract: observation layout, action mode/names/units,
joint names, control rate), ``adaptation``, ``config`` (the resolved training config), ``seed``,
``iteration``, ``metrics``, ``code_version``, and optionally ``optimizer``, ``rng`` and
``migrated_from``. In the document a tensor is ``{"$tensor": "<name in the file>"}``, a mapping whose
keys are not all strings (the optimizer's per-parameter state) is ``{"$items": [[key, value], ...]}``,
and tuples come back as lists (JSON has no tuple).

Reading never unpickles. A pickle (a version-1 ``.pt`` checkpoint, or any ``torch.save`` file under
any name) is refused before a byte of it is interpreted; :func:`migrate_checkpoint` converts a
version-1 file by reading it with ``torch.load(weights_only=True)``, which accepts tensors and plain
containers only and refuses anything that would run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors


FORMAT = "metarl_robot.checkpoint"
VERSION = 2
SUFFIX = ".safetensors"
LEGACY_VERSION, LEGACY_SUFFIX = 1, ".pt"
MIGRATE_COMMAND = "metarl-robot migrate-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint cannot be read or written; the message says which file and why, in one line."""


_PINNED_CODE_VERSION: str | None = None


def pin_code_version() -> str:
    """Record :func:`code_version` now, so that every checkpoint this process writes afterwards names
    the commit its training started from, not a later one committed while it ran."""
    global _PINNED_CODE_VERSION
    _PINNED_CODE_VERSION = _read_code_version()
    return _PINNED_CODE_VERSION


def code_version() -> str:
    """The package version plus the git commit of the source tree when there is one (the one pinned
    at the start of training, where :func:`pin_code_version` was called), and whether the tree had
    changes not committed: ``0.1.0+g<commit>`` for a clean tree, ``0.1.0+g<commit>.dirty.<digest>``
    when tracked files differ from the commit or untracked files exist (``digest``: the first 8 hex of
    the sha256 of ``git status`` and ``git diff HEAD``, so two different sets of changes differ), and
    ``0.1.0+g<commit>.unchecked`` when git could not be run to tell."""
    return _PINNED_CODE_VERSION if _PINNED_CODE_VERSION is not None else _read_code_version()


def _read_code_version(root: Path | None = None) -> str:
    from metarl_robot import __version__

    root = Path(__file__).resolve().parent.parent if root is None else root
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref:"):
            ref_file = root / ".git" / ref.split(" ", 1)[1]
            ref = ref_file.read_text().strip() if ref_file.exists() else ""
    except OSError:
        return __version__
    if not ref:
        return __version__
    return f"{__version__}+g{ref[:12]}{_tree_changes(root)}"


def _tree_changes(root: Path) -> str:
    """``""`` for a clean work tree, ``.dirty.<digest>`` for one with changes, ``.unchecked`` when git
    cannot tell (not installed, or it failed)."""
    import hashlib
    import subprocess

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True, timeout=20).stdout

    try:
        status = git("status", "--porcelain=v1", "--untracked-files=all")
        if not status.strip():
            return ""
        diff = git("diff", "HEAD", "--binary")
    except (OSError, subprocess.SubprocessError):
        return ".unchecked"
    return f".dirty.{hashlib.sha256(status + diff).hexdigest()[:8]}"


def policy_builder(name: str) -> Callable[[Mapping[str, Any]], torch.nn.Module]:
    """``build(spec) -> policy`` for the policy class a checkpoint names in ``policy.class``: the
    registered family plug-in that trains that class rebuilds it, so a checkpoint can only pick among
    registered families' classes."""
    from metarl_robot.families import FamilyError, for_policy_class

    try:
        return for_policy_class(name).build_policy
    except FamilyError as err:
        raise CheckpointError(str(err)) from None


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(path: str | Path, policy: torch.nn.Module, **fields: Any) -> Path:
    """Write ``policy`` and ``fields`` (JSON-able values and tensors, e.g. an optimizer's state_dict)
    atomically (temp file + rename), so an interrupted run never leaves a torn checkpoint."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "policy": {
            "class": type(policy).__name__,
            "obs_dim": policy.obs_dim,
            "act_dim": policy.act_dim,
            "action_scale": policy.action_scale.tolist(),
            "config": dataclasses.asdict(policy.config),
        },
        "state_dict": policy.state_dict(),
        "code_version": code_version(),
        **fields,
    }
    return _write(Path(path), data)


def _write(path: Path, data: Mapping[str, Any]) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    document = _encode(data, "", tensors)
    blob = save_tensors(tensors, metadata={FORMAT: json.dumps(document)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` under names that follow their path."""
    if isinstance(value, torch.Tensor):
        key, n = name or "tensor", 1
        while key in tensors:
            key, n = f"{name}#{n}", n + 1
        # A copy of its own: safetensors refuses tensors that share memory.
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, f"{name}/{k}" if name else k, tensors) for k, v in value.items()}
        for k in value:
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise TypeError(f"checkpoint field {name!r}: a mapping key of type {type(k).__name__} cannot be stored")
        return {"$items": [[k, _encode(v, f"{name}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"checkpoint field {name!r}: a {type(value).__name__} cannot be stored "
        "(tensors, numbers, strings, lists and dicts only)"
    )


# ------------------------------------------------------------------------------------ reading
def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the policy from a checkpoint; returns ``(policy, checkpoint_dict)``.

    Raises :class:`CheckpointError` (one line) for a missing, truncated or foreign file, and for any
    pickle, whose contents are never interpreted."""
    path = Path(path)
    data = _read(path)
    spec = data.get("policy")
    if not isinstance(spec, dict) or not isinstance(data.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has no 'policy' and 'state_dict' sections")
    try:
        policy = policy_builder(spec.get("class", ""))(spec)
        policy.load_state_dict(data["state_dict"])
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: {err}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(f"checkpoint {str(path)!r}: the policy cannot be rebuilt from it: {detail}") from None
    policy.eval()
    return policy, data


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``--resume`` finds a checkpoint at ``path``. A version-1 ``.pt`` beside it (a run begun
    before format 2) raises :class:`CheckpointError` naming the migration, instead of starting afresh."""
    path = Path(path)
    if path.exists():
        return True
    legacy = path.with_suffix(LEGACY_SUFFIX)
    if legacy.exists():
        raise CheckpointError(
            f"{legacy} is a version-1 (pickle) checkpoint, which is not read; convert it with "
            f"`{MIGRATE_COMMAND} {legacy} {path}`, then resume"
        )
    return False


def _read(path: Path) -> dict[str, Any]:
    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{where} does not exist" if not path.exists() else f"{where} is not a file")
    raw = path.read_bytes()
    header_size = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else -1
    if not (0 < header_size <= len(raw) - 8 and raw[8:9] == b"{"):
        if _is_pickle(raw):
            raise CheckpointError(_pickle_refusal(path))
        raise CheckpointError(f"{where} could not be read: not a safetensors file, or truncated ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8 : 8 + header_size])
        document = json.loads(header["__metadata__"][FORMAT])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{where} is not a metarl_robot checkpoint (no {FORMAT!r} metadata)") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a metarl_robot checkpoint (no format={FORMAT!r})")
    if document.get("version") != VERSION:
        raise CheckpointError(f"{where} has checkpoint version {document.get('version')!r}; this code reads {VERSION}")
    try:
        tensors = load_tensors(raw)
    except Exception as err:  # safetensors reports a torn or inconsistent file with its own error type
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{where} could not be read: truncated or corrupt ({detail})") from None
    try:
        return _decode(document, tensors)
    except KeyError as err:
        raise CheckpointError(f"{where} is corrupt: its metadata names a tensor {err} that the file lacks") from None


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$tensor"}:
            return tensors[value["$tensor"]]
        if value.keys() == {"$items"}:
            return {k: _decode(v, tensors) for k, v in value["$items"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def _is_pickle(raw: bytes) -> bool:
    """A raw pickle (protocol 2 and later start with PROTO) or torch's zip archive around one."""
    return (raw[:1] == b"\x80" and raw[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or (
        raw[:4] == b"PK\x03\x04" and b"data.pkl" in raw[:512]
    )


def _pickle_refusal(path: Path) -> str:
    new = path.with_suffix(SUFFIX) if path.suffix != SUFFIX else path.with_name(f"{path.stem}-v{VERSION}{SUFFIX}")
    return (
        f"checkpoint {str(path)!r} is a pickle (torch.save) file, which can run code when loaded, so it is not "
        f"read; if it is a version-{LEGACY_VERSION} metarl_robot checkpoint, convert it with "
        f"`{MIGRATE_COMMAND} {path} {new}`"
    )


# ---------------------------------------------------------------------------------- migration
def migrate_checkpoint(old: str | Path, new: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """Convert a version-1 ``.pt`` checkpoint to this format (default ``new``: ``old`` with the
    ``.safetensors`` suffix); returns ``new``.

    ``old`` is read with ``torch.load(weights_only=True)`` only: tensors, numbers, strings and plain
    containers load, anything else is refused by torch before it can run."""
    old = Path(old)
    new = Path(new) if new is not None else old.with_suffix(SUFFIX)
    where = f"checkpoint {str(old)!r}"
    if not old.is_file():
        raise CheckpointError(f"{where} does not exist")
    if new.resolve() == old.resolve():
        raise CheckpointError(f"the new checkpoint must be another file than {str(old)!r}; name one ending in {SUFFIX}")
    if new.exists() and not overwrite:
        raise FileExistsError(f"{new} already exists; pass --overwrite to replace it")
    raw = old.read_bytes()
    if not _is_pickle(raw):
        try:
            _read(old)
        except CheckpointError:
            raise CheckpointError(
                f"{where} is not a version-{LEGACY_VERSION} metarl_robot checkpoint (not a torch.save file)"
            ) from None
        raise CheckpointError(f"{where} is already a version-{VERSION} checkpoint; nothing to migrate")
    try:
        data = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as err:  # torch refuses objects outside its allow-list with UnpicklingError, a torn file otherwise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{where} cannot be migrated: it holds more than tensors and plain values, or is corrupt ({first_line})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != LEGACY_VERSION:
        raise CheckpointError(f"{where} is not a version-{LEGACY_VERSION} metarl_robot checkpoint")
    data = dict(data)
    data["policy"] = {"class": "ContextPolicy", **data["policy"]}  # absent before gradient-based methods
    data["version"] = VERSION
    data["migrated_from"] = {"version": LEGACY_VERSION, "sha256": hashlib.sha256(raw).hexdigest()}
    try:
        policy_builder(data["policy"]["class"])(data["policy"]).load_state_dict(data["state_dict"])
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{where}: the policy cannot be rebuilt from it: {detail}") from None
    _write(new, data)
    load_checkpoint(new)  # read back: the new file must load on its own
    return new
