"""Reading and validating an exported meta-policy bundle (format: docs/bundle.md).

A bundle is a directory holding ``manifest.json`` (the robot contract and provenance), the ONNX graphs
it names and their sha256 checksums. Its ``method.family`` says how it adapts: ``"context"`` (a
transition encoder infers a task context) or ``"gradient"`` (a policy-gradient step on the adapted
parameters, run as an ONNX graph). :func:`load_bundle` refuses anything it cannot trust, with a
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

from metarl_robot.runtime.advantages import AdvantageConfig

FORMAT = "metarl_robot.bundle"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST_FILE = "manifest.json"
POLICY_FILE = "policy.onnx"
ADAPT_FILE = "adapt.onnx"
TEST_VECTORS_FILE = "test_vectors.npz"
PARAMS_FILE = "params.npy"

FAMILIES = ("context", "gradient")
"""Values of ``method.family``: how a bundle adapts."""
GRAPH_IO: Mapping[str, Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "context": {
        "policy": (("obs", "context"), ("command",)),
        "adapt": (("obs", "command", "reward", "next_obs", "mask"), ("context",)),
    },
    "gradient": {
        "policy": (("obs", "params", "noise"), ("command", "action")),
        "adapt": (("params", "obs", "action", "advantage", "mask"), ("adapted_params",)),
    },
}
"""Per family, the input and output names of each graph, in order; the runtime feeds them by these names."""
ADAPTATION_KINDS = {"context": "context_encoder", "gradient": "gradient_step"}
"""The ``adaptation.kind`` each family requires."""
GRADIENT_ADAPTED = ("policy_parameters", "context")
"""Values of ``adaptation.adapted`` in gradient bundles: every weight (MAML family) or a context (CAVIA)."""
EXPLORATION = ("gaussian",)
"""Values of ``adaptation.exploration`` this runtime can sample."""

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
    def family(self) -> str:
        """How the bundle adapts: ``"context"`` or ``"gradient"`` (``method.family``)."""
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

    # -------------------------------------------------------------------------- context family
    @property
    def context_dim(self) -> int:
        """Size of the task context the adapt graph infers (context bundles)."""
        return int(self._family_key("context", "context_dim"))

    @property
    def buffer_size(self) -> int:
        """How many of the most recent transitions the adapt graph sees (context bundles)."""
        return int(self._family_key("context", "buffer_size"))

    @property
    def initial_context(self) -> np.ndarray:
        """The context before any transition of a task has been seen (a fresh float32 copy; context
        bundles)."""
        return np.asarray(self._family_key("context", "initial_context"), dtype=np.float32)

    # -------------------------------------------------------------------------- gradient family
    @property
    def num_params(self) -> int:
        """Length ``P`` of the adapted parameter vector (gradient bundles)."""
        return int(self._family_key("gradient", "num_params"))

    @property
    def episodes_per_step(self) -> int:
        """Episodes ``N`` one adaptation step uses, the adapt graph's first dimension (gradient bundles)."""
        return int(self._family_key("gradient", "episodes_per_step"))

    @property
    def max_episode_steps(self) -> int:
        """Steps ``T`` an episode holds at most, the adapt graph's second dimension (gradient bundles)."""
        return int(self._family_key("gradient", "max_episode_steps"))

    @property
    def advantage_config(self) -> AdvantageConfig:
        """How the robot computes the advantages the adapt graph takes (gradient bundles)."""
        section = self._family_key("gradient", "advantages")
        return AdvantageConfig(**{f.name: section[f.name] for f in dataclasses.fields(AdvantageConfig)})

    @property
    def initial_params(self) -> np.ndarray:
        """Where adaptation starts on a new task, float32 ``(P,)`` read from the params file (a fresh
        array; gradient bundles)."""
        return _read_params(self.path / self._family_key("gradient", "initial_params_file"), self.num_params)

    def _family_key(self, family: str, key: str) -> Any:
        if self.family != family:
            raise AttributeError(f"adaptation.{key} belongs to {family} bundles; {self.path} is a {self.family} bundle")
        return self.adaptation[key]

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
    family = check.key(method, "family", str, "method")
    if family not in FAMILIES:
        raise BundleError(
            f"{manifest_path}: 'method.family' is {family!r}; this runtime runs {', '.join(map(repr, FAMILIES))}"
        )
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
    kind = check.key(adaptation, "kind", str, "adaptation")
    if kind != ADAPTATION_KINDS[family]:
        raise BundleError(
            f"{manifest_path}: 'adaptation.kind' is {kind!r}, but {family} bundles adapt by "
            f"{ADAPTATION_KINDS[family]!r}"
        )
    dims = {"obs_dim": obs_dim, "act_dim": act_dim}
    if family == "context":
        dims.update(_check_context_adaptation(check, adaptation))
    else:
        dims.update(_check_gradient_adaptation(check, adaptation))

    files = check.key(manifest, "files", dict)
    for name, digest in files.items():
        _check_file_name(manifest_path, name)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{manifest_path}: files[{name!r}] must be a lowercase hex sha256, got {digest!r}")

    if family == "gradient" and adaptation["initial_params_file"] not in files:
        raise BundleError(
            f"{manifest_path}: 'adaptation.initial_params_file' is {adaptation['initial_params_file']!r}, which "
            "'files' does not list, so it cannot be checksummed; re-export the bundle"
        )
    graphs_raw = check.key(manifest, "graphs", dict)
    graphs = {name: check.graph(graphs_raw, family, name, dims, files) for name in GRAPH_IO[family]}
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
    if family == "gradient":
        _read_params(root / adaptation["initial_params_file"], dims["num_params"])

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


def _check_context_adaptation(check: _ManifestChecker, adaptation: Mapping[str, Any]) -> dict[str, int]:
    for key in ("adapted", "cadence"):
        check.key(adaptation, key, str, "adaptation")
    context_dim = check.positive_int(adaptation, "context_dim", "adaptation")
    check.positive_int(adaptation, "steps", "adaptation")
    check.positive_int(adaptation, "buffer_size", "adaptation")
    check.key(adaptation, "inner_lr", (int, float, type(None)), "adaptation")
    check.key(adaptation, "reward_source", dict, "adaptation")
    check.numbers(adaptation, "initial_context", "adaptation", context_dim)
    return {"context_dim": context_dim}


def _check_gradient_adaptation(check: _ManifestChecker, adaptation: Mapping[str, Any]) -> dict[str, int]:
    where = check.where
    adapted = check.key(adaptation, "adapted", str, "adaptation")
    if adapted not in GRADIENT_ADAPTED:
        raise BundleError(f"{where}: 'adaptation.adapted' is {adapted!r}, expected one of {list(GRADIENT_ADAPTED)}")
    num_params = check.positive_int(adaptation, "num_params", "adaptation")
    inner_lr = check.key(adaptation, "inner_lr", (int, float, type(None)), "adaptation")
    learned = adaptation.get("inner_lr_learned", False)
    if not isinstance(learned, bool):
        raise BundleError(f"{where}: 'adaptation.inner_lr_learned' must be bool, got {learned!r}")
    if inner_lr is None and not learned:
        raise BundleError(
            f"{where}: 'adaptation.inner_lr' is null but 'adaptation.inner_lr_learned' is not true; a gradient "
            "step needs a step size"
        )
    if inner_lr is not None and (learned or not (math.isfinite(inner_lr) and inner_lr > 0)):
        raise BundleError(
            f"{where}: 'adaptation.inner_lr' must be a positive number (or null with inner_lr_learned true), "
            f"got {inner_lr!r} with inner_lr_learned {learned!r}"
        )
    steps = check.key(adaptation, "steps", int, "adaptation")
    if steps < 0:
        raise BundleError(f"{where}: 'adaptation.steps' must be a non-negative integer, got {steps}")
    episodes = check.positive_int(adaptation, "episodes_per_step", "adaptation")
    max_steps = check.positive_int(adaptation, "max_episode_steps", "adaptation")
    check.key(adaptation, "cadence", str, "adaptation")
    advantages = check.key(adaptation, "advantages", dict, "adaptation")
    for field in dataclasses.fields(AdvantageConfig):
        if field.type in (bool, "bool"):
            if not isinstance(advantages.get(field.name), bool):
                raise BundleError(
                    f"{where}: 'adaptation.advantages.{field.name}' must be true or false, got "
                    f"{advantages.get(field.name, 'nothing')!r}"
                )
        else:
            check.key(advantages, field.name, (int, float), "adaptation.advantages")
    try:
        AdvantageConfig(**{f.name: advantages[f.name] for f in dataclasses.fields(AdvantageConfig)})
    except ValueError as err:
        raise BundleError(f"{where}: 'adaptation.advantages': {err}") from None
    exploration = check.key(adaptation, "exploration", str, "adaptation")
    if exploration not in EXPLORATION:
        raise BundleError(
            f"{where}: 'adaptation.exploration' is {exploration!r}; this runtime samples {list(EXPLORATION)}"
        )
    check.key(adaptation, "reward_source", dict, "adaptation")
    name = check.key(adaptation, "initial_params_file", str, "adaptation")
    _check_file_name(where, name)
    return {"num_params": num_params, "episodes": episodes, "max_episode_steps": max_steps}


def _read_params(path: Path, num_params: int) -> np.ndarray:
    """The float32 vector of ``num_params`` finite values in the ``.npy`` file ``path``."""
    try:
        params = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: not a readable .npy array ({err}); re-export the bundle") from None
    if params.dtype != np.float32 or params.shape != (num_params,) or not np.isfinite(params).all():
        raise BundleError(
            f"{path}: must hold {num_params} finite float32 values (adaptation.num_params), got dtype "
            f"{params.dtype} shape {params.shape}; re-export the bundle"
        )
    return params


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
        self, graphs: Mapping[str, Any], family: str, name: str, dims: Mapping[str, int], files: Mapping[str, str]
    ) -> GraphSpec:
        spec = self.key(graphs, name, dict, "graphs")
        where = f"graphs.{name}"
        file = self.key(spec, "file", str, where)
        if file not in files:
            raise BundleError(
                f"{self.where}: '{where}.file' is {file!r}, which 'files' does not list, so it cannot be "
                "checksummed; re-export the bundle"
            )
        input_names, output_names = GRAPH_IO[family][name]
        expected = _expected_shapes(family, name, dims)
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
                        f"{list(expected[io_name])} (null = dynamic) from the observation/action/adaptation sizes"
                    )
                shapes[kind][io_name] = tuple(shape)
        return GraphSpec(name=name, file=file, inputs=shapes["inputs"], outputs=shapes["outputs"])


def _expected_shapes(family: str, graph: str, dims: Mapping[str, int]) -> dict[str, Shape]:
    obs, act = dims["obs_dim"], dims["act_dim"]
    if family == "gradient":
        params, n, t = dims["num_params"], dims["episodes"], dims["max_episode_steps"]
        if graph == "policy":
            return {
                "obs": (None, obs),
                "params": (params,),
                "noise": (None, act),
                "command": (None, act),
                "action": (None, act),
            }
        return {
            "params": (params,),
            "obs": (n, t, obs),
            "action": (n, t, act),
            "advantage": (n, t),
            "mask": (n, t),
            "adapted_params": (params,),
        }
    ctx = dims["context_dim"]
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


def graph_shapes(family: str, graph: str, **dims: int) -> dict[str, dict[str, list[int | None]]]:
    """The manifest's ``inputs``/``outputs`` shapes of ``graph`` for the given sizes (``None`` = dynamic).

    ``dims``: ``obs_dim``, ``act_dim``, and ``context_dim`` (context family) or ``num_params``,
    ``episodes``, ``max_episode_steps`` (gradient family).
    """
    expected = _expected_shapes(family, graph, dims)
    inputs, outputs = GRAPH_IO[family][graph]
    return {
        "inputs": {n: list(expected[n]) for n in inputs},
        "outputs": {n: list(expected[n]) for n in outputs},
    }
