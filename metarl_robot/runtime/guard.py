"""The adaptation guard: an adaptation that makes the robot worse is undone.

A controller that adapts by changing its parameters (the gradient family) or its context (the context
family) can adapt itself into a worse policy: a policy-gradient step on noisy episodes, or past the
number of steps meta-training validated, can wreck it. :class:`AdaptationGuard` watches the signal the
bundle declares (each episode's return, or its success) over each *window*, the episodes between two
adaptations. When an adaptation is due it first scores the window that just ended, which the last
adaptation's state produced, against the window before that adaptation:

* worse by more than ``max_drop`` (the manifest's threshold, in the signal's units): the controller
  gets back its state from before that adaptation (``Controller.set_state``) and adaptation stops
  until the next task (``reset``), with the reason in diagnostics;
* otherwise the adaptation is kept, and the next one may run: unless ``validated_steps`` adaptations
  have run since the task began, the number meta-training validated, where adaptation also stops
  unless the deployer allows more (``beyond_validated``).

The manifest declares the guard in ``adaptation.guard``::

    "guard": {"signal": "return", "max_drop": 2.5, "validated_steps": 3}

``validated_steps`` may be ``null`` (no limit). A bundle without the section has no guard unless the
deployer sets a threshold (:class:`GuardSettings`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

SIGNALS = ("return", "success")

STANDARD_ERRORS = 3.0
"""Training sets a guard's allowed drop to this many standard errors of the difference of two windows'
mean return (:func:`allowed_drop`): with normally distributed window means, an adaptation that changed
nothing is rolled back about once in 740 times."""


def allowed_drop(episode_sd: float, window_episodes: int) -> float:
    """The ``max_drop`` training declares: :data:`STANDARD_ERRORS` standard errors of the difference of
    two means of ``window_episodes`` episodes whose returns spread with standard deviation ``episode_sd``."""
    return float(STANDARD_ERRORS * episode_sd * math.sqrt(2.0 / window_episodes))


class GuardError(ValueError):
    """An ``adaptation.guard`` section or guard setting that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class GuardSpec:
    """What the bundle declares: the signal watched, the drop that triggers a rollback, and how many
    adaptations meta-training validated (``None``: not limited)."""

    signal: str = "return"
    max_drop: float = 0.0
    validated_steps: int | None = None

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise GuardError(f"adaptation.guard.signal must be one of {list(SIGNALS)}, got {self.signal!r}")
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or not (
            math.isfinite(self.max_drop) and self.max_drop >= 0
        ):
            raise GuardError(f"adaptation.guard.max_drop must be a finite number >= 0, got {self.max_drop!r}")
        steps = self.validated_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise GuardError(f"adaptation.guard.validated_steps must be an integer >= 1 or null, got {steps!r}")

    @classmethod
    def from_adaptation(cls, adaptation: Mapping[str, Any]) -> GuardSpec | None:
        """The ``guard`` of a manifest's ``adaptation`` section, ``None`` when it has none."""
        section = adaptation.get("guard")
        if section is None:
            return None
        if not isinstance(section, Mapping):
            raise GuardError(f"adaptation.guard must be a mapping, got {type(section).__name__}")
        unknown = sorted(set(section) - {"signal", "max_drop", "validated_steps"})
        if unknown:
            raise GuardError(f"adaptation.guard has unknown keys {unknown}; it takes signal, max_drop, validated_steps")
        return cls(
            signal=section.get("signal", "return"),
            max_drop=section.get("max_drop", 0.0),
            validated_steps=section.get("validated_steps"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    """What the deployer decides (node parameters ``adaptation_guard``, ``guard_max_drop``,
    ``adapt_beyond_validated_steps``)."""

    enabled: bool = True
    """Watch adaptations and roll back the ones that make things worse."""
    max_drop: float = -1.0
    """Overrides the manifest's threshold when >= 0; a bundle that declares no guard is guarded only then."""
    beyond_validated: bool = False
    """Keep adapting after the number of steps meta-training validated."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drop) or (self.max_drop < 0 and self.max_drop != -1.0):
            raise GuardError(f"guard_max_drop must be >= 0, or -1 for the bundle's threshold; got {self.max_drop}")

    def resolve(self, declared: GuardSpec | None) -> GuardSpec | None:
        """The spec in force: the bundle's, with the deployer's threshold if one is set; ``None`` when
        disabled, or when the bundle declares none and the deployer set no threshold."""
        if not self.enabled:
            return None
        if self.max_drop >= 0:
            return dataclasses.replace(declared or GuardSpec(), max_drop=float(self.max_drop))
        return declared


class Stateful(Protocol):
    def get_state(self) -> dict[str, np.ndarray]: ...

    def set_state(self, state: Mapping[str, Any]) -> None: ...


class AdaptationGuard:
    """Scores each adaptation window and undoes an adaptation that made the next window worse.

    The loop calls :meth:`add_reward` and :meth:`end_episode` as they arrive, :meth:`permits` when an
    adaptation falls due (it may roll back, and says whether to adapt), :meth:`adapted` after a
    successful adaptation and :meth:`reset` on a new task. ``spec=None`` is a guard that permits every
    adaptation and only keeps the counts.
    """

    def __init__(self, spec: GuardSpec | None, beyond_validated: bool = False) -> None:
        self.spec = spec
        self.beyond_validated = bool(beyond_validated)
        self.rollbacks = 0
        """Rollbacks since this guard was built (over every task)."""
        self.last_event = ""
        """The last rollback or stop, as a sentence (empty until one happens)."""
        self.reset()

    def reset(self) -> None:
        """A new task: forget the windows, the saved state and the count of adaptations; adapt again."""
        self.steps = 0
        """Adaptations kept since the task began."""
        self.stopped: str | None = None
        """Why adaptation stopped for this task, ``None`` while it goes on."""
        self.window: list[float] = []
        """The signal of each episode that ended since the last adaptation."""
        self.baseline: float | None = None
        """The score of the window before the last adaptation."""
        self.last_score: float | None = None
        """The score of the last window that was judged."""
        self._episode_return = 0.0
        self._saved: dict[str, np.ndarray] | None = None
        self._baseline_episodes = 0

    @property
    def active(self) -> bool:
        return self.spec is not None

    def add_reward(self, reward: float) -> None:
        self._episode_return += float(reward)

    def end_episode(self, success: bool) -> None:
        if self.spec is not None and math.isfinite(self._episode_return):
            self.window.append(float(bool(success)) if self.spec.signal == "success" else self._episode_return)
        self._episode_return = 0.0

    def score(self) -> float | None:
        """The mean signal over the episodes of the current window (``None`` without one)."""
        return float(np.mean(self.window)) if self.window else None

    @property
    def judgeable(self) -> bool:
        """The last adaptation awaits judgement and its window has as many episodes as the window before
        it: the loop may judge it at once (:meth:`judge`) instead of waiting for the next adaptation to
        fall due, which never comes while the robot holds (held ticks are not recorded)."""
        return self._saved is not None and len(self.window) >= self._baseline_episodes > 0

    def judge(self, controller: Stateful) -> bool:
        """Judge the last adaptation on the current window: roll it back (and stop) when the window
        scores lower than the one before it by more than ``max_drop``; returns whether it rolled back."""
        spec, score = self.spec, self.score()
        if spec is None or self._saved is None or score is None or self.baseline is None:
            return False
        self.last_score = score
        saved, self._saved = self._saved, None
        if score >= self.baseline - spec.max_drop:
            return False
        controller.set_state(saved)
        self.rollbacks += 1
        self.stopped = self.last_event = (
            f"rolled back adaptation {self.steps}: the {spec.signal} per episode fell from "
            f"{self.baseline:.4g} to {score:.4g}, more than the allowed drop of {spec.max_drop:.4g}; "
            "adaptation stops until the next task"
        )
        self.steps -= 1
        return True

    def permits(self, controller: Stateful) -> bool:
        """An adaptation is due: judge the last one on the window that just ended if that was not done
        (rolling it back when it made things worse), then say whether to run the next one. Saves the
        state it would roll back to."""
        spec = self.spec
        if spec is None:
            return True
        if self.judge(controller):
            self.window = []
            return False
        score, episodes = self.score(), len(self.window)
        self.window = []
        if self.stopped is not None:
            return False
        if spec.validated_steps is not None and self.steps >= spec.validated_steps and not self.beyond_validated:
            self.stopped = self.last_event = (
                f"meta-training validated {spec.validated_steps} adaptation step(s) and all have run; adaptation "
                "stops until the next task (set adapt_beyond_validated_steps to go on)"
            )
            return False
        if score is None:  # no episode ended in the window: nothing to judge the next step against
            self.baseline = self._saved = None
            return True
        self.baseline, self._baseline_episodes = score, episodes
        self._saved = controller.get_state()
        return True

    def adapted(self) -> None:
        """The adaptation :meth:`permits` allowed ran."""
        self.steps += 1

    def adapt_failed(self) -> None:
        """The adaptation did not run (the controller kept its state): nothing to judge."""
        self._saved = None

    def status(self) -> dict[str, str]:
        spec = self.spec
        if spec is None:
            return {"guard": "off"}

        def fmt(value: float | None) -> str:
            return "" if value is None else f"{value:.4g}"

        return {
            "guard": "stopped" if self.stopped else "watching",
            "guard_signal": spec.signal,
            "guard_max_drop": f"{spec.max_drop:g}",
            "guard_validated_steps": "" if spec.validated_steps is None else str(spec.validated_steps),
            "guard_steps": str(self.steps),
            "guard_baseline": fmt(self.baseline),
            "guard_last_score": fmt(self.last_score),
            "guard_rollbacks": str(self.rollbacks),
            "guard_event": self.last_event,
        }
