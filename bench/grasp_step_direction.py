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

``--episode-noise`` is a diagnostic of what the exploration could tell the step: the exploration noise
on the grip dimension is drawn once per attempt and kept for all its steps (what the policy's graph
would be fed by a sampler and a runtime that explore per attempt; neither does today), optionally
``--noise-scale`` times larger than the policy's own standard deviation; the step itself is unchanged.
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

sys.path.insert(0, str(ROOT / "bench"))
from bench_common import run_attempt  # noqa: E402


class PerAttemptGripNoise(GradientTorchController):
    """The PyTorch twin with the grip dimension's exploration noise drawn at an attempt's first step and
    kept for the rest of it (``noise_scale`` times the policy's std); the other dimensions as before."""

    noise_scale = 1.0
    GRIP = 3

    def act(self, obs: np.ndarray) -> np.ndarray:
        if not self._current:
            self._grip_noise = float(torch.randn((), generator=self._generator)) * self.noise_scale
        with torch.no_grad():
            inputs = self.policy.policy_inputs(torch.as_tensor(np.asarray(obs, np.float32)[None]), torch.as_tensor(self._prev[None]))
            noise = torch.randn(1, self.policy.act_dim, generator=self._generator)
            noise[0, self.GRIP] = self._grip_noise
            action = self.policy.sample(self.params, inputs, noise)
            command = self.policy.to_command(inputs, action)[0].numpy()
        self._last = (command, action[0].numpy())
        return command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "models" / "maml_grasp_skill" / "checkpoint.safetensors"))
    parser.add_argument("--tasks", type=int, default=32, help="test-split objects (default: %(default)s)")
    parser.add_argument("--episode-noise", action="store_true", help="the grip dimension's noise drawn once per attempt")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="with --episode-noise: times the policy's std")
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
        make = PerAttemptGripNoise if args.episode_noise else GradientTorchController
        controller = make(policy, adaptation, seed=i)
        if args.episode_noise:
            controller.noise_scale = args.noise_scale
        env.set_task(task)
        first = run_attempt(controller, env, scale, 1000 * i)[0]
        for k in range(1, controller.episodes_per_step):
            run_attempt(controller, env, scale, 1000 * i + k)
        before = start_force(controller.params, first)
        controller.adapt()
        rows.append((before, start_force(controller.params, first), oracle_grip_force_n(task)))
    env.close()
    rows_a = np.array(rows)
    change = np.log(rows_a[:, 1] / rows_a[:, 0])
    needed = np.log(rows_a[:, 2] / rows_a[:, 0])
    agree = float(np.mean(np.sign(change) == np.sign(needed)))
    corr = float(np.corrcoef(change, needed)[0, 1]) if len(rows_a) > 2 else float("nan")
    how = f", grip noise per attempt x{args.noise_scale:g}" if args.episode_noise else ""
    print(f"{args.checkpoint}: {len(rows_a)} test objects, {controller.episodes_per_step} exploring attempts each{how}, one step")
    print(f"starting force before the step (median): {np.median(rows_a[:, 0]):.3g} N")
    print(f"factor the step moved it by (median |log|): x{math.exp(np.median(np.abs(change))):.4f}; largest x{math.exp(np.abs(change).max()):.4f}")
    print(f"factor the object needed (median |log| to the oracle's force): x{math.exp(np.median(np.abs(needed))):.3g}")
    print(f"moved the oracle's way: {agree:.2f} of objects; correlation of the log changes: {corr:.2f}")
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
