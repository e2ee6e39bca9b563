"""PEARL (Rakelly et al., 2019, "Efficient Off-Policy Meta-Reinforcement Learning via Probabilistic
Context Variables") on the recurrent family's ``pearl`` cell.

Every train task keeps its own replay buffer. Each iteration collects one trial on ``tasks_per_iteration``
train tasks exactly as the robot acts (:class:`PearlTrials`: the exported graph's semantics, the latent
drawn from the posterior at every episode's start, the first from the prior), then takes
``sac.gradient_steps`` steps. In each step, for ``meta_batch`` tasks: a context of ``context_size``
transitions of the task gives the posterior (a product of Gaussian factors, one per transition, and the
prior), ``z`` is drawn from it by reparameterisation; SAC's twin critics ``Q(s, a, z)`` are fitted with
the encoder (the critic's loss and ``kl_weight`` x KL(posterior || prior) train the encoder, as in
PEARL), and the actor and the temperature are updated with ``z`` held fixed. With ``critic_reward`` the
critic's targets use a reward computed from the known train task (e.g. a dense distance on a sparse task,
as PEARL meta-trains its sparse point robot); the encoder always reads the env's reward, as the robot does.

A transition as the encoder reads it is the one the robot completes at each control step: the
observation reached, the command that led there (normalised), its reward. The replay buffers are not
checkpointed: a resumed run collects its initial trials again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl_robot.algos.common import build_task_distribution, open_sampler
from metarl_robot.algos.common.tasks import resolve
from metarl_robot.algos.loop import restore_checkpoint, run_training
from metarl_robot.algos.pearl.config import TrainConfig
from metarl_robot.checkpoint import save_checkpoint
from metarl_robot.config import to_dict
from metarl_robot.algos.rl2.rollout import RL2Trials
from metarl_robot.recurrent_policy import REWARD_CLIP, RecurrentPolicy
from metarl_robot.sampling import make_requests
from metarl_robot.tasks import TaskSpec

METHOD = "pearl"


class PearlTrials(RL2Trials):
    """One trial as the deployed graph runs it: ``command(obs, prev_command, prev_reward, prev_done, noise,
    state)`` with standard normal noise (``explore``; the latent's part draws it at each episode start) or
    zero noise (mean actions, posterior-mean latent). Never reads the task. The trial's state, the
    previous step and pickling are RL²'s (:class:`~metarl_robot.algos.rl2.rollout.RL2Trials`)."""

    def act(self, obs: Any) -> tuple[np.ndarray, Mapping[str, np.ndarray]]:
        p = self.policy
        noise = self.rng.standard_normal(p.noise_size, dtype=np.float32) if self.explore else np.zeros(p.noise_size, np.float32)
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs, np.float32).reshape(1, p.obs_dim))
            self._command, self._state = p.command(obs_t, self._prev_command, self._prev_reward, self._prev_done,
                                                   torch.as_tensor(noise)[None], self._state)
        return (self._command / p.action_scale)[0].numpy(), {}


class ReplayBuffer:
    """Transitions of one task (a ring of ``size``): obs, normalised action, reward (the env's, what the
    encoder reads), the critic's reward (the same unless ``critic_reward`` is configured), next obs, terminal."""

    def __init__(self, size: int, obs_dim: int, act_dim: int) -> None:
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.actions = np.zeros((size, act_dim), np.float32)
        self.rewards = np.zeros(size, np.float32)
        self.critic_rewards = np.zeros(size, np.float32)
        self.terminals = np.zeros(size, np.float32)
        self.size, self.count, self.cursor = size, 0, 0

    def add(self, obs, actions, rewards, next_obs, terminals, critic_rewards=None) -> None:
        critic_rewards = rewards if critic_rewards is None else critic_rewards
        for row in range(len(rewards)):
            i = self.cursor
            self.obs[i], self.actions[i], self.rewards[i] = obs[row], actions[row], rewards[row]
            self.critic_rewards[i] = critic_rewards[row]
            self.next_obs[i], self.terminals[i] = next_obs[row], terminals[row]
            self.cursor = (i + 1) % self.size
            self.count = min(self.count + 1, self.size)

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        rows = rng.integers(0, self.count, size=n)
        return {"obs": self.obs[rows], "actions": self.actions[rows], "rewards": self.rewards[rows],
                "critic_rewards": self.critic_rewards[rows],
                "next_obs": self.next_obs[rows], "terminals": self.terminals[rows]}


class PEARL:
    """The training loop; :func:`train` is the entry point (the shared loop in :mod:`metarl_robot.algos.loop`)."""

    method = METHOD

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.tasks = build_task_distribution(to_dict(config.tasks))
        self.sampler, env = open_sampler(config.env_id, config.env_kwargs, config.sampler, config.num_workers,
                                         requests_per_batch=config.tasks_per_iteration)
        self.interface, self.obs_dim, self.act_dim = env.interface, env.obs_dim, env.act_dim
        self.policy = RecurrentPolicy(self.obs_dim, self.act_dim, self.interface["action"]["scale"], config.policy)
        p, lr = self.policy, config.sac.lr
        self.optimizer = torch.optim.Adam([*p.core.base.parameters(), *p.actor.parameters(), p.log_std], lr=lr)
        self.critic_optimizer = torch.optim.Adam([*p.q_networks.parameters(), *p.core.context_encoder.parameters()], lr=lr)
        self.alpha_optimizer = torch.optim.Adam([p.log_alpha], lr=lr)
        with torch.no_grad():
            p.log_alpha.fill_(float(np.log(config.sac.initial_alpha)))
        self.target_entropy = -float(self.act_dim) if config.sac.target_entropy is None else float(config.sac.target_entropy)
        self.buffers: dict[str, ReplayBuffer] = {}
        self._critic_reward = resolve(config.critic_reward) if config.critic_reward else None
        self.iteration = 0
        self.metrics: dict[str, float] = {}

    # -- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.safetensors"

    def adaptation(self) -> dict:
        return {**to_dict(self.config.adaptation), "episodes_per_trial": self.config.episodes_per_trial}

    def save(self) -> Path:
        return save_checkpoint(
            self.checkpoint_path, self.policy, method=METHOD, interface=self.interface, adaptation=self.adaptation(),
            config=to_dict(self.config), seed=self.config.seed, iteration=self.iteration, metrics=self.metrics,
            optimizer=self.optimizer.state_dict(), rng={"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        )

    def restore(self) -> bool:
        return restore_checkpoint(self, METHOD) is not None

    def warm_start(self) -> dict[str, float]:
        return {}

    # -- collection
    def collect(self, tasks: list[TaskSpec]) -> dict[str, float]:
        """One trial per task as the robot acts; every transition goes to its task's buffer."""
        cfg = self.config
        requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=cfg.episodes_per_trial)
        episodes = self.sampler.sample(PearlTrials(self.policy), requests)
        returns = np.zeros((len(tasks), cfg.episodes_per_trial))
        success = np.zeros_like(returns)
        for episode in episodes:
            key = episode.task.task_id
            if key not in self.buffers:
                self.buffers[key] = ReplayBuffer(cfg.sac.replay_size, self.obs_dim, self.act_dim)
            actions = np.clip(np.asarray(episode.actions, np.float32).reshape(episode.length, self.act_dim), -1.0, 1.0)
            obs = np.asarray(episode.obs, np.float32).reshape(episode.length, -1)
            nxt = np.asarray(episode.next_obs, np.float32).reshape(episode.length, -1)
            critic = None if self._critic_reward is None else np.asarray(self._critic_reward(obs, actions, nxt, episode.task), np.float32)
            self.buffers[key].add(obs, actions, episode.rewards, nxt, episode.terminated.astype(np.float32), critic)
            returns[episode.request_index, episode.episode_in_trial] = episode.total_reward
            success[episode.request_index, episode.episode_in_trial] = float(episode.succeeded)
        out = {f"return/episode_{k}": float(returns[:, k].mean()) for k in range(cfg.episodes_per_trial)}
        out.update({f"success/episode_{k}": float(success[:, k].mean()) for k in range(cfg.episodes_per_trial)})
        out["return/trial"] = float(returns.sum(1).mean())
        out["success/before_adaptation"] = out["success/episode_0"]
        if cfg.episodes_per_trial > 1:
            out["success/after_adaptation"] = float(success[:, 1:].mean())
        return out

    # -- SAC with the probabilistic context
    def _transitions(self, obs, actions, rewards) -> torch.Tensor:
        """Encoder rows ``[obs_norm(obs reached), action, clipped reward]``, as the core builds them."""
        p = self.policy
        reward = torch.clamp(rewards.unsqueeze(-1) * p.config.reward_scale, -REWARD_CLIP, REWARD_CLIP)
        return torch.cat([p.obs_norm(obs), actions, reward], dim=-1)

    def _act(self, obs_n: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised tanh-Gaussian action and its log-probability."""
        p = self.policy
        mean = p.actor(p.core.features(obs_n, z))
        std = p.log_std.exp().expand_as(mean)
        u = mean + std * torch.randn_like(mean)
        action = torch.tanh(u)
        logp = torch.distributions.Normal(mean, std).log_prob(u).sum(-1) - torch.log(1.0 - action**2 + 1e-6).sum(-1)
        return action, logp

    @staticmethod
    def _q(nets, obs_n, action, z) -> list[torch.Tensor]:
        x = torch.cat([obs_n, action, z], dim=-1)
        return [net(x).squeeze(-1) for net in nets]

    def gradient_step(self) -> dict[str, float]:
        sac, p = self.config.sac, self.policy
        keys = list(self.buffers)
        picked = [keys[i] for i in self.rng.choice(len(keys), size=min(sac.meta_batch, len(keys)), replace=False)]
        ctx = [self.buffers[k].sample(self.rng, sac.context_size) for k in picked]
        rl = [self.buffers[k].sample(self.rng, sac.batch_size) for k in picked]
        stack = lambda rows, name: torch.as_tensor(np.stack([r[name] for r in rows]))  # noqa: E731
        context = self._transitions(stack(ctx, "next_obs"), stack(ctx, "actions"), stack(ctx, "rewards"))
        m, l = p.core.factors(context)
        mean, precision = p.core.posterior(m, l, torch.ones_like(l[..., :1]))
        z = mean + torch.rsqrt(precision) * torch.randn_like(mean)
        kl = 0.5 * (1.0 / precision + mean**2 - 1.0 + torch.log(precision)).sum(-1).mean()
        b = sac.batch_size
        z_rows = z.unsqueeze(1).expand(-1, b, -1)
        obs, nxt = p.obs_norm(stack(rl, "obs")), p.obs_norm(stack(rl, "next_obs"))
        actions, rewards, terminals = stack(rl, "actions"), stack(rl, "critic_rewards"), stack(rl, "terminals")
        alpha = p.log_alpha.exp().detach()
        with torch.no_grad():
            fixed = z_rows.detach()
            next_action, next_logp = self._act(nxt, fixed)
            target_q = torch.min(*self._q(p.q_targets, nxt, next_action, fixed)) - alpha * next_logp
            target = rewards * sac.reward_scale + sac.gamma * (1.0 - terminals) * target_q
        q1, q2 = self._q(p.q_networks, obs, actions, z_rows)
        q_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        self.critic_optimizer.zero_grad()
        (q_loss + sac.kl_weight * kl).backward()
        torch.nn.utils.clip_grad_norm_([*p.q_networks.parameters(), *p.core.context_encoder.parameters()], sac.max_grad_norm)
        self.critic_optimizer.step()

        fixed = z_rows.detach()
        new_action, logp = self._act(obs, fixed)
        q_new = torch.min(*self._q(p.q_networks, obs, new_action, fixed))
        policy_loss = (alpha * logp - q_new).mean()
        self.optimizer.zero_grad()
        policy_loss.backward()
        torch.nn.utils.clip_grad_norm_([*p.core.base.parameters(), *p.actor.parameters(), p.log_std], sac.max_grad_norm)
        self.optimizer.step()
        alpha_loss = -(p.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self.alpha_optimizer.step()
        with torch.no_grad():
            for net, target_net in zip(p.q_networks, p.q_targets):
                for w, tw in zip(net.parameters(), target_net.parameters()):
                    tw.mul_(1.0 - sac.tau).add_(sac.tau * w)
        return {"loss/q": float(q_loss.detach()), "loss/kl": float(kl.detach()), "loss/policy": float(policy_loss.detach()), "alpha": float(alpha),
                "entropy": float(-logp.detach().mean())}

    def train_iteration(self) -> dict[str, float]:
        cfg = self.config
        if not self.buffers:  # the first iteration (or the first after a resume): every task once on prior draws
            for _ in range(cfg.initial_trials_per_task):
                for start in range(0, len(self.tasks.train_tasks), cfg.tasks_per_iteration):
                    self.collect(self.tasks.train_tasks[start : start + cfg.tasks_per_iteration])
        metrics = self.collect(self.tasks.sample(cfg.tasks_per_iteration, self.rng, "train"))
        losses: dict[str, list[float]] = {}
        for _ in range(cfg.sac.gradient_steps):
            for key, value in self.gradient_step().items():
                losses.setdefault(key, []).append(value)
        self.iteration += 1
        return {**metrics, **{k: float(np.mean(v)) for k, v in losses.items()},
                "buffer/transitions": float(sum(b.count for b in self.buffers.values()))}

    @staticmethod
    def progress(metrics: dict[str, float]) -> dict[str, str]:
        return {"ret0": f"{metrics['return/episode_0']:.2f}", "ret_last": f"{metrics[max(k for k in metrics if k.startswith('return/episode_'))]:.2f}",
                "q": f"{metrics.get('loss/q', float('nan')):.3g}"}

    def close(self) -> None:
        self.sampler.close()


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train PEARL, writing ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_training(PEARL(config, run_dir), config, run_dir, resume=resume, progress=progress, desc="pearl")
