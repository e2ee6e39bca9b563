"""The only place that maps a method family's name to its plug-in.

Built-in families are listed by module path and imported the first time they are asked for, so
importing the registry (as the torch-free runtime does) costs nothing and pulls in no family. Other
families, a project's own or a test's, are added with :func:`register`.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metarl_robot.families.base import Family

BUILTIN: dict[str, str] = {
    "context": "metarl_robot.families.context",
    "gradient": "metarl_robot.families.gradient",
    "recurrent": "metarl_robot.families.recurrent",
}
"""Built-in families: ``method.family`` name -> module whose ``FAMILY`` is the plug-in."""

_registered: dict[str, Family] = {}
_lock = threading.Lock()


class FamilyError(ValueError):
    """A family name or plug-in is unknown or invalid; the message lists what is registered."""


def register(family: Family, *, replace: bool = False) -> Family:
    """Make ``family`` available under ``family.name``; returns it (usable as a decorator on an instance).

    Registering a second plug-in under a taken name raises :class:`FamilyError` unless ``replace``.
    """
    name = getattr(family, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise FamilyError(f"a family plug-in needs a `name` that is an identifier, got {name!r}")
    with _lock:
        if not replace and (name in _registered or name in BUILTIN):
            raise FamilyError(f"family {name!r} is already registered; pass replace=True to replace it")
        _registered[name] = family
    return family


def unregister(name: str) -> None:
    """Forget a family added with :func:`register` (a built-in comes back on next use)."""
    with _lock:
        _registered.pop(name, None)


def get(name: str) -> Family:
    """The plug-in of family ``name``; :class:`FamilyError` naming the registered ones otherwise."""
    with _lock:
        family = _registered.get(name)
    if family is not None:
        return family
    if name in BUILTIN:
        family = importlib.import_module(BUILTIN[name]).FAMILY
        with _lock:
            return _registered.setdefault(name, family)
    raise FamilyError(
        f"unknown method family {name!r}; registered families: {', '.join(map(repr, names()))} "
        "(a family of your own must be registered with metarl_robot.families.register before use)"
    )


def names() -> tuple[str, ...]:
    """Every family name known: the built-ins and those registered, sorted."""
    with _lock:
        return tuple(sorted({*BUILTIN, *_registered}))


DEFAULT_METHOD = "context_ppo"
"""The training method of a config that names none."""


def algorithm(method: str | None) -> Any:
    """The training package (``TrainConfig``, ``train``) of the config ``method`` (``None``: the default),
    looked up in the ``algorithms`` of every registered family; :class:`FamilyError` lists the known ones."""
    method = DEFAULT_METHOD if method is None else method
    known: list[str] = []
    for name in names():
        for path in get(name).algorithms:
            module = importlib.import_module(path)
            if method in module.METHODS:
                return module
            known.extend(module.METHODS)
    raise FamilyError(f"method: {method!r} is not one of {sorted(known)} (omit it for {DEFAULT_METHOD})")


def for_policy_class(class_name: str) -> Family:
    """The family whose PyTorch policy class is called ``class_name`` (as a checkpoint records it)."""
    for name in names():
        family = get(name)
        if family.policy_class == class_name:
            return family
    known = sorted(get(name).policy_class for name in names())
    raise FamilyError(f"no registered family trains a policy of class {class_name!r}; known classes: {known}")
