"""Frames of an episode and animated GIFs of them, plus the few numpy drawing primitives that
simulator-free envs use to render themselves.

Nothing here imports a simulator: :func:`record_rollout` drives any Gymnasium env made with
``render_mode="rgb_array"``; :func:`write_gif` needs only Pillow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Colour = tuple[int, int, int]

__all__ = [
    "canvas",
    "draw_line",
    "draw_progress",
    "fill_disc",
    "fill_rect",
    "record_rollout",
    "write_gif",
]


# ------------------------------------------------------------------------------------- episodes


def record_rollout(
    env: Any,
    act: Callable[[np.ndarray], Any],
    *,
    seed: int,
    max_steps: int,
) -> list[np.ndarray]:
    """Frames of one episode: ``env.render()`` after ``reset(seed=seed)`` and after every step.

    ``act(obs) -> action`` picks the env's action (in the env's own action space). The episode stops
    when it terminates or is truncated, or after ``max_steps`` steps, so at most ``max_steps + 1``
    frames come back. ``env`` must render ``rgb_array`` frames.
    """
    if max_steps < 0:
        raise ValueError(f"max_steps={max_steps} must be >= 0")
    render_mode = getattr(env, "render_mode", None)
    if render_mode != "rgb_array":
        raise ValueError(f"record_rollout needs an env made with render_mode='rgb_array', got {render_mode!r}")
    obs, _ = env.reset(seed=seed)
    frames = [_check_frame(env.render())]
    for _ in range(max_steps):
        obs, _, terminated, truncated, _ = env.step(act(obs))
        frames.append(_check_frame(env.render()))
        if terminated or truncated:
            break
    return frames


def _check_frame(frame: Any) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.dtype != np.uint8:
        raise ValueError(f"env.render() must return a uint8 (H, W, 3) image, got {frame.dtype} {frame.shape}")
    return frame[:, :, :3].copy()


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """Write ``frames`` (uint8 ``(H, W, 3)``, all the same size) as a looping GIF at ``fps`` frames a second.

    GIF stores delays in hundredths of a second, so the delay is rounded to 10 ms. Pillow merges
    identical consecutive frames into one frame shown for their summed time.
    """
    from PIL import Image

    if not frames:
        raise ValueError("write_gif: no frames")
    if fps <= 0:
        raise ValueError(f"write_gif: fps={fps} must be > 0")
    shape = np.asarray(frames[0]).shape
    images = []
    for i, frame in enumerate(frames):
        frame = _check_frame(frame)
        if frame.shape != shape[:2] + (3,):
            raise ValueError(f"write_gif: frame {i} has shape {frame.shape}, frame 0 has {shape}")
        images.append(Image.fromarray(frame))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration_ms = max(10, int(round(100.0 / fps)) * 10)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


# -------------------------------------------------------------------------------------- drawing


def canvas(height: int, width: int, colour: Colour = (255, 255, 255)) -> np.ndarray:
    """A uint8 ``(height, width, 3)`` image filled with ``colour``."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = colour
    return image


def fill_rect(image: np.ndarray, top: int, left: int, bottom: int, right: int, colour: Colour) -> None:
    """Fill rows ``top:bottom`` and columns ``left:right`` (clipped to the image) in place."""
    height, width = image.shape[:2]
    top, bottom = max(0, int(top)), min(height, int(bottom))
    left, right = max(0, int(left)), min(width, int(right))
    if top < bottom and left < right:
        image[top:bottom, left:right] = colour


def fill_disc(image: np.ndarray, row: float, col: float, radius: float, colour: Colour) -> None:
    """Fill the disc of ``radius`` pixels centred at (``row``, ``col``) in place; parts outside are clipped."""
    rows, cols = np.ogrid[: image.shape[0], : image.shape[1]]
    image[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = colour


def draw_line(
    image: np.ndarray, start: tuple[float, float], end: tuple[float, float], colour: Colour, width: int = 1
) -> None:
    """Draw the segment from ``start`` to ``end`` (each ``(row, col)``) in place, ``width`` pixels thick."""
    (r0, c0), (r1, c1) = start, end
    steps = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
    rows = np.rint(np.linspace(r0, r1, steps)).astype(int)
    cols = np.rint(np.linspace(c0, c1, steps)).astype(int)
    half = (width - 1) // 2
    for dr in range(-half, width - half):
        for dc in range(-half, width - half):
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < image.shape[0]) & (c >= 0) & (c < image.shape[1])
            image[r[inside], c[inside]] = colour


def draw_progress(image: np.ndarray, fraction: float, colour: Colour = (90, 90, 90), height: int = 3) -> None:
    """A bar along the bottom edge, ``fraction`` (0..1) of the width long, e.g. the elapsed part of an episode."""
    width = image.shape[1]
    fill_rect(image, image.shape[0] - height, 0, image.shape[0], round(float(np.clip(fraction, 0.0, 1.0)) * width), colour)
