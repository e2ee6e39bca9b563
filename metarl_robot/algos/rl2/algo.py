"""RL² (Duan et al., 2016) trained with PPO.

Each iteration draws ``trials_per_iteration`` train tasks and runs one trial on each: ``episodes_per_trial``
consecutive episodes with the recurrent state carried across them (zero at the trial's start), the
previous command, reward and done flag fed back at every step exactly as the robot's controller does
(:class:`~metarl_robot.algos.rl2.rollout.RL2Trials`, through :mod:`metarl_robot.sampling`). A trial is
one long RL problem: advantages are the robot's GAE (:func:`metarl_robot.runtime.advantages.gae`) over
the whole trial, so the return of a later attempt credits what an earlier attempt explored.

The update recomputes the core over whole trials from the zero state and backpropagates through them
(``ppo.bptt_steps`` = 0), or through chunks of ``bptt_steps`` steps started from the state the trial had
reached (truncated BPTT). With ``asymmetric_critic`` the value head also reads the task's numeric
parameters; they never reach the actor or an exported graph.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from metarl_robot.algos.common import build_task_distribution, open_sampler
from metarl_robot.algos.common.ppo import actor_critic_loss, approx_kl_terms, clipped_surrogate
from metarl_robot.algos.loop import restore_checkpoint, run_training
from metarl_robot.algos.rl2.config import TrainConfig
from metarl_robot.algos.rl2.improve import exploring_trials, group_trials, select_best
from metarl_robot.algos.rl2.teacher import DaggerTrials, TeacherTrials, clone, imitation_loss, teacher_tensors
from metarl_robot.algos.rl2.rollout import RL2Trials, TrialBatch, privileged_keys, privileged_vector, trial_batch
from metarl_robot.checkpoint import save_checkpoint
from metarl_robot.config import to_dict
from metarl_robot.recurrent_policy import RecurrentPolicy
from metarl_robot.runtime.advantages import gae
from metarl_robot.sampling import EpisodeRequest, make_requests
from metarl_robot.skills import layout_slices


def skill_layout(layout) -> tuple:
    """The env's observation layout as the ``[name, start, size]`` triples a policy config stores."""
    return tuple((name, start, size) for name, (start, size) in layout_slices(layout).items())

METHOD = "rl2"


class RL2:
    """The training loop; :func:`train` is the entry point (the shared loop in :mod:`metarl_robot.algos.loop`)."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.tasks = build_task_distribution(to_dict(config.tasks))
        self.sampler, env = open_sampler(
            config.env_id, config.env_kwargs, config.sampler, config.num_workers, requests_per_batch=config.trials_per_iteration
        )
        self.interface, self.obs_dim, self.act_dim = env.interface, env.obs_dim, env.act_dim
        self.privileged_keys = self._choose_privileged_keys()
        policy_config = self._policy_config(dataclasses.replace(config.policy, privileged_dim=len(self.privileged_keys)))
        if policy_config.skill and not policy_config.skill_layout:
            layout = skill_layout(self.interface["observation_layout"])
            policy_config = dataclasses.replace(policy_config, skill_layout=layout)
        self.policy = RecurrentPolicy(self.obs_dim, self.act_dim, self.interface["action"]["scale"], policy_config)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo.lr, eps=1e-5)
        self.iteration = 0
        self.metrics: dict[str, float] = {}
        self._teacher = None  # the warm start's teacher trials, for the imitation term of PPO
        self._teacher_batch = None
        self._imitation_start = 0
        self.critic_warmup_until = 0
        self._buffer: list[list] = []  # kept trials of the improvement iterations (:mod:`.improve`)

    method = METHOD

    def _choose_privileged_keys(self) -> tuple[str, ...]:
        """The task parameters the critic reads (all numeric ones with an asymmetric critic, else none)."""
        return privileged_keys(self.tasks.train_tasks[0]) if self.config.asymmetric_critic else ()

    def _policy_config(self, policy_config):
        """The policy's config with what the tasks decide filled in (a method's hook)."""
        return policy_config

    def privileged_matrix(self, tasks) -> np.ndarray:
        """``[N, P]`` privileged parameters of ``tasks``, as the policy's privileged inputs read them."""
        return np.stack([privileged_vector(task, self.privileged_keys) for task in tasks])

    def _unroll(self, t: dict[str, torch.Tensor], rows, span: slice, state: torch.Tensor):
        """The core over trials ``rows``, steps ``span``, from ``state``: ``(features, final state)``."""
        return self.policy.unroll(t["obs"][rows, span], t["prev_actions"][rows, span], t["prev_rewards"][rows, span],
                                  t["prev_dones"][rows, span], state)

    # -- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.safetensors"

    def adaptation(self) -> dict:
        return {**to_dict(self.config.adaptation), "episodes_per_trial": self.config.episodes_per_trial}

    def save(self) -> Path:
        return save_checkpoint(
            self.checkpoint_path,
            self.policy,
            method=self.method,
            interface=self.interface,
            adaptation=self.adaptation(),
            config=to_dict(self.config),
            seed=self.config.seed,
            iteration=self.iteration,
            metrics=self.metrics,
            privileged_keys=list(self.privileged_keys),
            optimizer=self.optimizer.state_dict(),
            rng={"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        )

    def restore(self) -> bool:
        return restore_checkpoint(self, self.method) is not None

    def warm_start(self) -> dict[str, float]:
        """Clone ``warm_start.rounds`` batches of trials of a teacher that is never told the task, then
        ``warm_start.dagger_iterations`` DAgger rounds in which the learner acts and the teacher labels."""
        cfg = self.config
        ws = cfg.warm_start
        episodes = self._collect_rounds(ws.rounds, lambda: TeacherTrials(ws.teacher, ws.teacher_kwargs, self.interface))
        batch = trial_batch(episodes, cfg.episodes_per_trial)
        metrics = {**clone(self, batch), **{f"warm_start/{k}": v for k, v in self.trial_metrics(batch).items()}}
        for k in range(ws.dagger_iterations):
            learner = RL2Trials(self.policy)
            more = self._collect_rounds(ws.dagger_rounds, lambda: DaggerTrials(ws.teacher, ws.teacher_kwargs, self.interface, learner))
            own = trial_batch(more, cfg.episodes_per_trial)
            metrics.update({f"warm_start/dagger_{k}/{key}": v for key, v in self.trial_metrics(own).items()})
            episodes = episodes + more
            batch = trial_batch(_renumbered(episodes, cfg.episodes_per_trial), cfg.episodes_per_trial)
            metrics.update(clone(self, batch, epochs=ws.dagger_epochs, update_normalizers=False))
        self._teacher, self._teacher_batch = teacher_tensors(self, batch), batch
        if self._improving:
            self._buffer = group_trials(episodes, cfg.episodes_per_trial, len(episodes) // cfg.episodes_per_trial)[-cfg.improve.buffer_trials:]
        self._imitation_start = self.iteration
        self.critic_warmup_until = self.iteration + cfg.ppo.critic_warmup_iterations
        return metrics

    def _collect_rounds(self, rounds: int, make_trials) -> list:
        """``rounds`` batches of ``trials_per_iteration`` train tasks, one trial each, numbered as one batch."""
        cfg = self.config
        episodes = []
        for _ in range(rounds):
            tasks = self.tasks.sample(cfg.trials_per_iteration, self.rng, "train")
            requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=cfg.episodes_per_trial)
            episodes.extend(self.sampler.sample(make_trials(), requests))
        return _renumbered(episodes, cfg.episodes_per_trial)

    def _imitation_weight(self) -> float:
        ppo = self.config.ppo
        if self._teacher is None or ppo.imitation_coef <= 0:
            return 0.0
        if not ppo.imitation_decay_iterations:
            return ppo.imitation_coef
        done = (self.iteration - self.critic_warmup_until) / ppo.imitation_decay_iterations
        return ppo.imitation_coef * max(0.0, 1.0 - done)

    # -- one iteration: collect trials -> advantages over whole trials -> PPO with BPTT
    def collect(self) -> TrialBatch:
        cfg = self.config
        tasks = self.tasks.sample(cfg.trials_per_iteration, self.rng, "train")
        requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=cfg.episodes_per_trial)
        episodes = self.sampler.sample(RL2Trials(self.policy), requests)
        return trial_batch(episodes, cfg.episodes_per_trial)

    def _tensors(self, batch: TrialBatch) -> dict[str, torch.Tensor]:
        p = self.policy
        t = {name: torch.as_tensor(getattr(batch, name)) for name in ("obs", "raw_actions", "rewards", "valid", "prev_rewards", "prev_dones")}
        # The core reads the previous command normalised as the robot's graph does it.
        t["prev_actions"] = p.normalised_action(torch.as_tensor(batch.prev_actions) * p.action_scale)
        if self.privileged_keys:
            t["privileged"] = torch.as_tensor(self.privileged_matrix(batch.tasks))
        return t

    def _chunks(self, t: dict[str, torch.Tensor]) -> tuple[list[slice], torch.Tensor]:
        """The BPTT chunks of the trials and the state at each chunk's start ``[K, N, S]`` (no gradient)."""
        length = t["obs"].shape[1]
        size = self.config.ppo.bptt_steps or length
        spans = [slice(s, min(s + size, length)) for s in range(0, length, size)]
        starts, state = [], self.policy.initial_state(t["obs"].shape[0])
        with torch.no_grad():
            everyone = torch.arange(t["obs"].shape[0])
            for span in spans:
                starts.append(state)
                _, state = self._unroll(t, everyone, span, state)
        return spans, torch.stack(starts)

    def _evaluate(self, t, rows: torch.Tensor, span: slice, start: torch.Tensor):
        """Log-probabilities, entropies and values ``[B, T]`` of trials ``rows`` over ``span`` from ``start``."""
        p = self.policy
        features, _ = self._unroll(t, rows, span, start)
        dist = p.distribution(features)
        logp = p.log_prob(dist, t["raw_actions"][rows, span])
        privileged = t["privileged"][rows].unsqueeze(1).expand(-1, features.shape[1], -1) if self.privileged_keys else None
        critic_in = features if self.config.ppo.value_through_core else features.detach()
        return logp, p.entropy(dist), p.value(critic_in, privileged)

    def update(self, batch: TrialBatch) -> dict[str, float]:
        cfg = self.config.ppo
        t = self._tensors(batch)
        n = batch.num_trials
        spans, starts = self._chunks(t)
        everyone = torch.arange(n)
        with torch.no_grad():
            old = [self._evaluate(t, everyone, span, starts[k]) for k, span in enumerate(spans)]
            old_logp = torch.cat([o[0] for o in old], dim=1)
            values = torch.cat([o[2] for o in old], dim=1)
        valid = t["valid"]
        adv_np = gae(batch.rewards * cfg.reward_scale, values.numpy(), batch.valid, cfg.gamma, cfg.gae_lambda)
        ret = torch.as_tensor(adv_np, dtype=torch.float32) + values
        adv = torch.as_tensor(adv_np, dtype=torch.float32)
        mask = valid > 0
        adv = (adv - adv[mask].mean()) / (adv[mask].std() + 1e-8) * valid

        units = [(k, i) for k in range(len(spans)) for i in range(n)]  # (chunk, trial)
        stats: dict[str, list[float]] = {"loss/policy": [], "loss/value": [], "loss/entropy": [], "loss/approx_kl": []}
        if self.iteration < self.critic_warmup_until:
            cfg = dataclasses.replace(cfg, target_kl=float("inf"))
        for _ in range(cfg.epochs):
            kl_epoch = []
            order = torch.randperm(len(units))
            for part in order.chunk(cfg.minibatches):
                policy_loss = value_loss = entropy = approx_kl = torch.zeros(())
                denom = torch.zeros(())
                chosen = [units[j] for j in part.tolist()]
                for k in sorted({k for k, _ in chosen}):
                    rows = torch.as_tensor([i for kk, i in chosen if kk == k])
                    span = spans[k]
                    logp, ent, value = self._evaluate(t, rows, span, starts[k][rows])
                    m = valid[rows, span]
                    log_ratio = logp - old_logp[rows, span]
                    surrogate = clipped_surrogate(log_ratio, adv[rows, span], cfg.clip_ratio)
                    policy_loss = policy_loss - (surrogate * m).sum()
                    value_loss = value_loss + (((value - ret[rows, span]) ** 2) * m).sum()
                    entropy = entropy + (ent * m).sum()
                    with torch.no_grad():
                        approx_kl = approx_kl + (approx_kl_terms(log_ratio) * m).sum()
                    denom = denom + m.sum()
                denom = denom.clamp(min=1.0)
                policy_loss, value_loss, entropy, approx_kl = (x / denom for x in (policy_loss, value_loss, entropy, approx_kl))
                actor_on = self.iteration >= self.critic_warmup_until
                if actor_on:
                    loss = actor_critic_loss(policy_loss, value_loss, entropy, cfg.value_coef, cfg.entropy_coef)
                else:  # the critic warms up alone
                    loss = cfg.value_coef * value_loss
                imitation = self._imitation_weight() if actor_on else 0.0
                if imitation > 0:
                    loss = loss + imitation * imitation_loss(self, self._teacher, len(part))
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                kl_epoch.append(float(approx_kl))
                for key, v in zip(stats, (policy_loss, value_loss, entropy, approx_kl)):
                    stats[key].append(float(v.detach()))
            if np.mean(kl_epoch) > cfg.target_kl:
                break
            # The chunks' start states move with the weights; recompute them for the next epoch.
            if len(spans) > 1:
                spans, starts = self._chunks(t)
        if self.config.update_obs_normalizer:
            self.policy.obs_norm.update(t["obs"][mask])
        if self.privileged_keys:
            self.policy.privileged_norm.update(t["privileged"])
        return {k: float(np.mean(v)) for k, v in stats.items()}

    @staticmethod
    def trial_metrics(batch: TrialBatch) -> dict[str, float]:
        """Return and success of each episode (attempt) of a trial, and of the whole trial."""
        out = {}
        for k in range(batch.success.shape[1]):
            out[f"return/episode_{k}"] = float(batch.episode_returns[:, k].mean())
            out[f"success/episode_{k}"] = float(batch.success[:, k].mean())
        out["return/trial"] = float(batch.episode_returns.sum(1).mean())
        out["success/before_adaptation"] = out["success/episode_0"]
        if batch.success.shape[1] > 1:
            out["success/after_adaptation"] = float(batch.success[:, 1:].mean())
        return out

    def improve_iteration(self) -> dict[str, float]:
        """One iteration of :mod:`.improve`: exploring trials and the teacher's on the same tasks and
        reset seeds, the best per task kept, the buffer of kept trials cloned."""
        cfg, imp, ws = self.config, self.config.improve, self.config.warm_start
        per_trial, n = cfg.episodes_per_trial, cfg.trials_per_iteration
        teacher = lambda: TeacherTrials(ws.teacher, ws.teacher_kwargs, self.interface)  # noqa: E731
        if not self._buffer and imp.seed_rounds and ws.teacher:
            seeded = self._collect_rounds(imp.seed_rounds, teacher)
            self._buffer = group_trials(seeded, per_trial, len(seeded) // per_trial)[-imp.buffer_trials:]
        tasks = self.tasks.sample(n, self.rng, "train")
        resets = [tuple(int(x) for x in self.rng.integers(2**31, size=per_trial)) for _ in tasks]

        def requests(count: int) -> list[EpisodeRequest]:
            return [EpisodeRequest(j, tasks[j % n], int(self.rng.integers(2**31)), per_trial, reset_seeds=resets[j % n])
                    for j in range(count)]

        explored = group_trials(self.sampler.sample(exploring_trials(self.policy, noise_std=imp.noise_std), requests(n * imp.samples)),
                                per_trial, n * imp.samples)
        candidates = [explored[k * n:(k + 1) * n] for k in range(imp.samples)]
        if imp.include_teacher:
            candidates.append(group_trials(self.sampler.sample(teacher(), requests(n)), per_trial, n))
        chosen, kept = select_best(candidates)
        self._buffer = (self._buffer + kept)[-imp.buffer_trials:]
        episodes = _renumbered([e for trial in self._buffer for e in trial], per_trial)
        losses = clone(self, trial_batch(episodes, per_trial), epochs=imp.epochs, update_normalizers=False)

        def success(trials, k: int) -> float:
            return float(np.mean([bool(trial[k].succeeded) for trial in trials]))

        out = {f"improve/{k.split('/')[-1]}": v for k, v in losses.items()}
        for k in range(per_trial):
            out[f"success/episode_{k}"] = success([t for c in candidates[:imp.samples] for t in c], k)
            out[f"improve/kept_success_episode_{k}"] = success(kept, k)
            if imp.include_teacher:
                out[f"improve/teacher_success_episode_{k}"] = success(candidates[-1], k)
        out["success/before_adaptation"] = out["success/episode_0"]
        if per_trial > 1:
            out["success/after_adaptation"] = float(np.mean([out[f"success/episode_{k}"] for k in range(1, per_trial)]))
        out["return/trial"] = float(np.mean([sum(e.total_reward for e in t) for c in candidates[:imp.samples] for t in c]))
        out["improve/teacher_kept"] = float(np.mean([c == imp.samples for c in chosen])) if imp.include_teacher else 0.0
        out["improve/buffer_trials"] = float(len(self._buffer))
        return out

    @property
    def _improving(self) -> bool:
        """Iterations are :mod:`.improve` steps (a method built on RL² may have no ``improve`` section)."""
        improve = getattr(self.config, "improve", None)
        return bool(improve is not None and improve.samples)

    def train_iteration(self) -> dict[str, float]:
        if self._improving:
            metrics = self.improve_iteration()
            self.iteration += 1
            return metrics
        batch = self.collect()
        losses = self.update(batch)
        losses["loss/imitation_weight"] = self._imitation_weight() if self.iteration >= self.critic_warmup_until else 0.0
        self.iteration += 1
        return {**self.trial_metrics(batch), **losses}

    @staticmethod
    def progress(metrics: dict[str, float]) -> dict[str, str]:
        return {"trial_ret": f"{metrics['return/trial']:.2f}", "succ_pre": f"{metrics['success/before_adaptation']:.2f}",
                "succ_post": f"{metrics.get('success/after_adaptation', float('nan')):.2f}"}

    def close(self) -> None:
        self.sampler.close()


def _renumbered(episodes: list, episodes_per_trial: int) -> list:
    """Episodes of several sampler batches (each in request order) renumbered as one batch of trials."""
    for k, episode in enumerate(episodes):
        episode.request_index = k // episodes_per_trial
    return episodes


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Train RL², writing ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors``.

    With ``resume=True`` training continues from ``checkpoints/last.safetensors`` when it exists. Returns
    the final checkpoint's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_training(RL2(config, run_dir), config, run_dir, resume=resume, progress=progress, desc="rl2")
