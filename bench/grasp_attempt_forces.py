"""How a gradient grasp policy on the grasp_force skill squeezes, beside the memoryless slip-law ramp:
one attempt per train object with the policy's mean action (no exploration, no adaptation), and the
same objects with :class:`~sim.grasp_baselines.SlipLawRampController` from 1.5 N. Per object it prints
the outcome, the first three squeeze forces and the last one, so a clone that blends a starting force
with a force change (it starts high, then lowers the force while lifting) shows at a glance.

    python bench/grasp_attempt_forces.py --checkpoint models/maml_grasp_skill/checkpoint.safetensors --tasks 16
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import run_attempt  # noqa: E402
from metarl_robot.checkpoint import load_checkpoint  # noqa: E402
from metarl_robot.envs import make_meta_env  # noqa: E402
from metarl_robot.families.gradient_torch import GradientTorchController  # noqa: E402
from sim.grasp_baselines import SlipLawRampController  # noqa: E402
from sim.grasp_task import grasp_distribution  # noqa: E402


class Recording:
    """Passes a controller's commands through and keeps the positive grip forces it sent."""

    def __init__(self, controller) -> None:
        self.controller, self.forces = controller, []

    def act(self, obs):
        command = self.controller.act(obs)
        if command[3] > 0:
            self.forces.append(float(command[3]))
        return command

    def observe(self, *args) -> None:
        self.controller.observe(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "maml_grasp_skill" / "checkpoint.safetensors"))
    parser.add_argument("--tasks", type=int, default=16, help="train-split objects (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    policy, data = load_checkpoint(args.checkpoint)
    env = make_meta_env("sim:metarl/PandaGrasp-v0", {"max_episode_steps": int(data["adaptation"]["max_episode_steps"])}, unwrapped=True)
    scale = policy.action_scale.numpy()
    tasks = grasp_distribution(seed=0).train_tasks[: args.tasks]
    makers = {"policy (mean action)": lambda: GradientTorchController(policy, data["adaptation"], explore=False),
              "slip-law ramp from 1.5 N": lambda: SlipLawRampController(env.interface, start_n=1.5)}
    for name, make in makers.items():
        rows = []
        for i, task in enumerate(tasks):
            env.set_task(task)
            recorder = Recording(make())
            _, _, info = run_attempt(recorder, env, scale, i)
            outcome = "lifted" if info["success"] else ("crushed" if info["crushed"] else "not lifted")
            rows.append((outcome, recorder.forces))
        share = {k: np.mean([r[0] == k for r in rows]) for k in ("lifted", "crushed", "not lifted")}
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in share.items()))
        for outcome, forces in rows:
            first = ", ".join(f"{f:.2f}" for f in forces[:3])
            print(f"  {outcome:10s} first squeeze forces [{first}] ... last {forces[-1] if forces else 0:.2f} N")
    env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
