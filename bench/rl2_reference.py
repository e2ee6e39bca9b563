"""RL²'s published checks: classical baselines on Bernoulli bandits and random tabular MDPs, computed in
one run beside the paper's figures (issue 12, item 6).

Duan et al. (2016), "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", Tables 1 and 2:
bandits with k = 5 arms (success probabilities i.i.d. uniform on [0, 1]) and n = 10, 100, 500 pulls per
trial; random MDPs with 10 states, 5 actions, episodes of 10 steps and n = 10, 25 episodes per trial.
Every baseline here plays the same tasks with the same env randomness (``sim.bandit_baselines``: a batch
simulator checked equal to the envs' dynamics, and checked again at the start of this run).

    .venv/bin/python bench/rl2_reference.py --out runs/rl2_reference.json
    .venv/bin/python bench/rl2_reference.py --rl2-bundle bandit_n100=runs/rl2_bandits/bundle

The Gittins policy uses the discounted Gittins index; its discount is chosen per n on the validation
split (other tasks, other seeds) from ``--gittins-discounts``, then evaluated on the test split.

``--rl2-bundle [SETTING=]DIR`` (repeatable) adds an RL² row evaluated through
``metarl_robot.runtime.load_controller`` and ``metarl_robot.evaluation.evaluate`` on the first
``--rl2-trials`` test tasks of SETTING (one of bandit_n10, bandit_n100, bandit_n500, mdp_n10,
mdp_n25; without SETTING, every setting whose observation size matches the bundle). A bundle that is
missing or cannot be loaded is skipped with a line saying why.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Duan et al. 2016, Table 1 (k = 5 rows) and Table 2, as recalled; "sure" says how firmly.
# The tables average 1000 instances per cell (Table 1's caption, as recalled; assumed for Table 2).
PAPER: dict[str, dict[str, tuple[float, bool]]] = {
    "bandit_n10": {"random": (5.0, True), "Gittins": (6.6, True), "Thompson sampling": (5.7, True), "RL²": (6.7, True)},
    "bandit_n100": {"random": (49.9, True), "Gittins": (78.3, True), "Thompson sampling": (74.7, True), "RL²": (78.7, True)},
    "bandit_n500": {"random": (249.8, True), "Gittins": (405.8, True), "Thompson sampling": (402.0, True), "RL²": (401.6, True)},
    "mdp_n10": {"random": (100.1, True), "PSRL": (138.1, True), "RL²": (156.2, True)},
    "mdp_n25": {"random": (250.2, True), "PSRL": (408.8, True), "RL²": (445.7, True)},
}
PAPER_TRIALS = 1000

SETTINGS: dict[str, dict[str, Any]] = {
    "bandit_n10": {"kind": "bandit", "num_pulls": 10},
    "bandit_n100": {"kind": "bandit", "num_pulls": 100},
    "bandit_n500": {"kind": "bandit", "num_pulls": 500},
    "mdp_n10": {"kind": "mdp", "episodes": 10},
    "mdp_n25": {"kind": "mdp", "episodes": 25},
}
NUM_ARMS, NUM_STATES, NUM_ACTIONS, EPISODE_LENGTH = 5, 10, 5, 10


def stats(totals: np.ndarray) -> dict[str, float]:
    totals = np.asarray(totals, dtype=np.float64)
    std = float(totals.std(ddof=1))
    return {"mean": float(totals.mean()), "ci95": 1.96 * std / math.sqrt(len(totals)), "std": std, "trials": len(totals)}


def reset_seeds(seed: int, stream: int, n: int) -> list[int]:
    return [int(s) for s in np.random.default_rng([seed, stream]).integers(2**31, size=n)]


# --------------------------------------------------------------------------- setup checks


def check_setup(args) -> list[str]:
    """Compare the registered envs' defaults and the distributions with the paper's setup; check that
    the batch simulator reproduces the envs on a few trials. Returns lines to print (and raises on a
    simulator mismatch)."""
    import sim  # noqa: F401  (registers the envs)
    from metarl_robot.envs import make_meta_env
    from metarl_robot.tasks import Uniform
    from sim import bandit_baselines as bb
    from sim.bandits import bandit_distribution, mdp_arrays, tabular_mdp_distribution

    lines = []
    bandit = make_meta_env("metarl/BernoulliBandit-v0", unwrapped=True)
    mdp = make_meta_env("metarl/TabularMDP-v0", unwrapped=True)
    lines.append(
        f"env defaults: BernoulliBandit-v0 num_arms={bandit.num_arms} num_pulls={bandit.num_pulls}; TabularMDP-v0 "
        f"num_states={mdp.num_states} num_actions={mdp.num_actions} episode_length={mdp.episode_length} "
        f"episodes_per_trial={mdp.episodes_per_trial} (n is set per setting below)"
    )
    dist = bandit_distribution(seed=args.seed, num_train=1, num_test=1, num_arms=NUM_ARMS)
    uniform = len(dist.factors) == NUM_ARMS and all(
        isinstance(f, Uniform) and (f.low, f.high, f.log) == (0.0, 1.0, False) for f in dist.factors.values()
    )
    tasks = tabular_mdp_distribution(seed=args.seed + 1, num_train=400, num_test=0).train_tasks
    arrays = [mdp_arrays(t) for t in tasks]
    r = np.stack([a[1] for a in arrays])
    p = np.stack([a[0] for a in arrays])
    lines.append(
        f"bandit arm probabilities ~ Uniform(0, 1): {'yes' if uniform else 'NO'}; "
        f"MDP mean rewards over 400 drawn MDPs: mean {r.mean():.3f}, std {r.std():.3f} (paper: N(1, 1)); "
        f"transition probabilities: mean {p.mean():.3f}, variance {p.var():.4f} "
        f"(flat Dirichlet over 10 states: 0.100, {0.1 * 0.9 / 11:.4f}); step reward N(R[s, a], 1) in the env"
    )
    # The simulator against the envs, policy by policy, on a few trials.
    gym_bandit = make_meta_env("metarl/BernoulliBandit-v0", {"num_arms": NUM_ARMS, "num_pulls": 60}, unwrapped=True)
    gym_mdp = make_meta_env("metarl/TabularMDP-v0", {"episodes_per_trial": 4}, unwrapped=True)
    btasks = bandit_distribution(seed=args.seed + 2, num_train=3, num_test=0, num_arms=NUM_ARMS).train_tasks
    checked = 0
    for policy in (bb.RandomBandit(), bb.ThompsonSampling(), bb.UCB1(), bb.GittinsIndexPolicy(0.95)):
        for i, task in enumerate(btasks):
            gym_bandit.set_task(task)
            a, rew = bb.play_bandit_env(policy, gym_bandit, seed=1000 + i, policy_seed=i)
            res = bb.simulate_bandits(policy, bb.BanditBatch.from_tasks([task], [1000 + i], 60), seed=i)
            if not (np.array_equal(a, res.actions[0]) and np.array_equal(rew, res.rewards[0])):
                raise RuntimeError(f"the batch simulator differs from BernoulliBandit-v0 for {policy.name}, trial {i}")
            checked += 1
    for policy in (bb.RandomMDPPolicy(), bb.PSRL()):
        for i, task in enumerate(tasks[:2]):
            gym_mdp.set_task(task)
            a, rew = bb.play_mdp_env(policy, gym_mdp, seed=2000 + i, policy_seed=i)
            res = bb.simulate_mdps(policy, bb.MDPBatch.from_tasks([task], [2000 + i], EPISODE_LENGTH, 4), seed=i)
            if not (np.array_equal(a, res.actions[0]) and np.array_equal(rew, res.rewards[0])):
                raise RuntimeError(f"the batch simulator differs from TabularMDP-v0 for {policy.name}, trial {i}")
            checked += 1
    lines.append(f"batch simulator == envs (actions and rewards, bit for bit): {checked} trials checked, all equal")
    return lines


# --------------------------------------------------------------------------- RL² bundles


def parse_bundles(specs: list[str]) -> list[tuple[str | None, Path]]:
    out = []
    for spec in specs:
        setting, sep, path = spec.partition("=")
        if sep and setting in SETTINGS:
            out.append((setting, Path(path)))
        else:
            out.append((None, Path(spec)))
    return out


def _obs_dim(setting: str) -> int:
    """The env's observation size: previous arm one-hot and reward; or state, previous action, reward, flag."""
    return NUM_ARMS + 1 if SETTINGS[setting]["kind"] == "bandit" else NUM_STATES + NUM_ACTIONS + 2


def rl2_rows(bundles: list[tuple[str | None, Path]], tasks_of: dict[str, list], args) -> tuple[dict, list[str]]:
    """Evaluate each RL² bundle on its settings; returns ``{setting: stats}`` and lines to print."""
    rows: dict[str, dict] = {}
    lines: list[str] = []
    for setting, path in bundles:
        if not (path / "manifest.json").is_file():
            lines.append(f"RL² bundle {path}: skipped, no manifest.json there (not trained/exported yet?)")
            continue
        try:
            from metarl_robot.evaluation import evaluate
            from metarl_robot.envs import make_meta_env
            from metarl_robot.runtime import load_controller

            load_controller(path, providers=["cpu"], seed=0)
        except Exception as exc:  # a bundle this runtime cannot open is reported, not fatal
            lines.append(f"RL² bundle {path}: skipped, it does not load ({type(exc).__name__}: {exc})")
            continue
        obs_dim = int(json.loads((path / "manifest.json").read_text())["observation"]["dim"])
        if setting and setting not in tasks_of:
            lines.append(f"RL² bundle {path}: skipped, {setting} is not among this run's --settings")
            continue
        wanted = [setting] if setting else [name for name in tasks_of if obs_dim == _obs_dim(name)]
        if not wanted:
            lines.append(f"RL² bundle {path}: skipped, its observation size {obs_dim} fits no setting here")
            continue
        if setting and obs_dim != _obs_dim(setting):
            lines.append(f"RL² bundle {path}: skipped, observation size {obs_dim} but {setting} has {_obs_dim(setting)}")
            continue
        trained_env = str(json.loads((path / "manifest.json").read_text())["provenance"].get("config", {}).get("env_id", ""))
        for name in wanted:
            spec = SETTINGS[name]
            if spec["kind"] == "bandit":
                env_id, env_kwargs = "sim:metarl/BernoulliBandit-v0", {"num_arms": NUM_ARMS, "num_pulls": spec["num_pulls"]}
            else:
                env_id, env_kwargs = "sim:metarl/TabularMDP-v0", {"episodes_per_trial": spec["episodes"]}
            if trained_env.endswith("DiscreteScores-v0"):
                # The bundle was trained through the adapter that pulls the arm of the highest score.
                env = make_meta_env(trained_env, {"env_id": env_id, "env_kwargs": env_kwargs}, unwrapped=True)
            else:
                env = make_meta_env(env_id, env_kwargs, unwrapped=True)
            tasks = tasks_of[name][: args.rl2_trials]
            start = time.time()
            try:
                result = evaluate(
                    functools.partial(load_controller, str(path), providers=["cpu"]), env, tasks,
                    rounds=1, episodes_per_round=1, seed=args.seed,
                )
            except Exception as exc:
                lines.append(f"RL² bundle {path} on {name}: failed during evaluation ({type(exc).__name__}: {exc})")
                continue
            totals = np.array([t["returns"][0] for t in result["tasks"]])
            rows[name] = {**stats(totals), "bundle": str(path), "wall_s": time.time() - start}
            lines.append(f"RL² bundle {path} on {name}: {rows[name]['mean']:.1f} ± {rows[name]['ci95']:.1f} ({len(tasks)} trials)")
    return rows, lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bandit-trials", type=int, default=10000)
    parser.add_argument("--mdp-trials", type=int, default=5000)
    parser.add_argument("--tune-trials", type=int, default=2000, help="validation trials per discount for the Gittins policy")
    parser.add_argument(
        "--gittins-discounts", type=float, nargs="+",
        default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999],
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rl2-bundle", action="append", default=[], metavar="[SETTING=]DIR")
    parser.add_argument("--rl2-trials", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from sim import bandit_baselines as bb
    from sim.bandits import bandit_distribution, tabular_mdp_distribution

    wall0 = time.time()
    print(f"RL² reference checks, classical baselines; seed {args.seed}; {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}")
    setup_lines = check_setup(args)
    for line in setup_lines:
        print("  " + line)

    needs_bandits = any(SETTINGS[s]["kind"] == "bandit" for s in args.settings)
    needs_mdps = any(SETTINGS[s]["kind"] == "mdp" for s in args.settings)
    tasks_of: dict[str, list] = {}
    if needs_bandits:
        dist = bandit_distribution(
            seed=args.seed, num_train=1, num_test=args.bandit_trials, num_validation=args.tune_trials, num_arms=NUM_ARMS
        )
        bandit_test, bandit_val = dist.test_tasks, dist.validation_tasks
    if needs_mdps:
        mdp_test = tabular_mdp_distribution(seed=args.seed, num_train=1, num_test=args.mdp_trials).test_tasks

    results: dict[str, Any] = {}
    max_pulls = max([SETTINGS[s].get("num_pulls", 0) for s in args.settings])
    for setting in args.settings:
        spec = SETTINGS[setting]
        start = time.time()
        rows: dict[str, dict] = {}
        extra: dict[str, Any] = {}
        if spec["kind"] == "bandit":
            n = spec["num_pulls"]
            tasks_of[setting] = bandit_test
            val = bb.BanditBatch.from_tasks(bandit_val, reset_seeds(args.seed, 10 + n, len(bandit_val)), n)
            sweep = {}
            for gamma in args.gittins_discounts:
                policy = bb.GittinsIndexPolicy(gamma, table_pulls=max_pulls)
                sweep[gamma] = float(bb.simulate_bandits(policy, val, seed=args.seed).totals.mean())
            best = max(sweep, key=sweep.get)
            extra["gittins_validation_sweep"] = {str(g): v for g, v in sweep.items()}
            extra["gittins_discount"] = best
            batch = bb.BanditBatch.from_tasks(bandit_test, reset_seeds(args.seed, n, len(bandit_test)), n)
            policies = [bb.RandomBandit(), bb.ThompsonSampling(), bb.UCB1(), bb.GittinsIndexPolicy(best, table_pulls=max_pulls)]
            for policy in policies:
                result = bb.simulate_bandits(policy, batch, seed=args.seed + 1)
                rows[policy.name] = {**stats(result.totals), "expected_reward": stats(result.expected.sum(axis=1))}
            rows["oracle (best arm known)"] = {**stats(batch.oracle_totals()), "note": "expected value n * max p"}
            title = f"Bernoulli bandits, k={NUM_ARMS}, n={n} pulls"
        else:
            eps = spec["episodes"]
            tasks_of[setting] = mdp_test
            batch = bb.MDPBatch.from_tasks(mdp_test, reset_seeds(args.seed, 1000 + eps, len(mdp_test)), EPISODE_LENGTH, eps)
            policies = {
                "random": bb.RandomMDPPolicy(),
                "PSRL, prior N(1, 1)": bb.PSRL(),
                "PSRL, prior N(0, 1)": bb.PSRL(reward_prior_mean=0.0),
            }
            for name, policy in policies.items():
                rows[name] = stats(bb.simulate_mdps(policy, batch, seed=args.seed + 1).totals)
            rows["oracle (MDP known)"] = {**stats(bb.optimal_trial_values(batch)), "note": "expected value n * optimal_episode_value"}
            title = f"random tabular MDPs, {NUM_STATES} states, {NUM_ACTIONS} actions, T={EPISODE_LENGTH}, n={eps} episodes"
        results[setting] = {"title": title, "rows": rows, "wall_s": time.time() - start, **extra}

    bundles = parse_bundles(args.rl2_bundle)
    rl2, rl2_lines = rl2_rows(bundles, tasks_of, args) if bundles else ({}, [])
    if not bundles:
        rl2_lines = ["RL²: no --rl2-bundle given; RL² rows show the paper's figures only (not yet trained here)"]

    # ------------------------------------------------------------------ report
    for setting, res in results.items():
        paper = PAPER[setting]
        trials = next(iter(res["rows"].values()))["trials"]
        print(f"\n{res['title']}  ({trials} test trials, {res['wall_s']:.1f} s)")
        if "gittins_discount" in res:
            sweep = ", ".join(f"{g}: {v:.2f}" for g, v in res["gittins_validation_sweep"].items())
            print(f"  Gittins discount {res['gittins_discount']} chosen on {args.tune_trials} validation trials ({sweep})")
        print(f"  {'policy':<28} {'here: mean ± 95% CI':>22} {'paper':>8} {'here − paper':>22}")
        if setting in rl2:
            res["rows"][f"RL² ({Path(rl2[setting]['bundle']).name})"] = rl2[setting]
        for name, row in res["rows"].items():
            key = name.split(" (")[0].split(",")[0]
            figure = paper.get(key)
            if figure is None:
                print(f"  {name:<28} {row['mean']:>13.2f} ± {row['ci95']:<6.2f} {'—':>8}")
                continue
            # The paper's noise is estimated from this run's spread over PAPER_TRIALS trials; its figures
            # are rounded to 0.1, which adds up to 0.05.
            se = math.hypot(row["ci95"] / 1.96, row["std"] / math.sqrt(PAPER_TRIALS))
            diff = row["mean"] - figure[0]
            row["paper"] = figure[0]
            row["diff_vs_paper"] = diff
            row["diff_ci95"] = 1.96 * se
            row["within_noise"] = abs(diff) <= 1.96 * se + 0.05
            verdict = "within noise" if row["within_noise"] else ("ABOVE the paper" if diff > 0 else "BELOW the paper")
            print(f"  {name:<28} {row['mean']:>13.2f} ± {row['ci95']:<6.2f} {figure[0]:>8.1f} {diff:>+9.2f} ± {1.96 * se:<5.2f} {verdict}")
        if setting not in rl2:
            res["rows"]["RL²"] = {"paper": paper["RL²"][0], "status": "not yet trained here"}
            print(f"  {'RL²':<28} {'not yet trained here':>22} {paper['RL²'][0]:>8.1f}")
    print()
    for line in rl2_lines:
        print(line)
    wall = time.time() - wall0
    print(f"wall time: {wall:.1f} s")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "paper": "Duan et al. 2016, RL², Tables 1 (k=5) and 2",
            "paper_trials_assumed": PAPER_TRIALS,
            "seed": args.seed,
            "bandit_trials": args.bandit_trials,
            "mdp_trials": args.mdp_trials,
            "tune_trials": args.tune_trials,
            "setup_checks": setup_lines,
            "rl2": rl2_lines,
            "settings": results,
            "wall_s": wall,
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
