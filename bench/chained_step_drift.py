"""How far chained adaptation steps drift from exact arithmetic, in onnxruntime and in PyTorch float32.

Runs ``--steps`` policy-gradient steps of a gradient bundle's adapt graph, each on a fresh on-policy
batch of whole episodes at the previous step's output, beside the same chain in PyTorch float32
(``torch.func``) and in float64 (the exact function), and prints the largest parameter difference
after each step. Both float32 chains leave the float64 one at a similar rate: the step map amplifies
perturbations of its input, so the drift is a property of float32 arithmetic, not of the export.

    python bench/chained_step_drift.py --checkpoint models/maml_navigation/checkpoint.safetensors
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "maml_navigation" / "checkpoint.safetensors"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--chains", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true",
                        help="export the adapt graph computing in float64 between float32 inputs and outputs (as export "
                             "does when float32 misses the parity gate)")
    args = parser.parse_args(argv)

    import torch

    from metarl_robot.families import gradient_torch as ge
    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.export import cpu_session as _cpu_session
    from metarl_robot.gradient_policy import adaptation_step
    from metarl_robot.runtime.advantages import compute_advantages

    torch.set_num_threads(1)
    policy, data = load_checkpoint(args.checkpoint)
    sizes = {"episodes": int(data["adaptation"]["episodes_per_step"]), "max_episode_steps": int(data["adaptation"]["max_episode_steps"])}
    config = ge.advantage_config(data["adaptation"]["advantages"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapt.onnx"
        internal = torch.float64 if args.float64 else torch.float32
        ge.export_graph(policy, "adapt", path, None, advantages=config, internal=internal, **sizes)
        session = _cpu_session(path)
        exact, step32 = ge.float64_copy(policy), adaptation_step(policy)
        rng = np.random.default_rng(args.seed)
        worst = np.zeros((3, args.steps))
        for _ in range(args.chains):
            ours = torch32 = theirs = ge.initial_params(policy)
            for k in range(args.steps):
                batch = ge.sample_inputs(policy, "adapt", rng, params=ours, on_policy=True, long_episodes=True, **sizes)
                ours = session.run(None, batch)[0]
                # PyTorch's float32 chain reads the advantages numpy computes, as training does.
                given = {**batch, "params": torch32,
                         "advantage": compute_advantages(batch["obs"], batch["reward"], batch["mask"], config)}
                with torch.no_grad():
                    torch32 = step32(*(torch.from_numpy(np.asarray(given[n]))
                                       for n in ("params", "obs", "prev_command", "action", "advantage", "mask"))).numpy()
                (theirs,) = ge.reference_outputs(exact, "adapt", {**batch, "params": theirs}, config)
                for row, value in enumerate((np.abs(ours - theirs).max(), np.abs(torch32 - theirs).max(), np.abs(ours - torch32).max())):
                    worst[row, k] = max(worst[row, k], value)
    print(f"{args.checkpoint}: largest parameter difference after k chained steps ({args.chains} chains, "
          f"{sizes['episodes']} episodes x {sizes['max_episode_steps']} steps per batch)\n")
    print("| chain | " + " | ".join(f"k={k + 1}" for k in range(args.steps)) + " |")
    print("|---" * (args.steps + 1) + "|")
    for label, row in zip(("onnxruntime vs float64", "PyTorch float32 vs float64", "onnxruntime vs PyTorch float32"), worst):
        print(f"| {label} | " + " | ".join(f"{v:.1e}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
