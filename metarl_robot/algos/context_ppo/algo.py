"""Context-based meta-RL with PPO.

Each iteration draws tasks, then runs ``episodes_per_task`` consecutive episodes on each. The first
episode acts with the prior context; before every later one the encoder re-infers the context from the
most recent ``buffer_size`` transitions on that task, exactly as the robot does with the exported
adapt graph. PPO then updates actor, critic and encoder together: contexts are recomputed with
gradients from the stored transition windows, so the encoder learns what the policy needs to know.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metarl_robot.algos.common import DemonstratorLabels, build_task_distribution, open_sampler, resolve, run_dagger
from metarl_robot.algos.common.ppo import actor_critic_loss, approx_kl_terms, clipped_surrogate
from metarl_robot.runtime.guard import allowed_drop
from metarl_robot.algos.context_ppo.config import TrainConfig
from metarl_robot.algos.context_ppo.rollout import ContextTrials, encode_window, stack_windows, trial_windows
from metarl_robot.checkpoint import save_checkpoint
from metarl_robot.algos.loop import restore_checkpoint, run_training
from metarl_robot.config import to_dict
from metarl_robot.policies import ContextPolicy
from metarl_robot.runtime.advantages import gae
from metarl_robot.sampling import Episode, EpisodeBatch, make_requests
from metarl_robot.tasks import TaskDistribution

__all__ = ["ContextPPO", "build_task_distribution", "resolve", "train"]

METHOD = "context_ppo"


def make_task_distribution(config: TrainConfig) -> TaskDistribution:
    return build_task_distribution(to_dict(config.tasks))


def actor_critic_advantages(batch: EpisodeBatch, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns ``[T, N]`` of a batch from its critic values (extra ``value``), with the
    robot's GAE (:func:`metarl_robot.runtime.advantages.gae`); episodes end without bootstrapping."""
    valid = batch.valid.T.astype(np.float32)
    values = batch.extras["value"].T
    adv = gae(batch.rewards.T, values, valid, gamma, lam).astype(np.float32)
    return adv.T, ((adv + values) * valid).T


# ------------------------------------------------------------------------------------- training
class ContextPPO:
    """The meta-training loop; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.tasks = make_task_distribution(config)
        self.sampler, env = open_sampler(
            config.env_id, config.env_kwargs, config.sampler, config.num_workers, requests_per_batch=config.tasks_per_iteration
        )
        self.interface, self.obs_dim, self.act_dim = env.interface, env.obs_dim, env.act_dim
        scale = self.interface["action"]["scale"]
        self.policy = ContextPolicy(self.obs_dim, self.act_dim, scale, config.policy)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo.lr, eps=1e-5)
        self.iteration = 0
        self.metrics: dict[str, float] = {}

    # -- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.safetensors"

    def save(self) -> Path:
        return save_checkpoint(
            self.checkpoint_path,
            self.policy,
            method=METHOD,
            interface=self.interface,
            adaptation=self.adaptation_spec(),
            config=to_dict(self.config),
            seed=self.config.seed,
            iteration=self.iteration,
            metrics=self.metrics,
            optimizer=self.optimizer.state_dict(),
            rng={"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        )

    def restore(self) -> bool:
        return restore_checkpoint(self, METHOD) is not None

    def adaptation_spec(self) -> dict:
        """The checkpoint's ``adaptation`` section, with the robot's adaptation guard when training has
        measured the spread of episode returns (:mod:`metarl_robot.runtime.guard`)."""
        spec = to_dict(self.config.adaptation)
        sd = self.metrics.get("return/episode_sd")
        if sd is not None and np.isfinite(sd):
            # A window is one episode (cadence "episode"), so the allowed drop is three standard errors
            # of the difference of two single episodes, with the spread over every episode of the last
            # iteration (tasks included: a conservative threshold that catches collapses, not nuances).
            # The encoder reads a sliding window of transitions, so no number of adaptations is validated.
            spec["guard"] = {"signal": "return", "max_drop": allowed_drop(sd, 1), "validated_steps": None}
        return spec

    # -- one iteration: act -> step -> store -> returns -> update
    def collect(self, trials, episodes: int) -> list[Episode]:
        """One trial of ``episodes`` episodes on each of ``tasks_per_iteration`` new train tasks."""
        tasks = self.tasks.sample(self.config.tasks_per_iteration, self.rng, "train")
        requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=episodes)
        return self.sampler.sample(trials, requests)

    def collect_iteration(self) -> tuple[EpisodeBatch, dict[str, np.ndarray]]:
        """The iteration's episodes, episode-major (every task's first episode, then every second...),
        and the windows ``[M, size, *]`` their contexts were inferred from."""
        cfg = self.config
        episodes = self.collect(ContextTrials(self.policy, cfg.adaptation.buffer_size), cfg.episodes_per_task)
        windows = trial_windows(episodes, cfg.adaptation.buffer_size)
        order = sorted(range(len(episodes)), key=lambda i: (episodes[i].episode_in_trial, episodes[i].request_index))
        return EpisodeBatch.from_episodes([episodes[i] for i in order]), stack_windows([windows[i] for i in order])

    def update(self, batch: EpisodeBatch, windows: dict[str, np.ndarray]) -> dict[str, float]:
        cfg = self.config.ppo
        # M whole episodes of length T: [M, T, *].
        obs = torch.as_tensor(batch.obs.swapaxes(0, 1))
        act = torch.as_tensor(batch.actions.swapaxes(0, 1))
        rew = torch.as_tensor(batch.rewards.swapaxes(0, 1))
        next_obs = torch.as_tensor(batch.next_obs.swapaxes(0, 1))
        valid = torch.as_tensor(batch.valid.swapaxes(0, 1).astype(np.float32))
        old_logp = torch.as_tensor(batch.extras["log_prob"].swapaxes(0, 1))
        adv_np, ret_np = actor_critic_advantages(batch, cfg.gamma, cfg.gae_lambda)
        adv, ret = torch.as_tensor(adv_np.swapaxes(0, 1)), torch.as_tensor(ret_np.swapaxes(0, 1))
        win = {k: torch.as_tensor(v) for k, v in windows.items()}
        m, t = obs.shape[:2]
        mean, std = adv[valid > 0].mean(), adv[valid > 0].std() + 1e-8
        adv = (adv - mean) / std * valid

        stats: dict[str, list[float]] = {
            "loss/policy": [], "loss/value": [], "loss/entropy": [], "loss/approx_kl": [], "loss/reward_prediction": []
        }
        for _ in range(cfg.epochs):
            order = torch.randperm(m)
            kl_epoch = []
            for idx in order.chunk(cfg.minibatches):
                context = encode_window(self.policy, {k: v[idx] for k, v in win.items()})  # [B, C], with grad
                b = len(idx)
                ctx = context.unsqueeze(1).expand(b, t, -1).reshape(b * t, -1)
                dist, value = self.policy.distribution(obs[idx].reshape(b * t, -1), ctx)
                logp = dist.log_prob(act[idx].reshape(b * t, -1)).sum(-1)
                mask = valid[idx].reshape(-1)
                denom = mask.sum().clamp(min=1.0)
                log_ratio = logp - old_logp[idx].reshape(-1)
                surrogate = clipped_surrogate(log_ratio, adv[idx].reshape(-1), cfg.clip_ratio)
                policy_loss = -(surrogate * mask).sum() / denom
                value_loss = (((value - ret[idx].reshape(-1)) ** 2) * mask).sum() / denom
                entropy = (dist.entropy().sum(-1) * mask).sum() / denom
                predicted = self.policy.predict_reward(obs[idx], act[idx].clamp(-1, 1), next_obs[idx], context)
                reward_loss = (((predicted - rew[idx]) ** 2) * valid[idx]).sum() / denom
                loss = (
                    actor_critic_loss(policy_loss, value_loss, entropy, cfg.value_coef, cfg.entropy_coef)
                    + cfg.reward_prediction_coef * reward_loss
                )
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = (approx_kl_terms(log_ratio) * mask).sum() / denom
                kl_epoch.append(float(approx_kl))
                for key, v in zip(stats, (policy_loss, value_loss, entropy, approx_kl, reward_loss)):
                    stats[key].append(float(v.detach()))
            if np.mean(kl_epoch) > cfg.target_kl:
                break
        self.policy.obs_norm.update(obs[valid > 0])
        return {k: float(np.mean(v)) for k, v in stats.items()}

    @staticmethod
    def episode_metrics(batch: EpisodeBatch, episodes_per_task: int) -> dict[str, float]:
        """Return and success of each episode of a trial (episode-major batch), before and after adaptation."""
        returns, success = batch.episode_returns(), batch.episode_success()
        per_episode = len(success) // episodes_per_task
        out = {}
        for k in range(episodes_per_task):
            out[f"return/episode_{k}"] = float(returns[k * per_episode : (k + 1) * per_episode].mean())
            out[f"success/episode_{k}"] = float(success[k * per_episode : (k + 1) * per_episode].mean())
        if len(returns) > 1:
            out["return/episode_sd"] = float(np.std(returns, ddof=1))
        out["success/before_adaptation"] = out["success/episode_0"]
        if episodes_per_task > 1:
            out["success/after_adaptation"] = float(success[per_episode:].mean())
        return out

    def warm_start(self) -> dict[str, float]:
        """Imitate ``warm_start.demonstrator``, which knows each task, before meta-training.

        Round 0 clones the demonstrator with the prior context (the motion and the best task-agnostic
        action), one episode per task. Each DAgger round after it runs ``episodes_per_task``
        consecutive episodes per task with the learner inferring its context from its own earlier
        transitions exactly as on the robot (:class:`ContextTrials`, mean actions), and the
        demonstrator labels every state it reaches. Actor and encoder are trained together on those
        labels, so the encoder learns to extract from experience what the demonstrator was told.
        """
        ws, size = self.config.warm_start, self.config.adaptation.buffer_size

        def collect(learner_acts: bool) -> list[Episode]:
            learner = ContextTrials(self.policy, size, explore=False) if learner_acts else None
            return self.collect(DemonstratorLabels(ws.demonstrator, learner), self.config.episodes_per_task if learner_acts else 1)

        return run_dagger(ws, collect, self._imitate)

    def _imitate(self, episodes: Sequence[Episode], first: bool) -> float:
        """Masked MSE between the actor's mean and the labels, contexts encoded with gradients."""
        ws = self.config.warm_start
        batch = EpisodeBatch.from_episodes(episodes)
        obs = torch.as_tensor(batch.obs.swapaxes(0, 1))  # [M, T, D]
        labels = torch.as_tensor(batch.extras["label"].swapaxes(0, 1))
        valid = torch.as_tensor(batch.valid.swapaxes(0, 1).astype(np.float32))
        win = {k: torch.as_tensor(v) for k, v in stack_windows(trial_windows(episodes, self.config.adaptation.buffer_size)).items()}
        if first:
            self.policy.obs_norm.update(obs[valid > 0])
        params = list(self.policy.actor.parameters()) + list(self.policy.encoder.parameters()) + list(
            self.policy.encoder_head.parameters()
        )
        optimizer = torch.optim.Adam(params, lr=ws.lr)
        m, t = obs.shape[:2]
        losses = []
        for _ in range(ws.epochs):
            for idx in torch.randperm(m).split(max(1, 256 // t)):
                context = encode_window(self.policy, {k: v[idx] for k, v in win.items()})
                b = len(idx)
                ctx = context.unsqueeze(1).expand(b, t, -1).reshape(b * t, -1)
                mean = self.policy(obs[idx].reshape(b * t, -1), ctx).mean
                mask = valid[idx].reshape(-1, 1)
                loss = (((mean - labels[idx].reshape(b * t, -1)) ** 2) * mask).sum() / (mask.sum() * mean.shape[-1]).clamp(min=1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        return float(np.mean(losses[-20:]))

    def train_iteration(self) -> dict[str, float]:
        batch, windows = self.collect_iteration()
        losses = self.update(batch, windows)
        self.iteration += 1
        return {**self.episode_metrics(batch, self.config.episodes_per_task), **losses}

    @staticmethod
    def progress(metrics: dict[str, float]) -> dict[str, str]:
        return {
            "succ_pre": f"{metrics['success/before_adaptation']:.2f}",
            "succ_post": f"{metrics.get('success/after_adaptation', float('nan')):.2f}",
            "ret": f"{metrics['return/episode_0']:.1f}",
        }

    def close(self) -> None:
        self.sampler.close()


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Meta-train, writing ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors``.

    With ``resume=True`` training continues from ``checkpoints/last.safetensors`` when it exists. Returns the
    final checkpoint's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_training(ContextPPO(config, run_dir), config, run_dir, resume=resume, progress=progress, desc="meta-train")
