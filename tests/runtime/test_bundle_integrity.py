"""Bundle format v2: an edited manifest is refused even with its per-file hashes recomputed, file
entries cannot leave the bundle, and version-1 bundles are told how to re-export."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

from metarl_robot.runtime import BundleError, load_bundle, load_controller
from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import canonical_manifest, manifest_digest, seal_manifest
from metarl_robot.verify import verify_bundle

from .gradient_fixtures import exported_gradient_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]

Edit = Callable[[dict[str, Any]], None]


def _set(section: str, key: str, value: Callable[[Any], Any]) -> Edit:
    def edit(manifest: dict[str, Any]) -> None:
        target = manifest[section] if section else manifest
        target[key] = value(target[key])

    return edit


def _widen_first(values: list[float]) -> list[float]:
    return [2.0 * values[0], *values[1:]]


CONTRACT_EDITS: dict[str, Edit] = {
    "action.low": _set("action", "low", _widen_first),
    "action.high": _set("action", "high", _widen_first),
    "action.scale": _set("action", "scale", _widen_first),
    "action.joint_names": _set("action", "joint_names", lambda names: [*names[:-2], names[-1], names[-2]]),
    "control_rate_hz": _set("", "control_rate_hz", lambda rate: 2.0 * rate),
    "control_rate_hz inf": _set("", "control_rate_hz", lambda rate: math.inf),
}
FAMILY_EDITS: dict[str, tuple[str, Edit]] = {
    "context": ("adaptation.buffer_size", _set("adaptation", "buffer_size", lambda size: size // 2)),
    "gradient": ("adaptation.episodes_per_step", _set("adaptation", "episodes_per_step", lambda n: n + 1)),
}


def edit_and_rehash(bundle: Path, edit: Edit) -> None:
    """Edit the manifest and recompute every file's sha256, as someone who knows the v1 format would;
    the digest is left as the export wrote it."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    path.write_text(json.dumps(manifest, indent=2))  # Python writes inf as Infinity, which json.loads reads


def edit_and_reseal(bundle: Path, edit: Edit) -> None:
    """Recompute the file hashes, edit the manifest, and recompute its digest too."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    edit(manifest)
    path.write_text(json.dumps(seal_manifest(manifest), indent=2))


@pytest.fixture(scope="module")
def gradient_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_gradient_bundle(tmp_path_factory, "maml")


@pytest.fixture(params=["context", "gradient"])
def family_copy(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """A private copy of a freshly exported bundle of each family."""
    source = request.getfixturevalue("bundle_dir" if request.param == "context" else "gradient_bundle")
    return request.param, Path(shutil.copytree(source, tmp_path / "bundle"))


# ------------------------------------------------------------------------------------------ digest
def test_export_seals_the_manifest(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert manifest["digest"].startswith("sha256:") and manifest["digest"] == manifest_digest(manifest)
    bundle = load_bundle(bundle_dir)
    assert bundle.digest == manifest["digest"] and bundle.signed_by is None


def test_canonical_form_ignores_layout_but_not_content() -> None:
    manifest = {"b": [1, 2.5, "é"], "a": {"y": None, "x": True}, "digest": "sha256:" + "0" * 64}
    assert canonical_manifest(manifest) == '{"a":{"x":true,"y":null},"b":[1,2.5,"é"]}'.encode()
    reordered = {"a": {"x": True, "y": None}, "b": [1, 2.5, "é"]}
    assert manifest_digest(reordered) == manifest_digest(manifest)
    assert manifest_digest({**reordered, "b": [1, 2.5000001, "é"]}) != manifest_digest(manifest)


def test_reformatting_a_manifest_keeps_it_valid(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4, ensure_ascii=True))
    load_bundle(bundle_copy)


@pytest.mark.parametrize("edit_name", [*CONTRACT_EDITS, "family"])
def test_a_rehashed_manifest_edit_is_refused_everywhere(family_copy: tuple[str, Path], edit_name: str) -> None:
    family, bundle = family_copy
    key, edit = FAMILY_EDITS[family] if edit_name == "family" else (edit_name, CONTRACT_EDITS[edit_name])
    edit_and_rehash(bundle, edit)
    expected = "not a finite number" if key.endswith("inf") else "digest mismatch"

    with pytest.raises(BundleError, match=expected) as err:
        load_bundle(bundle)
    assert "re-export the bundle" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BundleError, match=expected):
        load_controller(bundle, ["cpu"])
    report = verify_bundle(bundle)
    assert not report.ok and len(report.checks) == 1 and expected in report.checks[0].detail


def test_the_digest_mismatch_names_the_re_export_command(bundle_copy: Path, checkpoint_path: Path) -> None:
    edit_and_rehash(bundle_copy, CONTRACT_EDITS["action.high"])
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert f"metarl-robot export {checkpoint_path.resolve()} --out {bundle_copy} --overwrite" in str(err.value)
    assert ("manifest.json was edited after export, so its contract (bounds, joints, rates) cannot be trusted; "
            "re-export the bundle: metarl-robot export ") in str(err.value)


def test_an_infinite_rate_cannot_be_sealed_and_is_refused_by_name(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    with pytest.raises(BundleError, match="'control_rate_hz' is not a finite number"):
        seal_manifest({**manifest, "control_rate_hz": math.inf})
    # 1e999 is valid JSON and reads as inf; the digest cannot cover it, whatever the manifest states.
    path.write_text(path.read_text().replace('"control_rate_hz": 10.0', '"control_rate_hz": 1e999'))
    with pytest.raises(BundleError, match="'control_rate_hz' is not a finite number"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m.pop("digest"), "missing key 'digest'"),
        (lambda m: m.update(digest="sha256:XYZ"), "'digest' must be 'sha256:' and 64 lowercase hex digits"),
        (lambda m: m.update(digest=manifest_digest({})), "digest mismatch"),
    ],
)
def test_a_missing_or_malformed_digest_is_refused(bundle_copy: Path, change: Edit, expected: str) -> None:
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_copy)


def test_a_key_given_twice_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace('"control_rate_hz": 10.0', '"control_rate_hz": 10.0, "control_rate_hz": 1000.0'))
    with pytest.raises(BundleError, match="not valid JSON .*'control_rate_hz' appears twice"):
        load_bundle(bundle_copy)


# --------------------------------------------------------------------------- meaning checks at load
@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m.update(control_rate_hz=0.0), "control_rate_hz must be positive and finite, got 0.0"),
        (lambda m: m.update(control_rate_hz=-10.0), "control_rate_hz must be positive and finite"),
        (lambda m: m["action"].update(low=[0.15, -0.15, -0.15, -60.0]), r"'action.low' must be below 'action.high'.*\['ee_vx'\]"),
        (lambda m: m["action"].update(high=[0.15, 0.15, 0.15, -60.0]), r"not in \['grip_force'\] \(low \[-60.0\], high \[-60.0\]\)"),
        (lambda m: m["observation"]["bounds"].update(low=m["observation"]["bounds"]["high"]),
         r"'observation.bounds.low' must be below 'observation.bounds.high'"),
        (lambda m: m["observation"]["bounds"].update(high=[1.0, 2.0]), r"'observation.bounds.high' must have 10 entries"),
        (lambda m: m["observation"]["bounds"].update(low=["-1"] * 10), r"'observation.bounds.low' must be a list of finite numbers"),
    ],
)
def test_sealed_but_meaningless_contracts_are_refused(bundle_copy: Path, change: Edit, expected: str) -> None:
    edit_and_reseal(bundle_copy, change)
    with pytest.raises(BundleError, match=expected):
        load_bundle(bundle_copy)


# ---------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    "name",
    ["../escape.bin", "/etc/passwd", "sub/../policy.onnx", "./policy.onnx", "sub//x.bin", "sub/", "a\\b.bin",
     "signature.json", "manifest.json", "C:/x.bin", ""],
)
def test_entries_that_leave_the_bundle_are_refused(bundle_copy: Path, name: str) -> None:
    edit_and_reseal(bundle_copy, lambda m: m["files"].update({name: "0" * 64}))
    with pytest.raises(BundleError, match="entries must be relative paths inside the bundle"):
        load_bundle(bundle_copy)


def test_a_symlinked_file_is_refused_even_with_the_right_content(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside_vectors.npz"
    shutil.move(bundle_copy / "test_vectors.npz", outside)
    (bundle_copy / "test_vectors.npz").symlink_to(outside)  # same bytes, same sha256
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == (
        f"{bundle_copy / 'test_vectors.npz'}: is a symbolic link; a bundle's files must be regular files inside it (a "
        "link can point anywhere, outside the checksummed bundle); copy the files in (cp -rL) or re-export the bundle")


def test_a_symlinked_directory_on_the_path_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "extra.bin").write_bytes(b"extra")
    (bundle_copy / "sub").symlink_to(outside, target_is_directory=True)
    edit_and_reseal(bundle_copy, lambda m: m["files"].update({"sub/extra.bin": sha256_file(outside / "extra.bin")}))
    with pytest.raises(BundleError, match=r"sub: is a symbolic link"):
        load_bundle(bundle_copy)


def test_a_real_subdirectory_is_allowed(bundle_copy: Path) -> None:
    (bundle_copy / "sub").mkdir()
    (bundle_copy / "sub" / "extra.bin").write_bytes(b"extra")
    edit_and_reseal(bundle_copy, lambda m: m["files"].update({"sub/extra.bin": sha256_file(bundle_copy / "sub/extra.bin")}))
    assert "sub/extra.bin" in load_bundle(bundle_copy).files


def test_a_symlinked_manifest_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "manifest.json"
    shutil.move(bundle_copy / "manifest.json", outside)
    (bundle_copy / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match=r"manifest\.json: is a symbolic link"):
        load_bundle(bundle_copy)


def test_the_bundle_directory_itself_may_be_a_link(bundle_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(bundle_dir, target_is_directory=True)
    assert load_bundle(link).path == bundle_dir.resolve()


# ---------------------------------------------------------------------------------------- version 1
def _make_version_1(bundle: Path, *, checkpoint: str | None) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.pop("digest")
    manifest["schema_version"] = 1
    if checkpoint is None:
        manifest["provenance"].pop("checkpoint_path")
    else:
        manifest["provenance"]["checkpoint_path"] = checkpoint
    path.write_text(json.dumps(manifest, indent=2))


def test_a_version_1_bundle_is_told_the_re_export_command(bundle_copy: Path) -> None:
    _make_version_1(bundle_copy, checkpoint="/models/my run/checkpoint.safetensors")
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    message = str(err.value)
    assert "schema_version 1 bundle" in message and "\n" not in message
    assert message == (
        f"{bundle_copy / 'manifest.json'}: schema_version 1 bundle: its manifest is covered by no digest, so an "
        "edit to its bounds, joint names or control rate would go unnoticed; this metarl_robot reads "
        "schema_version 2 only; re-export it: metarl-robot export '/models/my run/checkpoint.safetensors' "
        f"--out {bundle_copy} --overwrite")
    assert message.endswith(f"re-export it: metarl-robot export '/models/my run/checkpoint.safetensors' --out {bundle_copy} --overwrite")
    assert "schema_version 1 bundle" in verify_bundle(bundle_copy).checks[0].detail


def test_a_version_1_bundle_without_a_recorded_checkpoint_gets_a_placeholder(bundle_copy: Path) -> None:
    _make_version_1(bundle_copy, checkpoint=None)
    with pytest.raises(BundleError, match=f"metarl-robot export CHECKPOINT --out {bundle_copy} --overwrite$"):
        load_bundle(bundle_copy)


def test_cli_refuses_a_version_1_bundle_in_one_line(bundle_copy: Path, capsys: pytest.CaptureFixture) -> None:
    from metarl_robot.cli import main

    _make_version_1(bundle_copy, checkpoint="/ckpt.safetensors")
    assert main(["sign", str(bundle_copy), "--key", str(bundle_copy / "unused.pem")]) == 2
    assert main(["eval", "--bundle", str(bundle_copy)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("metarl-robot export /ckpt.safetensors --out" in line for line in lines)


# ---------------------------------------------------------------------------------------- no torch, no cryptography
def test_runtime_loads_unsigned_bundles_without_torch_or_cryptography(bundle_dir: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["cryptography"] = None
        import numpy as np
        import metarl_robot.runtime as runtime
        controller = runtime.load_controller({str(bundle_dir)!r}, ["cpu"])
        assert controller.act(np.zeros(10, np.float32)).shape == (4,)
        try:
            runtime.load_bundle({str(bundle_dir)!r}, trusted_keys=["key.pub.pem"])
        except runtime.BundleError as err:
            print(err)
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "need the 'cryptography' package" in result.stdout and "pip install cryptography" in result.stdout


@pytest.mark.parametrize("body, where", [
    ({"a": float("nan")}, "'a'"),
    ({"a": {"b": [1.0, float("inf")]}}, "'a.b[1]'"),
    ({"a": [{"c": 2.0}, {"c": -float("inf")}]}, "'a[1].c'"),
])
def test_a_non_finite_manifest_value_is_named_by_its_path(body, where):
    from metarl_robot.runtime.integrity import canonical_manifest

    with pytest.raises(BundleError) as err:
        canonical_manifest(body)
    assert str(err.value) == (f"manifest.json: {where} is not a finite number; a bundle manifest holds finite "
                              "JSON numbers only; re-export the bundle")


@pytest.mark.parametrize("provenance, named", [
    ({"checkpoint_path": "/runs/a b/last.safetensors"}, "'/runs/a b/last.safetensors'"),
    ({"checkpoint_path": "x" * 1023}, "x" * 1023),
    ({"checkpoint_path": "x" * 1024}, "CHECKPOINT"),  # too long to trust in a message
    ({"checkpoint_path": "a\nb"}, "CHECKPOINT"),  # not printable
    ({"checkpoint_path": ""}, "CHECKPOINT"),
    ({"checkpoint_path": 7}, "CHECKPOINT"),
    ({}, "CHECKPOINT"),
    ("not a mapping", "CHECKPOINT"),
])
def test_the_re_export_command_names_only_a_printable_recorded_checkpoint(provenance, named, tmp_path):
    from metarl_robot.runtime.integrity import reexport_command

    command = reexport_command(tmp_path / "bundle", {"provenance": provenance})
    assert command == f"metarl-robot export {named} --out {tmp_path / 'bundle'} --overwrite"


@pytest.mark.parametrize("name", ["c:evil.onnx", "C:evil.onnx", "/etc/passwd", "a//b.npy", "a/./b.npy", "../b.npy",
                                  "a\\b.npy", "bad\nname.npy", "", 7, None, "manifest.json", "signature.json"])
def test_a_files_entry_outside_the_bundle_is_refused(name):
    from metarl_robot.runtime.integrity import RESERVED_NAMES, check_entry_name

    with pytest.raises(BundleError) as err:
        check_entry_name("b/manifest.json", name)
    assert str(err.value) == (
        f"b/manifest.json: files lists {name!r}; entries must be relative paths inside the bundle (no '..', '.' or "
        f"empty parts, not absolute, '/' as separator, not {' or '.join(RESERVED_NAMES)})")


@pytest.mark.parametrize("name", ["policy.onnx", "sub/params.npy", "a.b/c-d_e.npz"])
def test_a_plain_relative_files_entry_is_accepted(name):
    from metarl_robot.runtime.integrity import check_entry_name

    check_entry_name("b/manifest.json", name)
