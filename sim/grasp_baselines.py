"""Classical grip-force controllers for the grasp suite: what a robotics engineer would use instead of a
learned meta-policy, run through the same meta-test protocol (:func:`metarl_robot.evaluation.evaluate`).

None of them is ever told the task. Each reads only

* the observation vector, by entry name through the env's ``observation_layout`` (``ee_position``,
  ``object_position``, ``finger_position``, ``finger_effort``), and
* the per-step reward the robot already receives (a bundle's ``reward_source`` topic), used for one
  thing only: a step reward below ``-1`` is the crush penalty (``docs/grasp_env.md``: the step on
  which the object is crushed costs -2). In simulation a crushed object does not deform, so neither
  the finger opening nor the effort shows it; on hardware the same signal would come from a sudden
  closing of the fingers or a deformation sensor.

They implement the runtime :class:`metarl_robot.runtime.Controller` protocol (``reset``, ``act``,
``observe``, ``adapt``, ...): commands are in physical units ``[vx, vy, vz, grip_force_n]``; one
attempt is one episode, and ``adapt()`` after an attempt is where the across-attempt controllers
learn from its outcome (with adaptation off they never change their force between attempts).

* :class:`FixedForceController`: the scripted grasp (:func:`sim.grasp.scripted_grasp_action`) with
  one force, the non-adaptive baseline.
* :class:`ForceRampController` (within an attempt): the scripted approach and close with a gentle
  force, then a lift during which the force is multiplied by ``ratio`` (smaller than the narrowest
  force window of the suite, 1.4x) whenever the object slips, i.e. whenever the end effector has risen
  more than the object since the last raise by more than a noise-scaled threshold. It stops lifting
  once the object is 10 cm up. If the pads lose the object it opens and grasps again with the force
  reached.
* :class:`ForceBisectionController` (across attempts): a fixed force per attempt, bisected in log
  force on the attempt's outcome: up after a slip (the object was grasped but not lifted), down after
  a crush, kept after a lift.
* :class:`RampBisectionController` (both): the ramp within each attempt, and across attempts a
  starting force and a ceiling learned from the outcomes (see its docstring).

Outcome of an attempt, from what a robot sees (:class:`AttemptOutcome`): ``crushed`` (a crush
reward), ``lifted`` (the object's position rose at least ``lifted_m`` above where it rested),
``slipped`` (the pads closed on the object but it was not lifted), ``missed`` (the pads never
pressed on it: no information about the force).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from metarl_robot.runtime.schedule import AdaptationSchedule
from sim.grasp import scripted_grasp_action
from sim.grasp_task import MAX_EE_SPEED_M_S, MAX_GRIP_FORCE_N
from sim.robots import FINGER_OPEN_POSITION_M
from sim.scene import INTERFACE

__all__ = [
    "AttemptOutcome",
    "FixedForceController",
    "ForceBisectionController",
    "ForceRampController",
    "GripForceController",
    "RampBisectionController",
    "SlipLawRampController",
]

OBSERVED = ("ee_position", "object_position", "finger_position", "finger_effort")
"""The observation entries these controllers read, by name, and their sizes below."""
_SIZES = {"ee_position": 3, "object_position": 3, "finger_position": 2, "finger_effort": 2}

CRUSH_REWARD = -1.0
"""A step reward below this is the crush penalty (-2 on the crushing step; every other step is >= 0)."""
CLOSED_BY_M = 0.006
"""The fingers count as closing once the summed opening is this much below fully open (as the scripted grasp)."""
PRESSING_FRACTION = 0.7
"""Both finger motors push with at least this fraction of the commanded force: the pads press on something."""
EMPTY_OPENING_M = 0.003
"""Summed finger opening below which the pads have closed on nothing: the object is lost."""

# Suite-level constants a robotics engineer would take from the gripper's data sheet and the object
# catalogue (docs/grasp_env.md), not from any one task.
PRIOR_LOW_N = 0.3
"""About the lightest holding force of the suite (a light, grippy object)."""
PRIOR_HIGH_N = MAX_GRIP_FORCE_N
"""The most a finger motor can squeeze."""
NARROWEST_WINDOW_RATIO = 1.4
"""The narrowest force window of the suite: crush force / holding force >= 1.4."""


def _layout_slices(interface: Mapping[str, Any] | None) -> dict[str, slice]:
    layout = (interface or INTERFACE)["observation_layout"]
    slices, start = {}, 0
    for item in layout:
        slices[str(item["name"])] = slice(start, start + int(item["size"]))
        start += int(item["size"])
    missing = [name for name in OBSERVED if name not in slices]
    if missing:
        raise ValueError(f"the observation layout lacks {missing}; a grip-force controller reads {list(OBSERVED)}")
    for name in OBSERVED:
        size = slices[name].stop - slices[name].start
        if size != _SIZES[name]:
            raise ValueError(f"observation entry {name!r} has {size} values, expected {_SIZES[name]}")
    slices["_dim"] = slice(0, start)
    return slices


@dataclasses.dataclass
class AttemptOutcome:
    """What one attempt showed, from observations and the crush reward only."""

    grasped: bool = False
    """The pads pressed on the object (both finger efforts near the commanded force, fingers closing)."""
    crushed: bool = False
    lifted: bool = False
    """The object ended at least ``lifted_m`` above its resting height."""
    max_force_n: float = 0.0
    """The highest force commanded while the pads pressed."""
    crush_force_n: float = math.inf
    """The lower of the forces commanded on the crushing step and the step before (with a command
    latency the force acting may be the earlier one)."""
    final_force_n: float = 0.0
    """The force commanded on the attempt's last step."""
    raises: int = 0
    """Force raises within the attempt (ramping controllers)."""
    regrasps: int = 0
    contact_step: int = -1
    """Control step on which the pads first pressed (-1: never)."""
    steps: int = 0

    @property
    def slipped(self) -> bool:
        return self.grasped and not self.lifted and not self.crushed

    @property
    def missed(self) -> bool:
        return not self.grasped and not self.crushed

    @property
    def label(self) -> str:
        if self.crushed:
            return "crushed"
        if self.lifted:
            return "lifted"
        return "slipped" if self.grasped else "missed"


class GripForceController:
    """The shared part: observation by name, the attempt's bookkeeping, the Controller protocol.

    Subclasses choose the force (and, for the ramp, the lift) in :meth:`_command` and learn across
    attempts in :meth:`_learn`. ``interface`` is the env's robot contract (``env.interface``; default
    the Panda's); only its ``observation_layout`` and ``action.scale`` are read.
    """

    family = "classical_grip"
    lifted_m = 0.07
    goal_m = 0.10
    """The ramping controllers stop lifting once the object is this far above its resting height (the
    task asks for 8 cm; success is judged at the end of the attempt)."""
    """An object this far above its resting height at the end of an attempt counts as lifted (the
    success lift is 8 cm; 1 cm less leaves room for observation noise)."""

    def __init__(self, interface: Mapping[str, Any] | None = None) -> None:
        self._slices = _layout_slices(interface)
        self.obs_dim = self._slices.pop("_dim").stop
        scale = np.asarray((interface or INTERFACE)["action"]["scale"], dtype=np.float32)
        self.act_dim = len(scale)
        self._scale = scale
        self.attempts: list[AttemptOutcome] = []
        """Outcomes of this task's attempts so far (the current one last)."""
        self.reset()

    # -------------------------------------------------------------------- the Controller protocol
    def reset(self) -> None:
        """A new object: forget what earlier attempts taught."""
        self.attempts = []
        self._reset_task()
        self._in_attempt = False

    def act(self, obs: Any) -> np.ndarray:
        obs = self._check(obs)
        if not self._in_attempt:
            self._start_attempt(obs)
        self._read(obs)
        velocity, force = self._command()
        self._last_forces = (self._last_forces[1], force)
        if force > 0:
            self._last_squeeze_n = force
        return np.array([*velocity, force], dtype=np.float32)

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        outcome = self.attempts[-1] if self._in_attempt else None
        if outcome is None:
            return
        outcome.steps += 1
        force = float(np.asarray(action, dtype=np.float64).reshape(-1)[-1])
        if float(reward) < CRUSH_REWARD and not outcome.crushed:
            outcome.crushed = True
            squeezing = [f for f in self._last_forces if f > 0]
            # Crushed while opening (a regrasp): the force that did it is the last squeeze commanded.
            outcome.crush_force_n = min(squeezing) if squeezing else self._last_squeeze_n
        outcome.final_force_n = force
        nxt = self._check(next_obs)
        lift = float(nxt[self._slices["object_position"]][2]) - self._rest_z
        outcome.lifted = lift >= self.lifted_m and not outcome.crushed
        if bool(done):
            self._in_attempt = False

    def adapt(self) -> dict[str, Any]:
        """Learn from the last attempt's outcome; returns the state for the next attempt."""
        if self.attempts:
            self._learn(self.attempts[-1])
        return self.status()

    def schedule(self, every_n_steps: int = 0) -> AdaptationSchedule:
        return AdaptationSchedule("episode", every_n_steps, 1)

    @property
    def episodes_ready(self) -> int:
        return 1

    def set_learning(self, enabled: bool) -> None:
        """Acts the same either way; whether :meth:`adapt` is called decides what it learns."""

    def status(self) -> dict[str, str]:
        last = self.attempts[-1].label if self.attempts else "none"
        return {"adaptation_family": self.family, "controller": type(self).__name__, "last_outcome": last,
                **{k: f"{v:.4g}" for k, v in self.get_state().items()}}

    def get_state(self) -> dict[str, float]:
        return {}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state {sorted(state)}")

    # -------------------------------------------------------------------- helpers
    def _check(self, obs: Any) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64).reshape(-1)
        if obs.shape != (self.obs_dim,) or not np.all(np.isfinite(obs)):
            raise ValueError(f"observation must be {self.obs_dim} finite numbers, got {obs!r}")
        return obs

    def _start_attempt(self, obs: np.ndarray) -> None:
        self._in_attempt = True
        self.attempts.append(AttemptOutcome())
        self._step = 0
        self._rest_samples: list[np.ndarray] = []
        self._rest_z = float(obs[self._slices["object_position"]][2])
        self._last_forces = (0.0, 0.0)
        self._last_squeeze_n = math.inf
        self._start_attempt_force()

    def _read(self, obs: np.ndarray) -> None:
        """Split ``obs`` by name; keep the object's resting height up to first contact."""
        s = self._slices
        self._ee = obs[s["ee_position"]]
        self._obj = obs[s["object_position"]]
        self._fingers = obs[s["finger_position"]]
        self._opening = float(self._fingers.sum())
        self._effort = obs[s["finger_effort"]]
        outcome = self.attempts[-1]
        if not outcome.grasped:
            self._rest_samples.append(self._obj.copy())
            self._rest_z = float(np.mean([p[2] for p in self._rest_samples]))
        self._step += 1

    def _pressing(self, force_n: float) -> bool:
        closing = self._opening < 2 * FINGER_OPEN_POSITION_M - CLOSED_BY_M
        return closing and force_n > 0 and bool(np.all(-self._effort >= PRESSING_FRACTION * force_n))

    def _canonical(self) -> np.ndarray:
        """The observation in the order :func:`scripted_grasp_action` reads (the Panda interface's)."""
        return np.concatenate([self._ee, self._obj, self._fingers, self._effort])

    def _scripted(self, force_n: float) -> tuple[np.ndarray, float]:
        action = scripted_grasp_action(self._canonical(), force_n)
        return action[:3] * self._scale[:3], float(action[3] * self._scale[3])

    def _note_contact(self, force_n: float) -> bool:
        """Mark the attempt grasped the first time the pads press with ``force_n``; True when they press."""
        outcome = self.attempts[-1]
        if force_n > 0 and self._pressing(force_n):
            if not outcome.grasped:
                outcome.grasped = True
                outcome.contact_step = self._step
            outcome.max_force_n = max(outcome.max_force_n, force_n)
            return True
        return False

    # -------------------------------------------------------------------- for subclasses
    def _reset_task(self) -> None:
        pass

    def _start_attempt_force(self) -> None:
        pass

    def _command(self) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def _learn(self, outcome: AttemptOutcome) -> None:
        pass


class FixedForceController(GripForceController):
    """The scripted grasp with one grip force for every attempt: the non-adaptive baseline."""

    def __init__(self, interface: Mapping[str, Any] | None = None, *, force_n: float) -> None:
        self.force_n = float(force_n)
        super().__init__(interface)

    def _command(self) -> tuple[np.ndarray, float]:
        self._note_contact(self.force_n)
        return self._scripted(self.force_n)

    def get_state(self) -> dict[str, float]:
        return {"force_n": self.force_n}


class ForceBisectionController(GripForceController):
    """Bisection in log force across attempts, on the outcome of each attempt.

    The force lies in ``[low_n, high_n]`` (default: the suite's lightest holding force to the motor's
    limit); each attempt grasps with the geometric middle of the interval, as the scripted grasp with
    a fixed force. After a slip the interval's lower end moves up to that force, after a crush its
    upper end moves down to it; after a lift the force is kept; a miss teaches nothing. ``first_n``
    replaces the first attempt's force (e.g. the best fixed force); the bracket is the same.
    """

    def __init__(self, interface: Mapping[str, Any] | None = None, *, low_n: float = PRIOR_LOW_N,
                 high_n: float = PRIOR_HIGH_N, first_n: float | None = None) -> None:
        if not 0 < low_n < high_n:
            raise ValueError(f"need 0 < low_n < high_n, got {low_n}, {high_n}")
        if first_n is not None and not low_n < first_n < high_n:
            raise ValueError(f"first_n={first_n} must lie inside ({low_n}, {high_n})")
        self.prior = (float(low_n), float(high_n))
        self.first_n = None if first_n is None else float(first_n)
        super().__init__(interface)

    def _reset_task(self) -> None:
        self.low_n, self.high_n = self.prior
        self.force_n = self.first_n if self.first_n is not None else math.sqrt(self.low_n * self.high_n)

    def _command(self) -> tuple[np.ndarray, float]:
        self._note_contact(self.force_n)
        return self._scripted(self.force_n)

    def _learn(self, outcome: AttemptOutcome) -> None:
        if outcome.crushed:
            self.high_n = min(self.high_n, self.force_n)
        elif outcome.slipped:
            self.low_n = max(self.low_n, self.force_n)
        else:
            return  # lifted: keep the force; missed: nothing learned
        if self.low_n >= self.high_n:  # contradictory outcomes (noise): start over around the last force
            self.low_n, self.high_n = self.force_n / NARROWEST_WINDOW_RATIO, self.force_n * NARROWEST_WINDOW_RATIO
        self.force_n = math.sqrt(self.low_n * self.high_n)

    def get_state(self) -> dict[str, float]:
        return {"force_n": self.force_n, "low_n": self.low_n, "high_n": self.high_n}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"force_n", "low_n", "high_n"}:
            raise ValueError("state must have exactly force_n, low_n, high_n")
        self.force_n, self.low_n, self.high_n = (float(state[k]) for k in ("force_n", "low_n", "high_n"))


class ForceRampController(GripForceController):
    """Within an attempt: close gently, then raise the force while the object slips during the lift.

    Approach and close as the scripted grasp with ``start_n``. Once the pads press, lift at
    ``probe_speed`` of full speed until the object has risen ``held_m`` with the end effector, then at
    full speed. Every control step, ``slip`` = how much more the end effector has risen than the object
    since the pads first pressed; when it has grown by more than the slip threshold since the last
    raise, the force is multiplied by ``ratio`` (at most ``max_n``). The threshold is ``slip_m`` or, on
    a noisy robot, ``noise_sigmas`` standard deviations of a difference of position readings (2 sigma),
    with sigma estimated from the object's height while it rested before contact; once the object is
    held it is ``held_slip_factor`` times larger (the lift's acceleration makes a held object lag a
    little). Once the object is ``goal_m`` up the arm holds still. If the pads close on nothing (the
    object slid out), the gripper opens and the scripted grasp runs again with the force reached
    (``regrasp``). Attempts are independent: :meth:`adapt` changes nothing.
    """

    def __init__(self, interface: Mapping[str, Any] | None = None, *, start_n: float = PRIOR_LOW_N,
                 ratio: float = 1.35, max_n: float = PRIOR_HIGH_N, probe_speed: float = 0.3, held_m: float = 0.015,
                 slip_m: float = 0.003, noise_sigmas: float = 2.0, held_slip_factor: float = 3.0,
                 regrasp: bool = True) -> None:
        if not 1.0 < ratio < NARROWEST_WINDOW_RATIO:
            raise ValueError(f"ratio={ratio} must be above 1 and below the narrowest force window {NARROWEST_WINDOW_RATIO}")
        if not 0 < start_n <= max_n:
            raise ValueError(f"need 0 < start_n <= max_n, got {start_n}, {max_n}")
        self.start_n, self.ratio, self.max_n = float(start_n), float(ratio), float(max_n)
        self.probe_speed, self.held_m, self.slip_m, self.regrasp = float(probe_speed), float(held_m), float(slip_m), bool(regrasp)
        self.noise_sigmas, self.held_slip_factor = float(noise_sigmas), float(held_slip_factor)
        super().__init__(interface)

    def _reset_task(self) -> None:
        self.next_start_n = self.start_n

    def _start_attempt_force(self) -> None:
        self.force_n = self.next_start_n
        self._phase = "grasp"
        self._contact_ee_z = 0.0
        self._slip_ref = 0.0
        self._held = False
        self._threshold = self.slip_m

    def _slip_threshold(self) -> float:
        heights = np.asarray(self._rest_samples)[:, 2]
        if len(heights) < 3:
            return self.slip_m
        noise = float(np.std(heights, ddof=1))
        return max(self.slip_m, self.noise_sigmas * 2.0 * noise)

    def _command(self) -> tuple[np.ndarray, float]:
        outcome = self.attempts[-1]
        if self._phase == "open":
            if self._opening >= 2 * FINGER_OPEN_POSITION_M - CLOSED_BY_M:
                self._phase = "grasp"
            else:
                return np.zeros(3), -float(self._scale[3])
        if self._phase == "grasp":
            if self._note_contact(self.force_n):
                self._phase = "lift"
                self._threshold = self._slip_threshold()
                self._contact_ee_z = float(self._ee[2])
                self._contact_obj_z = float(self._obj[2])
                self._slip_ref = 0.0
                self._held = False
            else:
                return self._scripted(self.force_n)
        # lift: slip = how much more the end effector has risen than the object since contact
        rise = float(self._ee[2]) - self._contact_ee_z
        lift = float(self._obj[2]) - self._contact_obj_z
        slip = rise - lift
        if self._opening < EMPTY_OPENING_M and self.regrasp:
            # The pads closed on nothing: open and grasp again with the force reached.
            outcome.regrasps += 1
            self._phase = "open"
            return np.zeros(3), -float(self._scale[3])
        if slip - self._slip_ref > self._threshold * (self.held_slip_factor if self._held else 1.0):
            self._raise(outcome)
            self._slip_ref = slip
        self._slip_ref = min(self._slip_ref, slip)
        if lift >= self.held_m:
            self._held = True
        outcome.max_force_n = max(outcome.max_force_n, self.force_n)
        if lift >= self.goal_m:
            vz = 0.0  # high enough: hold it there (success is judged at the attempt's end)
        elif self._held:
            vz = MAX_EE_SPEED_M_S
        else:
            vz = self.probe_speed * MAX_EE_SPEED_M_S
        return np.array([0.0, 0.0, vz]), self.force_n

    def _raise(self, outcome: AttemptOutcome) -> None:
        if self.force_n < self.max_n:
            self.force_n = min(self.force_n * self.ratio, self.max_n)
            outcome.raises += 1

    def get_state(self) -> dict[str, float]:
        return {"start_n": self.next_start_n}


class SlipLawRampController(ForceRampController):
    """The ramp with a raise rule a controller without memory can follow: during the lift the force is
    raised, by at most ``ratio`` per control step, towards ``start_n * ratio ** floor(slip / slip_m)``
    and never lowered. The target is a function of how far the object has slipped in the hand and of
    the force already commanded, both of which a policy that reads its previous command can observe
    (the slip is the drop of the object below its grasp position in the hand), where the plain ramp's
    rule needs the slip at its last raise. Everything else is the ramp's (approach, close, probe lift,
    regrasp). Attempts are independent: :meth:`adapt` changes nothing."""

    def _raise(self, outcome: AttemptOutcome) -> None:
        """Replaced by the slip law in :meth:`_command`."""

    def _command(self) -> tuple[np.ndarray, float]:
        velocity, force = super()._command()
        if self._phase == "lift" and force > 0:
            slip = (float(self._ee[2]) - self._contact_ee_z) - (float(self._obj[2]) - self._contact_obj_z)
            step_m = self._threshold * (self.held_slip_factor if self._held else 1.0)
            target = min(self.start_n * self.ratio ** math.floor(max(slip, 0.0) / step_m), self.max_n)
            if target > self.force_n:
                self.force_n = min(target, self.force_n * self.ratio)
                self.attempts[-1].raises += 1
            force = self.force_n
        return velocity, force


class RampBisectionController(ForceRampController):
    """The ramp within each attempt, and across attempts a bracket ``[low_n, high_n]`` on the force.

    The first attempt is the ramp from ``start_n``. From each attempt's outcome: a lift keeps the force
    that held as the next start; a slip (grasped, not lifted) sets ``low_n`` to the highest force that
    was still slipping and the next start to the bracket's geometric middle, but at most
    ``ratio ** jump_raises`` above ``low_n`` (a force that slipped is below the holding force, so a
    start one ``ratio`` above it cannot crush; the jump trades that safety for time); a crush sets
    ``high_n`` to the crushing force and the next start at least two ratios below it. Within an
    attempt the ramp never goes above ``high_n / ratio``. With adaptation off every attempt is the
    plain ramp.
    """

    jump_raises = 3

    def _reset_task(self) -> None:
        super()._reset_task()
        self.low_n, self.high_n = self.start_n / self.ratio, self.max_n * self.ratio

    def _start_attempt_force(self) -> None:
        super()._start_attempt_force()
        self._ceiling = min(self.max_n, self.high_n / self.ratio)

    def _raise(self, outcome: AttemptOutcome) -> None:
        if self.force_n < self._ceiling:
            self.force_n = min(self.force_n * self.ratio, self._ceiling)
            outcome.raises += 1

    def _learn(self, outcome: AttemptOutcome) -> None:
        if outcome.crushed:
            self.high_n = min(self.high_n, outcome.crush_force_n)
            start = min(self.next_start_n, self.high_n / self.ratio**2)
        elif outcome.lifted:
            start = outcome.final_force_n
        elif outcome.grasped:
            self.low_n = max(self.low_n, outcome.max_force_n)
            start = min(math.sqrt(self.low_n * self.high_n), self.low_n * self.ratio**self.jump_raises)
        else:
            return
        if self.low_n >= self.high_n:
            self.low_n = self.high_n / self.ratio**2
        floor = min(self.start_n, PRIOR_LOW_N)
        self.next_start_n = float(np.clip(start, floor, max(floor, min(self.max_n, self.high_n / self.ratio))))

    def get_state(self) -> dict[str, float]:
        return {"start_n": self.next_start_n, "low_n": self.low_n, "high_n": self.high_n}
