"""What one policy-gradient step from one window of 20 episodes can reach on 2D navigation, at best.

    python bench/nav_one_step_bound.py [--windows 10] [--goals 40]

The gradient methods' one-step return stops at 62–69% of the gap to the scripted optimum (BENCHMARKS.md,
"What one step learns"). This script asks whether any exploration scheme would let one step do much
better, with the learning part idealised away. Every policy below is a perfect controller: it drives the
point to a target at full speed (0.1 m per axis per step) and stays there; only how the target is chosen
differs. On each held-out goal of the navigation config's test split, for ``--windows`` independent
windows of 20 episodes:

* **one policy-gradient step over per-episode targets** (the best exploration a policy can have when
  what it explores is where to go: MAESN's per-episode latent, Gupta et al. 2018). Each episode drives
  to a target ``z ~ N(mu, sigma^2 I)``, ``mu`` at the start; the step moves ``mu`` by ``alpha sigma^2``
  times the likelihood-ratio gradient of the window's normalised episode returns, and the adapted
  policy drives to the new ``mu`` without noise. Reported for a grid of ``sigma`` and ``alpha``, and the
  best cell, chosen on these same goals (so it flatters the scheme);
* **the window's best target**: drive to the target of the window's best episode (a selection, not a
  gradient step; one step's information used as well as picking can);
* **one reward-model context step** (``--reward-model-steps N``): the step of ``policy.inner_loss:
  reward_model`` (a context moved to fit a meta-learned reward model to the window's rewards), its
  model meta-learned here on random-walk windows, the goal read off the adapted context by a decoder
  and driven to perfectly (:func:`reward_model_returns`): what the step identifies, with the policy
  idealised;
* **one episode, read exactly**: one exploring episode along a fixed path, the goal solved from the
  distances its rewards report along it (what a method that reads the rewards, e.g. a memory or
  context policy, could do after one episode).

Beside them, the bar: 80% of the gap from an unadapted return (``--unadapted``, default -36.0: the
one-step MAML-TRPO of BENCHMARKS.md) to the scripted optimum.

The dynamics are those of ``sim.navigation.Navigation2DEnv`` (move by the clipped command, reward minus
the distance after the move, stop within 0.01 m of the goal on both axes), vectorised here; the script
first checks them against the env on a few targets and stops if they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEP_M = 0.1
TOLERANCE_M = 0.01
HORIZON = 100


def drive_to(targets: np.ndarray, goal: np.ndarray, start: np.ndarray | None = None, horizon: int = HORIZON) -> np.ndarray:
    """Returns ``[n]`` of episodes that drive from ``start`` (the origin) to each of ``targets [n, 2]`` at
    full speed and stay, under the navigation env's reward and termination."""
    x = np.zeros_like(targets) if start is None else np.broadcast_to(start, targets.shape).copy()
    total = np.zeros(len(targets))
    alive = np.ones(len(targets), bool)
    for _ in range(horizon):
        x = x + np.clip(targets - x, -STEP_M, STEP_M)
        total -= np.linalg.norm(x - goal, axis=1) * alive
        alive &= ~np.all(np.abs(x - goal) < TOLERANCE_M, axis=1)
        if not alive.any():
            break
    return total


def check_against_env(goals: np.ndarray, rng: np.random.Generator) -> None:
    """Stop unless :func:`drive_to` gives the env's own return on a few goals and targets."""
    from sim.navigation import Navigation2DEnv
    from metarl_robot.tasks import TaskSpec

    env = Navigation2DEnv()
    for goal in goals[:3]:
        env.set_task(TaskSpec("navigation2d", {"goal_x": float(goal[0]), "goal_y": float(goal[1])}))
        for target in [goal, rng.uniform(-0.6, 0.6, 2)]:
            obs, _ = env.reset(seed=0)
            total, done = 0.0, False
            while not done:
                command = np.clip(target - obs[:2], -STEP_M, STEP_M) / STEP_M
                obs, reward, terminated, truncated, _ = env.step(command.astype(np.float32))
                total, done = total + reward, terminated or truncated
            mine = float(drive_to(target[None], goal)[0])
            if abs(mine - total) > 1e-3 * max(1.0, abs(total)):
                raise SystemExit(f"the vectorised dynamics differ from Navigation2DEnv: {mine} vs {total} (goal {goal}, target {target})")


def gradient_step_returns(goals, rng, sigmas, alphas, windows, episodes) -> np.ndarray:
    """``[len(sigmas), len(alphas)]`` mean return after one step over goals x windows."""
    out = np.zeros((len(sigmas), len(alphas)))
    for i, sigma in enumerate(sigmas):
        for goal in goals:
            for _ in range(windows):
                eps = rng.standard_normal((episodes, 2))
                returns = drive_to(sigma * eps, goal)
                adv = (returns - returns.mean()) / (returns.std() + 1e-8)
                # likelihood-ratio gradient of the mean return w.r.t. mu: mean(adv * eps) / sigma
                direction = (adv[:, None] * eps).mean(0) * sigma
                mus = np.asarray(alphas)[:, None] * direction[None]
                out[i] += drive_to(mus, goal)
        out[i] /= len(goals) * windows
    return out


def best_target_returns(goals, rng, sigma, windows, episodes) -> float:
    total = 0.0
    for goal in goals:
        for _ in range(windows):
            targets = sigma * rng.standard_normal((episodes, 2))
            total += drive_to(targets[np.argmax(drive_to(targets, goal))][None], goal)[0]
    return total / (len(goals) * windows)


def trilateration_returns(goals) -> tuple[float, float]:
    """Mean return of an exploring episode that drives to (0.3, 0), then to (0, 0.3), and stays, and of
    driving to the goal solved from the distances its rewards reported at the six points it moved
    through (``|p_i - g|^2 - |p_0 - g|^2`` is linear in ``g``: least squares)."""
    explore, exploit = 0.0, 0.0
    for goal in goals:
        x, positions, readings = np.zeros(2), [], []
        for target in (np.array([0.3, 0.0]), np.array([0.0, 0.3])):
            while np.abs(target - x).max() > 1e-12:
                x = x + np.clip(target - x, -STEP_M, STEP_M)
                positions.append(x.copy())
                readings.append(float(np.linalg.norm(x - goal)))  # the reward after the move, negated
        p, r = np.array(positions), np.array(readings)
        a = 2.0 * (p[1:] - p[0])
        b = r[0] ** 2 - r[1:] ** 2 + (p[1:] ** 2).sum(1) - (p[0] ** 2).sum()
        estimate = np.linalg.lstsq(a, b, rcond=None)[0]
        explore += -r.sum() - (HORIZON - len(r)) * r[-1]
        exploit += float(drive_to(estimate[None], goal)[0])
    return explore / len(goals), exploit / len(goals)


def random_walk_windows(goals: np.ndarray, rng: np.random.Generator, episodes: int):
    """One window per goal of ``episodes`` episodes of a policy that stands at the origin and explores
    with std 1 in normalised units (an untrained Gaussian policy): ``(obs, action, reward, mask)``
    tensors ``[goals, episodes, HORIZON, *]``, positions before each move and rewards after it; no
    stop at the goal (a random walk reaches within 0.01 m on both axes rarely, and the model does not
    care)."""
    import torch

    action = rng.standard_normal((len(goals), episodes, HORIZON, 2))
    move = np.clip(action, -1.0, 1.0) * STEP_M
    after = np.cumsum(move, axis=2)
    reward = -np.linalg.norm(after - goals[:, None, None, :], axis=-1)
    t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    return t(after - move), t(action), t(reward), torch.ones(reward.shape)


def reward_model_returns(goals: np.ndarray, rng: np.random.Generator, steps: int, episodes: int, context_dim: int = 8):
    """The reward-model context step (``policy.inner_loss: reward_model``), with only the policy
    idealised: the project's own model and step (``GradientPolicy``) meta-learned for ``steps`` Adam
    steps (lr 3e-3, 10 goals a step) on random-walk windows (:func:`random_walk_windows`) of training goals
    drawn uniformly from the navigation square; then, on fresh goals, a decoder (an MLP trained on 1200
    adapted contexts and their goals) reads the goal off the context adapted on one window, and a perfect
    controller drives to what it read. Returns ``(mean decoding error in m, mean return on the
    held-out goals)``: what a policy that acts on the adapted context perfectly would score."""
    import torch

    from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig

    torch.manual_seed(0)
    config = GradientPolicyConfig(hidden_sizes=(8,), context_dim=context_dim, inner_lr=1.0, inner_loss="reward_model",
                                  normalize_observations=False)
    policy = GradientPolicy(2, 2, [STEP_M, STEP_M], config)
    optimizer = torch.optim.Adam(policy.model_parameters(), lr=3e-3)

    def adapted(window, m, create_graph):
        obs, action, reward, mask = (x[m] for x in window)
        return policy.inner_step(policy.initial_adapted(), obs, action, reward, mask, create_graph=create_graph)

    for _ in range(steps):
        window = random_walk_windows(rng.uniform(-0.5, 0.5, (10, 2)), rng, episodes)
        loss = torch.stack([policy.model_loss(adapted(window, m, True), *(x[m] for x in window)) for m in range(10)]).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model_parameters(), 1.0)
        optimizer.step()
    train_goals = rng.uniform(-0.5, 0.5, (1200, 2))
    contexts = []
    for chunk in (train_goals[i : i + 100] for i in range(0, len(train_goals), 100)):
        window = random_walk_windows(chunk, rng, episodes)
        contexts += [adapted(window, m, False).detach() for m in range(len(chunk))]
    window = random_walk_windows(goals, rng, episodes)
    test = torch.stack([adapted(window, m, False).detach() for m in range(len(goals))])
    x = torch.stack(contexts)
    mean, std = x.mean(0), x.std(0) + 1e-8
    decoder = torch.nn.Sequential(torch.nn.Linear(context_dim, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
                                  torch.nn.Tanh(), torch.nn.Linear(128, 2))
    opt = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    target = torch.as_tensor(train_goals, dtype=torch.float32)
    for _ in range(3000):
        loss = ((decoder((x - mean) / std) - target) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        read = decoder((test - mean) / std).double().numpy()
    error = float(np.linalg.norm(read - goals, axis=1).mean())
    return error, float(np.mean([drive_to(r[None], g)[0] for r, g in zip(read, goals)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "maml_navigation.yaml",
                        help="the navigation config whose test goals to use (default: %(default)s)")
    parser.add_argument("--goals", type=int, default=40)
    parser.add_argument("--windows", type=int, default=10, help="independent windows per goal")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per window (the MAML paper's 20)")
    parser.add_argument("--unadapted", type=float, default=-36.0, help="the unadapted return the 80%% bar starts from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reward-model-steps", type=int, default=0,
                        help="also meta-learn the reward-model context step for this many Adam steps and score "
                             "a perfect controller on its adapted context (0: skip; 1500 takes about 4 min)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.goals < 1 or args.windows < 1 or args.episodes < 2:
        parser.error("--goals and --windows must be >= 1 and --episodes >= 2")
    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.algos.common import build_task_distribution
    from metarl_robot.algos.gradient import TrainConfig
    from metarl_robot.config import ConfigError, load_config, to_dict

    start = time.perf_counter()
    try:
        config = load_config(TrainConfig, args.config)
    except ConfigError as err:
        parser.error(str(err))
    tasks = build_task_distribution(to_dict(config.tasks)).split("test")[: args.goals]
    if not tasks or "goal_x" not in tasks[0].params:
        parser.error(f"{args.config} has no navigation test goals; give a 2D navigation config")
    goals = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in tasks], np.float64)
    rng = np.random.default_rng(args.seed)
    check_against_env(goals, rng)

    optimum = float(np.mean([drive_to(g[None], g)[0] for g in goals]))
    still = float(np.mean([drive_to(np.zeros((1, 2)), g)[0] for g in goals]))
    bar = args.unadapted + 0.8 * (optimum - args.unadapted)
    sigmas, alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.7], [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    grid = gradient_step_returns(goals, rng, sigmas, alphas, args.windows, args.episodes)
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    best_pick = {s: best_target_returns(goals, rng, s, args.windows, args.episodes) for s in (0.2, 0.3, 0.4)}
    explore, exploit = trilateration_returns(goals)
    model_rows = []
    if args.reward_model_steps > 0:
        error, value = reward_model_returns(goals, rng, args.reward_model_steps, args.episodes)
        model_rows = [(f"one reward-model context step ({args.reward_model_steps} model steps), a perfect controller to "
                       f"the goal read off the context (mean error {error:.3f} m)", value)]

    print(f"\n{len(goals)} held-out goals of {args.config.name}, {args.windows} windows of {args.episodes} episodes each; "
          f"return per episode (perfect controllers, see the docstring)\n")
    print("one policy-gradient step over per-episode targets: return after the step")
    print("| sigma \\ alpha | " + " | ".join(f"{a:g}" for a in alphas) + " |")
    print("|---" * (len(alphas) + 1) + "|")
    for k, s in enumerate(sigmas):
        print(f"| {s:g} m | " + " | ".join(f"{v:.1f}" for v in grid[k]) + " |")
    rows = [
        ("scripted optimum (drives to the goal)", optimum),
        ("standing still", still),
        (f"80% bar from an unadapted {args.unadapted:g}", bar),
        (f"one gradient step, best cell (sigma {sigmas[i]:g} m, alpha {alphas[j]:g}; chosen on these goals)", float(grid[i, j])),
        *[(f"the window's best target (sigma {s:g} m)", v) for s, v in best_pick.items()],
        ("one exploring episode along a fixed path (to (0.3, 0), then (0, 0.3))", explore),
        ("then drive to the goal solved from its rewards", exploit),
        *model_rows,
    ]
    print("\n| policy | return |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"sigmas": sigmas, "alphas": alphas, "grid": grid.tolist(),
                                        "rows": dict(rows), "goals": len(goals), "windows": args.windows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
