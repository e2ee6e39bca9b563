"""Episode frames and GIFs: ``metarl_robot.rendering`` and the ``metarl-robot gif`` command."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from metarl_robot.rendering import draw_line, fill_disc, record_rollout, write_gif


def test_write_gif_keeps_every_distinct_frame_at_the_given_rate(tmp_path):
    frames = [np.full((32, 48, 3), 20 * i, dtype=np.uint8) for i in range(6)]
    path = write_gif(frames, tmp_path / "sub" / "a.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.size == (48, 32)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0


def test_write_gif_refuses_frames_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_gif([], tmp_path / "a.gif", fps=5)
    with pytest.raises(ValueError, match="frame 1"):
        write_gif([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], tmp_path / "a.gif", fps=5)
    with pytest.raises(ValueError, match="uint8"):
        write_gif([np.zeros((8, 8, 3), np.float32)], tmp_path / "a.gif", fps=5)


def test_drawing_primitives_clip_at_the_border():
    image = np.zeros((10, 10, 3), np.uint8)
    fill_disc(image, 0, 0, 3, (255, 0, 0))
    draw_line(image, (-5, 5), (15, 5), (0, 255, 0))
    assert image[0, 0, 0] == 255 and image[:, 5, 1].tolist() == [255] * 10


class _Counter(gym.Env):
    """Renders its step count as a grey level; ends after three steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode, self.t = render_mode, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), 0.0, self.t >= 3, False, {}

    def render(self):
        return np.full((8, 8, 3), 50 * self.t, np.uint8)


def test_record_rollout_renders_the_reset_and_every_step_until_the_episode_ends():
    frames = record_rollout(_Counter("rgb_array"), lambda obs: 0, seed=0, max_steps=10)
    assert [int(f[0, 0, 0]) for f in frames] == [0, 50, 100, 150]
    assert len(record_rollout(_Counter("rgb_array"), lambda obs: 0, seed=0, max_steps=1)) == 2
    with pytest.raises(ValueError, match="rgb_array"):
        record_rollout(_Counter(), lambda obs: 0, seed=0, max_steps=1)


@pytest.mark.sim
def test_a_navigation_rollout_becomes_a_gif_with_one_frame_per_step(tmp_path):
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    from sim.navigation import Navigation2DEnv

    env = Navigation2DEnv(render_mode="rgb_array")
    env.action_space.seed(0)
    frames = record_rollout(env, lambda obs: env.action_space.sample(), seed=0, max_steps=7)
    assert len(frames) == 8 and frames[0].shape == (128, 128, 3)
    with Image.open(write_gif(frames, tmp_path / "nav.gif", fps=env.metadata["render_fps"])) as gif:
        assert gif.n_frames == 8 and gif.size == (128, 128)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarl_robot.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.sim
def test_gif_command_records_a_navigation_episode(tmp_path):
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    out = tmp_path / "nav.gif"
    result = run_cli("gif", "--env-id", "sim:metarl/Navigation2D-v0", "--split", "test", "--index", "1",
                     "--policy", "random", "--seed", "0", "--max-steps", "5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as gif:
        assert gif.n_frames == 6
    task_file = tmp_path / "goal.yaml"
    task_file.write_text("tasks:\n  - {family: navigation2d, params: {goal_x: 0.3, goal_y: 0.2}}\n")
    result = run_cli("gif", "--env-id", "metarl/Navigation2D-v0", "--policy", "oracle", "--max-steps", "50",
                     "--task-file", str(task_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as gif:
        assert gif.n_frames == 4  # the oracle lands on the goal in three steps and the episode ends
    result = run_cli("gif", "--env-id", "metarl/Navigation2D-v0", "--task-file", str(tmp_path / "missing.yaml"),
                     "--out", str(out))
    assert result.returncode == 2 and "missing.yaml" in result.stderr
