"""RMA (Kumar et al., 2021, "RMA: Rapid Motor Adaptation for Legged Robots") on the recurrent family's
``window`` cell.

**Phase 1** trains the base policy with the task latent ``z = encoder(privileged parameters)``: a warm
start that clones a demonstrator told the task (its executed commands perturbed so the clone also learns
to correct an off-target command), then ``ppo_iterations`` of PPO through the same latent (the critic
also reads the parameters). **Phase 2** freezes the base policy and the encoder and trains the adaptation
module, which estimates ``z`` from the last ``window_steps`` control steps (observation, previous
command, reward, done flag), by regression on the encoder's latent over trials in which the policy acts
with its own estimate — the data the robot will produce. The exported graph carries the window as its
state and estimates ``z`` at every control step; nothing about the task is read on the robot.

``method: prototypical`` trains the ``prototype`` cell (metric-based task inference) in the same two
phases: in phase 2 every training task's prototype latent is the frozen encoder's latent of that task, and
the step embedding, the prototypes and the temperature learn to regress the latent and, as prototypical
networks do, to classify the support set (every step of the trial so far) as the task it came from.

The training loop is RL²'s (:class:`~metarl_robot.algos.rl2.algo.RL2`: trials, samplers, PPO over whole
trials, checkpoints); iterations ``0 .. ppo_iterations - 1`` are phase 1, the rest phase 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl_robot.algos.common.tasks import resolve
from metarl_robot.algos.loop import run_training
from metarl_robot.algos.rl2.algo import RL2, _renumbered
from metarl_robot.algos.rl2.rollout import RL2Trials, privileged_keys, trial_batch
from metarl_robot.algos.rl2.teacher import clone
from metarl_robot.algos.rma.config import TrainConfig
from metarl_robot.sampling import BasePolicy, make_requests
from metarl_robot.tasks import TaskSpec

METHOD = "rma"


def privileged_row(task: TaskSpec, keys, log_keys) -> np.ndarray:
    """The task's values of ``keys`` (0 where it lacks one), the ``log_keys`` among them as ``log``."""
    row = []
    for key in keys:
        value = float(task.params.get(key, 0.0))
        row.append(math.log(max(value, 1e-9)) if key in log_keys else value)
    return np.asarray(row, dtype=np.float32)


class PrivilegedTrials(RL2Trials):
    """Phase 1's trials: the policy acts with the latent of the task's true parameters."""

    def __init__(self, policy, keys, log_keys, *, explore: bool = True) -> None:
        super().__init__(policy, explore=explore)
        self.keys, self.log_keys = tuple(keys), frozenset(log_keys)

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        self._privileged = torch.as_tensor(privileged_row(task, self.keys, self.log_keys))[None]

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        p = self.policy
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs, np.float32).reshape(1, p.obs_dim))
            features, self._state = p.step(obs_t, self._prev_command, self._prev_reward, self._prev_done, self._state,
                                           privileged=self._privileged)
            dist = p.distribution(features)
            raw = dist.mean + dist.stddev * torch.as_tensor(self.rng.standard_normal(p.act_dim, dtype=np.float32)) if self.explore else dist.mean
            self._command = p.to_command(obs_t, torch.clamp(raw, -1.0, 1.0), self._prev_command)
            action = self._command / p.action_scale
        return action[0].numpy(), {"raw_action": raw[0].numpy()}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__getstate__().items() if k != "_privileged"}


class DemonstratorTrials(BasePolicy):
    """Trials of a demonstrator that is told the task (phase 1's warm start). The command executed is the
    demonstrator's, perturbed on ``noise_dims`` by ``exp(noise_log_std * e_t)`` with ``e_t`` an AR(1)
    process of unit variance (correlation 0.8); the extra ``teacher_command`` is the unperturbed command,
    the label."""

    def __init__(self, demonstrator: str, interface: Mapping[str, Any], noise_dims, noise_log_std: float) -> None:
        self.demonstrator, self.interface = demonstrator, interface
        self.scale = np.asarray(interface["action"]["scale"], dtype=np.float32)
        self.noise_dims, self.noise_log_std = tuple(noise_dims), float(noise_log_std)
        self._demonstrate = None

    def reset(self, task: TaskSpec, rng: np.random.Generator, options: Mapping[str, Any]) -> None:
        super().reset(task, rng, options)
        if self._demonstrate is None:
            self._demonstrate = resolve(self.demonstrator)
        self._noise = np.zeros(len(self.noise_dims))

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        action = np.clip(np.asarray(self._demonstrate(np.asarray(obs, np.float32)[None], [self.task]))[0], -1.0, 1.0)
        clean = (action * self.scale).astype(np.float32)
        command = clean.copy()
        if self.noise_dims and self.noise_log_std > 0:
            self._noise = 0.8 * self._noise + 0.6 * self.rng.standard_normal(len(self.noise_dims))
            for k, dim in enumerate(self.noise_dims):
                if command[dim] > 0:
                    command[dim] = min(command[dim] * math.exp(self.noise_log_std * self._noise[k]), float(self.scale[dim]))
        executed = (command / self.scale).astype(np.float32)
        return executed, {"raw_action": executed.copy(), "teacher_command": clean}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_demonstrate": None}


class RMA(RL2):
    """The two phases on RL²'s loop (see the module docstring); :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.method = config.method
        self._log_keys = frozenset(config.log_privileged)
        super().__init__(config, run_dir)
        self._phase2_buffer: list = []
        self._task_index = {task.task_id: i for i, task in enumerate(self.tasks.train_tasks)}
        self.adaptation_optimizer = torch.optim.Adam(self.policy.inference_parameters(), lr=config.adaptation_module.lr)

    def _policy_config(self, policy_config):
        if policy_config.cell == "prototype":
            return dataclasses.replace(policy_config, num_prototypes=len(self.tasks.train_tasks))
        return policy_config

    def _choose_privileged_keys(self) -> tuple[str, ...]:
        return tuple(self.config.privileged) or privileged_keys(self.tasks.train_tasks[0])

    def privileged_matrix(self, tasks) -> np.ndarray:
        return np.stack([privileged_row(task, self.privileged_keys, self._log_keys) for task in tasks])

    @property
    def phase(self) -> int:
        return 1 if self.iteration < self.config.ppo_iterations else 2

    def _unroll(self, t, rows, span, state):
        # Phase 1 (warm start and PPO): the latent of the true parameters; phase 2 never unrolls for PPO.
        return self.policy.unroll(t["obs"][rows, span], t["prev_actions"][rows, span], t["prev_rewards"][rows, span],
                                  t["prev_dones"][rows, span], state, privileged=t["privileged"][rows])

    def adaptation(self) -> dict:
        return {**super().adaptation(), "privileged": list(self.privileged_keys), "log_privileged": sorted(self._log_keys)}

    # -- phase 1
    def warm_start(self) -> dict[str, float]:
        cfg, ws = self.config, self.config.warm_start
        self.policy.privileged_norm.update(torch.as_tensor(self.privileged_matrix(self.tasks.train_tasks)))
        episodes = self._collect_rounds(ws.rounds, lambda: DemonstratorTrials(ws.demonstrator, self.interface, ws.noise_dims, ws.noise_log_std))
        batch = trial_batch(episodes, cfg.episodes_per_trial)
        metrics = clone(self, batch)
        return {**metrics, **{f"warm_start/{k}": v for k, v in self.trial_metrics(batch).items()}}

    def collect(self):
        cfg = self.config
        tasks = self.tasks.sample(cfg.trials_per_iteration, self.rng, "train")
        requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=cfg.episodes_per_trial)
        episodes = self.sampler.sample(PrivilegedTrials(self.policy, self.privileged_keys, self._log_keys), requests)
        return trial_batch(episodes, cfg.episodes_per_trial)

    # -- phase 2
    def train_iteration(self) -> dict[str, float]:
        if self.phase == 1:
            return super().train_iteration()
        cfg, am = self.config, self.config.adaptation_module
        tasks = self.tasks.sample(cfg.trials_per_iteration, self.rng, "train")
        requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=cfg.episodes_per_trial)
        first = self.iteration == cfg.ppo_iterations
        explore = bool(cfg.adaptation.sample_actions)
        if first and am.first_round_privileged:
            trials: BasePolicy = PrivilegedTrials(self.policy, self.privileged_keys, self._log_keys, explore=explore)
        else:
            trials = RL2Trials(self.policy, explore=explore)
        episodes = _renumbered(self.sampler.sample(trials, requests), cfg.episodes_per_trial)
        batch = trial_batch(episodes, cfg.episodes_per_trial)
        self._phase2_buffer = (self._phase2_buffer + [batch])[-am.buffer_rounds:]
        losses = self.fit_adaptation_module()
        self.iteration += 1
        return {**self.trial_metrics(batch), **losses,
                "adaptation_module/privileged_round": float(first and am.first_round_privileged)}

    def latent_error(self, t: Mapping[str, torch.Tensor], rows) -> torch.Tensor:
        """Mean squared error of the module's latents against the encoder's, over the valid steps of ``rows``."""
        p = self.policy
        estimate = p.estimated_latent(t["obs"][rows], t["prev_actions"][rows], t["prev_rewards"][rows], t["prev_dones"][rows],
                                      p.initial_state(len(rows)))
        with torch.no_grad():
            target = p.privileged_latent(t["privileged"][rows]).unsqueeze(1)
        m = t["valid"][rows].unsqueeze(-1)
        return (((estimate - target) ** 2) * m).sum() / (m.sum() * estimate.shape[-1]).clamp(min=1.0)

    def task_loss(self, t: Mapping[str, torch.Tensor], rows) -> torch.Tensor:
        """Prototypical loss: cross-entropy of the support set's logits against its own training task, at
        every valid step (the support set grows through the trial)."""
        p = self.policy
        logits = p.task_logits(t["obs"][rows], t["prev_actions"][rows], t["prev_rewards"][rows], t["prev_dones"][rows],
                               p.initial_state(len(rows)))
        target = t["task_index"][rows].unsqueeze(1).expand(-1, logits.shape[1])
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        m = t["valid"][rows].reshape(-1)
        return (ce * m).sum() / m.sum().clamp(min=1.0)

    def _set_prototype_latents(self) -> None:
        """Each training task's prototype latent is the frozen encoder's latent of that task."""
        with torch.no_grad():
            latents = self.policy.privileged_latent(torch.as_tensor(self.privileged_matrix(self.tasks.train_tasks)))
            self.policy.core.prototype_latents.copy_(latents)

    def fit_adaptation_module(self) -> dict[str, float]:
        am = self.config.adaptation_module
        prototypical = self.policy.config.cell == "prototype"
        if prototypical:
            self._set_prototype_latents()
        parts = []
        for b in self._phase2_buffer:
            part = self._tensors(b)
            part["task_index"] = torch.as_tensor([self._task_index[task.task_id] for task in b.tasks])
            parts.append(part)
        length = max(p["obs"].shape[1] for p in parts)

        def padded(x: torch.Tensor) -> torch.Tensor:
            pad = length - x.shape[1]
            return torch.cat([x, x.new_zeros((x.shape[0], pad, *x.shape[2:]))], dim=1) if pad else x

        t = {k: torch.cat([padded(p[k]) if p[k].dim() > 1 and k != "privileged" else p[k] for p in parts]) for k in
             ("obs", "prev_actions", "prev_rewards", "prev_dones", "valid", "privileged", "task_index")}
        n = t["obs"].shape[0]
        with torch.no_grad():
            before = float(self.latent_error(t, torch.arange(n)))
            targets = self.policy.privileged_latent(t["privileged"])
            spread = float(((targets - targets.mean(0)) ** 2).mean())
        for _ in range(am.epochs):
            for rows in torch.randperm(n).chunk(am.minibatches):
                loss = self.latent_error(t, rows)
                if prototypical and am.task_loss_coef > 0:
                    loss = loss + am.task_loss_coef * self.task_loss(t, rows)
                self.adaptation_optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.inference_parameters(), self.config.ppo.max_grad_norm)
                self.adaptation_optimizer.step()
        extra = {}
        with torch.no_grad():
            after = float(self.latent_error(t, torch.arange(n)))
            if prototypical:
                extra["adaptation_module/task_loss"] = float(self.task_loss(t, torch.arange(n)))
        return {**extra, "adaptation_module/latent_mse_before_fit": before, "adaptation_module/latent_mse": after,
                # the error of the best constant guess (the latents' variance over the trials' tasks)
                "adaptation_module/latent_variance": spread,
                "adaptation_module/trials": float(n)}


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train RMA, writing ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors``.

    With ``resume=True`` training continues from ``checkpoints/last.safetensors`` when it exists (phase 2's
    trial buffer is not checkpointed: a resumed phase 2 gathers it afresh). Returns the final checkpoint's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_training(RMA(config, run_dir), config, run_dir, resume=resume, progress=progress, desc=config.method)
