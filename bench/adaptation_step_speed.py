"""Speed of one gradient adaptation step: the exported ONNX graph in onnxruntime against PyTorch.

    python bench/adaptation_step_speed.py [--iterations 300] [--checkpoint CKPT | --bundle BUNDLE]

Without arguments it exports freshly initialised 64x64 tanh GradientPolicies at three sizes: MAML's 2-D
navigation (obs 2, act 2, 20 episodes of 100 steps) and two grasp sizes (sim/grasp.py: obs 10, act 4,
30-step episodes, 8 per step; and a wider obs 24, act 4, 8 x 60 batch). For each, on the same random
on-policy batch, it times in round-robin blocks of 20 back-to-back calls (so machine load hits every
column alike while each call runs warm):

* onnxruntime running ``adapt.onnx`` (the advantages from the rewards, then the step) with the
  runtime's session options (CPU EP, all graph optimisations, one thread),
* the same computation in PyTorch: the numpy advantages, then the step eagerly with ``torch.func``
  (``adaptation_step(policy)``, float32, ``torch.set_num_threads(1)``), the function the graph's step
  was traced from,
* the ``torch.func`` step alone (advantages given) and PyTorch's autograd ``GradientPolicy.inner_step``
  alone (what training calls), for reference;

and, once per block, each right after a controller collected the batch through ``act``/``observe``
(as on the robot, where ``adapt()`` follows the control loop, not another ``adapt()``):

* the bare graph on the batch the controller holds,
* the runtime's whole ``GradientController.adapt()``.

It reports the median and p90 in microseconds, onnxruntime's speed-up over each PyTorch column,
``adapt()`` over the graph (timed alike, and against the warm graph), and the largest difference
from float64 PyTorch after ``CHAINED_STEPS`` chained steps (each onnxruntime output fed back as the
next input). ``--opt-levels`` adds a table of onnxruntime graph optimisation levels; ``--profile`` a
table of where the adapt graph spends its time (onnxruntime's own profiler, kernel time per operator
type, summed over the run; the profiler's overhead inflates every row alike).
"""

from __future__ import annotations

import os

# One thread everywhere, as on the robot: numpy's BLAS (the advantage baseline's least squares) would
# otherwise start a thread pool that, on a busy machine, costs more than the step itself.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SIZES = {
    "nav2d (MAML)": {"obs_dim": 2, "act_dim": 2, "episodes": 20, "max_episode_steps": 100},
    "grasp (sim/grasp.py)": {"obs_dim": 10, "act_dim": 4, "episodes": 8, "max_episode_steps": 30},
    "grasp, wide obs": {"obs_dim": 24, "act_dim": 4, "episodes": 8, "max_episode_steps": 60},
}


def make_checkpoint(path: Path, obs_dim: int, act_dim: int, episodes: int, max_episode_steps: int) -> Path:
    import torch

    from metarl_robot.checkpoint import save_checkpoint
    from metarl_robot.gradient_policy import GradientPolicy, GradientPolicyConfig

    torch.manual_seed(0)
    policy = GradientPolicy(obs_dim, act_dim, [1.0] * act_dim, GradientPolicyConfig(hidden_sizes=(64, 64)))
    with torch.no_grad():
        policy.obs_norm.update(torch.randn(1000, obs_dim) * 2.0 + 1.0)
    interface = {
        "control_rate_hz": 10.0,
        "joint_names": [],
        "observation_layout": [{"name": "obs", "source": "bench", "size": obs_dim}],
        "action": {"mode": "bench", "names": [f"a{i}" for i in range(act_dim)], "units": ["1"] * act_dim},
    }
    adaptation = {
        "kind": "gradient_step",
        "steps": 1,
        "episodes_per_step": episodes,
        "max_episode_steps": max_episode_steps,
        "cadence": "episodes",
        "reward_source": {"type": "topic", "topic": "reward"},
        "advantages": {"gamma": 0.99, "gae_lambda": 1.0, "normalize": True, "baseline_ridge": 1e-5},
    }
    return save_checkpoint(path, policy.eval(), method="maml_trpo", interface=interface, adaptation=adaptation)


def percentiles_us(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50) * 1e6), float(np.percentile(samples, 90) * 1e6)


def profile_graph(path: Path, batch: dict, iterations: int) -> dict[str, tuple[float, int]]:
    """Kernel microseconds per call and node count per operator type (float64 nodes counted apart)."""
    import collections
    import json

    import onnxruntime

    from metarl_robot.runtime import default_session_options

    options = default_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="adapt_profile.")) / "adapt")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(iterations):
        session.run(None, batch)
    events = json.loads(Path(session.end_profiling()).read_text())
    micros: dict[str, float] = collections.defaultdict(float)
    nodes: dict[str, set] = collections.defaultdict(set)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            shapes = json.dumps(event["args"].get("input_type_shape", []))
            key = event["args"].get("op_name", "?") + (" (float64)" if '"double"' in shapes else "")
            micros[key] += event["dur"] / iterations
            nodes[key].add(event["name"])
    return {key: (micros[key], len(nodes[key])) for key in sorted(micros, key=micros.get, reverse=True)}


MOVEMENT = ("Reshape", "Pad", "Expand", "Slice", "Concat", "Split", "Transpose", "Unsqueeze", "Squeeze", "Cast", "Gather", "Identity")


def profile_shares(profile: dict[str, tuple[float, int]]) -> dict[str, float]:
    """The profiled kernel time in four groups: float32 matrix products, float64 nodes (the advantages
    and the baseline's solve), data movement, and the rest (elementwise and reductions in float32)."""
    total = sum(us for us, _ in profile.values()) or 1.0
    groups = {"float32 matrix products": 0.0, "float64 (advantages, baseline)": 0.0, "data movement": 0.0, "other float32": 0.0}
    for op, (us, _) in profile.items():
        if op.endswith("(float64)"):
            groups["float64 (advantages, baseline)"] += us
        elif op in ("FusedMatMul", "Gemm", "MatMul"):
            groups["float32 matrix products"] += us
        elif op in MOVEMENT:
            groups["data movement"] += us
        else:
            groups["other float32"] += us
    return {group: us / total for group, us in groups.items()}


def bench_bundle(name: str, bundle: Path, checkpoint: Path | None, iterations: int, opt_levels: bool, profile: bool = False) -> dict:
    import onnxruntime
    import torch

    from metarl_robot.families import gradient_torch as gradient_export
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.gradient_policy import adaptation_step
    from metarl_robot.runtime import GradientController, default_session_options, load_bundle
    from metarl_robot.runtime.advantages import compute_advantages

    spec = load_bundle(bundle)
    controller = GradientController(spec, ["cpu"], seed=0)
    n, t = controller.episodes_per_step, controller.max_episode_steps
    config = controller.advantage_config
    session = controller._adapt_session  # the session the runtime adapts with
    policy = load_checkpoint(checkpoint)[0] if checkpoint is not None else None

    rng = np.random.default_rng(0)
    if policy is not None:
        batch = gradient_export.sample_inputs(policy, "adapt", rng, episodes=n, max_episode_steps=t, on_policy=True)
    else:
        batch = {
            "params": controller.initial_params,
            "obs": rng.normal(size=(n, t, controller.obs_dim)).astype(np.float32),
            "prev_command": np.zeros((n, t, controller.act_dim), np.float32),
            "action": rng.normal(size=(n, t, controller.act_dim)).astype(np.float32),
            "reward": rng.normal(size=(n, t)).astype(np.float32),
            "mask": np.ones((n, t), np.float32),
        }
    batch["params"] = controller.initial_params
    batch["mask"][:] = 1.0  # full episodes: the largest step the graph takes
    names = ("params", "obs", "prev_command", "action", "advantage", "mask")

    def fill_controller() -> None:
        controller.reset()
        for episode in range(n):
            for step in range(t):
                obs = batch["obs"][episode, step]
                reward = float(batch["reward"][episode, step])
                controller.observe(obs, controller.act(obs), reward, obs, step == t - 1)

    calls = {"onnxruntime (advantages + step)": lambda: session.run(None, batch)}
    if policy is not None:
        torch.set_num_threads(1)
        step = adaptation_step(policy)
        advantage = compute_advantages(batch["obs"], batch["reward"], batch["mask"], config)
        given = [torch.from_numpy(advantage if k == "advantage" else batch[k]) for k in names]

        def numpy_then_torch_func():
            adv = torch.from_numpy(compute_advantages(batch["obs"], batch["reward"], batch["mask"], config))
            return step(given[0], given[1], given[2], given[3], adv, given[5])

        inputs = policy.policy_inputs(given[1], given[2])
        calls["numpy advantages + torch.func step"] = numpy_then_torch_func
        calls["torch.func step alone"] = lambda: step(*given)
        calls["torch autograd inner_step alone"] = lambda: policy.inner_step(given[0], inputs, *given[3:], create_graph=False)
    # Round-robin blocks: every call sees the same machine load, and runs warm (back-to-back calls of
    # one kind, as on the robot) rather than with the caches just filled by another library.
    block = 20
    samples: dict[str, list[float]] = {key: [] for key in calls}
    # adapt() runs once per collected batch, right after the control loop filled it, so it is timed
    # that way, beside the bare graph on the batch the controller holds, timed the same way.
    cold = {"graph after collecting": [], "runtime adapt()": []}
    for _ in range(max(1, iterations // block)):
        for key, call in calls.items():
            call()
            for _ in range(block):
                start = time.perf_counter()
                call()
                samples[key].append(time.perf_counter() - start)
        for _ in range(2):
            fill_controller()
            start = time.perf_counter()
            session.run(None, controller._adapt_feed)
            cold["graph after collecting"].append(time.perf_counter() - start)
            fill_controller()
            start = time.perf_counter()
            controller.adapt()
            cold["runtime adapt()"].append(time.perf_counter() - start)

    result = {"name": name, "sizes": (controller.obs_dim, controller.act_dim, n, t, controller.num_params),
              "times": {**samples, **cold}}
    if policy is not None:
        diffs = gradient_export.parity_max_abs_diff(
            policy, {"policy": controller._policy_session, "adapt": session}, batches=5,
            rng=np.random.default_rng(1), episodes=n, max_episode_steps=t, advantages=config,
        )
        result["parity"] = diffs["adapt_chained"]
        with torch.no_grad():
            ours = session.run(None, batch)[0]
            theirs = step(*given).numpy()
        result["same_step"] = float(np.max(np.abs(ours - theirs)))
    if profile:
        result["profile"] = profile_graph(spec.graph_path("adapt"), batch, iterations)
    if opt_levels:
        levels = {}
        for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
            options = default_session_options()
            options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
            s = onnxruntime.InferenceSession(str(spec.graph_path("adapt")), options, providers=["CPUExecutionProvider"])
            for _ in range(10):
                s.run(None, batch)
            timed = []
            for _ in range(iterations):
                start = time.perf_counter()
                s.run(None, batch)
                timed.append(time.perf_counter() - start)
            levels[level] = percentiles_us(timed)
        result["levels"] = levels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="time this checkpoint (exported to a temporary bundle)")
    parser.add_argument("--bundle", type=Path, help="time this gradient bundle (PyTorch columns need its checkpoint)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--opt-levels", action="store_true", help="also time each onnxruntime optimisation level")
    parser.add_argument("--profile", action="store_true", help="also print the adapt graph's time per operator type")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from metarl_robot.export import export_bundle
    from metarl_robot.runtime import load_bundle

    root = Path(tempfile.mkdtemp(prefix="adaptation_step_speed."))
    jobs: list[tuple[str, Path, Path | None]] = []
    if args.bundle is not None:
        recorded = load_bundle(args.bundle).provenance.get("checkpoint_path")
        checkpoint = args.checkpoint or (Path(recorded) if recorded and Path(recorded).is_file() else None)
        jobs.append((str(args.bundle), args.bundle, checkpoint))
    elif args.checkpoint is not None:
        jobs.append((str(args.checkpoint), export_bundle(args.checkpoint, root / "bundle"), args.checkpoint))
    else:
        for name, size in SIZES.items():
            checkpoint = make_checkpoint(root / f"{len(jobs)}.safetensors", **size)
            jobs.append((name, export_bundle(checkpoint, root / f"bundle{len(jobs)}"), checkpoint))

    results = [bench_bundle(*job, args.iterations, args.opt_levels, args.profile) for job in jobs]

    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, CPU EP, 1 thread, {args.iterations} calls each in round-robin blocks of 20\n"
    )
    print("| size (obs, act, N, T, P) | call | median µs | p90 µs | onnxruntime's speed-up over it |")
    print("| --- | --- | ---: | ---: | ---: |")
    graph = "onnxruntime (advantages + step)"
    for r in results:
        o, a, n, t, p = r["sizes"]
        ours = np.median(r["times"][graph])
        for call, samples in r["times"].items():
            p50, p90 = percentiles_us(samples)
            compared = call not in (graph, "graph after collecting", "runtime adapt()")
            speedup = f"{np.median(samples) / ours:.1f}x" if compared else "—"
            print(f"| {r['name']} ({o}, {a}, {n}, {t}, {p}) | {call} | {p50:.0f} | {p90:.0f} | {speedup} |")
    print()
    print("| size | runtime adapt() / the graph, both timed right after the episodes were collected | adapt() / the graph timed warm |")
    print("| --- | ---: | ---: |")
    for r in results:
        adapt = np.median(r["times"]["runtime adapt()"])
        print(f"| {r['name']} | {adapt / np.median(r['times']['graph after collecting']):.2f}x | "
              f"{adapt / np.median(r['times'][graph]):.2f}x |")
    print()
    from metarl_robot.families.gradient_torch import CHAINED_STEPS

    print(f"| size | onnxruntime vs torch.func, one step (float32; numpy advantages) | vs float64 PyTorch after {CHAINED_STEPS} chained steps |")
    print("| --- | ---: | ---: |")
    for r in results:
        if "parity" in r:
            print(f"| {r['name']} | {r['same_step']:.2g} | {r['parity']:.2g} |")
    if args.profile:
        for r in results:
            total = sum(us for us, _ in r["profile"].values())
            print(f"\n{r['name']}: the adapt graph's kernel time per call, {total:.0f} µs profiled in all\n")
            print("| operator | nodes | µs per call | share |\n| --- | ---: | ---: | ---: |")
            for op, (us, count) in list(r["profile"].items())[:12]:
                print(f"| {op} | {count} | {us:.1f} | {us / total:.0%} |")
            shares = profile_shares(r["profile"])
            print("\n" + ", ".join(f"{group}: {share:.0%}" for group, share in shares.items()))
    if args.opt_levels:
        print()
        print("| size | graph optimisation level | median µs | p90 µs |")
        print("| --- | --- | ---: | ---: |")
        for r in results:
            for level, (p50, p90) in r["levels"].items():
                print(f"| {r['name']} | {level} | {p50:.0f} | {p90:.0f} |")


if __name__ == "__main__":
    main()
