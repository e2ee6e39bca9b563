"""The on-robot RL² policy: a recurrent state the controller keeps and feeds back every control step.

:class:`RecurrentController` runs a ``"recurrent"`` bundle (family plug-in
:mod:`metarl_robot.families.recurrent`) with numpy and onnxruntime only. Its one graph is a control
step ``(obs, prev_command, prev_reward, prev_done, noise, state_in) -> (command, state_out)``; the
controller holds ``state`` (``h``, and ``c`` for an LSTM) and the previous step's command, reward and
done flag as explicit arrays:

* ``act(obs)`` runs the step and adopts ``state_out``;
* ``observe(obs, action, reward, next_obs, done)`` records the command that was sent, its reward and
  whether it ended the episode, which the next ``act`` feeds in (the control loop calls ``observe``
  for a tick's transition before that tick's ``act``);
* ``reset()`` zeroes the state and the previous step: a new trial (new object, new task);
* an episode end does not touch the state: the memory carries across the attempts of a trial, which
  is how the policy adapts;
* ``adapt()`` computes nothing (there is no adapt graph; the memory was updated by every ``act``) and
  returns the state;
* ``set_learning(False)`` freezes the memory (``act`` stops adopting ``state_out``) and sends the mean
  command; ``True`` resumes both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime

from metarl_robot.runtime.base import BundleController, NormalRows, all_finite, bound_run, check_done, load_vector, scalar
from metarl_robot.runtime.bundle import Bundle


class RecurrentController(BundleController):
    """Run an exported RL² policy on the robot: ``act``, ``observe``, ``reset``; see the module docstring.

    Typical use::

        controller = RecurrentController.load("bundles/rl2", providers=["cpu"], seed=0)
        controller.reset()                                 # new object: forget the last one
        command = controller.act(obs)                      # every control tick; updates the memory
        controller.observe(obs, command, reward, next_obs, done)
        # at an episode (attempt) end: nothing to do, the memory carries into the next attempt

    ``seed`` seeds the exploration noise; ``explore`` (default: the manifest's
    ``adaptation.sample_actions``) samples commands around the mean as in training, or sends the mean.
    Attributes: those of :class:`BundleController`, plus ``cell``, ``hidden_size``, ``state_size``,
    ``explore`` and ``steps_since_reset``.
    """

    family = "recurrent"

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        *,
        session_options: onnxruntime.SessionOptions | None = None,
        seed: int | None = None,
        explore: bool | None = None,
    ) -> None:
        super().__init__(bundle, providers, session_options=session_options)
        adaptation = bundle.adaptation
        self.cell = str(adaptation["cell"])
        self.hidden_size = int(adaptation["hidden_size"])
        self.state_size = int(adaptation["state_size"])
        self._sample_actions = bool(adaptation["sample_actions"])
        self.explore = self._sample_actions if explore is None else bool(explore)
        """Sample commands from the policy's Gaussian (``noise`` ~ N(0, 1)) or send its mean (``noise`` = 0)."""
        self._learning = True

        self._obs = np.zeros((1, self.obs_dim), dtype=np.float32)
        self._obs_row = self._obs[0]  # a view kept: act() writes each observation through it
        self._prev_command = np.zeros((1, self.act_dim), dtype=np.float32)
        self._prev_reward = np.zeros((1, 1), dtype=np.float32)
        self._prev_done = np.zeros((1, 1), dtype=np.float32)
        # The action's noise, then (PEARL) the draw of the task latent at an episode's start.
        self.noise_size = int(adaptation.get("noise_size", self.act_dim))
        self._noise = np.zeros((1, self.noise_size), dtype=np.float32)
        self._noise_row = self._noise[0]
        self._noise_rows = NormalRows(seed, self.noise_size)
        self._state = np.zeros((1, self.state_size), dtype=np.float32)
        # Each part of the manifest's state_layout (h and c, or the history window) is a view into the
        # packed state, so get_state/set_state name them and the graph sees one array.
        names = []
        for part in adaptation["state_layout"]:
            name, offset, size = str(part["name"]), int(part["offset"]), int(part["size"])
            setattr(self, f"_{name}", self._state[:, offset : offset + size])
            names.append(name)
        self._STATE = tuple(names)
        self._feed = {
            "obs": self._obs,
            "prev_command": self._prev_command,
            "prev_reward": self._prev_reward,
            "prev_done": self._prev_done,
            "noise": self._noise,
            "state_in": self._state,
        }
        self._run_policy = bound_run(self._policy_session, self._feed)
        # Staging rows: a transition is validated completely before it replaces the previous step.
        self._stage_command = np.zeros(self.act_dim, dtype=np.float32)
        self._stage_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._noise_zero = False
        self.steps_since_reset = 0

    # ------------------------------------------------------------------------------ state
    @property
    def state(self) -> np.ndarray:
        """The packed recurrent state ``[h]`` or ``[h, c]``, shape ``(state_size,)`` (a copy)."""
        return self._state[0].copy()

    def reset(self, seed: int | None = None) -> None:
        """A new trial (new object, new task): zero the memory and the previous step. ``seed``
        re-seeds the exploration noise (``None`` keeps the stream going)."""
        self._state.fill(0.0)
        self._prev_command.fill(0.0)
        self._prev_reward.fill(0.0)
        self._prev_done.fill(0.0)
        self.steps_since_reset = 0
        if seed is not None:
            self._noise_rows.reseed(seed)

    def set_learning(self, enabled: bool) -> None:
        """Off: the memory is frozen where it is and the mean command is sent. On: both resume."""
        self._learning = bool(enabled)
        self.explore = self._sample_actions and self._learning

    def status(self) -> dict[str, str]:
        return {
            "adaptation_family": self.family,
            "cell": self.cell,
            "steps_since_reset": str(self.steps_since_reset),
            "memory": "carrying" if self._learning else "frozen",
            "state_norm": f"{float(np.linalg.norm(self._state)):.4g}",
        }

    # ------------------------------------------------------------------------------ control
    def act(self, obs: Any) -> np.ndarray:
        """The command for one raw observation ``(obs_dim,)``: float32 ``(act_dim,)`` in physical units.

        Updates the memory (unless frozen). Raises ``ValueError`` naming the problem for a wrong size or
        a non-finite value, or when the graph returns a non-finite command or state (the memory is then
        unchanged).
        """
        start = time.perf_counter()
        load_vector(self._obs_row, obs, "obs")
        if self.explore:
            self._noise_rows.draw_into(self._noise_row)
            self._noise_zero = False
        elif not self._noise_zero:
            self._noise.fill(0.0)
            self._noise_zero = True
        command, state = self._run_policy()
        command = command[0]
        if not (all_finite(command) and all_finite(state.reshape(-1))):
            raise ValueError(f"policy graph returned a non-finite command {command.tolist()} or state; hold the robot")
        if self._learning:
            self._state[...] = state
            self.steps_since_reset += 1
        self.act_latency.record(time.perf_counter() - start)
        return command

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        """Record the step that ``act`` answered: ``action`` is the command that was sent, ``reward`` what
        it earned, ``done`` whether it ended the episode. The next ``act`` reads them. Raises
        ``ValueError`` for a wrong size or non-finite value; nothing is recorded then."""
        load_vector(self._stage_obs, obs, "obs")
        load_vector(self._stage_command, action, "action")
        load_vector(self._stage_obs, next_obs, "next_obs")
        reward_value = scalar(reward, "reward")
        ended = check_done(done)
        if not self._learning:
            return
        self._prev_command[0] = self._stage_command
        self._prev_reward[0, 0] = reward_value
        self._prev_done[0, 0] = float(ended)

    def adapt(self) -> np.ndarray:
        """Nothing to compute: every ``act`` already updated the memory. Returns the packed state (a copy)."""
        return self.state

    def _warmup_feeds(self) -> tuple[dict[str, np.ndarray], None]:
        return {name: np.zeros_like(array) for name, array in self._feed.items()}, None
