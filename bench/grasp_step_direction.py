"""Which way, and how far, one adaptation step of a gradient grasp policy on the grasp_force skill moves
its starting grip force, against the way the object needed it to move.

For each of the first ``--tasks`` objects of the grasp suite's test split: the policy's PyTorch twin of
the runtime controller (:class:`~metarl_robot.families.gradient_torch.GradientTorchController`, seeded
per object) makes ``episodes_per_step`` exploring attempts, then takes its adaptation step. The starting
force its mean asks for, at the first observation of the first attempt with the gripper open, is read
before and after the step and compared with the oracle's force for that object
(:func:`sim.grasp_task.oracle_grip_force_n`, which the policy never sees). A step that learns what an
attempt taught moves the force by a sizeable factor, in the oracle's direction.

    python bench/grasp_step_direction.py --checkpoint models/maml_grasp_skill/checkpoint.safetensors
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metarl_robot.checkpoint import load_checkpoint  # noqa: E402
from metarl_robot.envs import make_meta_env  # noqa: E402
from metarl_robot.families.gradient_torch import GradientTorchController  # noqa: E402
from sim.grasp_task import grasp_distribution, oracle_grip_force_n  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "maml_grasp_skill" / "checkpoint.safetensors"))
    parser.add_argument("--tasks", type=int, default=32, help="test-split objects (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    policy, data = load_checkpoint(args.checkpoint)
    if policy.skill is None or policy.skill.name != "grasp_force":
        raise SystemExit(f"{args.checkpoint}: not a gradient policy on the grasp_force skill")
    adaptation = data["adaptation"]
    steps = int(adaptation["max_episode_steps"])
    env = make_meta_env("sim:metarl/PandaGrasp-v0", {"max_episode_steps": steps}, unwrapped=True)
    tasks = grasp_distribution(seed=0, num_test=64).test_tasks[: args.tasks]
    scale = policy.action_scale.numpy()
    opened = torch.tensor([[0.0, 0.0, 0.0, -float(scale[3])]])

    def start_force(params: torch.Tensor, obs: np.ndarray) -> float:
        inputs = policy.policy_inputs(torch.as_tensor(obs[None], dtype=torch.float32), opened)
        with torch.no_grad():
            mean, _ = policy.mean_log_std(params, inputs)
            raw = torch.as_tensor(obs[None], dtype=torch.float32)
            return float(policy.skill.force_n(torch.clamp(mean, -1.0, 1.0), opened, raw)[0])

    rows = []
    for i, task in enumerate(tasks):
        controller = GradientTorchController(policy, adaptation, seed=i)
        env.set_task(task)
        first = None
        for k in range(controller.episodes_per_step):
            obs, _ = env.reset(seed=1000 * i + k)
            first = obs.copy() if first is None else first
            done = False
            while not done:
                command = controller.act(obs)
                next_obs, reward, terminated, truncated, _ = env.step(command / scale)
                done = terminated or truncated
                controller.observe(obs, command, reward, next_obs, done)
                obs = next_obs
        before = start_force(controller.params, first)
        controller.adapt()
        rows.append((before, start_force(controller.params, first), oracle_grip_force_n(task)))
    env.close()
    rows_a = np.array(rows)
    change = np.log(rows_a[:, 1] / rows_a[:, 0])
    needed = np.log(rows_a[:, 2] / rows_a[:, 0])
    agree = float(np.mean(np.sign(change) == np.sign(needed)))
    corr = float(np.corrcoef(change, needed)[0, 1]) if len(rows_a) > 2 else float("nan")
    print(f"{args.checkpoint}: {len(rows_a)} test objects, {controller.episodes_per_step} exploring attempts each, one step")
    print(f"starting force before the step (median): {np.median(rows_a[:, 0]):.3g} N")
    print(f"factor the step moved it by (median |log|): x{math.exp(np.median(np.abs(change))):.4f}; largest x{math.exp(np.abs(change).max()):.4f}")
    print(f"factor the object needed (median |log| to the oracle's force): x{math.exp(np.median(np.abs(needed))):.3g}")
    print(f"moved the oracle's way: {agree:.2f} of objects; correlation of the log changes: {corr:.2f}")
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
