"""Latency of the torch-free runtime: act() and adapt() on a bundle of any family, beside the bare
``InferenceSession.run`` of the same policy graph on a prepared feed (the floor act() is held to:
target act() <= 1.2x bare at p50), the same run below onnxruntime's Python wrapper (the binding act()
uses) and, for context bundles, the same calls in PyTorch.

    python bench/runtime_latency.py [BUNDLE] [--providers cpu] [--iterations 2000]

Without BUNDLE it exports a freshly initialised grasp-sized context policy first (same graph sizes as
training). ``runs/demo/bundle`` (after ``make demo``) is the shipped recurrent grasp policy.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.runtime's checkpoint maker

import numpy as np


def percentile_us(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?")
    parser.add_argument("--providers", nargs="+", default=["cpu"])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()

    import torch

    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.runtime import load_controller

    bundle = args.bundle
    if bundle is None:
        from metarl_robot.export import export_bundle
        from tests.runtime.conftest import make_checkpoint

        root = Path(tempfile.mkdtemp())
        bundle = export_bundle(make_checkpoint(root / "c.safetensors"), root / "bundle")
    ctl = load_controller(bundle, providers=args.providers)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(args.iterations, ctl.obs_dim)).astype(np.float32)
    for i in range(min(getattr(ctl, "buffer_size", 8), args.iterations - 1)):
        ctl.observe(obs[i], ctl.act(obs[i]), 0.1, obs[i + 1], False)
    ctl.warmup()

    def timed(fn, n):
        out = []
        for i in range(n):
            t = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t)
        return out

    # The floor: the policy graph's InferenceSession.run on a prepared feed, nothing else.
    session = ctl._policy_session
    own_feed = getattr(ctl, "_policy_feed", None) or ctl._feed
    feed = {name: value.copy() for name, value in own_feed.items()}

    def bare(i: int) -> None:
        feed["obs"][0] = obs[i]
        session.run(None, feed)

    bare_run = timed(bare, args.iterations)
    # The same call below onnxruntime's Python wrapper (which re-checks the feed's names each call): the
    # binding act() itself uses (metarl_robot.runtime.base.bound_run).
    binding = session._sess

    def bare_binding(i: int) -> None:
        feed["obs"][0] = obs[i]
        binding.run(names, feed, None)

    names = [o.name for o in session.get_outputs()]
    binding_run = timed(bare_binding, args.iterations)
    act = timed(lambda i: ctl.act(obs[i]), args.iterations)
    adapt = timed(lambda i: ctl.adapt(), min(args.iterations, 500))

    torch.set_num_threads(1)
    checkpoint = ctl.manifest["provenance"].get("checkpoint_path") if ctl.family == "context" else None
    rows = [("bare InferenceSession.run (policy)", bare_run), ("bare run below the wrapper", binding_run),
            ("onnxruntime act", act),
            ("onnxruntime adapt (full buffer)", adapt)]
    if checkpoint and Path(checkpoint).exists():
        policy, _ = load_checkpoint(checkpoint)
        ctx = torch.as_tensor(ctl.context[None])
        o = torch.as_tensor(obs)
        with torch.no_grad():
            rows.append(("torch act (same graph)", timed(lambda i: policy.command(o[i : i + 1], ctx), args.iterations)))
            n = ctl.buffer_size
            win = [torch.as_tensor(rng.normal(size=(1, n, d)).astype(np.float32)) for d in (ctl.obs_dim, ctl.act_dim, 1, ctl.obs_dim)]
            mask = torch.ones(1, n)
            rows.append(("torch adapt (same graph)", timed(lambda i: policy.encode_commands(*win, mask), min(args.iterations, 500))))

    print(f"machine: {platform.processor() or platform.machine()}, provider {ctl.provider}, {ctl.family} bundle {bundle}")
    print(f"{'call':34} {'p50 us':>8} {'p99 us':>8}")
    for name, samples in rows:
        print(f"{name:34} {percentile_us(samples, 50):8.1f} {percentile_us(samples, 99):8.1f}")
    ratio = percentile_us(act, 50) / percentile_us(bare_run, 50)
    print(f"act() / bare run at p50: {ratio:.2f}x (target <= 1.2x)")
    print(f"act() / bare run below the wrapper at p50: {percentile_us(act, 50) / percentile_us(binding_run, 50):.2f}x")


if __name__ == "__main__":
    main()
