"""When a controller adapts: the adaptation cadence a bundle declares, as one small rule.

Numpy-free and ROS-free; the control loop and every controller use this one implementation.
"""

from __future__ import annotations

import dataclasses

CADENCES = ("episode", "step", "episodes")


@dataclasses.dataclass(frozen=True)
class AdaptationSchedule:
    """When to run the adapt graph.

    * ``episode`` (context bundles): at every episode end, and also every ``every_n_steps``
      transitions when that is > 0;
    * ``step``: every ``every_n_steps`` transitions (0 = after every transition);
    * ``episodes`` (gradient bundles): at the episode end that completes ``episodes_per_step``
      episodes collected with the current parameters (``every_n_steps`` does not apply: a
      policy-gradient step needs whole episodes).
    """

    cadence: str = "episode"
    every_n_steps: int = 0
    episodes_per_step: int = 1

    def __post_init__(self) -> None:
        if self.cadence not in CADENCES:
            raise ValueError(f"adaptation cadence {self.cadence!r} is not supported; use one of {list(CADENCES)}")
        if self.every_n_steps < 0:
            raise ValueError(f"adapt_every_n_steps must be >= 0, got {self.every_n_steps}")
        if self.episodes_per_step < 1:
            raise ValueError(f"episodes_per_step must be >= 1, got {self.episodes_per_step}")

    def after_step(self, steps_since_adapt: int) -> bool:
        """Adapt now, ``steps_since_adapt`` transitions after the last adaptation?"""
        if self.cadence == "episodes":
            return False
        every = self.every_n_steps or (1 if self.cadence == "step" else 0)
        return every > 0 and steps_since_adapt >= every

    def at_episode_end(self, episodes_ready: int = 1) -> bool:
        """Adapt at this episode end, with ``episodes_ready`` complete episodes collected?"""
        if self.cadence == "episodes":
            return episodes_ready >= self.episodes_per_step
        return self.cadence == "episode"
