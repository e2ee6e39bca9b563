"""Reading and validating an exported meta-policy bundle (format: docs/bundle.md).

A bundle is a directory holding ``manifest.json`` (the robot contract and provenance), the ONNX graphs
it names and their sha256 checksums. :func:`load_bundle` refuses anything it cannot trust, with a
:class:`BundleError` that names the file or key, what is wrong and what to do about it. This module
needs only the standard library and numpy, so it runs on the robot without torch or onnx.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

FORMAT = "metarl_robot.bundle"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.onnx"
ADAPT_FILE = "adapt.onnx"
TEST_VECTORS_FILE = "test_vectors.npz"

POLICY_INPUTS = ("obs", "context")
POLICY_OUTPUTS = ("command",)
ADAPT_INPUTS = ("obs", "command", "reward", "next_obs", "mask")
ADAPT_OUTPUTS = ("context",)
GRAPH_IO = {"policy": (POLICY_INPUTS, POLICY_OUTPUTS), "adapt": (ADAPT_INPUTS, ADAPT_OUTPUTS)}
"""Input and output names of each graph, in order; the runtime feeds them by these names."""

Shape = tuple[int | None, ...]


class BundleError(ValueError):
    """A bundle cannot be used; the message names the file or key, the problem and the fix."""


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

    @property
    def obs_dim(self) -> int:
        """Length of the raw observation vector the policy graph takes."""
        return int(self.observation["dim"])

    @property
    def act_dim(self) -> int:
        """Length of the command vector the policy graph returns (physical units)."""
        return int(self.action["dim"])

    @property
    def context_dim(self) -> int:
        """Size of the task context the adapt graph infers."""
        return int(self.adaptation["context_dim"])

    @property
    def buffer_size(self) -> int:
        """How many of the most recent transitions the adapt graph sees."""
        return int(self.adaptation["buffer_size"])

    @property
    def adapt_steps(self) -> int:
        """How many times one adaptation runs the adapt graph."""
        return int(self.adaptation["steps"])

    @property
    def initial_context(self) -> np.ndarray:
        """The context before any transition of a task has been seen (a fresh float32 copy)."""
        return np.asarray(self.adaptation["initial_context"], dtype=np.float32)

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


def load_bundle(path: str | Path) -> Bundle:
    """Read ``path/manifest.json``, check it and every file it lists; return the :class:`Bundle`.

    Raises :class:`BundleError` when the directory or manifest is missing, the schema version is not
    supported, a required key is missing or has the wrong type or size, or a file is missing or does
    not match its sha256.
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
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err}); re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: must hold a JSON object, found {type(manifest).__name__}")

    check = _ManifestChecker(manifest_path)
    if "schema_version" not in manifest:
        raise BundleError(f"{manifest_path}: missing key 'schema_version'; this is not a bundle manifest")
    version = manifest["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported (this metarl_robot reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); re-export the bundle with this version "
            "or install the metarl_robot version that wrote it"
        )
    if check.key(manifest, "format", str) != FORMAT:
        raise BundleError(f"{manifest_path}: format is {manifest['format']!r}, expected {FORMAT!r}")

    method = check.key(manifest, "method", dict)
    check.key(method, "family", str, "method")
    check.key(method, "name", str, "method")

    observation = check.key(manifest, "observation", dict)
    obs_dim = check.positive_int(observation, "dim", "observation")
    check.key(observation, "layout", list, "observation")
    check.key(observation, "normalization", str, "observation")

    action = check.key(manifest, "action", dict)
    act_dim = check.positive_int(action, "dim", "action")
    check.key(action, "mode", str, "action")
    for key in ("names", "units"):
        check.strings(action, key, "action", act_dim)
    for key in ("low", "high", "scale"):
        check.numbers(action, key, "action", act_dim)
    check.strings(action, "joint_names", "action")
    check.key(action, "clipping_and_scaling", str, "action")

    control_rate_hz = check.key(manifest, "control_rate_hz", (int, float))
    if not control_rate_hz > 0:
        raise BundleError(f"{manifest_path}: control_rate_hz must be positive, got {control_rate_hz!r}")

    adaptation = check.key(manifest, "adaptation", dict)
    for key in ("kind", "adapted", "cadence"):
        check.key(adaptation, key, str, "adaptation")
    context_dim = check.positive_int(adaptation, "context_dim", "adaptation")
    check.positive_int(adaptation, "steps", "adaptation")
    check.positive_int(adaptation, "buffer_size", "adaptation")
    check.key(adaptation, "inner_lr", (int, float, type(None)), "adaptation")
    check.key(adaptation, "reward_source", dict, "adaptation")
    check.numbers(adaptation, "initial_context", "adaptation", context_dim)

    files = check.key(manifest, "files", dict)
    for name, digest in files.items():
        _check_file_name(manifest_path, name)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{manifest_path}: files[{name!r}] must be a lowercase hex sha256, got {digest!r}")

    dims = {"obs_dim": obs_dim, "act_dim": act_dim, "context_dim": context_dim}
    graphs_raw = check.key(manifest, "graphs", dict)
    graphs = {name: check.graph(graphs_raw, name, dims, files) for name in GRAPH_IO}
    provenance = check.key(manifest, "provenance", dict)

    for name, expected in files.items():
        file_path = root / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: listed in the manifest but missing; copy the whole bundle directory")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(
                f"{file_path}: {name}: sha256 mismatch (expected {expected}, got {actual}): the file was modified "
                "after export; re-export the bundle"
            )

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
    )


def _check_file_name(manifest_path: Path, name: str) -> None:
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or name == MANIFEST_FILE:
        raise BundleError(
            f"{manifest_path}: files lists {name!r}; entries must be relative paths inside the bundle "
            f"(no '..', not {MANIFEST_FILE})"
        )


class _ManifestChecker:
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
        self, graphs: Mapping[str, Any], name: str, dims: Mapping[str, int], files: Mapping[str, str]
    ) -> GraphSpec:
        spec = self.key(graphs, name, dict, "graphs")
        where = f"graphs.{name}"
        file = self.key(spec, "file", str, where)
        if file not in files:
            raise BundleError(
                f"{self.where}: '{where}.file' is {file!r}, which 'files' does not list, so it cannot be "
                "checksummed; re-export the bundle"
            )
        input_names, output_names = GRAPH_IO[name]
        expected = _expected_shapes(name, dims)
        shapes: dict[str, dict[str, Shape]] = {}
        for kind, names in (("inputs", input_names), ("outputs", output_names)):
            section = self.key(spec, kind, dict, where)
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
                        f"{list(expected[io_name])} (null = dynamic) from the observation/action/context sizes"
                    )
                shapes[kind][io_name] = tuple(shape)
        return GraphSpec(name=name, file=file, inputs=shapes["inputs"], outputs=shapes["outputs"])


def _expected_shapes(graph: str, dims: Mapping[str, int]) -> dict[str, Shape]:
    obs, act, ctx = dims["obs_dim"], dims["act_dim"], dims["context_dim"]
    if graph == "policy":
        return {"obs": (None, obs), "context": (None, ctx), "command": (None, act)}
    return {
        "obs": (None, None, obs),
        "command": (None, None, act),
        "reward": (None, None, 1),
        "next_obs": (None, None, obs),
        "mask": (None, None),
        "context": (None, ctx),
    }


def graph_shapes(graph: str, obs_dim: int, act_dim: int, context_dim: int) -> dict[str, dict[str, list[int | None]]]:
    """The manifest's ``inputs``/``outputs`` shapes of ``graph`` for the given sizes (``None`` = dynamic)."""
    expected = _expected_shapes(graph, {"obs_dim": obs_dim, "act_dim": act_dim, "context_dim": context_dim})
    inputs, outputs = GRAPH_IO[graph]
    return {
        "inputs": {n: list(expected[n]) for n in inputs},
        "outputs": {n: list(expected[n]) for n in outputs},
    }
