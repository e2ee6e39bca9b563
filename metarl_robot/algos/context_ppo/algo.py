"""Context-based meta-RL with PPO.

Each iteration draws tasks, then runs ``episodes_per_task`` consecutive episodes on each. The first
episode acts with the prior context; before every later one the encoder re-infers the context from the
most recent ``buffer_size`` transitions on that task, exactly as the robot does with the exported
adapt graph. PPO then updates actor, critic and encoder together: contexts are recomputed with
gradients from the stored transition windows, so the encoder learns what the policy needs to know.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl_robot.algos.context_ppo.config import TrainConfig
from metarl_robot.checkpoint import CheckpointError, checkpoint_exists, load_checkpoint, save_checkpoint
from metarl_robot.algos.loop import run_training
from metarl_robot.config import to_dict
from metarl_robot.envs import TrajectoryBatch, collect, make_vector_env
from metarl_robot.policies import ContextPolicy
from metarl_robot.tasks import TaskDistribution

METHOD = "context_ppo"


def resolve(reference: str) -> Any:
    """Import ``module:attribute``; the error says what to write instead."""
    module, _, attr = reference.partition(":")
    if not module or not attr:
        raise ValueError(f"{reference!r}: write an import reference as 'module:attribute'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {reference!r}: {err}") from None


def make_task_distribution(config: TrainConfig) -> TaskDistribution:
    return build_task_distribution(to_dict(config.tasks))


def build_task_distribution(tasks: dict[str, Any]) -> TaskDistribution:
    """The distribution a (plain-dict) ``tasks`` config section describes, validation split included
    when asked for; distribution functions without ``num_validation`` still work when it is 0."""
    make = resolve(tasks["distribution"])
    kwargs = {"seed": tasks["seed"], "num_train": tasks["num_train"], "num_test": tasks["num_test"], **tasks.get("kwargs", {})}
    if tasks.get("num_validation", 0):
        kwargs["num_validation"] = tasks["num_validation"]
    return make(**kwargs)


# ---------------------------------------------------------------------------------- transitions
def empty_window(n: int, size: int, obs_dim: int, act_dim: int) -> dict[str, np.ndarray]:
    """``n`` transition windows of ``size`` slots with mask 0: the encoder's input for the prior."""
    return {
        "obs": np.zeros((n, size, obs_dim), np.float32),
        "action": np.zeros((n, size, act_dim), np.float32),
        "reward": np.zeros((n, size, 1), np.float32),
        "next_obs": np.zeros((n, size, obs_dim), np.float32),
        "mask": np.zeros((n, size), np.float32),
    }


def transition_window(episodes: list[TrajectoryBatch], size: int) -> dict[str, np.ndarray]:
    """The last ``size`` valid transitions per env across ``episodes``, as ``[N, size, *]`` arrays.

    Actions are clipped to [-1, 1] (what the robot actually executes); unfilled slots have mask 0.
    """
    if not episodes:
        raise ValueError("transition_window needs at least one episode")
    obs = np.concatenate([e.obs for e in episodes])
    act = np.clip(np.concatenate([e.actions for e in episodes]), -1.0, 1.0)
    rew = np.concatenate([e.rewards for e in episodes])
    nxt = np.concatenate([e.next_obs for e in episodes])
    valid = np.concatenate([e.valid for e in episodes])
    out = empty_window(episodes[0].num_envs, size, obs.shape[-1], act.shape[-1])
    for i in range(episodes[0].num_envs):
        idx = np.flatnonzero(valid[:, i])[-size:]
        k = len(idx)
        out["obs"][i, :k] = obs[idx, i]
        out["action"][i, :k] = act[idx, i]
        out["reward"][i, :k, 0] = rew[idx, i]
        out["next_obs"][i, :k] = nxt[idx, i]
        out["mask"][i, :k] = 1.0
    return out


def encode_window(policy: ContextPolicy, window: dict[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
    t = {k: torch.as_tensor(v) for k, v in window.items()}
    return policy.encode(t["obs"], t["action"], t["reward"], t["next_obs"], t["mask"])


def gae(rewards, values, valid, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns for ``[T, N]`` episodes that end at their last valid step (no bootstrap)."""
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    last = np.zeros(rewards.shape[1], np.float32)
    for t in reversed(range(T)):
        next_value = values[t + 1] * valid[t + 1] if t + 1 < T else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        cont = valid[t + 1] if t + 1 < T else 0.0
        last = delta + gamma * lam * cont * last
        adv[t] = last * valid[t]
    return adv, (adv + values) * valid


# ------------------------------------------------------------------------------------- training
class ContextPPO:
    """The meta-training loop; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.tasks = make_task_distribution(config)
        self.envs = make_vector_env(
            config.env_id, config.tasks_per_iteration, asynchronous=config.asynchronous, env_kwargs=config.env_kwargs
        )
        self.interface = dict(self.envs.get_attr("interface")[0])
        self.obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        self.act_dim = int(np.prod(self.envs.single_action_space.shape))
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
            adaptation=to_dict(self.config.adaptation),
            config=to_dict(self.config),
            seed=self.config.seed,
            iteration=self.iteration,
            metrics=self.metrics,
            optimizer=self.optimizer.state_dict(),
            rng={"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        )

    def restore(self) -> bool:
        if not checkpoint_exists(self.checkpoint_path):
            return False
        policy, data = load_checkpoint(self.checkpoint_path)
        if data.get("method") != METHOD or data["policy"]["obs_dim"] != self.obs_dim:
            raise CheckpointError(
                f"{self.checkpoint_path} was written by a different method or env; use a new --run-dir to start afresh"
            )
        self.policy.load_state_dict(policy.state_dict())
        self.optimizer.load_state_dict(data["optimizer"])
        self.rng.bit_generator.state = data["rng"]["numpy"]
        torch.set_rng_state(data["rng"]["torch"])
        self.iteration, self.metrics = int(data["iteration"]), dict(data.get("metrics", {}))
        return True

    # -- one iteration: act -> step -> store -> returns -> update
    def collect_iteration(self) -> tuple[list[TrajectoryBatch], list[dict[str, np.ndarray]]]:
        cfg = self.config
        tasks = self.tasks.sample(cfg.tasks_per_iteration, self.rng, "train")
        n, size = cfg.tasks_per_iteration, cfg.adaptation.buffer_size
        windows = [empty_window(n, size, self.obs_dim, self.act_dim)]
        episodes: list[TrajectoryBatch] = []
        for k in range(cfg.episodes_per_task):
            with torch.no_grad():
                context = encode_window(self.policy, windows[k])

            def act(obs: np.ndarray, context=context):
                with torch.no_grad():
                    dist, value = self.policy.distribution(torch.as_tensor(obs, dtype=torch.float32), context)
                    action = dist.sample()
                    return action.numpy(), {"log_prob": dist.log_prob(action).sum(-1).numpy(), "value": value.numpy()}

            episodes.append(collect(self.envs, act, tasks, seed=int(self.rng.integers(2**31))))
            windows.append(transition_window(episodes, size))
        return episodes, windows[:-1]

    def update(self, episodes: list[TrajectoryBatch], windows: list[dict[str, np.ndarray]]) -> dict[str, float]:
        cfg = self.config.ppo
        # Flatten (episode k, env i) pairs into M = E*N whole episodes of length T.
        obs = torch.as_tensor(np.concatenate([e.obs.swapaxes(0, 1) for e in episodes]))  # [M, T, D]
        act = torch.as_tensor(np.concatenate([e.actions.swapaxes(0, 1) for e in episodes]))
        rew = torch.as_tensor(np.concatenate([e.rewards.swapaxes(0, 1) for e in episodes]))
        next_obs = torch.as_tensor(np.concatenate([e.next_obs.swapaxes(0, 1) for e in episodes]))
        valid = torch.as_tensor(np.concatenate([e.valid.swapaxes(0, 1) for e in episodes]).astype(np.float32))
        old_logp = torch.as_tensor(np.concatenate([e.extras["log_prob"].swapaxes(0, 1) for e in episodes]))
        adv_ret = [gae(e.rewards, e.extras["value"], e.valid.astype(np.float32), cfg.gamma, cfg.gae_lambda) for e in episodes]
        adv = torch.as_tensor(np.concatenate([a.swapaxes(0, 1) for a, _ in adv_ret]))
        ret = torch.as_tensor(np.concatenate([r.swapaxes(0, 1) for _, r in adv_ret]))
        win = {k: torch.as_tensor(np.concatenate([w[k] for w in windows])) for k in windows[0]}
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
                ratio = log_ratio.exp()
                a = adv[idx].reshape(-1)
                surrogate = torch.min(ratio * a, ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio) * a)
                policy_loss = -(surrogate * mask).sum() / denom
                value_loss = (((value - ret[idx].reshape(-1)) ** 2) * mask).sum() / denom
                entropy = (dist.entropy().sum(-1) * mask).sum() / denom
                predicted = self.policy.predict_reward(obs[idx], act[idx].clamp(-1, 1), next_obs[idx], context)
                reward_loss = (((predicted - rew[idx]) ** 2) * valid[idx]).sum() / denom
                loss = (
                    policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
                    + cfg.reward_prediction_coef * reward_loss
                )
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = (((ratio - 1) - log_ratio) * mask).sum() / denom
                kl_epoch.append(float(approx_kl))
                for key, v in zip(stats, (policy_loss, value_loss, entropy, approx_kl, reward_loss)):
                    stats[key].append(float(v.detach()))
            if np.mean(kl_epoch) > cfg.target_kl:
                break
        self.policy.obs_norm.update(obs[valid > 0])
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def episode_metrics(self, episodes: list[TrajectoryBatch]) -> dict[str, float]:
        out = {}
        for k, e in enumerate(episodes):
            out[f"return/episode_{k}"] = float(e.episode_returns().mean())
            out[f"success/episode_{k}"] = float(e.episode_success().mean())
        out["success/before_adaptation"] = out["success/episode_0"]
        if len(episodes) > 1:
            out["success/after_adaptation"] = float(np.mean([e.episode_success().mean() for e in episodes[1:]]))
        return out

    def warm_start(self) -> dict[str, float]:
        """Imitate ``warm_start.demonstrator``, which knows each task, before meta-training.

        Round 0 clones the demonstrator with the prior context (the motion and the best task-agnostic
        action). Each of the ``dagger_iterations`` rounds after it is DAgger over task sequences: the
        learner runs ``episodes_per_task`` consecutive episodes per task, inferring its context from
        its own earlier transitions exactly as on the robot, and the demonstrator labels every state
        it reaches. Actor and encoder are trained together on those labels, so the encoder learns to
        extract from experience what the demonstrator was told.
        """
        ws, cfg = self.config.warm_start, self.config
        demonstrate = resolve(ws.demonstrator)
        n, size = cfg.tasks_per_iteration, cfg.adaptation.buffer_size
        data: list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = []
        metrics: dict[str, float] = {}
        for dagger in range(ws.dagger_iterations + 1):
            success_by_episode: list[list[float]] = []
            for _ in range(ws.rounds):
                tasks = self.tasks.sample(n, self.rng, "train")
                episodes: list[TrajectoryBatch] = []
                window = empty_window(n, size, self.obs_dim, self.act_dim)
                for k in range(1 if dagger == 0 else cfg.episodes_per_task):
                    with torch.no_grad():
                        context = encode_window(self.policy, window)
                    labels: list[np.ndarray] = []

                    def act(obs: np.ndarray, tasks=tasks, labels=labels, context=context):
                        expert = demonstrate(obs, tasks)
                        labels.append(np.clip(expert, -1.0, 1.0))
                        if dagger == 0:
                            return expert, {}
                        with torch.no_grad():
                            return self.policy(torch.as_tensor(obs, dtype=torch.float32), context).mean.numpy(), {}

                    batch = collect(self.envs, act, tasks, seed=int(self.rng.integers(2**31)))
                    data.append((batch.obs.swapaxes(0, 1), np.stack(labels).swapaxes(0, 1), batch.valid.swapaxes(0, 1), window))
                    episodes.append(batch)
                    window = transition_window(episodes, size)
                    if len(success_by_episode) <= k:
                        success_by_episode.append([])
                    success_by_episode[k].append(float(batch.episode_success().mean()))
            name = "demonstrator" if dagger == 0 else f"learner_{dagger}"
            for k, values in enumerate(success_by_episode):
                metrics[f"warm_start/{name}_success_episode_{k}"] = float(np.mean(values))
            metrics["warm_start/imitation_loss"] = self._imitate(data, first=dagger == 0)
        metrics["warm_start/transitions"] = float(sum(v.sum() for _, _, v, _ in data))
        return metrics

    def _imitate(self, data, first: bool) -> float:
        """Masked MSE between the actor's mean and the labels, contexts encoded with gradients."""
        ws = self.config.warm_start
        obs = torch.as_tensor(np.concatenate([d[0] for d in data]))  # [M, T, D]
        labels = torch.as_tensor(np.concatenate([d[1] for d in data]))
        valid = torch.as_tensor(np.concatenate([d[2] for d in data]).astype(np.float32))
        win = {k: torch.as_tensor(np.concatenate([d[3][k] for d in data])) for k in data[0][3]}
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
        episodes, windows = self.collect_iteration()
        losses = self.update(episodes, windows)
        self.iteration += 1
        return {**self.episode_metrics(episodes), **losses}

    @staticmethod
    def progress(metrics: dict[str, float]) -> dict[str, str]:
        return {
            "succ_pre": f"{metrics['success/before_adaptation']:.2f}",
            "succ_post": f"{metrics.get('success/after_adaptation', float('nan')):.2f}",
            "ret": f"{metrics['return/episode_0']:.1f}",
        }

    def close(self) -> None:
        self.envs.close()


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Meta-train, writing ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors``.

    With ``resume=True`` training continues from ``checkpoints/last.safetensors`` when it exists. Returns the
    final checkpoint's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_training(ContextPPO(config, run_dir), config, run_dir, resume=resume, progress=progress, desc="meta-train")
