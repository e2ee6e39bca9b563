"""What makes a bundle tamper-evident (format v2, docs/bundle.md): the manifest digest, the rules its
file entries obey, and optional ed25519 signatures.

- **Digest.** ``manifest["digest"]`` is ``"sha256:<hex>"`` of the manifest's canonical form
  (:func:`canonical_manifest`: the manifest without ``digest``, as sorted-key compact UTF-8 JSON).
  The manifest lists the sha256 of every other file, so the one digest covers the whole bundle.
- **Entries stay inside.** A ``files`` entry is a plain relative path (no ``..``, ``.``, empty or
  absolute parts, no backslash) to a regular file reached through no symbolic link.
- **Signatures.** ``signature.json`` beside the manifest holds ed25519 signatures of the digest
  (:func:`sign_bundle`); :func:`check_signature` accepts a bundle only when one of them verifies under
  a trusted public key.

Standard library only; the ``cryptography`` package is imported by the signing functions alone, so a
robot without it still loads unsigned bundles.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shlex
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
DIGEST_KEY = "digest"
"""The manifest key that holds the digest; the canonical form leaves it out."""
DIGEST_PREFIX = "sha256:"
SIGNATURE_FORMAT = "metarl_robot.bundle.signature"
SIGNED_PREFIX = b"metarl_robot.bundle digest\n"
"""What an ed25519 signature signs: these bytes, then the digest string in ASCII (domain separation:
a key that signs bundles signs nothing else by accident)."""
RESERVED_NAMES = (MANIFEST_FILE, SIGNATURE_FILE)
"""Top-level names a ``files`` entry may not take: the manifest cannot list itself, nor the file that
signs it."""
REEXPORT = "metarl-robot export {checkpoint} --out {bundle} --overwrite"

_DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


class BundleError(ValueError):
    """A bundle cannot be used; the message names the file or key, the problem and the fix."""


# ---------------------------------------------------------------------------------------- digest
def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes the digest is taken over: ``manifest`` without its ``digest`` key, as JSON with keys
    sorted, no whitespace, non-ASCII characters as UTF-8, and numbers as Python's ``json`` writes
    them. Raises :class:`BundleError` for a value JSON cannot hold (NaN, infinity)."""
    body = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        where = _non_finite_key(body) or "a value"
        raise BundleError(
            f"{MANIFEST_FILE}: {where} is not a finite number; a bundle manifest holds finite JSON numbers "
            "only; re-export the bundle"
        ) from None
    return text.encode("utf-8")


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of :func:`canonical_manifest`."""
    return DIGEST_PREFIX + hashlib.sha256(canonical_manifest(manifest)).hexdigest()


def seal_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` with its ``digest`` set (last, so a reader sees it after what it covers)."""
    sealed = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    sealed[DIGEST_KEY] = manifest_digest(sealed)
    return sealed


def write_manifest(path: str | Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Seal ``manifest`` (:func:`seal_manifest`) and write it to ``path`` as indented JSON; return it."""
    sealed = seal_manifest(manifest)
    Path(path).write_text(json.dumps(sealed, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return sealed


def check_digest(manifest_path: Path, manifest: Mapping[str, Any]) -> str:
    """The manifest's digest after checking it equals the digest of its content; :class:`BundleError`
    (naming the re-export command) when it is missing, malformed or does not match."""
    stated = manifest.get(DIGEST_KEY)
    if stated is None:
        raise BundleError(
            f"{manifest_path}: missing key {DIGEST_KEY!r} (schema_version 2 manifests carry the sha256 of their "
            f"canonical form); re-export the bundle: {reexport_command(manifest_path.parent, manifest)}"
        )
    if not isinstance(stated, str) or not _DIGEST_PATTERN.fullmatch(stated):
        raise BundleError(f"{manifest_path}: {DIGEST_KEY!r} must be 'sha256:' and 64 lowercase hex digits, got {stated!r}")
    actual = manifest_digest(manifest)
    if actual != stated:
        raise BundleError(
            f"{manifest_path}: digest mismatch (the manifest states {stated}, its content hashes to {actual}): "
            "manifest.json was edited after export, so its contract (bounds, joints, rates) cannot be trusted; "
            f"re-export the bundle: {reexport_command(manifest_path.parent, manifest)}"
        )
    return stated


def reexport_command(bundle: Path, manifest: Mapping[str, Any]) -> str:
    """The command that re-exports ``bundle`` in place, naming the checkpoint the manifest records when
    it is a printable path (the manifest may be untrusted: nothing else of it goes into the message)."""
    provenance = manifest.get("provenance")
    recorded = provenance.get("checkpoint_path") if isinstance(provenance, Mapping) else None
    checkpoint = "CHECKPOINT"
    if isinstance(recorded, str) and recorded and recorded.isprintable() and len(recorded) < 1024:
        checkpoint = shlex.quote(recorded)
    return REEXPORT.format(checkpoint=checkpoint, bundle=shlex.quote(str(bundle)))


def version_1_message(manifest_path: Path, manifest: Mapping[str, Any]) -> str:
    """The one line that refuses a schema_version 1 bundle and names the command that replaces it."""
    return (
        f"{manifest_path}: schema_version 1 bundle: its manifest is covered by no digest, so an edit to its "
        "bounds, joint names or control rate would go unnoticed; this metarl_robot reads schema_version 2 "
        f"only; re-export it: {reexport_command(manifest_path.parent, manifest)}"
    )


def _non_finite_key(value: Any, path: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(path or "the manifest")
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite_key(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key)
        if found:
            return found
    return None


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json.loads``: a key twice in one object is refused (parsers differ
    on which one wins, so the digest and a reader could see different manifests)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


# ---------------------------------------------------------------------------------------- paths
def check_entry_name(manifest_path: Path | str, name: Any) -> None:
    """Refuse a ``files`` entry (or a file an ``adaptation`` section names) that is not a plain relative
    path inside the bundle."""
    parts = name.split("/") if isinstance(name, str) else []
    if (
        not parts
        or name.startswith("/")
        or "\\" in name
        or not name.isprintable()
        or any(part in ("", ".", "..") for part in parts)
        or name in RESERVED_NAMES
        or re.match(r"[A-Za-z]:", name)
    ):
        raise BundleError(
            f"{manifest_path}: files lists {name!r}; entries must be relative paths inside the bundle "
            f"(no '..', '.' or empty parts, not absolute, '/' as separator, not {' or '.join(RESERVED_NAMES)})"
        )


def regular_file(root: Path, name: str) -> Path:
    """``root / name`` after checking that it is a regular file reached through no symbolic link (the
    bundle directory itself may be one); :class:`BundleError` otherwise. ``name`` has passed
    :func:`check_entry_name`."""
    path = root
    parts = name.split("/")
    for depth, part in enumerate(parts, start=1):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise BundleError(f"{path}: listed in the manifest but missing; copy the whole bundle directory") from None
        except OSError as err:
            raise BundleError(f"{path}: cannot be read ({err.strerror}); check the bundle's permissions") from None
        if stat.S_ISLNK(mode):
            raise BundleError(
                f"{path}: is a symbolic link; a bundle's files must be regular files inside it (a link can point "
                "anywhere, outside the checksummed bundle); copy the files in (cp -rL) or re-export the bundle"
            )
        last = depth == len(parts)
        if last and not stat.S_ISREG(mode) or not last and not stat.S_ISDIR(mode):
            kind = "a regular file" if last else "a directory"
            raise BundleError(f"{path}: is not {kind}; re-export the bundle")
    return path


def sha256_inside(root: Path, name: str) -> str:
    """Hex sha256 of the bundle file ``name``, read without following a link (see :func:`regular_file`)."""
    path = regular_file(root, name)
    digest = hashlib.sha256()
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as err:
        raise BundleError(f"{path}: cannot be read ({err.strerror}); re-export the bundle") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{path}: is not a regular file; re-export the bundle")
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- signing
def key_id(public_key_raw: bytes) -> str:
    """Short name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def signed_message(digest: str) -> bytes:
    """The bytes an ed25519 signature of a bundle with ``digest`` signs."""
    return SIGNED_PREFIX + digest.encode("ascii")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleError(
            "bundle signatures need the 'cryptography' package, which is not installed: pip install cryptography "
            "(without trusted keys, unsigned bundles load as before)"
        ) from None
    return serialization, ed25519


def generate_key_pair(directory: str | Path, name: str = "bundle_signing") -> tuple[Path, Path]:
    """Write a new ed25519 key pair as ``directory/name.pem`` (private, PKCS#8, mode 0600) and
    ``directory/name.pub.pem`` (public, SubjectPublicKeyInfo); return both paths. Existing files are
    never overwritten."""
    serialization, ed25519 = _crypto()
    directory = Path(directory)
    private_path, public_path = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists; choose another directory or --name (keys are never overwritten)")
    directory.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{what} {str(path)!r} does not exist; make a key pair with `metarl-robot keygen DIR`") from None
    except OSError as err:
        raise BundleError(f"{what} {str(path)!r} cannot be read ({err.strerror})") from None


def load_private_key(path: str | Path) -> Any:
    """The ed25519 private key in the PEM file ``path``; :class:`BundleError` naming the problem."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise BundleError(
            f"signing key {str(path)!r} is encrypted; metarl-robot signs with an unencrypted PEM key (keep it "
            "private: chmod 600, or on a hardware token's host)"
        ) from None
    except ValueError:
        raise BundleError(
            f"signing key {str(path)!r} is not a PEM private key; give the private key that "
            "`metarl-robot keygen` wrote (NAME.pem, not NAME.pub.pem)"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"signing key {str(path)!r} is a {type(key).__name__}; bundles are signed with ed25519 keys")
    return key


def load_public_key(path: str | Path) -> Any:
    """The ed25519 public key in the PEM file ``path``; :class:`BundleError` naming the problem."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read_key_file(path, "trusted key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        hint = "it holds a private key; trust the public key (NAME.pub.pem)" if b"PRIVATE KEY" in data else (
            "give the NAME.pub.pem that `metarl-robot keygen` wrote"
        )
        raise BundleError(f"trusted key {str(path)!r} is not a PEM public key: {hint}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(f"trusted key {str(path)!r} is a {type(key).__name__}; bundles are signed with ed25519 keys")
    return key


def _raw_public(key: Any) -> bytes:
    serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def read_signatures(root: Path) -> dict[str, Any] | None:
    """The parsed ``signature.json`` of the bundle at ``root`` (``None`` when it has none); its
    structure is checked, not the signatures."""
    path = root / SIGNATURE_FILE
    if not os.path.lexists(path):
        return None
    regular_file(root, SIGNATURE_FILE)
    try:
        fd = os.open(path, _READ_FLAGS)
        with os.fdopen(fd, "rb") as f:
            content = json.loads(f.read().decode("utf-8"), object_pairs_hook=reject_duplicate_keys)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: not valid JSON ({err}); sign the bundle again") from None
    entries = content.get("signatures") if isinstance(content, dict) else None
    if (
        not isinstance(content, dict)
        or content.get("format") != SIGNATURE_FORMAT
        or not isinstance(content.get("digest"), str)
        or not isinstance(entries, list)
        or not all(
            isinstance(e, dict) and e.get("algorithm") == "ed25519"
            and all(isinstance(e.get(k), str) for k in ("key_id", "public_key", "signature"))
            for e in entries
        )
    ):
        raise BundleError(
            f"{path}: not a bundle signature file (format {SIGNATURE_FORMAT!r} with 'digest' and a list of ed25519 "
            "'signatures'); sign the bundle again"
        )
    return content


def sign_bundle(bundle: Any, private_key_path: str | Path) -> Path:
    """Add an ed25519 signature of ``bundle.digest`` by the key in ``private_key_path`` to the bundle's
    ``signature.json``; return that file's path.

    ``bundle`` is what :func:`~metarl_robot.runtime.load_bundle` returned, so the digest and every file
    were checked just before: ``sign_bundle(load_bundle(path), key)``. Signatures by other keys over the
    same digest are kept; a signature file of an older digest is replaced. Written atomically.
    """
    key = load_private_key(private_key_path)
    root = Path(bundle.path)
    public_raw = _raw_public(key.public_key())
    entry = {
        "algorithm": "ed25519",
        "key_id": key_id(public_raw),
        "public_key": base64.b64encode(public_raw).decode("ascii"),
        "signature": base64.b64encode(key.sign(signed_message(bundle.digest))).decode("ascii"),
    }
    try:
        existing = read_signatures(root)
    except BundleError:
        existing = None  # a damaged file is replaced
    kept = []
    if existing is not None and existing["digest"] == bundle.digest:
        kept = [e for e in existing["signatures"] if e["key_id"] != entry["key_id"]]
    content = {"format": SIGNATURE_FORMAT, "digest": bundle.digest, "signatures": [*kept, entry]}
    path = root / SIGNATURE_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(content, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def check_signature(root: Path, digest: str, trusted_keys: Sequence[str | Path]) -> str:
    """The key id of a trusted key whose signature in ``root/signature.json`` verifies ``digest``;
    :class:`BundleError` when the bundle is unsigned, signed by no trusted key, or a signature fails."""
    _crypto()  # a clear message when cryptography is missing
    from cryptography.exceptions import InvalidSignature

    trusted = {}
    for path in trusted_keys:
        key = load_public_key(path)
        trusted[key_id(_raw_public(key))] = (key, str(path))
    names = ", ".join(f"{kid} ({path})" for kid, (_, path) in trusted.items())
    content = read_signatures(root)
    sign_hint = f"sign it: metarl-robot sign {shlex.quote(str(root))} --key PRIVATE.pem"
    if content is None:
        raise BundleError(
            f"{root}: the bundle is not signed (no {SIGNATURE_FILE}) but trusted keys are required ({names}); {sign_hint}"
        )
    if content["digest"] != digest:
        raise BundleError(
            f"{root / SIGNATURE_FILE}: signs digest {content['digest']}, but the bundle's digest is {digest}: the "
            "bundle changed after it was signed; do not deploy it unless you re-verify and re-sign it"
        )
    message = signed_message(digest)
    failed = []
    for entry in content["signatures"]:
        if entry["key_id"] not in trusted:
            continue
        key, path = trusted[entry["key_id"]]
        try:
            key.verify(base64.b64decode(entry["signature"], validate=True), message)
        except (InvalidSignature, ValueError):
            failed.append(f"{entry['key_id']} ({path})")
            continue
        return entry["key_id"]
    if failed:
        raise BundleError(
            f"{root / SIGNATURE_FILE}: the signature by trusted key {', '.join(failed)} does not verify: the bundle "
            "or its signature was altered; do not deploy it"
        )
    signers = ", ".join(sorted(e["key_id"] for e in content["signatures"])) or "no key"
    raise BundleError(
        f"{root}: signed by {signers}, none of them a trusted key ({names}); {sign_hint} (a trusted one), or add "
        "its public key to the trusted keys"
    )


__all__ = [
    "BundleError",
    "DIGEST_KEY",
    "SIGNATURE_FILE",
    "canonical_manifest",
    "check_digest",
    "check_entry_name",
    "check_signature",
    "generate_key_pair",
    "manifest_digest",
    "reexport_command",
    "regular_file",
    "seal_manifest",
    "sha256_inside",
    "sign_bundle",
    "version_1_message",
    "write_manifest",
]
