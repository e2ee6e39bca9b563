"""Reading and validating an exported meta-policy bundle (format: docs/bundle.md).

A bundle is a directory holding ``manifest.json`` (the robot contract and provenance), the ONNX graphs
it names and their sha256 checksums. Its ``method.family`` names the family plug-in
(:mod:`metarl_robot.families`) that says how it adapts: which graphs it holds, what its ``adaptation``
section must contain and which controller runs it. :func:`load_bundle` refuses anything it cannot trust, with a
:class:`BundleError` that names the file or key, what is wrong and what to do about it. This module
needs only the standard library and numpy, so it runs on the robot without torch or onnx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metarl_robot.families import registry
from metarl_robot.runtime import integrity
from metarl_robot.runtime.integrity import BundleError
from metarl_robot.runtime.guard import GuardError, GuardSpec

FORMAT = "metarl_robot.bundle"
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (2,)
MANIFEST_FILE = "manifest.json"
TEST_VECTORS_FILE = "test_vectors.npz"

Shape = tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a bundle: its file and the shapes of its float32 inputs and outputs.

    A ``None`` dimension is dynamic (batch or sequence length).
    """

    name: str
    file: str
    inputs: Mapping[str, Shape]
    outputs: Mapping[str, Shape]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A validated bundle: the manifest's sections plus the directory they were read from.

    The mappings mirror ``manifest.json`` and are to be treated as read-only.
    """

    path: Path
    manifest: Mapping[str, Any]
    schema_version: int
    method: Mapping[str, Any]
    observation: Mapping[str, Any]
    action: Mapping[str, Any]
    control_rate_hz: float
    adaptation: Mapping[str, Any]
    graphs: Mapping[str, GraphSpec]
    files: Mapping[str, str]
    provenance: Mapping[str, Any]
    digest: str = ""
    """``"sha256:<hex>"`` of the canonical manifest, which lists every file's sha256 (docs/bundle.md)."""
    signed_by: str | None = None
    """Key id of the trusted key whose signature was verified at load; ``None`` without trusted keys."""

    @property
    def family(self) -> str:
        """The family plug-in's name (``method.family``)."""
        return str(self.method["family"])

    @property
    def obs_dim(self) -> int:
        """Length of the raw observation vector the policy graph takes."""
        return int(self.observation["dim"])

    @property
    def act_dim(self) -> int:
        """Length of the command vector the policy graph returns (physical units)."""
        return int(self.action["dim"])

    @property
    def adapt_steps(self) -> int:
        """How many times one adaptation runs the adapt graph."""
        return int(self.adaptation["steps"])

    @property
    def plugin(self) -> Any:
        """The family plug-in (:class:`metarl_robot.families.base.Family`) that runs this bundle."""
        return registry.get(self.family)

    def file_path(self, name: str) -> Path:
        """Absolute path of a file listed in the manifest."""
        if name not in self.files:
            raise KeyError(f"{name!r} is not a file of bundle {str(self.path)!r}; files: {sorted(self.files)}")
        return self.path / name

    def graph_path(self, graph: str) -> Path:
        """Absolute path of the ONNX file of ``graph`` ("policy" or "adapt")."""
        return self.path / self.graphs[graph].file


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: str | Path, *, trusted_keys: Sequence[str | Path] | None = None) -> Bundle:
    """Read ``path/manifest.json``, check it and every file it lists; return the :class:`Bundle`.

    Raises :class:`BundleError` when the directory or manifest is missing, the schema version is not
    supported (a version 1 bundle gets the command that re-exports it), the manifest's digest does not
    match its content, a required key is missing or has the wrong type or size, the control rate is not
    finite and positive, a bound is not below its upper bound, a file entry leaves the bundle or passes
    through a symbolic link, or a file is missing or does not match its sha256.

    ``trusted_keys``: paths of ed25519 public keys (PEM). When given (and not empty), the bundle must
    carry a signature of its digest by one of them (``metarl-robot sign``); this needs the
    ``cryptography`` package, which is imported only then.
    """
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle {str(root)!r} does not exist; export one with export_bundle / `metarl-robot export`")
    if not root.is_dir():
        raise BundleError(f"bundle {str(root)!r} is not a directory; pass the bundle directory, not a file in it")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path}: not found; {str(root)!r} is not a bundle or its export did not finish; re-export it"
        )
    integrity.regular_file(root, MANIFEST_FILE)
    try:
        manifest = json.loads(
            manifest_path.read_text(encoding="utf-8"), object_pairs_hook=integrity.reject_duplicate_keys
        )
    except (OSError, ValueError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err}); re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: must hold a JSON object, found {type(manifest).__name__}")

    check = ManifestChecker(manifest_path)
    if "schema_version" not in manifest:
        raise BundleError(f"{manifest_path}: missing key 'schema_version'; this is not a bundle manifest")
    version = manifest["schema_version"]
    if version == 1 and not isinstance(version, bool):
        raise BundleError(integrity.version_1_message(manifest_path, manifest))
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported (this metarl_robot reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); re-export the bundle with this version "
            "or install the metarl_robot version that wrote it"
        )
    if check.key(manifest, "format", str) != FORMAT:
        raise BundleError(f"{manifest_path}: format is {manifest['format']!r}, expected {FORMAT!r}")
    bundle_digest = integrity.check_digest(manifest_path, manifest)
    signed_by = integrity.check_signature(root, bundle_digest, trusted_keys) if trusted_keys else None

    method = check.key(manifest, "method", dict)
    family = check.key(method, "family", str, "method")
    try:
        plugin = registry.get(family)
    except registry.FamilyError as err:
        raise BundleError(f"{manifest_path}: 'method.family': {err}") from None
    check.key(method, "name", str, "method")

    observation = check.key(manifest, "observation", dict)
    obs_dim = check.positive_int(observation, "dim", "observation")
    check.key(observation, "layout", list, "observation")
    check.key(observation, "normalization", str, "observation")
    if "bounds" in observation:
        bounds = check.key(observation, "bounds", dict, "observation")
        low = check.numbers(bounds, "low", "observation.bounds", obs_dim)
        high = check.numbers(bounds, "high", "observation.bounds", obs_dim)
        if not all(a < b for a, b in zip(low, high)):
            raise BundleError(f"{manifest_path}: 'observation.bounds.low' must be below 'observation.bounds.high' "
                              "in every dimension; re-export the bundle")

    action = check.key(manifest, "action", dict)
    act_dim = check.positive_int(action, "dim", "action")
    check.key(action, "mode", str, "action")
    for key in ("names", "units"):
        check.strings(action, key, "action", act_dim)
    for key in ("low", "high", "scale"):
        check.numbers(action, key, "action", act_dim)
    unordered = [i for i, (low, high) in enumerate(zip(action["low"], action["high"])) if not low < high]
    if unordered:
        raise BundleError(
            f"{manifest_path}: 'action.low' must be below 'action.high' in every dimension; it is not in "
            f"{[action['names'][i] for i in unordered]} (low {[action['low'][i] for i in unordered]}, high "
            f"{[action['high'][i] for i in unordered]}); re-export the bundle"
        )
    check.strings(action, "joint_names", "action")
    check.key(action, "clipping_and_scaling", str, "action")

    control_rate_hz = check.key(manifest, "control_rate_hz", (int, float))
    if not (math.isfinite(control_rate_hz) and control_rate_hz > 0):
        raise BundleError(f"{manifest_path}: control_rate_hz must be positive and finite, got {control_rate_hz!r}")

    adaptation = check.key(manifest, "adaptation", dict)
    kind = check.key(adaptation, "kind", str, "adaptation")
    if kind != plugin.adaptation_kind:
        raise BundleError(
            f"{manifest_path}: 'adaptation.kind' is {kind!r}, but {family} bundles adapt by "
            f"{plugin.adaptation_kind!r}"
        )
    dims = {"obs_dim": obs_dim, "act_dim": act_dim, **plugin.check_adaptation(check, adaptation)}
    try:
        GuardSpec.from_adaptation(adaptation)
    except GuardError as err:
        raise BundleError(f"{manifest_path}: {err}; re-export the bundle") from None

    files = check.key(manifest, "files", dict)
    for name, digest in files.items():
        check_file_name(manifest_path, name)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{manifest_path}: files[{name!r}] must be a lowercase hex sha256, got {digest!r}")

    for name in plugin.files_named_in_adaptation(adaptation):
        if name not in files:
            raise BundleError(
                f"{manifest_path}: the adaptation section names {name!r}, which 'files' does not list, so it "
                "cannot be checksummed; re-export the bundle"
            )
    graphs_raw = check.key(manifest, "graphs", dict)
    graphs = {name: check.graph(graphs_raw, plugin, name, dims, files) for name in plugin.graph_io}
    provenance = check.key(manifest, "provenance", dict)

    for name, expected in files.items():
        file_path = root / name
        actual = integrity.sha256_inside(root, name)
        if actual != expected:
            raise BundleError(
                f"{file_path}: {name}: sha256 mismatch (expected {expected}, got {actual}): the file was modified "
                "after export; re-export the bundle"
            )
    plugin.check_files(root, adaptation, dims)

    return Bundle(
        path=root.resolve(),
        manifest=manifest,
        schema_version=version,
        method=method,
        observation=observation,
        action=action,
        control_rate_hz=float(control_rate_hz),
        adaptation=adaptation,
        graphs=graphs,
        files=files,
        provenance=provenance,
        digest=bundle_digest,
        signed_by=signed_by,
    )


def check_file_name(manifest_path: Path, name: str) -> None:
    """Refuse a file entry that is not a plain relative path inside the bundle (rules in docs/bundle.md)."""
    integrity.check_entry_name(manifest_path, name)


class ManifestChecker:
    """Typed look-ups into the manifest that raise :class:`BundleError` naming the key path."""

    def __init__(self, manifest_path: Path) -> None:
        self.where = manifest_path

    def key(self, section: Mapping[str, Any], key: str, types: type | tuple[type, ...], parent: str = "") -> Any:
        full = f"{parent}.{key}" if parent else key
        if key not in section:
            raise BundleError(f"{self.where}: missing key {full!r}; the bundle is incomplete, re-export it")
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise BundleError(f"{self.where}: {full!r} must be {names}, got {type(value).__name__} {value!r}")
        return value

    def positive_int(self, section: Mapping[str, Any], key: str, parent: str) -> int:
        value = self.key(section, key, int, parent)
        if value < 1:
            raise BundleError(f"{self.where}: '{parent}.{key}' must be a positive integer, got {value}")
        return value

    def optional_skill(self, adaptation: Mapping[str, Any]) -> None:
        """``adaptation.skill``, when present: the motion skill inside the policy graph, a name and the
        list of action dimensions it learns (any family whose policy may sit on a skill)."""
        if "skill" in adaptation:
            skill = self.key(adaptation, "skill", dict, "adaptation")
            if not isinstance(skill.get("name"), str) or not isinstance(skill.get("learned_dims"), list):
                raise BundleError(f"{self.where}: 'adaptation.skill' must have a name and a list learned_dims, got {skill!r}")

    def strings(self, section: Mapping[str, Any], key: str, parent: str, length: int | None = None) -> list[str]:
        values = self._list(section, key, parent, length)
        if not all(isinstance(v, str) for v in values):
            raise BundleError(f"{self.where}: '{parent}.{key}' must be a list of strings, got {values!r}")
        return values

    def numbers(self, section: Mapping[str, Any], key: str, parent: str, length: int) -> list[float]:
        values = self._list(section, key, parent, length)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise BundleError(f"{self.where}: '{parent}.{key}' must be a list of finite numbers, got {values!r}")
        return values

    def _list(self, section: Mapping[str, Any], key: str, parent: str, length: int | None) -> list[Any]:
        values = self.key(section, key, list, parent)
        if length is not None and len(values) != length:
            raise BundleError(f"{self.where}: '{parent}.{key}' must have {length} entries, got {len(values)}")
        return values

    def graph(
        self, graphs: Mapping[str, Any], plugin: Any, name: str, dims: Mapping[str, int], files: Mapping[str, str]
    ) -> GraphSpec:
        spec = self.key(graphs, name, dict, "graphs")
        where = f"graphs.{name}"
        file = self.key(spec, "file", str, where)
        if file not in files:
            raise BundleError(
                f"{self.where}: '{where}.file' is {file!r}, which 'files' does not list, so it cannot be "
                "checksummed; re-export the bundle"
            )
        input_names, output_names = plugin.graph_io[name]
        expected = plugin.expected_shapes(name, dims)
        shapes: dict[str, dict[str, Shape]] = {}
        for kind, names in (("inputs", input_names), ("outputs", output_names)):
            section = self.key(spec, kind, dict, where)
            for retired_names, why in plugin.retired_graph_io.get(name, ()) if kind == "inputs" else ():
                if tuple(section) == tuple(retired_names):
                    raise BundleError(
                        f"{self.where}: this bundle was exported by an earlier metarl_robot: {why}. Re-export "
                        "it from its checkpoint: metarl-robot export CHECKPOINT --out DIR --overwrite"
                    )
            if list(section) != list(names):
                raise BundleError(
                    f"{self.where}: '{where}.{kind}' names {list(section)}, expected {list(names)} "
                    "(this runtime feeds the graph by these names)"
                )
            shapes[kind] = {}
            for io_name in names:
                shape = section[io_name]
                if (
                    not isinstance(shape, list)
                    or any(d is not None and (isinstance(d, bool) or not isinstance(d, int)) for d in shape)
                    or tuple(shape) != expected[io_name]
                ):
                    raise BundleError(
                        f"{self.where}: '{where}.{kind}.{io_name}' is {shape!r}, expected "
                        f"{list(expected[io_name])} (null = dynamic) from the observation/action/adaptation sizes"
                    )
                shapes[kind][io_name] = tuple(shape)
        return GraphSpec(name=name, file=file, inputs=shapes["inputs"], outputs=shapes["outputs"])
