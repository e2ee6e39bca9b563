"""Training checkpoints: one ``.pt`` file holding the policy, how to rebuild it, and its provenance.

Keys: ``format`` ("metarl_robot.checkpoint"), ``version`` (1), ``method`` (e.g. "context_ppo"),
``policy`` ({class, obs_dim, act_dim, action_scale, config}; ``class`` is "ContextPolicy" or
"GradientPolicy", absent in checkpoints written before gradient-based methods = "ContextPolicy"), ``state_dict``, ``interface`` (the env's
robot contract: observation layout, action mode/names/units, joint names, control rate),
``adaptation`` ({buffer_size, cadence, reward_source}), ``config`` (the resolved training config),
``seed``, ``iteration``, ``metrics``, ``code_version``, and optionally ``optimizer`` and ``rng``
state for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig
from metarl_robot.policies import ContextPolicy, PolicyConfig

FORMAT = "metarl_robot.checkpoint"
VERSION = 1
POLICY_CLASSES = {"ContextPolicy": (ContextPolicy, PolicyConfig), "GradientPolicy": (GradientPolicy, GradientPolicyConfig)}


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message says which file and why."""


def code_version() -> str:
    """The package version plus the git commit of the source tree when there is one."""
    from metarl_robot import __version__

    root = Path(__file__).resolve().parent.parent
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref:"):
            ref_file = root / ".git" / ref.split(" ", 1)[1]
            ref = ref_file.read_text().strip() if ref_file.exists() else ""
        return f"{__version__}+g{ref[:12]}" if ref else __version__
    except OSError:
        return __version__


def save_checkpoint(path: str | Path, policy: ContextPolicy | GradientPolicy, **fields: Any) -> Path:
    """Write atomically (temp file + rename), so an interrupted run never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[ContextPolicy | GradientPolicy, dict[str, Any]]:
    """Rebuild the policy from a checkpoint; returns ``(policy, checkpoint_dict)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a metarl_robot checkpoint (no format={FORMAT!r})")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {data.get('version')}, this code reads {VERSION}")
    spec = data["policy"]
    name = spec.get("class", "ContextPolicy")
    if name not in POLICY_CLASSES:
        raise CheckpointError(f"{str(path)!r}: unknown policy class {name!r}; known: {sorted(POLICY_CLASSES)}")
    cls, config_cls = POLICY_CLASSES[name]
    cfg = dict(spec["config"])
    cfg["hidden_sizes"] = tuple(cfg["hidden_sizes"])
    policy = cls(spec["obs_dim"], spec["act_dim"], spec["action_scale"], config_cls(**cfg))
    policy.load_state_dict(data["state_dict"])
    policy.eval()
    return policy, data
