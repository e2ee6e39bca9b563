"""Tasks: what differs between the problems a meta-policy must adapt to.

A :class:`TaskSpec` is an inspectable, hashable record of one task (object, dynamics, goal). A
:class:`TaskDistribution` draws them reproducibly and keeps train and test splits apart. Task files
(YAML lists of tasks) let users evaluate on their own objects. Nothing here imports torch or a simulator.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

ParamValue = Union[float, int, str, bool]


class TaskError(ValueError):
    """A task, factor or task file is invalid; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of a family, e.g. ``TaskSpec("grasp", {"object_mass_kg": 0.3, ...})``.

    ``params`` is read-only; tasks hash and compare by value so they can key dictionaries and be
    sent to sampling workers as plain data.
    """

    family: str
    params: Mapping[str, ParamValue]
    task_id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not self.family:
            raise TaskError("TaskSpec.family must be a non-empty string such as 'grasp'")
        params = dict(self.params)
        for key, value in params.items():
            if not isinstance(key, str):
                raise TaskError(f"TaskSpec.params keys must be strings, got {key!r}")
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, (float, int, str, bool)):
                raise TaskError(
                    f"TaskSpec.params[{key!r}] = {value!r}: values must be numbers, strings or booleans"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise TaskError(f"TaskSpec.params[{key!r}] = {value}: values must be finite")
            params[key] = value
        object.__setattr__(self, "params", types.MappingProxyType(dict(sorted(params.items()))))

    def __hash__(self) -> int:
        return hash((self.family, tuple(self.params.items()), self.task_id))

    def __reduce__(self):
        # Sent to sampling workers as plain data; the read-only view is rebuilt on arrival.
        return (TaskSpec, (self.family, dict(self.params), self.task_id))

    def __getitem__(self, name: str) -> ParamValue:
        try:
            return self.params[name]
        except KeyError:
            raise TaskError(
                f"task {self.task_id or self.family!r} has no parameter {name!r}; it has {sorted(self.params)}"
            ) from None

    def get(self, name: str, default: ParamValue | None = None) -> ParamValue | None:
        return self.params.get(name, default)

    def replace(self, **params: ParamValue) -> "TaskSpec":
        """A copy with some parameters changed."""
        return TaskSpec(self.family, {**self.params, **params}, self.task_id)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "task_id": self.task_id, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task") -> "TaskSpec":
        if not isinstance(data, Mapping):
            raise TaskError(f"{where}: expected a mapping with 'family' and 'params', got {type(data).__name__}")
        unknown = set(data) - {"family", "params", "task_id"}
        if unknown:
            raise TaskError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: family, params, task_id")
        if "family" not in data:
            raise TaskError(f"{where}: missing key 'family' (e.g. family: grasp)")
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise TaskError(f"{where}.params: expected a mapping of name: value")
        try:
            return cls(str(data["family"]), params, str(data.get("task_id", "")))
        except TaskError as err:
            raise TaskError(f"{where}: {err}") from None


# --------------------------------------------------------------------------------------- factors


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A continuous factor drawn uniformly from ``[low, high]`` (``log=True``: log-uniform)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise TaskError(f"Uniform(low={self.low}, high={self.high}): need finite low <= high")
        if self.log and self.low <= 0:
            raise TaskError(f"Uniform(low={self.low}, log=True): a log-uniform range needs low > 0")

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def contains(self, value: ParamValue) -> bool:
        return isinstance(value, (int, float)) and self.low <= float(value) <= self.high


@dataclasses.dataclass(frozen=True)
class Choice:
    """A categorical factor. ``test_values`` and ``validation_values``, when given, are held out: only
    the test (validation) split draws from them, and the train split never does."""

    values: tuple[ParamValue, ...]
    test_values: tuple[ParamValue, ...] = ()
    validation_values: tuple[ParamValue, ...] = ()

    def __post_init__(self) -> None:
        if not self.values:
            raise TaskError("Choice(values=()): give at least one value")
        pools = {"train": self.values, "validation": self.validation_values, "test": self.test_values}
        names = list(pools)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                overlap = set(pools[a]) & set(pools[b])
                if overlap:
                    shown = sorted(map(str, overlap))[:5]
                    raise TaskError(f"Choice: values {shown} are in both the {a} and {b} sets")

    def pool(self, split: str = "train") -> tuple[ParamValue, ...]:
        """The values ``split`` draws from: its held-out set if it has one, else the train values."""
        held_out = {"test": self.test_values, "validation": self.validation_values}.get(split, ())
        return held_out or self.values

    def sample(self, rng: np.random.Generator, split: str = "train") -> ParamValue:
        pool = self.pool(split)
        return pool[int(rng.integers(len(pool)))]

    def contains(self, value: ParamValue) -> bool:
        return value in self.values or value in self.test_values or value in self.validation_values


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A factor switched off: always ``value``."""

    value: ParamValue

    def sample(self, rng: np.random.Generator, split: str = "train") -> ParamValue:
        return self.value

    def contains(self, value: ParamValue) -> bool:
        return value == self.value


Factor = Union[Uniform, Choice, Fixed]


def factor_from_config(name: str, spec: Any) -> Factor:
    """Build a factor from YAML: ``[low, high]``, ``{low, high, log}``, ``{choice: [...]}`` or a scalar."""
    if isinstance(spec, (Uniform, Choice, Fixed)):
        return spec
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and all(isinstance(v, (int, float)) for v in spec):
        return Uniform(float(spec[0]), float(spec[1]))
    if isinstance(spec, Mapping):
        if "choice" in spec:
            extra = set(spec) - {"choice", "test_choice", "validation_choice"}
            if extra:
                raise TaskError(
                    f"factor {name!r}: unknown key(s) {sorted(extra)}; allowed: choice, test_choice, validation_choice"
                )
            return Choice(
                tuple(spec["choice"]), tuple(spec.get("test_choice", ())), tuple(spec.get("validation_choice", ()))
            )
        if {"low", "high"} <= set(spec):
            extra = set(spec) - {"low", "high", "log"}
            if extra:
                raise TaskError(f"factor {name!r}: unknown key(s) {sorted(extra)}; allowed: low, high, log")
            return Uniform(float(spec["low"]), float(spec["high"]), bool(spec.get("log", False)))
    if isinstance(spec, (int, float, str, bool)):
        return Fixed(spec)
    raise TaskError(
        f"factor {name!r}: cannot read {spec!r}; write [low, high], {{low:, high:, log:}}, "
        "{choice: [...]} or a single value"
    )


# ---------------------------------------------------------------------------------- distribution


SPLITS = ("train", "validation", "test")


class TaskDistribution:
    """A seeded distribution over tasks of one family with fixed train, validation and test splits.

    The splits are lists of ``num_train`` / ``num_validation`` / ``num_test`` tasks drawn from
    independent streams of the seed, so they are identical on every machine and never change when
    more tasks are sampled (adding a validation split leaves train and test as they were).
    Categorical factors with ``test_values`` / ``validation_values`` keep those values out of the
    train split entirely.
    """

    def __init__(
        self,
        family: str,
        factors: Mapping[str, Factor | Any],
        *,
        seed: int = 0,
        num_train: int = 64,
        num_test: int = 16,
        num_validation: int = 0,
    ) -> None:
        if num_train < 1 or num_test < 0 or num_validation < 0:
            raise TaskError(
                "TaskDistribution: num_train must be >= 1, num_test and num_validation >= 0, "
                f"got {num_train}, {num_test}, {num_validation}"
            )
        self.family = family
        self.factors: dict[str, Factor] = {k: factor_from_config(k, v) for k, v in factors.items()}
        self.seed = int(seed)
        root = np.random.SeedSequence(self.seed)
        train_seq, test_seq, self._sample_seq, validation_seq = root.spawn(4)
        self.train_tasks = self._draw(np.random.default_rng(train_seq), num_train, "train")
        self.test_tasks = self._draw(np.random.default_rng(test_seq), num_test, "test")
        self.validation_tasks = self._draw(np.random.default_rng(validation_seq), num_validation, "validation")

    def _draw(self, rng: np.random.Generator, n: int, split: str) -> list[TaskSpec]:
        tasks = []
        for i in range(n):
            params = {
                name: (f.sample(rng) if isinstance(f, Uniform) else f.sample(rng, split))
                for name, f in self.factors.items()
            }
            tasks.append(TaskSpec(self.family, params, f"{split}-{i:04d}"))
        return tasks

    def split(self, name: str) -> list[TaskSpec]:
        if name == "train":
            return list(self.train_tasks)
        if name == "test":
            return list(self.test_tasks)
        if name == "validation":
            return list(self.validation_tasks)
        raise TaskError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> list[TaskSpec]:
        """``n`` tasks drawn with replacement from a split."""
        pool = self.split(split)
        if not pool:
            raise TaskError(f"the {split!r} split is empty; give the distribution num_{split} > 0")
        return [pool[int(i)] for i in rng.integers(len(pool), size=n)]

    def validate(self, task: TaskSpec) -> None:
        """Raise :class:`TaskError` if ``task`` lies outside this distribution's support."""
        if task.family != self.family:
            raise TaskError(f"task {task.task_id!r} is of family {task.family!r}, expected {self.family!r}")
        for name, factor in self.factors.items():
            if name in task.params and not factor.contains(task.params[name]):
                raise TaskError(f"task {task.task_id!r}: {name}={task.params[name]!r} is outside {factor}")


# ------------------------------------------------------------------------------------- task files


def load_task_file(path: str | Path, validators: Mapping[str, Any] | None = None) -> list[TaskSpec]:
    """Read a YAML task file: a list of ``{family, task_id, params}`` entries (or ``{tasks: [...]}``).

    ``validators`` maps a family to a callable that raises :class:`TaskError` for bad parameter values
    (a simulator registers one for its family); relative paths in string parameters are resolved
    against the task file's folder when the file exists there.
    """
    from metarl_robot.config import read_yaml

    path = Path(path)
    data = read_yaml(path, "task file", TaskError)
    if isinstance(data, Mapping):
        data = data.get("tasks")
    if not isinstance(data, Sequence) or isinstance(data, str) or not data:
        raise TaskError(f"task file {str(path)!r}: expected a non-empty list of tasks (or a 'tasks:' list)")
    tasks = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        where = f"{path}: tasks[{i}]"
        task = TaskSpec.from_dict(entry, where)
        if not task.task_id:
            task = dataclasses.replace(task, task_id=f"{path.stem}-{i}")
        if task.task_id in seen:
            raise TaskError(f"{where}: task_id {task.task_id!r} is already used by tasks[{seen[task.task_id]}]; "
                            "give every task its own task_id (results are reported by it)")
        seen[task.task_id] = i
        resolved = {}
        for key, value in task.params.items():
            if isinstance(value, str) and value.endswith(".urdf") and not Path(value).is_absolute():
                candidate = path.parent / value
                if candidate.exists():
                    resolved[key] = str(candidate.resolve())
        if resolved:
            task = task.replace(**resolved)
        check = (validators or {}).get(task.family)
        if check is not None:
            try:
                check(task)
            except TaskError as err:
                raise TaskError(f"{where}: {err}") from None
        tasks.append(task)
    return tasks


def save_task_file(tasks: Sequence[TaskSpec], path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump({"tasks": [t.to_dict() for t in tasks]}, sort_keys=False))
