"""The on-robot meta-policy: act on raw observations, collect transitions, adapt the task context.

:class:`AdaptiveController` runs a bundle's two ONNX graphs with onnxruntime and nothing else (no
torch). ``act`` maps one raw observation to one command in physical units; ``observe`` appends the
transition to a ring buffer of the manifest's ``buffer_size``; ``adapt`` re-infers the task context
from that buffer. Inputs are validated so that a bad sensor reading raises ``ValueError`` (which a ROS
node turns into a safe hold) instead of reaching the robot as a NaN command.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime

from metarl_robot.runtime.base import BundleController, all_finite, bound_run, check_done, load_vector, scalar
from metarl_robot.runtime.bundle import Bundle


class AdaptiveController(BundleController):
    """Run an exported meta-policy on the robot: ``act``, ``observe``, ``adapt``, ``reset``.

    Typical use::

        controller = AdaptiveController.load("bundles/grasp", providers=["cuda", "cpu"])
        controller.warmup()
        command = controller.act(obs)                     # every control tick
        controller.observe(obs, command, reward, next_obs, done)
        if done:                                          # cadence "episode"
            controller.adapt()

    Runs bundles of the ``"context"`` family. Attributes: those of :class:`BundleController`
    (``bundle``, ``manifest``, ``provider``, ``obs_dim``, ``act_dim``, ``num_adapt_steps``,
    ``act_latency``, ``adapt_latency``), plus ``context_dim`` and ``buffer_size``.
    """

    family = "context"
    observe_may_follow_act = True
    """observe() only stores a transition in the buffer, which act() never reads: the control loop may
    record it after the next command has been sent (off the input-to-command path)."""
    _STATE = ("context",)

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        *,
        session_options: onnxruntime.SessionOptions | None = None,
    ) -> None:
        """Open the graphs of an already validated context ``bundle``; :meth:`load` reads and validates
        one from a directory. Arguments as for :meth:`load`."""
        super().__init__(bundle, providers, session_options=session_options)
        adaptation = bundle.adaptation
        self.context_dim, self.buffer_size = int(adaptation["context_dim"]), int(adaptation["buffer_size"])

        self._initial_context = np.asarray(adaptation["initial_context"], dtype=np.float32).reshape(1, self.context_dim)
        self._context = self._initial_context.copy()
        self._obs = np.zeros((1, self.obs_dim), dtype=np.float32)
        self._obs_row = self._obs[0]  # a view kept: act() writes each observation through it
        self._policy_feed = {"obs": self._obs, "context": self._context}
        self._policy_outputs = [self._policy_session.get_outputs()[0].name]
        self._run_policy = bound_run(self._policy_session, self._policy_feed, self._policy_outputs)

        n = self.buffer_size
        self._buf_obs = np.zeros((1, n, self.obs_dim), dtype=np.float32)
        self._buf_command = np.zeros((1, n, self.act_dim), dtype=np.float32)
        self._buf_reward = np.zeros((1, n, 1), dtype=np.float32)
        self._buf_next_obs = np.zeros((1, n, self.obs_dim), dtype=np.float32)
        self._buf_mask = np.zeros((1, n), dtype=np.float32)
        self._adapt_feed = {
            "obs": self._buf_obs,
            "command": self._buf_command,
            "reward": self._buf_reward,
            "next_obs": self._buf_next_obs,
            "mask": self._buf_mask,
        }
        # Staging rows: a transition is validated completely before it overwrites a buffer slot.
        self._stage_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._stage_command = np.zeros(self.act_dim, dtype=np.float32)
        self._stage_next_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._next_slot = 0
        self._buffer_len = 0

    # ------------------------------------------------------------------------------ state
    @property
    def context(self) -> np.ndarray:
        """The current task context, shape ``(context_dim,)`` (a copy)."""
        return self._context[0].copy()

    @property
    def initial_context(self) -> np.ndarray:
        """The context before any transition of a task has been seen (a copy)."""
        return self._initial_context[0].copy()

    @property
    def buffer_len(self) -> int:
        """How many transitions the buffer holds (at most ``buffer_size``)."""
        return self._buffer_len

    def status(self) -> dict[str, str]:
        return {"adaptation_family": self.family, "buffer_len": str(self.buffer_len)}

    def reset(self) -> None:
        """Start a new task: empty the transition buffer and restore the initial context."""
        for buffer in self._adapt_feed.values():
            buffer.fill(0.0)
        self._next_slot = 0
        self._buffer_len = 0
        self._context[...] = self._initial_context

    # ------------------------------------------------------------------------------ control
    def act(self, obs: Any) -> np.ndarray:
        """The command for one raw observation ``(obs_dim,)``: float32 ``(act_dim,)`` in physical units.

        Raises ``ValueError`` naming the problem when ``obs`` has the wrong size or a non-finite value.
        """
        start = time.perf_counter()
        load_vector(self._obs_row, obs, "obs")
        command = self._run_policy()[0][0]
        if not all_finite(command):
            raise ValueError(f"policy graph returned a non-finite command {command.tolist()}; hold the robot")
        self.act_latency.record(time.perf_counter() - start)
        return command

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        """Append one transition (``action`` = the command that was sent) to the ring buffer.

        Once the buffer holds ``buffer_size`` transitions, each new one replaces the oldest. ``done``
        marks the end of an episode; the context encoder treats the buffer as a set, so it is checked
        but not stored (with cadence "episode", call :meth:`adapt` after a ``done`` transition).
        Raises ``ValueError`` for a wrong size or non-finite value; the buffer is then unchanged.
        """
        load_vector(self._stage_obs, obs, "obs")
        load_vector(self._stage_command, action, "action")
        load_vector(self._stage_next_obs, next_obs, "next_obs")
        reward_value = scalar(reward, "reward")
        check_done(done)
        slot = self._next_slot
        self._buf_obs[0, slot] = self._stage_obs
        self._buf_command[0, slot] = self._stage_command
        self._buf_reward[0, slot, 0] = reward_value
        self._buf_next_obs[0, slot] = self._stage_next_obs
        self._buf_mask[0, slot] = 1.0
        self._next_slot = (slot + 1) % self.buffer_size
        self._buffer_len = min(self._buffer_len + 1, self.buffer_size)

    def adapt(self) -> np.ndarray:
        """Infer a new context from the buffered transitions, adopt it and return it (a copy).

        Runs the adapt graph ``adaptation.steps`` times. With an empty buffer the result is the
        initial context. Raises ``ValueError`` (keeping the old context) if the graph returns a
        non-finite context.
        """
        start = time.perf_counter()
        for _ in range(self.adapt_steps):
            context = self._adapt_session.run(None, self._adapt_feed)[0]
            if not np.isfinite(context).all():
                raise ValueError(f"adapt graph returned a non-finite context {context.tolist()}; kept the old one")
            self._context[...] = context
            self.num_adapt_steps += 1
        self.adapt_latency.record(time.perf_counter() - start)
        return self.context

    def _warmup_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        policy_feed = {"obs": np.zeros_like(self._obs), "context": self._context.copy()}
        adapt_feed = {name: np.zeros_like(buffer) for name, buffer in self._adapt_feed.items()}
        return policy_feed, adapt_feed
