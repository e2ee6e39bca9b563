"""The grasp meta-RL environment: a Gymnasium env over :class:`GraspScene` and a scripted controller.

``GraspEnv`` implements :class:`metarl_robot.envs.MetaEnv`: its task (a :class:`TaskSpec` of family
"grasp") can be set at any time and takes effect at the next ``reset``. Actions are normalised to
``[-1, 1]`` and scaled by ``interface["action"]["scale"]`` into end-effector velocities and a grip force.
``robot`` picks the arm (``franka_panda``, ``kuka_iiwa``, ``xarm6``); ``PandaGraspEnv`` is the same env.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from metarl_robot.tasks import TaskSpec
from sim.grasp_task import (
    EPISODE_STEPS,
    MAX_EE_SPEED_M_S,
    MAX_GRIP_FORCE_N,
    default_grasp_distribution,
    grasp_force_window,
    oracle_grasp_offset_m,
    oracle_grip_force_n,
)
from sim.scene_env import SceneEnv
from sim.scene import DEFAULT_ROBOT, FINGER_OPEN_POSITION_M, INTERFACE, GraspScene

__all__ = [
    "GraspEnv",
    "PandaGraspEnv",
    "oracle_grasp_action",
    "parametric_grasp_action",
    "run_scripted_episode",
    "scripted_grasp_action",
]

ACTION_SCALE = np.asarray(INTERFACE["action"]["scale"], dtype=np.float32)
# Positions in m (the object cannot leave the table), finger openings in m, finger efforts in N.
OBSERVATION_LOW = np.array([-2.0] * 6 + [-0.005] * 2 + [-MAX_GRIP_FORCE_N] * 2, dtype=np.float32)
OBSERVATION_HIGH = np.array([2.0] * 6 + [0.045] * 2 + [MAX_GRIP_FORCE_N] * 2, dtype=np.float32)


class GraspEnv(SceneEnv):
    """Grasp a hidden-property object and lift it 8 cm, level, within ``max_episode_steps`` control steps at 10 Hz
    (default :data:`sim.grasp_task.EPISODE_STEPS`, 60).

    Episodes never terminate early (``terminated`` is always False) so vectorised episodes stay in
    lock-step; they are truncated after ``max_episode_steps``. ``info["success"]`` at the last step is
    the episode's outcome. ``obs_noise_std`` is the observation noise of tasks that do not set their own.
    """

    demonstrator = "sim.demonstrations:oracle_grasp_demonstrator"

    def __init__(
        self,
        task: TaskSpec | None = None,
        *,
        max_episode_steps: int = EPISODE_STEPS,
        render_mode: str | None = None,
        obs_noise_std: float = 0.0,
        robot: str = DEFAULT_ROBOT,
    ) -> None:
        if obs_noise_std < 0:
            raise ValueError(f"obs_noise_std={obs_noise_std} must be >= 0")
        self.obs_noise_std = float(obs_noise_std)
        task = task if task is not None else default_grasp_distribution().train_tasks[0]
        self._init_scene_env(
            lambda: GraspScene(task, robot=robot), max_episode_steps=max_episode_steps, render_mode=render_mode
        )
        self.observation_space = gym.spaces.Box(OBSERVATION_LOW, OBSERVATION_HIGH, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(ACTION_SCALE),), np.float32)

    def _info(self, status: dict) -> dict[str, Any]:
        return {
            "success": status["success"],
            "crushed": status["crushed"],
            "lift_height_m": status["lift_height_m"],
            "tilt_rad": status["tilt_rad"],
            "grip_force_n": status["grip_force_n"],
            "task_id": self.task.task_id,
        }


# ----------------------------------------------------------------------------- scripted control


def _observation_slices() -> dict[str, slice]:
    slices, start = {}, 0
    for item in INTERFACE["observation_layout"]:
        slices[item["name"]] = slice(start, start + item["size"])
        start += item["size"]
    return slices


_OBS = _observation_slices()
_APPROACH_GAIN_PER_S = 6.0
_ALIGNED_M = 0.006
_DESCEND_WITHIN_M = 0.012
_GRASP_ABOVE_CENTRE_M = 0.005
_MIN_GRASP_HEIGHT_M = 0.012
_CLOSED_BY_M = 0.006
_SATURATED_FRACTION = 0.7


def scripted_grasp_action(obs: np.ndarray, grip_force_n: float, grasp_offset_m: float = 0.0) -> np.ndarray:
    """A normalised action in ``[-1, 1]^4`` that centres over the grasp point, descends, closes and lifts.

    Stateless: the phase is read from the observation. The grasp point is ``grasp_offset_m`` along x
    from the object's centre. It descends with the gripper open until the grasp frame is 5 mm above the
    object's centre, closes with ``grip_force_n`` newtons, and lifts at full speed once both finger
    motors push with (nearly) that force, i.e. once the pads press on the object.
    """
    obs = np.asarray(obs, dtype=np.float64)
    ee, obj = obs[_OBS["ee_position"]], obs[_OBS["object_position"]].copy()
    obj[0] += grasp_offset_m
    finger_opening, finger_effort = obs[_OBS["finger_position"]], obs[_OBS["finger_effort"]]
    grip_n = float(np.clip(grip_force_n, 0.0, MAX_GRIP_FORCE_N))
    grasp_height = max(obj[2] + _GRASP_ABOVE_CENTRE_M, _MIN_GRASP_HEIGHT_M)
    offset = obj[:2] - ee[:2]
    velocity = np.zeros(3)
    grip_action = grip_n / MAX_GRIP_FORCE_N
    fingers_closing = finger_opening.sum() < 2 * FINGER_OPEN_POSITION_M - _CLOSED_BY_M
    if fingers_closing:
        pads_pressing = grip_n > 0 and bool(np.all(-finger_effort >= _SATURATED_FRACTION * grip_n))
        if pads_pressing or ee[2] > grasp_height + 0.01:
            velocity[2] = MAX_EE_SPEED_M_S
    else:
        velocity[:2] = _APPROACH_GAIN_PER_S * offset
        if np.linalg.norm(offset) < _DESCEND_WITHIN_M:
            velocity[2] = _APPROACH_GAIN_PER_S * (grasp_height - ee[2])
        in_place = np.linalg.norm(offset) < _ALIGNED_M and ee[2] <= grasp_height + 0.003
        if not in_place:
            grip_action = -1.0
    action = np.append(np.clip(velocity / MAX_EE_SPEED_M_S, -1.0, 1.0), grip_action)
    return action.astype(np.float32)


def oracle_grasp_action(obs: np.ndarray, task: TaskSpec) -> np.ndarray:
    """:func:`scripted_grasp_action` with the force and grasp point an oracle that knows ``task`` picks."""
    return scripted_grasp_action(obs, oracle_grip_force_n(task), oracle_grasp_offset_m(task))


def run_scripted_episode(
    env: GraspEnv, grip_force_n: float, *, seed: int | None = None, grasp_offset_m: float = 0.0
) -> dict[str, Any]:
    """Run one episode of :func:`scripted_grasp_action` on ``env``'s current task; return the last info
    with the episode's summed reward under ``"return"``."""
    obs, info = env.reset(seed=seed)
    episode_return = 0.0
    truncated = False
    while not truncated:
        obs, reward, _, truncated, info = env.step(scripted_grasp_action(obs, grip_force_n, grasp_offset_m))
        episode_return += reward
    return {**info, "return": episode_return}


PandaGraspEnv = GraspEnv
"""The grasp env with its default robot, the Franka Panda (``metarl/PandaGrasp-v0``)."""


def parametric_grasp_action(obs: np.ndarray, task: TaskSpec, options: Mapping[str, Any]) -> np.ndarray:
    """:func:`scripted_grasp_action` whose grip force is set by ``options["theta"]``; for policy search.

    ``options["features"] == "none"`` (a non-adaptive policy, blind to the task): ``grip_force_n =
    exp(theta[0])``. ``"task"`` (an oracle that reads the true task parameters): ``log grip_force_n =
    theta[0] + theta[1] * (log(hold force) - c) + theta[2] * (log(usable force) - c)`` from
    :func:`grasp_force_window`, with ``c = log(5 N)`` centring the features so that ``theta[0]`` alone
    is a non-adaptive force. ``options["grasp_offset_m"]`` (default 0) moves the grasp point along x.
    """
    theta = np.asarray(options["theta"], dtype=np.float64)
    log_force = theta[0]
    if options.get("features", "none") == "task":
        hold, usable = grasp_force_window(task)
        centre = np.log(5.0)
        log_force = theta[0] + theta[1] * (np.log(hold) - centre) + theta[2] * (np.log(max(usable, 1e-3)) - centre)
    force = float(np.exp(np.clip(log_force, -5.0, 5.0)))
    return scripted_grasp_action(obs, force, float(options.get("grasp_offset_m", 0.0)))
