"""The on-robot gradient-based meta-policy: act with exploration, collect episodes, take a
policy-gradient step on the adapted parameters.

:class:`GradientController` runs a ``"gradient"`` bundle (MAML, ProMP, Reptile, CAVIA, Meta-SGD) with
numpy and onnxruntime only. ``act`` samples a Gaussian action at the current parameters (the policy
graph also reads the command sent the step before, zeros at an episode's start, which a policy on a
motion skill needs); ``observe`` records the transition, with that previous command, into the current
episode and, when it closes, into the batch the adapt graph reads; ``adapt`` runs the bundle's adapt graph, one inner policy-gradient step, on that batch. The
graph computes the advantages from the rewards itself, with meta-training's code
(:func:`~metarl_robot.runtime.advantages.compute_advantages`) exported as ONNX nodes, so ``adapt``
costs the graph and little else.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime

from metarl_robot.runtime.advantages import AdvantageConfig
from metarl_robot.runtime.base import BundleController, NormalRows, all_finite, bound_run, check_done, load_vector, scalar
from metarl_robot.runtime.bundle import Bundle


class GradientController(BundleController):
    """Run an exported gradient-based meta-policy on the robot: ``act``, ``observe``, ``adapt``, ``reset``.

    Typical use::

        controller = GradientController.load("bundles/nav", providers=["cpu"], seed=0)
        controller.warmup()
        command = controller.act(obs)                     # every control tick (explores)
        controller.observe(obs, command, reward, next_obs, done)
        if controller.episodes_ready == controller.episodes_per_step:
            controller.adapt()                            # one policy-gradient step, then fresh episodes

    An episode closes at ``done`` or after ``max_episode_steps`` transitions; the controller keeps the
    ``episodes_per_step`` most recent closed episodes, in the adapt graph's fixed
    ``[episodes_per_step, max_episode_steps]`` batch (a slot's mask is 0 past its episode's length and
    on slots not yet filled). ``adapt`` feeds that batch as it is and then discards every collected
    transition, since a policy-gradient step needs data from the current policy.

    Attributes: those of :class:`BundleController` (``bundle``, ``manifest``, ``provider``, ``obs_dim``,
    ``act_dim``, ``num_adapt_steps``, ``act_latency``, ``adapt_latency``), plus ``num_params``,
    ``episodes_per_step``, ``max_episode_steps``, ``advantage_config`` and ``explore``.
    """

    family = "gradient"
    _STATE = ("params",)

    def __init__(
        self,
        bundle: Bundle,
        providers: Sequence[str] | None = None,
        *,
        session_options: onnxruntime.SessionOptions | None = None,
        seed: int | None = None,
        explore: bool = True,
    ) -> None:
        """Open the graphs of an already validated gradient ``bundle``; :meth:`load` reads and validates
        one from a directory. ``seed`` seeds the exploration noise; ``explore`` as the attribute."""
        super().__init__(bundle, providers, session_options=session_options)
        adaptation = bundle.adaptation
        self.num_params = int(adaptation["num_params"])
        self._episodes_per_step = int(adaptation["episodes_per_step"])
        self.max_episode_steps = int(adaptation["max_episode_steps"])
        self.advantage_config = AdvantageConfig.from_mapping(adaptation["advantages"])
        self.explore = bool(explore)
        """Sample actions from the policy's Gaussian (what adaptation needs) or, when False, send its mean."""
        self._noise_rows = NormalRows(seed, self.act_dim)
        self._scale = np.asarray(bundle.action["scale"], dtype=np.float32)

        self._initial_params = bundle.plugin.initial_params(bundle)
        self._params = self._initial_params.copy()
        self._obs = np.zeros((1, self.obs_dim), dtype=np.float32)
        self._obs_row = self._obs[0]  # a view kept: act() writes each observation through it
        self._noise = np.zeros((1, self.act_dim), dtype=np.float32)
        self._noise_row = self._noise[0]
        self._noise_zero = False
        self.skill = str(adaptation.get("skill", {}).get("name", ""))
        """The motion skill inside the policy graph (``""``: none)."""
        # The command sent the step before (zeros at an episode's start), which the policy graph reads.
        self._prev = np.zeros((1, self.act_dim), dtype=np.float32)
        self._policy_feed = {"obs": self._obs, "prev_command": self._prev, "params": self._params, "noise": self._noise}
        self._run_policy = bound_run(self._policy_session, self._policy_feed)
        # What the last act() sent and the normalised, unclipped action it came from.
        self._last_command: np.ndarray | None = None
        self._last_action: np.ndarray | None = None

        # The episode being collected; zeroed when it starts, so past its length it holds zeros.
        steps = self.max_episode_steps
        self._ep_obs = np.zeros((steps, self.obs_dim), dtype=np.float32)
        self._ep_prev = np.zeros((steps, self.act_dim), dtype=np.float32)
        self._ep_action = np.zeros((steps, self.act_dim), dtype=np.float32)
        self._ep_reward = np.zeros(steps, dtype=np.float32)
        self._ep_len = 0
        # Staging rows: a transition is validated completely before it is stored.
        self._stage_obs = np.zeros(self.obs_dim, dtype=np.float32)
        self._stage_command = np.zeros(self.act_dim, dtype=np.float32)
        self._stage_next_obs = np.zeros(self.obs_dim, dtype=np.float32)
        # The adapt graph's batch, allocated once: a closed episode is copied into the next slot (the
        # oldest once all are full), so adapt() feeds these arrays without a copy.
        shape = (self.episodes_per_step, steps)
        self._batch_obs = np.zeros((*shape, self.obs_dim), dtype=np.float32)
        self._batch_prev = np.zeros((*shape, self.act_dim), dtype=np.float32)
        self._batch_action = np.zeros((*shape, self.act_dim), dtype=np.float32)
        self._batch_reward = np.zeros(shape, dtype=np.float32)
        self._batch_mask = np.zeros(shape, dtype=np.float32)
        self._closed_count = 0
        self._next_slot = 0
        self._adapt_feed = {"params": self._params, "obs": self._batch_obs, "prev_command": self._batch_prev,
                            "action": self._batch_action, "reward": self._batch_reward, "mask": self._batch_mask}

    # ------------------------------------------------------------------------------ state
    @property
    def params(self) -> np.ndarray:
        """The current adapted parameters, float32 ``(num_params,)`` (a copy)."""
        return self._params.copy()

    @property
    def initial_params(self) -> np.ndarray:
        """Where adaptation starts on a new task (a copy)."""
        return self._initial_params.copy()

    @property
    def episodes_per_step(self) -> int:
        """Episodes ``N`` one adaptation step uses."""
        return self._episodes_per_step

    def set_learning(self, enabled: bool) -> None:
        """Exploration noise is what a policy-gradient step learns from: with adaptation off the
        controller sends the mean action."""
        self.explore = bool(enabled)

    def status(self) -> dict[str, str]:
        return {
            "adaptation_family": self.family,
            "episodes_ready": str(self.episodes_ready),
            "episodes_per_step": str(self.episodes_per_step),
            "episode_len": str(self.episode_len),
        }

    @property
    def episodes_ready(self) -> int:
        """How many closed episodes the next :meth:`adapt` would use (at most ``episodes_per_step``)."""
        return self._closed_count

    @property
    def episode_len(self) -> int:
        """Transitions recorded in the episode being collected."""
        return self._ep_len

    def reset(self, seed: int | None = None) -> None:
        """Start a new task: restore the initial parameters and drop every collected transition.

        ``seed`` re-seeds the exploration noise (``None`` keeps the current generator).
        """
        self._params[...] = self._initial_params
        self._clear_episodes()
        if seed is not None:
            self._noise_rows.reseed(seed)

    def _clear_episodes(self) -> None:
        self._closed_count = self._next_slot = 0
        self._batch_mask.fill(0.0)  # stale slots stay, masked out, until an episode replaces them
        self._start_episode()
        self._last_command = self._last_action = None

    def _start_episode(self) -> None:
        self._ep_obs.fill(0.0)
        self._ep_prev.fill(0.0)
        self._prev.fill(0.0)
        self._ep_action.fill(0.0)
        self._ep_reward.fill(0.0)
        self._ep_len = 0

    def _close_episode(self) -> None:
        slot, length = self._next_slot, self._ep_len
        self._batch_obs[slot] = self._ep_obs
        self._batch_prev[slot] = self._ep_prev
        self._batch_action[slot] = self._ep_action
        self._batch_reward[slot] = self._ep_reward
        self._batch_mask[slot, :length] = 1.0
        self._batch_mask[slot, length:] = 0.0
        self._next_slot = (slot + 1) % self.episodes_per_step
        self._closed_count = min(self._closed_count + 1, self.episodes_per_step)
        self._start_episode()

    # ------------------------------------------------------------------------------ control
    def act(self, obs: Any) -> np.ndarray:
        """The command for one raw observation ``(obs_dim,)``: float32 ``(act_dim,)`` in physical units.

        With ``explore`` the action is drawn from the policy's Gaussian with this controller's
        generator, otherwise it is the mean. Raises ``ValueError`` naming the problem when ``obs`` has
        the wrong size or a non-finite value.
        """
        start = time.perf_counter()
        load_vector(self._obs_row, obs, "obs")
        if self.explore:
            self._noise_rows.draw_into(self._noise_row)
            self._noise_zero = False
        elif not self._noise_zero:
            self._noise.fill(0.0)
            self._noise_zero = True
        command, action = self._run_policy()
        command, action = command[0], action[0]
        if not (all_finite(command) and all_finite(action)):
            raise ValueError(f"policy graph returned a non-finite command {command.tolist()}; hold the robot")
        # The command is handed to the caller, so the controller keeps a copy; the action row is a
        # view of a result array onnxruntime allocated for this call and nobody else holds.
        self._last_command, self._last_action = command.copy(), action
        self.act_latency.record(time.perf_counter() - start)
        return command

    def observe(self, obs: Any, action: Any, reward: Any, next_obs: Any, done: Any) -> None:
        """Append one transition (``action`` = the command that was sent) to the current episode.

        When ``action`` is the command the last :meth:`act` returned, the normalised action that
        produced it (before clipping) is stored; any other command (e.g. one a safety layer changed) is
        stored as ``command / scale``, except on a skill, whose action cannot be read back from a command:
        there the action the policy drew is kept. ``action`` is the previous command the next step reads.
        The episode closes at ``done`` or after ``max_episode_steps`` transitions. Raises ``ValueError``
        for a wrong size or non-finite value; nothing is stored then.
        """
        load_vector(self._stage_obs, obs, "obs")
        load_vector(self._stage_command, action, "action")
        load_vector(self._stage_next_obs, next_obs, "next_obs")
        reward_value = scalar(reward, "reward")
        episode_ends = check_done(done)
        if self._last_command is not None and (self.skill or np.array_equal(self._stage_command, self._last_command)):
            executed = self._last_action
        else:
            executed = self._stage_command / self._scale
        step = self._ep_len
        self._ep_obs[step] = self._stage_obs
        self._ep_prev[step] = self._prev[0]
        self._prev[0] = self._stage_command
        self._ep_action[step] = executed
        self._ep_reward[step] = reward_value
        self._ep_len = step + 1
        self._last_command = self._last_action = None
        if episode_ends or step + 1 == self.max_episode_steps:
            self._close_episode()

    def adapt(self) -> np.ndarray:
        """One policy-gradient adaptation on the closed episodes; adopt and return the new parameters.

        Runs the adapt graph ``adaptation.steps`` times on the batch (the graph computes the advantages
        with the manifest's settings) and discards the collected transitions (the next step needs
        episodes from the adapted policy). Without a closed episode it does nothing and returns the
        current parameters. Raises ``ValueError`` if the graph fails or returns non-finite parameters;
        the old ones and the collected episodes are then kept.
        """
        if not self._closed_count:
            return self.params
        start = time.perf_counter()
        feed, params = self._adapt_feed, self._params
        try:
            for _ in range(self.adapt_steps):
                params = feed["params"] = self._step(feed)
        finally:
            feed["params"] = self._params  # the feed reads the controller's parameters between calls
        self._params[...] = params
        self.num_adapt_steps += self.adapt_steps
        self._clear_episodes()
        self.adapt_latency.record(time.perf_counter() - start)
        return self.params

    def _step(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One run of the adapt graph; ``ValueError`` when it fails or returns non-finite parameters."""
        try:
            params = self._adapt_session.run(None, feed)[0]
        except Exception as err:  # an execution provider's failure (e.g. CUDA's Inverse on a singular matrix)
            raise ValueError(f"adapt graph failed ({type(err).__name__}: {err}); kept the old parameters") from err
        if not np.isfinite(params).all():
            bad = np.flatnonzero(~np.isfinite(params))
            raise ValueError(
                f"adapt graph returned non-finite parameters (at {bad.size} of {params.size} indices, first "
                f"{bad[:5].tolist()}); kept the old ones"
            )
        return params

    def _warmup_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        policy_feed = {
            "obs": np.zeros_like(self._obs),
            "prev_command": np.zeros_like(self._prev),
            "params": self._params.copy(),
            "noise": np.zeros_like(self._noise),
        }
        shape = (self.episodes_per_step, self.max_episode_steps)
        adapt_feed = {
            "params": self._params.copy(),
            "obs": np.zeros((*shape, self.obs_dim), dtype=np.float32),
            "prev_command": np.zeros((*shape, self.act_dim), dtype=np.float32),
            "action": np.zeros((*shape, self.act_dim), dtype=np.float32),
            "reward": np.zeros(shape, dtype=np.float32),
            "mask": np.zeros(shape, dtype=np.float32),
        }
        return policy_feed, adapt_feed
