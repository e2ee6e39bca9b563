"""Every registered env a robot could serve builds its observation exactly as the control loop would on
the robot: from the joint states, poses and twists the simulated robot publishes, through the robot
contract, after the trip through ROS messages and the loop's input checks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import pybullet  # noqa: E402,F401  (a dependency: an import error fails these tests)

import gymnasium as gym  # noqa: E402

import sim  # noqa: E402
from metarl_robot.contract import (  # noqa: E402
    ACTION_MODES,
    LayoutError,
    JointStateSample,
    ObservationLayout,
    PoseSample,
    RobotContract,
    RobotInputs,
    TwistSample,
    check_joint_contract,
    is_robot_layout,
)
from metarl_robot.runtime.loop import ObservationAssembler  # noqa: E402
from metarl_robot.tasks import TaskSpec  # noqa: E402

pytestmark = pytest.mark.sim

STEPS = 5
NOW_S = 1000.0


def _message_values(values: np.ndarray) -> list[float]:
    """What a float64[] message field carries (the sim robot node writes ``float(v)`` per value)."""
    return [float(v) for v in values]


def as_received(inputs: RobotInputs, stamp_s: float) -> RobotInputs:
    """The samples the policy node builds from the messages the sim robot node publishes for ``inputs``,
    stamped and received at ``stamp_s`` (see ros_nodes/sim_robot_node.py and ros_nodes/policy_node.py)."""
    js = inputs.joint_state
    joint_state = None if js is None else JointStateSample.create(
        list(js.names), _message_values(js.position), _message_values(js.velocity), _message_values(js.effort),
        stamp_s, stamp_s,
    )
    poses = {
        source: PoseSample.create(_message_values(p.position), _message_values(p.orientation_xyzw), stamp_s, stamp_s)
        for source, p in inputs.poses.items()
    }
    twists = {
        source: TwistSample.create(_message_values(t.linear), _message_values(t.angular), stamp_s, stamp_s)
        for source, t in inputs.twists.items()
    }
    return RobotInputs(joint_state, poses, twists)


def noise_free_task(env_id: str) -> TaskSpec:
    """A task of the env's distribution without observation noise (the noise is the sim's, not the robot's)."""
    module, _, name = sim.ENVIRONMENTS[env_id]["distribution"].partition(":")
    distribution = getattr(importlib.import_module(module), name)
    task = distribution(seed=0, num_train=1, num_test=1).train_tasks[0]
    if "obs_noise_std" in task.params:
        task = TaskSpec(task.family, {**task.params, "obs_noise_std": 0.0}, task.task_id)
    return task


def _observes_a_robot(env_id: str) -> bool:
    env = gym.make(env_id)
    try:
        return is_robot_layout(env.unwrapped.interface["observation_layout"])
    finally:
        env.close()


ROBOT_ENVS = [env_id for env_id in sorted(sim.ENVIRONMENTS) if _observes_a_robot(env_id)]
"""The registered envs a robot could feed (the reference bandit and MDP observe rewards and states)."""


def test_every_env_but_the_reference_tasks_observes_a_robot():
    assert sorted(set(sim.ENVIRONMENTS) - set(ROBOT_ENVS)) == ["metarl/BernoulliBandit-v0", "metarl/TabularMDP-v0"]


@pytest.mark.parametrize("env_id", ROBOT_ENVS)
def test_env_observation_is_the_contracts_assembly_of_what_the_robot_publishes(env_id):
    env = gym.make(env_id)
    try:
        interface = env.unwrapped.interface
        layout = interface["observation_layout"]
        contract_layout = ObservationLayout.parse(layout)
        if interface["action"]["mode"] in ACTION_MODES:  # a robot can be commanded in this mode
            assert RobotContract.from_interface(interface).observation == contract_layout
        else:  # joint effort (the half-cheetah): the contract says it cannot command it
            with pytest.raises(LayoutError, match="is not supported"):
                RobotContract.from_interface(interface)
        assembler = ObservationAssembler(contract_layout, max_obs_age_s=0.5)
        obs, _ = env.reset(seed=3, options={"task": noise_free_task(env_id)})
        env.action_space.seed(3)
        for step in range(STEPS + 1):
            if step:
                obs, *_ = env.step(env.action_space.sample())
            published = env.unwrapped.robot_inputs()
            received = as_received(published, stamp_s=NOW_S - 0.01)
            assert check_joint_contract(contract_layout.required_joints, received.joint_state.names) is None
            assembled = assembler.assemble(NOW_S, received.joint_state, received.poses, received.twists)
            assert isinstance(assembled, np.ndarray), f"{env_id}: the control loop would hold: {assembled}"
            assert obs.dtype == assembled.dtype == np.float32
            assert np.array_equal(obs, assembled), f"{env_id} step {step}: env {obs} != contract {assembled}"
    finally:
        env.close()


def test_the_robot_layouts_cover_every_arm_env():
    """The arm envs are the ones checked above (none skipped), on all three arms."""
    arm_envs = [env_id for env_id, spec in sim.ENVIRONMENTS.items() if "Grasp" in env_id or "Panda" in env_id]
    robots = {sim.ENVIRONMENTS[env_id].get("kwargs", {}).get("robot", "franka_panda") for env_id in arm_envs}
    assert robots == {"franka_panda", "kuka_iiwa", "xarm6"}
    for env_id in arm_envs:
        env = gym.make(env_id)
        try:
            assert is_robot_layout(env.unwrapped.interface["observation_layout"]), env_id
        finally:
            env.close()
