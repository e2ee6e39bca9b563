"""Signed bundles: keygen, sign, and trusted keys in load_bundle, load_controller and verify."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from metarl_robot.cli import main
from metarl_robot.runtime import BundleError, load_bundle, load_controller
from metarl_robot.runtime.bundle import sha256_file
from metarl_robot.runtime.integrity import generate_key_pair, key_id, seal_manifest, sign_bundle
from metarl_robot.verify import verify_bundle
from tests.runtime.conftest import exported_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two key pairs: ``trusted`` and ``other``."""
    root = tmp_path_factory.mktemp("keys")
    return {name: generate_key_pair(root, name) for name in ("trusted", "other")}


@pytest.fixture
def bundle(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of the shared context bundle, unsigned."""
    return Path(shutil.copytree(exported_bundle(tmp_path_factory), tmp_path / "bundle"))


def public_id(public_pem: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_pem.read_bytes())
    return key_id(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def reseal(bundle: Path, change) -> None:
    """Edit the manifest and recompute its file hashes and digest: a well-informed tamperer."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["files"] = {name: sha256_file(bundle / name) for name in manifest["files"]}
    path.write_text(json.dumps(seal_manifest(manifest), indent=2))


def test_cli_keygen_sign_and_verify(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["keygen", str(tmp_path / "keys"), "--name", "lab"]) == 0
    private, public = tmp_path / "keys" / "lab.pem", tmp_path / "keys" / "lab.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and b"PUBLIC KEY" in public.read_bytes()

    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    assert main(["verify", str(bundle), "--trusted-key", str(public)]) == 0
    out = capsys.readouterr().out
    assert "[PASS] signature" in out and f"signed by trusted key {public_id(public)}" in out

    assert main(["keygen", str(tmp_path / "keys"), "--name", "lab"]) == 2  # never overwrites a key
    assert "already exists" in capsys.readouterr().err


def test_a_signed_bundle_loads_with_its_key(bundle: Path, keys) -> None:
    private, public = keys["trusted"]
    signature = sign_bundle(load_bundle(bundle), private)
    assert signature == bundle / "signature.json"
    content = json.loads(signature.read_text())
    assert content["digest"] == load_bundle(bundle).digest and len(content["signatures"]) == 1

    assert load_bundle(bundle, trusted_keys=[public]).signed_by == public_id(public)
    assert load_bundle(bundle, trusted_keys=[keys["other"][1], public]).signed_by == public_id(public)
    controller = load_controller(bundle, ["cpu"], trusted_keys=[str(public)])
    assert controller.obs_dim == 10
    assert load_bundle(bundle).signed_by is None  # no trusted keys: the signature is not needed


def test_unsigned_and_wrongly_signed_bundles_are_refused(bundle: Path, keys) -> None:
    trusted = [keys["trusted"][1]]
    named = f"{public_id(keys['trusted'][1])} ({keys['trusted'][1]})"
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=trusted)
    assert str(err.value) == (f"{bundle}: the bundle is not signed (no signature.json) but trusted keys are required "
                              f"({named}); sign it: metarl-robot sign {bundle} --key PRIVATE.pem")
    sign_bundle(load_bundle(bundle), keys["other"][0])
    with pytest.raises(BundleError) as err:
        load_controller(bundle, ["cpu"], trusted_keys=trusted)
    assert str(err.value) == (
        f"{bundle}: signed by {public_id(keys['other'][1])}, none of them a trusted key ({named}); sign it: "
        f"metarl-robot sign {bundle} --key PRIVATE.pem (a trusted one), or add its public key to the trusted keys")
    report = verify_bundle(bundle, trusted_keys=trusted)
    assert not report.ok and [c.name for c in report.failures] == ["signature"]


def test_a_second_signer_is_added_and_a_resign_replaces_its_own(bundle: Path, keys) -> None:
    sign_bundle(load_bundle(bundle), keys["trusted"][0])
    sign_bundle(load_bundle(bundle), keys["other"][0])
    sign_bundle(load_bundle(bundle), keys["other"][0])
    content = json.loads((bundle / "signature.json").read_text())
    assert sorted(e["key_id"] for e in content["signatures"]) == sorted(public_id(k[1]) for k in keys.values())
    for _, public in keys.values():
        load_bundle(bundle, trusted_keys=[public])


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["action"].update(joint_names=list(reversed(m["action"]["joint_names"]))),
        lambda m: m.update(control_rate_hz=1000.0),
        lambda m: m["adaptation"].update(buffer_size=1),
        lambda m: m["action"].update(high=[2 * v for v in m["action"]["high"]]),
    ],
    ids=["joint_names", "control_rate_hz", "buffer_size", "high"],
)
def test_a_resealed_edit_of_a_signed_bundle_is_refused(bundle: Path, keys, edit) -> None:
    private, public = keys["trusted"]
    sign_bundle(load_bundle(bundle), private)
    reseal(bundle, edit)
    load_bundle(bundle)  # the digest matches again: only the signature can tell
    with pytest.raises(BundleError, match="the bundle changed after it was signed"):
        load_bundle(bundle, trusted_keys=[public])
    with pytest.raises(BundleError, match="the bundle changed after it was signed"):
        load_controller(bundle, ["cpu"], trusted_keys=[public])
    assert "signature" in [c.name for c in verify_bundle(bundle, trusted_keys=[public]).failures]


def test_a_forged_signature_is_refused(bundle: Path, keys) -> None:
    private, public = keys["trusted"]
    path = sign_bundle(load_bundle(bundle), private)
    content = json.loads(path.read_text())
    forged = bytearray(content["signatures"][0]["signature"].encode())
    forged[5] = ord("A") if forged[5] != ord("A") else ord("B")
    content["signatures"][0]["signature"] = forged.decode()
    path.write_text(json.dumps(content))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[public])
    assert str(err.value) == (f"{path}: the signature by trusted key {public_id(public)} ({public}) does not verify: "
                              "the bundle or its signature was altered; do not deploy it")


def test_a_signature_with_characters_outside_base64_is_refused(bundle: Path, keys) -> None:
    """Lenient base64 decoding would drop the stray characters and accept the signature."""
    private, public = keys["trusted"]
    path = sign_bundle(load_bundle(bundle), private)
    content = json.loads(path.read_text())
    content["signatures"][0]["signature"] = "!" + content["signatures"][0]["signature"]
    path.write_text(json.dumps(content))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(bundle, trusted_keys=[public])


def test_one_valid_trusted_signature_is_enough_when_another_fails(bundle: Path, keys) -> None:
    sign_bundle(load_bundle(bundle), keys["trusted"][0])
    path = sign_bundle(load_bundle(bundle), keys["other"][0])
    content = json.loads(path.read_text())
    content["signatures"].sort(key=lambda e: e["key_id"] != public_id(keys["trusted"][1]))  # the failing one first
    content["signatures"][0]["signature"] = content["signatures"][1]["signature"]  # another key's: fails
    path.write_text(json.dumps(content))
    trusted = [keys["trusted"][1], keys["other"][1]]
    assert load_bundle(bundle, trusted_keys=trusted)  # the second trusted signature verifies


def test_untrusted_signers_are_listed_in_the_refusal(bundle: Path, keys, tmp_path: Path) -> None:
    sign_bundle(load_bundle(bundle), keys["trusted"][0])
    sign_bundle(load_bundle(bundle), keys["other"][0])
    third = generate_key_pair(tmp_path / "third", "third")
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[third[1]])
    signers = ", ".join(sorted(public_id(k[1]) for k in keys.values()))
    assert f"{bundle}: signed by {signers}, none of them a trusted key" in str(err.value)


def test_a_symlinked_signature_is_refused(bundle: Path, keys, tmp_path: Path) -> None:
    path = sign_bundle(load_bundle(bundle), keys["trusted"][0])
    shutil.move(path, tmp_path / "signature.json")
    path.symlink_to(tmp_path / "signature.json")
    with pytest.raises(BundleError, match=r"signature\.json: is a symbolic link"):
        load_bundle(bundle, trusted_keys=[keys["trusted"][1]])


def test_verify_reports_an_unchecked_signature_as_skipped(bundle: Path, keys) -> None:
    sign_bundle(load_bundle(bundle), keys["trusted"][0])
    check = next(c for c in verify_bundle(bundle).checks if c.name == "signature")
    assert check.status == "skip" and public_id(keys["trusted"][1]) in check.detail and "--trusted-key" in check.detail


def test_bad_key_files_get_one_line(bundle: Path, keys, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    private, public = keys["trusted"]
    assert main(["sign", str(bundle), "--key", str(public)]) == 2
    assert main(["sign", str(bundle), "--key", str(tmp_path / "absent.pem")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "is not a PEM private key" in lines[0] and "keygen" in lines[0]
    assert "does not exist" in lines[1]
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[private])
    assert str(err.value) == (f"trusted key {str(private)!r} is not a PEM public key: it holds a private key; "
                              "trust the public key (NAME.pub.pem)")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN NOTHING-----\n")
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[garbage])
    assert str(err.value) == (f"trusted key {str(garbage)!r} is not a PEM public key: give the NAME.pub.pem that "
                              "`metarl-robot keygen` wrote")
    rsa = tmp_path / "rsa.pub.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    rsa.write_bytes(
        rsa_keys.generate_private_key(65537, 2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[rsa])
    assert str(err.value) == f"trusted key {str(rsa)!r} is a RSAPublicKey; bundles are signed with ed25519 keys"


def test_re_export_drops_the_old_signature(tmp_path: Path, keys) -> None:
    from metarl_robot.export import export_bundle
    from tests.runtime.conftest import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "grasp.safetensors")
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    sign_bundle(load_bundle(bundle), keys["trusted"][0])
    export_bundle(checkpoint, bundle, overwrite=True)
    assert not (bundle / "signature.json").exists()


def test_keygen_creates_missing_parent_directories_and_never_overwrites(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "a" / "b", "robot")
    assert (private.name, public.name) == ("robot.pem", "robot.pub.pem") and private.parent == tmp_path / "a" / "b"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="robot.pem already exists"):
        generate_key_pair(tmp_path / "a" / "b", "robot")


def test_keygen_names_the_pair_bundle_signing_by_default(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path)
    assert (private.name, public.name) == ("bundle_signing.pem", "bundle_signing.pub.pem")


def test_a_signature_file_without_signatures_names_no_signer_and_every_trusted_key(bundle: Path, keys) -> None:
    path = sign_bundle(load_bundle(bundle), keys["other"][0])
    content = json.loads(path.read_text())
    content["signatures"] = []
    path.write_text(json.dumps(content))
    trusted = [keys["trusted"][1], keys["other"][1]]
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=trusted)
    names = ", ".join(f"{public_id(p)} ({p})" for p in trusted)
    assert str(err.value).startswith(f"{bundle}: signed by no key, none of them a trusted key ({names}); ")


def test_the_written_manifest_is_two_space_json_with_a_final_newline(tmp_path: Path) -> None:
    from metarl_robot.runtime.integrity import write_manifest

    manifest = {"robot": "pända", "nested": {"a": [1, 2.5]}}
    sealed = write_manifest(tmp_path / "manifest.json", manifest)
    assert sealed == seal_manifest(manifest)
    expected = '{\n  "robot": "p\\u00e4nda",\n  "nested": {\n    "a": [\n      1,\n      2.5\n    ]\n  },\n'
    assert (tmp_path / "manifest.json").read_bytes() == (expected + f'  "digest": "{sealed["digest"]}"\n}}\n').encode()


def test_the_signature_file_is_readable_json_any_user_may_read(bundle: Path, keys) -> None:
    path = sign_bundle(load_bundle(bundle), keys["trusted"][0])
    content = json.loads(path.read_text())
    assert path.read_text() == json.dumps(content, indent=2) + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_a_damaged_signature_file_is_replaced_by_a_new_signature(bundle: Path, keys) -> None:
    (bundle / "signature.json").write_text("{not json")
    sign_bundle(load_bundle(bundle), keys["trusted"][0])
    assert load_bundle(bundle, trusted_keys=[keys["trusted"][1]]).path == bundle


def test_a_failed_signature_write_leaves_the_old_file_and_no_temporary(bundle: Path, keys, monkeypatch) -> None:
    first = sign_bundle(load_bundle(bundle), keys["other"][0]).read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import metarl_robot.runtime.integrity as integrity

    monkeypatch.setattr(integrity.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        sign_bundle(load_bundle(bundle), keys["trusted"][0])
    assert (bundle / "signature.json").read_bytes() == first
    assert [p.name for p in bundle.iterdir() if p.name.startswith(".")] == []


def test_bad_signing_keys_get_the_whole_message(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from metarl_robot.runtime.integrity import load_private_key

    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(BundleError) as err:
        load_private_key(encrypted)
    assert str(err.value) == (f"signing key {str(encrypted)!r} is encrypted; metarl-robot signs with an unencrypted "
                              "PEM key (keep it private: chmod 600, or on a hardware token's host)")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    with pytest.raises(BundleError) as err:
        load_private_key(garbage)
    assert str(err.value) == (f"signing key {str(garbage)!r} is not a PEM private key; give the private key that "
                              "`metarl-robot keygen` wrote (NAME.pem, not NAME.pub.pem)")
    other = tmp_path / "rsa.pem"
    other.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(BundleError) as err:
        load_private_key(other)
    assert str(err.value) == f"signing key {str(other)!r} is a RSAPrivateKey; bundles are signed with ed25519 keys"
    with pytest.raises(BundleError) as err:
        load_private_key(tmp_path / "absent.pem")
    assert str(err.value).startswith(f"signing key {str(tmp_path / 'absent.pem')!r} ")


def test_signing_without_cryptography_says_what_to_install(monkeypatch, tmp_path: Path) -> None:
    import sys

    from metarl_robot.runtime.integrity import load_private_key

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)
    with pytest.raises(BundleError) as err:
        load_private_key(tmp_path / "key.pem")
    assert str(err.value) == ("bundle signatures need the 'cryptography' package, which is not installed: pip install "
                              "cryptography (without trusted keys, unsigned bundles load as before)")


SIGNATURE_FILE_ERRORS = {
    "format": lambda c: c.update(format="other"),
    "digest": lambda c: c.update(digest=5),
    "signatures": lambda c: c.update(signatures={"a": 1}),
    "algorithm": lambda c: c["signatures"][0].update(algorithm="rsa"),
    "key_id": lambda c: c["signatures"][0].pop("key_id"),
    "entry": lambda c: c["signatures"].append("not an entry"),
    "list": lambda c: c.clear() or c.update(x=1),
}


@pytest.mark.parametrize("damage", sorted(SIGNATURE_FILE_ERRORS))
def test_a_malformed_signature_file_is_refused_with_what_it_must_hold(bundle: Path, keys, damage) -> None:
    path = sign_bundle(load_bundle(bundle), keys["trusted"][0])
    content = json.loads(path.read_text())
    SIGNATURE_FILE_ERRORS[damage](content)
    path.write_text(json.dumps(content))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[keys["trusted"][1]])
    assert str(err.value) == (f"{path}: not a bundle signature file (format 'metarl_robot.bundle.signature' with "
                              "'digest' and a list of ed25519 'signatures'); sign the bundle again")


def test_a_signature_file_that_is_no_json_or_repeats_a_key_is_refused(bundle: Path, keys) -> None:
    path = sign_bundle(load_bundle(bundle), keys["trusted"][0])
    text = path.read_text()
    path.write_text("{")
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[keys["trusted"][1]])
    assert str(err.value).startswith(f"{path}: not valid JSON (") and str(err.value).endswith("); sign the bundle again")
    path.write_text(text.replace('"format"', '"digest": "sha256:00", "format"', 1))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[keys["trusted"][1]])
    assert "not valid JSON" in str(err.value) and "digest" in str(err.value)


def test_a_signature_that_is_not_strict_base64_fails(bundle: Path, keys) -> None:
    path = sign_bundle(load_bundle(bundle), keys["trusted"][0])
    content = json.loads(path.read_text())
    content["signatures"][0]["signature"] = content["signatures"][0]["signature"][:10] + "\n" + \
        content["signatures"][0]["signature"][10:]
    path.write_text(json.dumps(content))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(bundle, trusted_keys=[keys["trusted"][1]])


def test_an_unsigned_bundle_names_the_sign_command_and_every_trusted_key(bundle: Path, keys) -> None:
    import shlex

    trusted = [keys["trusted"][1], keys["other"][1]]
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=trusted)
    names = ", ".join(f"{public_id(p)} ({p})" for p in trusted)
    assert str(err.value) == (f"{bundle}: the bundle is not signed (no signature.json) but trusted keys are required "
                              f"({names}); sign it: metarl-robot sign {shlex.quote(str(bundle))} --key PRIVATE.pem")


def test_missing_and_wrong_trusted_key_files_are_named(bundle: Path, keys, tmp_path: Path) -> None:
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[tmp_path / "absent.pub.pem"])
    assert str(err.value) == (f"trusted key {str(tmp_path / 'absent.pub.pem')!r} does not exist; make a key pair with "
                              "`metarl-robot keygen DIR`")
    directory = tmp_path / "dir.pub.pem"
    directory.mkdir()
    with pytest.raises(BundleError) as err:
        load_bundle(bundle, trusted_keys=[directory])
    assert str(err.value).startswith(f"trusted key {str(directory)!r} cannot be read (")


def test_bundle_entries_must_be_files_inside_directories(bundle: Path) -> None:
    from metarl_robot.runtime.integrity import regular_file

    (bundle / "sub").mkdir()
    with pytest.raises(BundleError) as err:
        regular_file(bundle, "sub")
    assert str(err.value) == f"{bundle / 'sub'}: is not a regular file; re-export the bundle"
    with pytest.raises(BundleError) as err:
        regular_file(bundle, "policy.onnx/inner")
    assert str(err.value) == f"{bundle / 'policy.onnx'}: is not a directory; re-export the bundle"
    (bundle / "sub" / "f").write_bytes(b"x")
    assert regular_file(bundle, "sub/f") == bundle / "sub" / "f"


def test_a_key_id_is_the_first_16_hex_digits_of_the_public_key_sha256() -> None:
    import hashlib

    assert key_id(b"\x01" * 32) == hashlib.sha256(b"\x01" * 32).hexdigest()[:16]
