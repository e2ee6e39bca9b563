"""Why a reward-model context step helps once and then hurts: what the second step sees and does.

    python bench/context_later_steps.py [--checkpoint models/cavia_imitation_navigation/checkpoint.safetensors]
                                        [--goals 20] [--seed 1]

For a checkpoint of ``policy.inner_loss: reward_model`` (a context moved to fit a meta-learned reward
model to a window's rewards), on the first ``--goals`` goals of its config's test split, with the
training loop's own sampling (20 stochastic episodes per window):

1. window 1 with the unadapted context ``c0``; one step gives ``c1``; window 2 with ``c1``;
2. the reward model's squared error on each window at ``c0``, ``c1`` and after a second step from ``c1``
   on window 2 taken at ``s`` times the learned step size, with the return of a window at that context;
3. a three-step chain in which each step backtracks to the multiple ``s`` in {1, 1/2, ..., 1/256, 0}
   that fits the window best (a line search on the step's own loss);
4. the return of ``c1``'s mean action (no exploration noise) beside its stochastic return.

Prints one line per measurement; nothing is trained or written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "models/cavia_imitation_navigation/checkpoint.safetensors"))
    parser.add_argument("--goals", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.gradient import TrainConfig
    from metarl_robot.algos.gradient.algo import GradientMetaRL
    from metarl_robot.algos.gradient.rollout import GradientTrials
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.config import load_config

    _, data = load_checkpoint(args.checkpoint)
    config = load_config(TrainConfig, {**data["config"], "seed": args.seed})
    if config.policy.inner_loss != "reward_model":
        parser.error(f"{args.checkpoint} adapts with inner_loss {config.policy.inner_loss!r}; this bench reads "
                     "reward-model context steps (policy.inner_loss: reward_model)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        shutil.copy(args.checkpoint, Path(tmp) / "checkpoints" / "last.safetensors")
        algo = GradientMetaRL(config, Path(tmp))
        algo.restore()
    policy = algo.policy
    tasks = algo.tasks.split("test")[: args.goals]
    n = len(tasks)
    lr = policy.inner_lr.detach().clone()

    def step(phis, batch, scale=1.0):
        policy.inner_lr.data = lr * scale
        try:
            return torch.stack([algo.adapt(phis[m], [batch], m, create_graph=False)[-1].detach() for m in range(n)])
        finally:
            policy.inner_lr.data = lr.clone()

    def model_loss(phis, batch) -> list[float]:
        with torch.no_grad():
            return [policy.model_loss(phis[m], batch.obs[m], batch.actions[m], batch.rewards[m], batch.mask[m]).item()
                    for m in range(n)]

    def window(phis):
        return algo.rollout(tasks, phis)

    c0 = policy.initial_adapted().detach().expand(n, -1).clone()
    w1 = window(c0)
    c1 = step(c0, w1)
    w2 = window(c1)
    print(f"{n} goals; return of window 1 (c0) {w1.returns.mean():.2f}, window 2 (c1) {w2.returns.mean():.2f}")
    print(f"model error, window 1: at c0 {np.mean(model_loss(c0, w1)):.5f}, at c1 {np.mean(model_loss(c1, w1)):.5f}; "
          f"window 2 at c1 {np.mean(model_loss(c1, w2)):.5f}")
    for scale in (1.0, 0.5, 0.25, 0.1, 0.03, 0.01):
        c2 = step(c1, w2, scale)
        print(f"second step x {scale:<4}: model error window 2 {np.mean(model_loss(c2, w2)):.5f}, window 1 "
              f"{np.mean(model_loss(c2, w1)):.5f}; |c2 - c1| {float((c2 - c1).norm(dim=1).mean()):.3f}; "
              f"return {window(c2).returns.mean():.2f}")

    scales = torch.tensor([2.0**-k for k in range(9)] + [0.0])
    phis, returns, picks = c0, [float(w1.returns.mean())], []
    batch = w1
    for _ in range(3):
        candidates = [step(phis, batch, float(s)) for s in scales]
        errors = np.array([model_loss(c, batch) for c in candidates])  # [scales, goals]
        best = errors.argmin(0)
        phis = torch.stack([candidates[int(best[m])][m] for m in range(n)])
        picks.append(float(np.median(scales.numpy()[best])))
        batch = window(phis)
        returns.append(float(batch.returns.mean()))
    print("line-searched chain, return after 0..3 steps: " + ", ".join(f"{r:.2f}" for r in returns)
          + "; median chosen multiple per step: " + ", ".join(f"{p:g}" for p in picks))

    mean_episodes = algo.collect(GradientTrials(policy, explore=False), tasks, 5, c1)
    print(f"c1's mean action: return {np.mean([e.total_reward for e in mean_episodes]):.2f} "
          f"(stochastic, window 2: {w2.returns.mean():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
