"""Checkpoints cannot run code: every verb refuses a pickle without unpickling it, a version-1 ``.pt``
converts through ``migrate-checkpoint`` (read with ``weights_only=True`` only), and the safetensors +
JSON format round-trips weights, metadata, optimizer and RNG state exactly."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metarl_robot.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    load_checkpoint,
    migrate_checkpoint,
    save_checkpoint,
)
from metarl_robot.cli import main
from tests.runtime.conftest import make_checkpoint, make_policy

REPO_ROOT = Path(__file__).resolve().parent.parent


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the marker file appears if anything unpickles it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _pickle_checkpoint(path: Path, marker: Path, *, style: str = "torch") -> Path:
    """A file shaped like a version-1 checkpoint whose payload creates ``marker`` when unpickled."""
    data = {"format": FORMAT, "version": 1, "policy": {"obs_dim": 2}, "payload": _CreatesFile(marker)}
    if style == "torch":
        torch.save(data, path)
    elif style == "torch_legacy":
        torch.save(data, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(data, protocol=int(style)))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload_ran"


@pytest.fixture
def evil(tmp_path: Path, marker: Path) -> Path:
    """A pickle under the new checkpoint name (the file name promises nothing)."""
    return _pickle_checkpoint(tmp_path / "evil.safetensors", marker)


def _refused(rc: int, capsys: pytest.CaptureFixture, marker: Path, *words: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("metarl-robot: error:")]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    assert not marker.exists(), "the pickle payload ran"
    return lines[0]


def test_the_payload_is_live_when_unpickled(tmp_path: Path) -> None:
    """The control: the same payload does create its file when something unpickles it."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps({"payload": _CreatesFile(control)}))
    assert control.exists()


@pytest.mark.parametrize("style", ["torch", "torch_legacy", "2", "4", "5"])
def test_load_refuses_every_pickle_form_without_running_it(tmp_path: Path, marker: Path, style: str) -> None:
    path = _pickle_checkpoint(tmp_path / "old.pt", marker, style=style)
    with pytest.raises(CheckpointError, match="is a pickle") as err:
        load_checkpoint(path)
    assert "migrate-checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------------- every verb
def test_export_refuses_a_pickle(evil: Path, marker: Path, tmp_path: Path, capsys) -> None:
    rc = main(["export", str(evil), "--out", str(tmp_path / "bundle")])
    _refused(rc, capsys, marker, "pickle", str(evil))
    assert not (tmp_path / "bundle").exists()


def test_eval_refuses_a_pickle(evil: Path, marker: Path, tmp_path: Path, capsys) -> None:
    rc = main(["eval", "--checkpoint", str(evil), "--out", str(tmp_path / "eval")])
    _refused(rc, capsys, marker, "pickle", str(evil))


def test_gif_refuses_a_pickle(evil: Path, marker: Path, tmp_path: Path, capsys) -> None:
    rc = main(["gif", "--env-id", "sim:metarl/Navigation2D-v0", "--policy", str(evil), "--out", str(tmp_path / "a.gif")])
    _refused(rc, capsys, marker, "pickle", str(evil))
    assert not (tmp_path / "a.gif").exists()


TINY_CONTEXT = {
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 2},
    "iterations": 2,
    "tasks_per_iteration": 2,
    "episodes_per_task": 2,
    "asynchronous": False,
    "checkpoint_every": 1,
    "policy": {"hidden_sizes": [8, 8], "context_dim": 2},
    "ppo": {"epochs": 1, "minibatches": 1},
    "adaptation": {"buffer_size": 10},
}
TINY_GRADIENT = {
    "method": "maml",
    "env_id": "metarl_robot.testing:metarl/PointGoal-v0",
    "tasks": {"distribution": "metarl_robot.testing:point_goal_distribution", "num_train": 8, "num_test": 2},
    "iterations": 2,
    "meta_batch_size": 2,
    "inner": {"episodes_per_step": 2},
    "policy": {"hidden_sizes": [8, 8]},
    "checkpoint_every": 1,
}


@pytest.mark.parametrize("config", [TINY_CONTEXT, TINY_GRADIENT], ids=["context_ppo", "maml"])
@pytest.mark.parametrize("name", ["last.safetensors", "last.pt"])
def test_train_resume_refuses_a_pickle_in_the_run_dir(config, name, marker: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))  # --resume reads the run's own config
    planted = _pickle_checkpoint(run / "checkpoints" / name, marker)
    rc = main(["train", "--run-dir", str(run), "--resume", "--no-progress"])
    line = _refused(rc, capsys, marker, str(planted), "migrate-checkpoint")
    assert "pickle" in line
    assert planted.read_bytes()[:4] == b"PK\x03\x04", "the planted file is left as it was"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """``(bundle, checkpoint)``: a bundle exported from a checkpoint this module owns."""
    from metarl_robot.export import export_bundle

    root = tmp_path_factory.mktemp("safety")
    checkpoint = make_checkpoint(root / "good.safetensors")
    return export_bundle(checkpoint, root / "bundle"), checkpoint


def test_verify_refuses_a_pickle_given_as_checkpoint(exported, evil: Path, marker: Path, capsys) -> None:
    bundle, _ = exported
    rc = main(["verify", str(bundle), "--checkpoint", str(evil)])
    _refused(rc, capsys, marker, "pickle", str(evil))


def test_verify_refuses_a_pickle_named_by_the_bundle_provenance(exported, marker: Path, capsys) -> None:
    bundle, checkpoint = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert Path(manifest["provenance"]["checkpoint_path"]) == checkpoint.resolve()
    assert main(["verify", str(bundle)]) == 0, "the genuine checkpoint verifies"
    capsys.readouterr()
    kept = checkpoint.read_bytes()
    try:
        _pickle_checkpoint(checkpoint, marker)  # swapped in after export: the manifest is untouched
        rc = main(["verify", str(bundle)])
        _refused(rc, capsys, marker, "pickle", checkpoint.name)
    finally:
        checkpoint.write_bytes(kept)


# ---------------------------------------------------------------------------------- migration
def _v1_checkpoint(path: Path, policy, **fields) -> Path:
    """A version-1 checkpoint as the old ``save_checkpoint`` wrote it (no policy class: ContextPolicy)."""
    import dataclasses

    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "policy": {
                "obs_dim": policy.obs_dim,
                "act_dim": policy.act_dim,
                "action_scale": policy.action_scale.tolist(),
                "config": dataclasses.asdict(policy.config),
            },
            "state_dict": policy.state_dict(),
            "code_version": "0.1.0+gold",
            **fields,
        },
        path,
    )
    return path


def test_migrate_checkpoint_converts_a_version_1_file_exactly(tmp_path: Path, capsys) -> None:
    policy = make_policy(3)
    old = _v1_checkpoint(tmp_path / "old.pt", policy, method="context_ppo", seed=3, iteration=9, metrics={"r": 1.5})
    with pytest.raises(CheckpointError, match="migrate-checkpoint"):
        load_checkpoint(old)
    assert main(["migrate-checkpoint", str(old)]) == 0
    new = tmp_path / "old.safetensors"
    assert str(new) in capsys.readouterr().out
    loaded, data = load_checkpoint(new)
    for key, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value) and loaded.state_dict()[key].dtype == value.dtype
    assert (data["version"], data["method"], data["seed"], data["iteration"]) == (VERSION, "context_ppo", 3, 9)
    assert data["policy"]["class"] == "ContextPolicy" and data["code_version"] == "0.1.0+gold"
    assert len(data["migrated_from"]["sha256"]) == 64
    obs, context = torch.randn(64, policy.obs_dim), torch.randn(64, policy.config.context_dim)
    assert torch.equal(loaded.command(obs, context), policy.command(obs, context))
    assert main(["migrate-checkpoint", str(old)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["migrate-checkpoint", str(new), str(tmp_path / "again.safetensors")]) == 2
    assert "already a version-2 checkpoint" in capsys.readouterr().err


def test_migrate_checkpoint_never_runs_a_payload(tmp_path: Path, marker: Path, capsys) -> None:
    old = _pickle_checkpoint(tmp_path / "old.pt", marker)
    rc = main(["migrate-checkpoint", str(old), str(tmp_path / "new.safetensors")])
    _refused(rc, capsys, marker, "cannot be migrated")
    assert not (tmp_path / "new.safetensors").exists()


# ---------------------------------------------------------------------------------- the format
def test_round_trip_keeps_weights_metadata_optimizer_and_rng_exactly(tmp_path: Path) -> None:
    policy = make_policy(1)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        policy.command(torch.randn(8, policy.obs_dim), policy.initial_context(8)).square().sum().backward()
        optimizer.step()
    rng = np.random.default_rng(7)
    rng.random(3)
    fields = {
        "method": "context_ppo",
        "interface": {"control_rate_hz": 10.0, "joint_names": ["a", "b"], "action": {"scale": [0.1, 60.0]}},
        "adaptation": {"buffer_size": 60, "cadence": "episode"},
        "config": {"hidden_sizes": (64, 64), "out": Path("runs/x"), "lr": 3e-4, "nested": {"$odd": 1}},
        "seed": 1,
        "iteration": 12,
        "metrics": {"return": np.float64(-3.25), "success": float("nan"), "peak": float("inf")},
        "optimizer": optimizer.state_dict(),
        "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
    }
    path = save_checkpoint(tmp_path / "run" / "last.safetensors", policy, **fields)
    assert [p.name for p in path.parent.iterdir()] == ["last.safetensors"], "no temp file left behind"
    loaded, data = load_checkpoint(path)

    for key, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value) and loaded.state_dict()[key].dtype == value.dtype
    assert data["interface"] == fields["interface"] and data["adaptation"] == fields["adaptation"]
    assert data["config"] == {"hidden_sizes": [64, 64], "out": "runs/x", "lr": 3e-4, "nested": {"$odd": 1}}
    assert (data["seed"], data["iteration"], data["metrics"]["return"]) == (1, 12, -3.25)
    assert np.isnan(data["metrics"]["success"]) and data["metrics"]["peak"] == float("inf")

    restored = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(data["optimizer"])
    saved_state, restored_state = optimizer.state_dict(), restored.state_dict()
    as_lists = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in saved_state["param_groups"]]
    assert restored_state["param_groups"] == as_lists, "JSON has no tuples: Adam's betas come back as a list"
    assert saved_state["state"].keys() == restored_state["state"].keys()
    for index, state in saved_state["state"].items():
        for name, value in state.items():
            assert torch.equal(restored_state["state"][index][name], value)

    again = np.random.default_rng()
    again.bit_generator.state = data["rng"]["numpy"]
    assert np.array_equal(again.random(5), rng.random(5))
    assert torch.equal(data["rng"]["torch"], fields["rng"]["torch"])

    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    document = json.loads(header["__metadata__"][FORMAT])
    assert document["version"] == VERSION and document["state_dict"]["log_std"] == {"$tensor": "state_dict/log_std"}


def test_gradient_policy_round_trips(tmp_path: Path) -> None:
    from tests.runtime.gradient_fixtures import make_gradient_checkpoint, make_gradient_policy

    policy = make_gradient_policy("meta_sgd", 2)
    loaded, data = load_checkpoint(make_gradient_checkpoint(tmp_path / "g.safetensors", "meta_sgd", seed=2))
    assert type(loaded) is type(policy) and data["policy"]["class"] == "GradientPolicy"
    for key, value in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("cut", ["inside_length", "inside_header", "inside_tensors", "last_byte"])
def test_truncated_checkpoint_is_refused_in_one_line(tmp_path: Path, cut: str, capsys) -> None:
    full = make_checkpoint(tmp_path / "full.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(full[:8], "little")
    size = {"inside_length": 5, "inside_header": header_end // 2, "inside_tensors": (header_end + len(full)) // 2,
            "last_byte": len(full) - 1}[cut]
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(full[:size])
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(torn)
    assert main(["export", str(torn), "--out", str(tmp_path / "bundle")]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "could not be read" in line and str(torn) in line


def test_corrupt_and_foreign_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "c.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a metarl_robot checkpoint"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(3)}, path, metadata={FORMAT: json.dumps({"format": FORMAT, "version": 99})})
    with pytest.raises(CheckpointError, match="version 99; this code reads 2"):
        load_checkpoint(path)
    document = {"format": FORMAT, "version": VERSION, "policy": {}, "state_dict": {"w": {"$tensor": "missing"}}}
    save_file({"w": torch.zeros(3)}, path, metadata={FORMAT: json.dumps(document)})
    with pytest.raises(CheckpointError, match="names a tensor 'missing' that the file lacks"):
        load_checkpoint(path)
    good = make_checkpoint(tmp_path / "good.safetensors")
    data = bytearray(good.read_bytes())
    data[8:9] = b"["  # the header is no longer a JSON object
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere.safetensors")


def test_a_checkpoint_can_only_name_a_known_policy_class(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "c.safetensors")
    raw = path.read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_size])
    document = json.loads(header["__metadata__"][FORMAT])
    document["policy"]["class"] = "os.system"
    header["__metadata__"][FORMAT] = json.dumps(document)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + header_size :])
    with pytest.raises(CheckpointError, match=r"class 'os\.system'"):
        load_checkpoint(path)


def test_no_code_in_the_repo_unpickles_a_file_a_user_may_hand_over() -> None:
    sources = [p for d in ("metarl_robot", "ros_nodes", "sim", "bench", "tests") for p in (REPO_ROOT / d).rglob("*.py")]
    sources = [p for p in sources if p.resolve() != Path(__file__).resolve()]
    offenders = []
    for path in sources:
        text = path.read_text()
        for needle in ("weights_only=False", "allow_pickle=True", "pickle.load(", "pickle.Unpickler("):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {needle}")
        for call in re.finditer(r"torch\.load\(((?:[^()]|\([^()]*\))*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {call.group(0)}")
    assert offenders == []


def test_shipped_checkpoints_are_safetensors_and_load() -> None:
    for model in ("grasp_context_ppo", "maml_navigation", "grasp_rl2"):
        directory = REPO_ROOT / "models" / model
        assert not list(directory.glob("*.pt"))
        policy, data = load_checkpoint(directory / "checkpoint.safetensors")
        assert data["version"] == VERSION
        raw = (directory / "checkpoint.safetensors").read_bytes()
        assert raw[8:9] == b"{" and int.from_bytes(raw[:8], "little") < len(raw), "a safetensors header first"
    # Every shipped checkpoint was written as version 2 by training itself (no migration; the migration
    # of version-1 files is tested above).
    for model, method in (("grasp_rl2", "rl2"), ("grasp_context_ppo", "context_ppo"), ("maml_navigation", "maml_trpo")):
        _, data = load_checkpoint(REPO_ROOT / "models" / model / "checkpoint.safetensors")
        assert "migrated_from" not in data and data["method"] == method


def test_save_refuses_objects_it_cannot_store_as_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="checkpoint field 'extra': a BytesIO cannot be stored"):
        save_checkpoint(tmp_path / "c.safetensors", make_policy(), extra=io.BytesIO())
    assert not list(tmp_path.iterdir())


def test_resumed_training_equals_uninterrupted_training(tmp_path: Path) -> None:
    """Optimizer and RNG state survive the format: 1 + 1 resumed iterations give the 2-iteration weights."""
    from metarl_robot.algos.context_ppo import TrainConfig, train
    from metarl_robot.config import load_config

    straight = load_checkpoint(train(load_config(TrainConfig, TINY_CONTEXT), tmp_path / "a", progress=False))[0]
    train(load_config(TrainConfig, {**TINY_CONTEXT, "iterations": 1}), tmp_path / "b", progress=False)
    resumed = load_checkpoint(train(load_config(TrainConfig, TINY_CONTEXT), tmp_path / "b", resume=True, progress=False))[0]
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_checkpoints_name_the_commit_training_started_from(monkeypatch) -> None:
    """A commit made while a run trains must not be recorded as the code the checkpoint came from."""
    import metarl_robot.checkpoint as ckpt

    monkeypatch.setattr(ckpt, "_PINNED_CODE_VERSION", None)
    monkeypatch.setattr(ckpt, "_read_code_version", lambda: "0.1.0+gstart")
    assert ckpt.pin_code_version() == "0.1.0+gstart"
    monkeypatch.setattr(ckpt, "_read_code_version", lambda: "0.1.0+glater")
    assert ckpt.code_version() == "0.1.0+gstart"
    monkeypatch.setattr(ckpt, "_PINNED_CODE_VERSION", None)
    assert ckpt.code_version() == "0.1.0+glater"


def _git(root, *args):
    import subprocess

    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"], "HOME": str(root)})


def test_code_version_says_whether_the_tree_had_uncommitted_changes(tmp_path, monkeypatch) -> None:
    import shutil

    import metarl_robot.checkpoint as ckpt
    from metarl_robot import __version__

    if shutil.which("git") is None:
        pytest.fail("git is needed to test the recorded code version")
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    commit = (tmp_path / ".git" / "refs" / "heads").glob("*").__next__().read_text().strip()
    assert ckpt._read_code_version(tmp_path) == f"{__version__}+g{commit[:12]}"

    (tmp_path / "a.py").write_text("x = 2\n")
    first = ckpt._read_code_version(tmp_path)
    assert first.startswith(f"{__version__}+g{commit[:12]}.dirty.") and len(first.rsplit(".", 1)[1]) == 8
    (tmp_path / "a.py").write_text("x = 3\n")
    assert ckpt._read_code_version(tmp_path) != first  # other changes, another digest
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "new.py").write_text("y = 1\n")  # an untracked file is a change too
    assert ".dirty." in ckpt._read_code_version(tmp_path)

    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert ckpt._read_code_version(tmp_path) == f"{__version__}+g{commit[:12]}.unchecked"
