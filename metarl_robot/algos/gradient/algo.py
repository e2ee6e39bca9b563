"""Gradient-based meta-RL: MAML (TRPO/PPO), ProMP, Reptile, CAVIA, Meta-SGD and multi-task PPO.

One meta-iteration reads top to bottom:

1. draw ``meta_batch_size`` train tasks;
2. for each inner step k = 0..K-1: run ``episodes_per_step`` episodes per task with the adapted
   parameters ``phi_k`` (one sampler request per task, :mod:`.rollout`, on the sampler the config
   names), compute advantages with the robot's own numpy
   code (:mod:`metarl_robot.runtime.advantages`) and take the policy-gradient step
   ``phi_{k+1} = phi_k - inner_lr * grad L(phi_k)``;
3. run the post-adaptation episodes with ``phi_K``;
4. update the meta-parameters: the outer loss is evaluated on the post-adaptation episodes with
   ``phi_K`` recomputed *as a function of the meta-parameters* from the stored inner batches, so the
   meta-gradient flows through every inner step (second order unless ``inner.first_order``).

The methods differ only in step 4 and in what ``phi`` is (see :mod:`metarl_robot.gradient_policy`):
MAML's TRPO step (natural gradient through the adaptation, KL-bounded line search) or PPO's clipped
surrogate; ProMP's clipped surrogate with the low-variance-curvature inner estimator and an adaptive
KL penalty on the pre-adaptation policy; Reptile's move towards the adapted parameters; CAVIA adapts
a context vector only; Meta-SGD also learns per-parameter inner step sizes; multi-task PPO takes no
inner step and is the domain-randomised baseline (fine-tuning it at test time is the transfer-learning
baseline).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl_robot.algos.common import DemonstratorLabels, build_task_distribution, open_sampler, resolve, run_dagger
from metarl_robot.algos.gradient.config import TrainConfig
from metarl_robot.algos.gradient.rollout import GradientTrials
from metarl_robot.checkpoint import CheckpointError, save_checkpoint
from metarl_robot.algos.loop import restore_checkpoint, run_training
from metarl_robot.algos.common.teacher import DaggerTrials, TeacherTrials, teacher_labels
from metarl_robot.config import to_dict
from metarl_robot.gradient_policy import GradientPolicy, flat_grad, gaussian_kl, gaussian_log_prob, masked_mean
from metarl_robot.runtime.advantages import compute_advantages
from metarl_robot.runtime.guard import allowed_drop
from metarl_robot.sampling import Episode, EpisodeBatch, EpisodePolicy, make_requests
from metarl_robot.skills import layout_slices



PLAUSIBLE_OBS = 1e3
"""An episode with an observation entry beyond this magnitude is a simulator failure, not data: PyBullet
reports a body whose state blew up at Bullet's 1e30 sentinel (seen on the grasp suite, about one teacher
episode in a few hundred). Such episodes are masked out of training, never learned from."""


def plausible(obs: np.ndarray) -> np.ndarray:
    """Per episode of ``obs [..., T, D]``: every entry finite and within :data:`PLAUSIBLE_OBS`."""
    return np.all(np.isfinite(obs) & (np.abs(obs) <= PLAUSIBLE_OBS), axis=(-2, -1))


@dataclasses.dataclass
class Rollouts:
    """Episodes of one inner step for every task: tensors ``[M tasks, N episodes, T steps, *]``."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    returns: np.ndarray
    """Undiscounted return per episode ``[M, N]``."""
    success: np.ndarray
    """Success per episode ``[M, N]``."""


def to_rollouts(policy: GradientPolicy, episodes: list[Episode], phis: torch.Tensor, config: TrainConfig) -> Rollouts:
    """Regroup one inner step's episodes (task-major, ``N`` per task, task ``m`` collected with
    ``phis[m]``) into :class:`Rollouts`: advantages with the robot's numpy code, log-probabilities of
    the recorded actions recomputed here in PyTorch."""
    num_tasks = len(phis)
    batch = EpisodeBatch.from_episodes(episodes)

    def regroup(x: np.ndarray) -> np.ndarray:
        x = np.swapaxes(x, 0, 1)  # [M*N, T, *]
        return x.reshape(num_tasks, -1, *x.shape[1:])

    obs, actions, rewards = regroup(batch.obs), regroup(batch.actions), regroup(batch.rewards)
    mask = regroup(batch.valid).astype(np.float32)
    broken = ~plausible(obs)  # [M, N]: simulator failures, masked out (see PLAUSIBLE_OBS)
    if broken.any():
        mask[broken] = 0.0
        obs = np.where(broken[..., None, None], 0.0, obs).astype(np.float32)
        rewards = np.where(broken[..., None], 0.0, rewards).astype(np.float32)
    advantages = np.stack([compute_advantages(obs[m], rewards[m], mask[m], config.advantages) for m in range(num_tasks)])
    if policy.skill is not None:
        # The env ran the skill's command; the policy's decision is the Gaussian sample, and its input
        # the observation with the command sent the step before.
        actions = np.where(broken[..., None, None], 0.0, regroup(batch.extras["raw_action"])).astype(np.float32)
        obs = np.concatenate([obs, regroup(batch.extras["prev_command"])], axis=-1)
    returns = (rewards * mask).sum(-1)
    success = regroup(batch.success).any(-1)
    t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)  # noqa: E731
    obs_t, actions_t = t(obs), t(actions)
    with torch.no_grad():
        log_probs = torch.stack([policy.log_prob(phis[m].detach(), obs_t[m], actions_t[m]) for m in range(num_tasks)])
    return Rollouts(obs_t, actions_t, t(rewards), t(mask), log_probs * t(mask), t(advantages), returns, success)


class GradientMetaRL:
    """The meta-training loop; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        torch.set_num_threads(config.torch_threads)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.tasks = build_task_distribution(to_dict(config.tasks))
        self.sampler, env = open_sampler(
            config.env_id, config.env_kwargs, config.sampler, config.num_workers, requests_per_batch=config.meta_batch_size
        )
        self.interface, self.obs_dim, self.act_dim = env.interface, env.obs_dim, env.act_dim
        if env.max_episode_steps is None:
            raise ValueError(f"{config.env_id} has no max_episode_steps; gradient methods need episodes of bounded length")
        self.max_episode_steps = env.max_episode_steps
        policy_config = config.policy
        if policy_config.skill and not policy_config.skill_layout:
            layout = tuple((name, start, size) for name, (start, size) in layout_slices(self.interface["observation_layout"]).items())
            policy_config = dataclasses.replace(policy_config, skill_layout=layout)  # the policy's own config keeps it
        self.policy = GradientPolicy(self.obs_dim, self.act_dim, self.interface["action"]["scale"], policy_config)
        self.optimizer: torch.optim.Optimizer | None = None
        if config.method in ("promp", "multitask_ppo") or (config.method in ("maml", "cavia", "meta_sgd") and config.outer == "ppo"):
            lr = config.promp.lr if config.method == "promp" else config.ppo.lr
            self.optimizer = torch.optim.Adam(self.policy.meta_parameters(), lr=lr, eps=1e-5)
        if config.outer == "imitation":
            self.optimizer = torch.optim.Adam(self.policy.meta_parameters(), lr=config.imitation.lr)
            self.demonstrate = resolve(config.imitation.demonstrator)
        # DAgger's aggregate for outer 'imitation': per task, (its adaptation windows, (the first
        # window's states, the unadapted mean on them then), the adapted policy's states, the
        # demonstrator's labels of them).
        self.imitation_data: collections.deque = collections.deque(maxlen=config.imitation.history)
        self.kl_coef = config.promp.init_kl_coef
        self.model_optimizer = (
            torch.optim.Adam(self.policy.model_parameters(), lr=config.reward_model.lr) if self.policy.reads_rewards else None
        )
        # Which entries of the flattened meta-parameters the outer update may change: all but the log
        # std (the last act_dim entries of the weights) when meta_learn_log_std is false.
        keep = torch.ones(sum(p.numel() for p in self.policy.meta_parameters()))
        if not config.meta_learn_log_std:
            end = self.policy.weights.numel()
            keep[end - self.act_dim : end] = 0.0
        self.outer_mask = keep
        self.iteration = 0
        self.metrics: dict[str, float] = {}

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.safetensors"

    def adaptation_spec(self) -> dict[str, Any]:
        """The checkpoint's ``adaptation`` section: how the robot adapts this policy, and the guard
        against an adaptation that makes it worse (:mod:`metarl_robot.runtime.guard`)."""
        spec = {
            "kind": "gradient_step",
            "steps": 1,
            "episodes_per_step": self.config.inner.episodes_per_step,
            "max_episode_steps": self.max_episode_steps,
            "cadence": "episodes",
            "reward_source": dict(self.config.reward_source),
            "advantages": to_dict(self.config.advantages),
        }
        guard = self.guard_spec()
        if guard is not None:
            spec["guard"] = guard
        return spec

    def guard_spec(self) -> dict[str, Any] | None:
        """The robot's adaptation guard from what training measured: it may adapt as many times as
        meta-training did (``validated_steps``), and rolls back an adaptation whose window lost more
        than three standard errors of the difference of two windows' mean return, with the spread of
        episode returns within a task measured on the last iteration's post-adaptation episodes."""
        sd = self.metrics.get("return/within_task_sd")
        if sd is None or not np.isfinite(sd):
            return None
        return {
            "signal": "return",
            "max_drop": allowed_drop(sd, self.config.inner.episodes_per_step),
            "validated_steps": self.config.inner_steps or None,
        }

    def save(self) -> Path:
        return save_checkpoint(
            self.checkpoint_path,
            self.policy,
            method=self.config.method_name,
            interface=self.interface,
            adaptation=self.adaptation_spec(),
            config=to_dict(self.config),
            seed=self.config.seed,
            iteration=self.iteration,
            metrics=self.metrics,
            optimizer=self.optimizer.state_dict() if self.optimizer else None,
            model_optimizer=self.model_optimizer.state_dict() if self.model_optimizer else None,
            kl_coef=self.kl_coef,
            rng={"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        )

    def restore(self) -> bool:
        names = [self.config.method_name]
        start = self.config.imitation.start_iteration
        if self.config.outer == "imitation" and start > 0:
            names.append(f"{self.config.method}_trpo")  # its first phase: TRPO up to start_iteration
        data = restore_checkpoint(self, names)
        if data is None:
            return False
        if data["method"] != self.config.method_name and self.iteration > start:
            raise CheckpointError(f"{self.checkpoint_path} holds {data['method']} at iteration {self.iteration}, past "
                                  f"imitation.start_iteration={start}; continue it from iteration {start} or earlier, or start afresh")
        self.kl_coef = float(data.get("kl_coef", self.kl_coef))
        if self.model_optimizer is not None and data.get("model_optimizer"):
            self.model_optimizer.load_state_dict(data["model_optimizer"])
        return True

    # ------------------------------------------------------------------------------ sampling
    def collect(self, trials: EpisodePolicy, tasks, episodes: int, params: torch.Tensor | None = None) -> list[Episode]:
        """One trial of ``episodes`` episodes per task (task ``m`` with ``params[m]`` when given), task-major."""
        requests = make_requests(tasks, seed=int(self.rng.integers(2**31)), episodes=episodes)
        if params is not None:
            rows = params.detach().numpy()
            requests = [dataclasses.replace(r, options={"params": rows[r.index]}) for r in requests]
        return self.sampler.sample(trials, requests)

    def rollout(self, tasks, phis: torch.Tensor) -> Rollouts:
        """``episodes_per_step`` stochastic episodes per task, task ``m`` acting with ``phis[m]``."""
        episodes = self.collect(GradientTrials(self.policy), tasks, self.config.inner.episodes_per_step, phis)
        return to_rollouts(self.policy, episodes, phis.detach(), self.config)

    def adapt(self, phi0: torch.Tensor, inner: list[Rollouts], task: int, *, create_graph: bool) -> list[torch.Tensor]:
        """``[phi_0, ..., phi_K]`` of one task from its stored inner batches (differentiable in ``phi0``)."""
        lvc = self.config.method == "promp"
        phis = [phi0]
        for batch in inner:
            signal = batch.rewards if self.policy.reads_rewards else batch.advantages
            phis.append(
                self.policy.inner_step(
                    phis[-1], batch.obs[task], batch.actions[task], signal[task], batch.mask[task],
                    create_graph=create_graph, low_variance_curvature=lvc,
                )
            )
        return phis

    def collect_iteration(self) -> tuple[list, list[Rollouts], Rollouts]:
        """Tasks, the inner batches (one per inner step) and the post-adaptation batch."""
        cfg = self.config
        tasks = self.tasks.sample(cfg.meta_batch_size, self.rng, "train")
        phi0 = self.policy.initial_adapted().detach()
        phis = phi0.expand(len(tasks), -1).clone()
        inner: list[Rollouts] = []
        for _ in range(cfg.inner_steps):
            batch = self.rollout(tasks, phis)
            inner.append(batch)
            phis = torch.stack([self.adapt(phis[m], [batch], m, create_graph=False)[-1].detach() for m in range(len(tasks))])
        return tasks, inner, self.rollout(tasks, phis)

    # ------------------------------------------------------------------------------ outer losses
    def outer_batches(self, inner: list[Rollouts], post: Rollouts) -> list[tuple[int, Rollouts]]:
        """``(k, batch)`` pairs the outer objective scores: the policy adapted ``k`` times on the episodes
        it collected. Only the last step's, unless ``inner.loss_every_step``: then every step's (the
        inner batch ``k`` was collected by the policy adapted ``k`` times)."""
        last = (len(inner), post)
        if not self.config.inner.loss_every_step:
            return [last]
        return [(k, inner[k]) for k in range(1, len(inner))] + [last]

    def post_distributions(self, inner: list[Rollouts], post: Rollouts, *, create_graph: bool):
        """Per outer batch (:meth:`outer_batches`), per task: ``(mean, log_std)`` of the policy adapted
        ``k`` times on that batch's observations."""
        phi0 = self.policy.initial_adapted()
        batches = self.outer_batches(inner, post)
        out: list[list] = [[] for _ in batches]
        for m in range(post.obs.shape[0]):
            phis = self.adapt(phi0, inner, m, create_graph=create_graph)
            for i, (k, batch) in enumerate(batches):
                out[i].append(self.policy.mean_log_std(phis[k], batch.obs[m]))
        return out

    def outer_surrogate(self, dists, inner: list[Rollouts], post: Rollouts, clip: float | None = None) -> torch.Tensor:
        """:meth:`surrogate` averaged over the outer batches, plus :meth:`exploration_term` when
        ``inner.exploration_credit`` is set."""
        batches = self.outer_batches(inner, post)
        loss = torch.stack([self.surrogate(d, batch, clip) for d, (_, batch) in zip(dists, batches)]).mean()
        if self.config.inner.exploration_credit > 0 and inner:
            loss = loss + self.config.inner.exploration_credit * self.exploration_term(inner[0], post)
        return loss

    def exploration_term(self, pre: Rollouts, post: Rollouts) -> torch.Tensor:
        """E-MAML's exploration credit as a loss: minus the mean over tasks of the pre-adaptation
        episodes' likelihood ratio under the current initialisation times the task's improvement
        from adaptation (mean post- minus pre-adaptation return), standardised over the meta-batch.
        Its value does not depend on the parameters at the start of an update (every ratio is 1); its
        gradient makes the pre-adaptation actions of tasks that adapted well more likely."""
        gain = post.returns.mean(axis=1) - pre.returns.mean(axis=1)
        credit = torch.as_tensor((gain - gain.mean()) / (gain.std() + 1e-8), dtype=torch.float32)
        phi0 = self.policy.initial_adapted()
        terms = []
        for m in range(pre.obs.shape[0]):
            mean, log_std = self.policy.mean_log_std(phi0, pre.obs[m])
            logp = gaussian_log_prob(mean, log_std, pre.actions[m], self.policy.decision_weights(pre.obs[m]))
            ratio = torch.exp(logp - pre.log_probs[m])
            terms.append(masked_mean(ratio, pre.mask[m]) * credit[m])
        return -torch.stack(terms).mean()

    def outer_kl(self, old, new, inner: list[Rollouts], post: Rollouts) -> torch.Tensor:
        """:meth:`mean_kl` averaged over the outer batches."""
        batches = self.outer_batches(inner, post)
        return torch.stack([self.mean_kl(o, n, batch) for o, n, (_, batch) in zip(old, new, batches)]).mean()

    def surrogate(self, dists, post: Rollouts, clip: float | None = None) -> torch.Tensor:
        """Minus the mean over tasks of the (clipped) importance-weighted advantage."""
        losses = []
        for m, (mean, log_std) in enumerate(dists):
            logp = gaussian_log_prob(mean, log_std, post.actions[m], self.policy.decision_weights(post.obs[m]))
            ratio = torch.exp(logp - post.log_probs[m])
            adv = post.advantages[m]
            objective = ratio * adv
            if clip is not None:
                objective = torch.min(objective, ratio.clamp(1 - clip, 1 + clip) * adv)
            losses.append(-masked_mean(objective, post.mask[m]))
        return torch.stack(losses).mean()

    def mean_kl(self, old, new, post: Rollouts) -> torch.Tensor:
        """Mean over tasks and valid steps of KL(old || new), over the action dimensions that were the
        policy's decisions at each step (:meth:`GradientPolicy.decision_weights`)."""
        return torch.stack([
            masked_mean(gaussian_kl(om, ol, nm, nl, self.policy.decision_weights(post.obs[m])), post.mask[m])
            for m, ((om, ol), (nm, nl)) in enumerate(zip(old, new))
        ]).mean()

    # ------------------------------------------------------------------------------ outer updates
    def update(self, inner: list[Rollouts], post: Rollouts, tasks=()) -> dict[str, float]:
        """The outer update on one iteration's batches (``tasks``, the iteration's tasks, only for the
        demonstrator of ``outer: imitation``)."""
        cfg = self.config
        if cfg.method == "reptile":
            return self.reptile_update(inner, post)
        out: dict[str, float] = {}
        if cfg.outer == "imitation":
            self.record_imitation(inner, post, tasks)
        imitating = cfg.outer == "imitation" and self.iteration >= cfg.imitation.start_iteration
        if not (self.policy.reads_rewards and self.iteration < cfg.reward_model.warmup_iterations):
            if imitating:
                out = self.imitation_update()
            elif self.optimizer is None or cfg.outer == "imitation":  # imitation's first phase is TRPO
                out = self.trpo_update(inner, post)
            else:
                out = self.clipped_update(inner, post)
        # After the policy's update, which saw the contexts the data were collected with. Not while the
        # policy imitates: a model that moved would move every context the labels were learned on (runs
        # that let it move chased their contexts: post-adaptation returns of -7 to -33 from one
        # iteration to the next).
        if self.policy.reads_rewards and not imitating:
            out.update(self.model_update(inner, post))
        return out

    def model_update(self, inner: list[Rollouts], post: Rollouts) -> dict[str, float]:
        """The reward model's and the inner step sizes' supervised meta-update (``inner_loss:
        reward_model``): ``reward_model.epochs`` Adam steps on the squared error with which the model,
        at the context adapted on each inner batch, predicts that batch's rewards, differentiated
        through the inner steps; gradients clipped to norm ``reward_model.max_grad_norm``. Returns the
        loss before and after.

        Only the windows the robot adapts on are predicted, not the episodes the adapted policy then
        collects: where those go depends on the policy the outer update is changing, and a model
        trained on them fed back into the contexts the policy acts on (a run whose adapted policy
        wandered off for a few tasks taught the model rewards 100 times the usual size, which moved
        every task's context and sent every adapted policy away)."""
        cfg = self.config.reward_model

        def loss() -> torch.Tensor:
            phi0 = self.policy.initial_adapted()
            terms = []
            for m in range(post.obs.shape[0]):
                phis = self.adapt(phi0, inner, m, create_graph=True)
                for k, batch in enumerate(inner):  # the inner batch k, predicted after adapting on it
                    terms.append(self.policy.model_loss(phis[k + 1], batch.obs[m], batch.actions[m], batch.rewards[m], batch.mask[m]))
            return torch.stack(terms).mean()

        before = after = float("nan")
        params = self.policy.model_parameters()
        saved = [p.detach().clone() for p in params]
        for epoch in range(cfg.epochs):
            value = loss()
            self.model_optimizer.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.model_optimizer.step()
            if epoch == 0:
                before = value.item()
        after = loss().item() if cfg.epochs else before
        # An update that leaves the model worse on the very batches it trained on has diverged (a step
        # size grown past what the inner step tolerates); it is undone, or the contexts the policy acts
        # on would jump (a run without this check saw its adapted return fall from -17 to -505 in one
        # iteration and never recover).
        reverted = not after <= before
        if reverted:
            _assign(params, torch.cat([p.reshape(-1) for p in saved]))
            self.model_optimizer.state.clear()  # and the moments of the steps that diverged
        return {"loss/reward_model_before": before, "loss/reward_model_after": before if reverted else after,
                "loss/reward_model_reverted": float(reverted)}

    def record_imitation(self, inner: list[Rollouts], post: Rollouts, tasks) -> None:
        """Add each task's adaptation windows, the unadapted mean on the first window's valid states (the
        anchor's target), and for every step ``k = 1..K`` the valid states the policy adapted ``k``
        times reached (inner window ``k``, or the post-adaptation batch after the last step) with the
        demonstrator's labels of them, to DAgger's aggregate (``outer: imitation``). The robot acts
        between steps, so the policy is taught at every context it will act on, not only the last."""
        phi0 = self.policy.initial_adapted().detach()
        adapted = [*inner[1:], post]  # batch k - 1 was collected by the policy adapted k times
        for m, task in enumerate(tasks):
            taught = []
            for batch in adapted:
                states = batch.obs[m][batch.mask[m] > 0]
                raw = states[:, : self.obs_dim].numpy()
                labels = np.clip(np.asarray(self.demonstrate(raw, [task] * len(raw)), np.float32), -1.0, 1.0)
                taught.append((states, torch.as_tensor(labels).reshape(len(states), -1)))
            windows = [(b.obs[m], b.actions[m], b.rewards[m], b.mask[m]) for b in inner]
            window = inner[0].obs[m][inner[0].mask[m] > 0]
            with torch.no_grad():
                anchor = self.policy.mean_log_std(phi0, window)[0]
            self.imitation_data.append((windows, (window, anchor), taught))

    def imitation_update(self) -> dict[str, float]:
        """``imitation.steps`` Adam steps, each on ``imitation.tasks_per_step`` tasks of the aggregate:
        the squared error of the adapted policy's mean against the demonstrator's labels (at each
        step's context, on the states the policy reached with it, averaged over the steps), plus
        ``anchor_weight`` times the squared change of the unadapted mean on the first window's states
        since that window was collected. Each task's contexts are adapted from its windows by the
        reward model as it is now (frozen while the policy imitates, so tasks recorded before the
        switch get the contexts the robot would). Only the mean learns (the log std stays the
        exploration noise the reward model reads windows of)."""
        cfg = self.config.imitation
        phi0 = self.policy.initial_adapted().detach()
        data = []
        for windows, held, taught in self.imitation_data:
            phis, phi = [], phi0
            for obs, actions, rewards, mask in windows:
                phi = self.policy.inner_step(phi, obs, actions, rewards, mask, create_graph=False).detach()
                phis.append(phi)
            data.append((list(zip(phis, taught)), held))

        def loss(items) -> tuple[torch.Tensor, torch.Tensor]:
            imitation, anchor = [], []
            for steps, (window, target) in items:
                imitation.append(torch.stack([((self.policy.mean_log_std(phi, states)[0] - labels) ** 2).mean()
                                              for phi, (states, labels) in steps]).mean())
                anchor.append(((self.policy.mean_log_std(phi0, window)[0] - target) ** 2).mean())
            return torch.stack(imitation).mean(), torch.stack(anchor).mean()

        with torch.no_grad():
            before = loss(data)[0].item()
        for _ in range(cfg.steps):
            picked = self.rng.choice(len(data), size=min(cfg.tasks_per_step, len(data)), replace=False)
            imitation, anchor = loss([data[i] for i in picked])
            self.optimizer.zero_grad()
            (imitation + cfg.anchor_weight * anchor).backward()
            self.optimizer.step()
        with torch.no_grad():
            after, anchor = loss(data)
        return {"loss/imitation_before": before, "loss/imitation_after": after.item(), "loss/anchor": anchor.item()}

    def trpo_update(self, inner: list[Rollouts], post: Rollouts) -> dict[str, float]:
        cfg = self.config.trpo
        second_order = not self.config.inner.first_order
        params = self.policy.meta_parameters()
        with torch.no_grad():
            old = [[(m.clone(), s.clone()) for m, s in d] for d in self.post_distributions(inner, post, create_graph=False)]
        dists = self.post_distributions(inner, post, create_graph=second_order)
        loss = self.outer_surrogate(dists, inner, post)
        mask = self.outer_mask
        grad = flat_grad(loss, params, retain_graph=True) * mask
        kl = self.outer_kl(old, dists, inner, post)
        kl_grad = flat_grad(kl, params, create_graph=True)

        def fisher_vector(v: torch.Tensor) -> torch.Tensor:
            # Restricted to the entries the outer update may change (CG then never leaves them).
            return mask * flat_grad(kl_grad @ (mask * v), params, retain_graph=True) + cfg.cg_damping * v

        direction = conjugate_gradient(fisher_vector, -grad, cfg.cg_iters)
        shs = 0.5 * direction @ fisher_vector(direction)
        step = direction * torch.sqrt(2 * cfg.max_kl / torch.clamp(2 * shs, min=1e-12))
        start = torch.cat([p.detach().reshape(-1) for p in params])
        old_loss = loss.item()
        accepted, new_loss, new_kl = 0.0, old_loss, 0.0
        for i in range(cfg.line_search_steps):
            candidate = start + cfg.backtrack_ratio**i * step
            _assign(params, candidate)
            with torch.no_grad():
                trial = self.post_distributions(inner, post, create_graph=False)
                trial_loss = float(self.outer_surrogate(trial, inner, post))
                trial_kl = float(self.outer_kl(old, trial, inner, post))
            if trial_loss < old_loss and trial_kl <= cfg.max_kl:
                accepted, new_loss, new_kl = cfg.backtrack_ratio**i, trial_loss, trial_kl
                break
        else:
            _assign(params, start)
        return {"loss/surrogate_before": old_loss, "loss/surrogate_after": new_loss, "loss/kl": new_kl, "loss/step_fraction": accepted}

    def clipped_update(self, inner: list[Rollouts], post: Rollouts) -> dict[str, float]:
        """PPO's clipped surrogate on the post-adaptation batch (MAML-PPO, multi-task PPO) or ProMP's,
        which adds an adaptive KL penalty between the old and new pre-adaptation policies."""
        cfg = self.config
        promp = cfg.method == "promp"
        clip, epochs, max_norm = (
            (cfg.promp.clip_ratio, cfg.promp.epochs, cfg.promp.max_grad_norm) if promp
            else (cfg.ppo.clip_ratio, cfg.ppo.epochs, cfg.ppo.max_grad_norm)
        )
        second_order = not cfg.inner.first_order
        params = self.policy.meta_parameters()
        pre_old = None
        if promp and inner:
            with torch.no_grad():
                pre_old = [tuple(x.clone() for x in self.policy.mean_log_std(self.policy.initial_adapted(), inner[0].obs[m]))
                           for m in range(post.obs.shape[0])]
        losses, kls = [], []
        for _ in range(epochs):
            dists = self.post_distributions(inner, post, create_graph=second_order)
            loss = self.outer_surrogate(dists, inner, post, clip=clip)
            if pre_old is not None:
                pre_new = [self.policy.mean_log_std(self.policy.initial_adapted(), inner[0].obs[m]) for m in range(post.obs.shape[0])]
                inner_kl = self.mean_kl(pre_old, pre_new, inner[0])
                loss = loss + self.kl_coef * inner_kl
                kls.append(inner_kl.item())
            self.optimizer.zero_grad()
            loss.backward()
            self._mask_grads(params)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
            losses.append(loss.item())
        out = {"loss/surrogate": float(np.mean(losses))}
        if kls:
            inner_kl = float(np.mean(kls))
            if inner_kl < cfg.promp.target_inner_kl / 1.5:
                self.kl_coef /= 2
            elif inner_kl > cfg.promp.target_inner_kl * 1.5:
                self.kl_coef *= 2
            out.update({"loss/inner_kl": inner_kl, "loss/kl_coef": self.kl_coef})
        return out

    def _mask_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Zero the gradient entries the outer update may not change (see :attr:`outer_mask`)."""
        i = 0
        for p in params:
            if p.grad is not None:
                p.grad.mul_(self.outer_mask[i : i + p.numel()].reshape(p.shape))
            i += p.numel()

    def reptile_update(self, inner: list[Rollouts], post: Rollouts) -> dict[str, float]:
        cfg = self.config.reptile
        size = cfg.meta_step_size * (1.0 - self.iteration / max(1, self.config.iterations) if cfg.anneal else 1.0)
        with torch.no_grad():
            phi0 = self.policy.initial_adapted().detach()
            adapted = torch.stack([self.adapt(phi0, inner, m, create_graph=False)[-1].detach() for m in range(post.obs.shape[0])])
            delta = adapted.mean(0) - phi0
            if not self.policy.adapts_context:
                delta = delta * self.outer_mask[: delta.numel()]
            self.policy.weights.add_(size * delta)
        return {"loss/reptile_step_norm": float(size * delta.norm()), "loss/meta_step_size": size}

    # ------------------------------------------------------------------------------ warm start
    def warm_start(self) -> dict[str, float]:
        """Clone ``warm_start.demonstrator`` (which knows each task) or ``warm_start.teacher`` (a
        controller that does not) into the unadapted policy.

        Round 0 records the demonstrator or teacher; each of the ``dagger_iterations`` after it lets
        the clone act (its mean action) and has the demonstrator or teacher label the states it reaches
        (DAgger), so the clone learns to recover from its own mistakes. A policy cannot see the task:
        cloned from a demonstrator it learns the demonstrator's average behaviour over tasks, a
        starting point from which the meta-objective has to learn what to change per task; cloned from
        a teacher it learns what the teacher does with the same observations.
        """
        ws = self.config.warm_start
        optimizer = torch.optim.Adam([self.policy.weights], lr=ws.lr)
        episodes = self.config.inner.episodes_per_step

        def collect(learner_acts: bool) -> list[Episode]:
            # The learner is frozen at this round's weights and observation statistics.
            learner = GradientTrials(self.policy, explore=False) if learner_acts else None
            tasks = self.tasks.sample(self.config.meta_batch_size, self.rng, "train")
            if ws.teacher:
                trials: EpisodePolicy = (
                    TeacherTrials(ws.teacher, ws.teacher_kwargs, self.interface) if learner is None
                    else DaggerTrials(ws.teacher, ws.teacher_kwargs, self.interface, learner)
                )
                return self.collect(trials, tasks, episodes)
            return self.collect(DemonstratorLabels(ws.demonstrator, learner), tasks, episodes)

        def imitate(data: list[Episode], first: bool) -> float:
            inputs, labels, weights = self.imitation_targets(data)
            if first:
                self.policy.obs_norm.update(inputs[:, : self.obs_dim])
            losses = []
            for _ in range(ws.epochs):
                for idx in torch.randperm(len(inputs)).split(256):
                    mean, _ = self.policy.mean_log_std(self.policy.initial_adapted(), inputs[idx])
                    w = weights[idx]
                    loss = (((mean - labels[idx]) ** 2) * w).sum() / w.sum().clamp(min=1.0)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
            return float(np.mean(losses[-20:]))

        return run_dagger(ws, collect, imitate)

    def imitation_targets(self, episodes: list[Episode]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(policy inputs [S, input_dim], labels [S, A], weights [S, A])`` over every step of
        ``episodes``. A demonstrator's extra ``label`` is the label. A teacher's physical command (extra
        ``teacher_command``) becomes the action that makes the policy's skill send it after the command
        that was really sent before (:meth:`~metarl_robot.skills.GraspForceSkill.imitation_labels`, with
        weight 0 where it is undefined), or without a skill the command divided by the action scale."""
        policy = self.policy
        inputs, labels, weights = [], [], []
        for e in episodes:
            if not plausible(np.asarray(e.obs, np.float32)):
                continue  # a simulator failure (see PLAUSIBLE_OBS)
            obs = torch.as_tensor(np.asarray(e.obs, np.float32))
            if "label" in e.extras:
                lab = torch.as_tensor(e.extras["label"])
                prev = torch.zeros(len(obs), self.act_dim)
                w = torch.ones_like(lab)
            else:
                commands = torch.as_tensor(e.extras["teacher_command"])
                if "prev_command" in e.extras:  # the learner acted (DAgger)
                    prev = torch.as_tensor(e.extras["prev_command"])
                else:  # the teacher acted: what it sent the step before
                    prev = torch.cat([torch.zeros(1, self.act_dim), commands[:-1]])
                lab, w = teacher_labels(policy, obs, commands, prev)
            inputs.append(policy.policy_inputs(obs, prev))
            labels.append(lab.to(torch.float32))
            weights.append(w.to(torch.float32))
        return torch.cat(inputs), torch.cat(labels), torch.cat(weights)

    # ------------------------------------------------------------------------------ metrics
    @staticmethod
    def batch_metrics(inner: list[Rollouts], post: Rollouts) -> dict[str, float]:
        out = {}
        for k, batch in enumerate([*inner, post]):
            out[f"return/step_{k}"] = float(batch.returns.mean())
            out[f"success/step_{k}"] = float(batch.success.mean())
        out["return/before_adaptation"] = out["return/step_0"]
        out["return/after_adaptation"] = out[f"return/step_{len(inner)}"]
        if post.returns.shape[1] > 1:  # the spread the robot's adaptation guard measures windows against
            out["return/within_task_sd"] = float(post.returns.std(axis=1, ddof=1).mean())
        return out

    def train_iteration(self) -> dict[str, float]:
        tasks, inner, post = self.collect_iteration()
        losses = self.update(inner, post, tasks)
        # The normaliser moves after the update, so the update saw the statistics the data were collected with.
        if self.config.update_obs_normalizer:
            first = inner[0] if inner else post
            self.policy.obs_norm.update(first.obs[first.mask > 0][:, : self.obs_dim])
        self.iteration += 1
        return {**self.batch_metrics(inner, post), **losses}

    @staticmethod
    def progress(metrics: dict[str, float]) -> dict[str, str]:
        return {"pre": f"{metrics['return/before_adaptation']:.1f}", "post": f"{metrics['return/after_adaptation']:.1f}"}

    def close(self) -> None:
        self.sampler.close()


def _assign(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    with torch.no_grad():
        i = 0
        for p in params:
            p.copy_(flat[i : i + p.numel()].reshape(p.shape))
            i += p.numel()


def conjugate_gradient(matvec, b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / torch.clamp(p @ ap, min=1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x.detach()


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> Path:
    """Meta-train, writing ``config.yaml``, TensorBoard logs (``tb/``) and ``checkpoints/last.safetensors``.

    With ``resume=True`` training continues from ``checkpoints/last.safetensors`` when it exists. Returns the
    final checkpoint's path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    algo = GradientMetaRL(config, run_dir)
    return run_training(algo, config, run_dir, resume=resume, progress=progress, desc=config.method_name)
