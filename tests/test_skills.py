"""The grasp_force skill: the scripted grasp's motion inside the policy graph, a learned grip force and
lift speed, and the labels that make it imitate a teacher's commands."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarl_robot.skills import GraspForceSkill, layout_slices, make_skill
from tests.runtime.conftest import ACTION_SCALE, INTERFACE

LAYOUT = INTERFACE["observation_layout"]
SCALE = torch.tensor(ACTION_SCALE, dtype=torch.float32)


def _skill() -> GraspForceSkill:
    return GraspForceSkill(LAYOUT, SCALE)


def _start_action(skill: GraspForceSkill, force_n: float, lift: float = 1.0, release: float = -1.0) -> torch.Tensor:
    grip = (math.log(force_n) - skill.log_min) / (skill.log_max - skill.log_min) * 2 - 1
    return torch.tensor([[release, 0.0, lift, grip]], dtype=torch.float32)


def test_grip_force_is_a_start_force_after_an_open_command_and_a_bounded_ratio_after_a_squeeze() -> None:
    skill = _skill()
    opened = torch.tensor([[0.0, 0.0, 0.0, -60.0]])
    squeezing = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    a = torch.tensor([[0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    start = skill.force_n(a, opened.expand(3, 4))
    assert torch.allclose(start, torch.tensor([0.2, 60.0, math.sqrt(0.2 * 60.0)]), rtol=1e-5)
    changed = skill.force_n(a, squeezing.expand(3, 4))
    assert torch.allclose(changed, torch.tensor([2.0 / 1.35, 2.0 * 1.35, 2.0]), rtol=1e-5)
    # Never above the motor limit nor below the smallest force, however long it ramps.
    assert float(skill.force_n(a[1:2], torch.tensor([[0.0, 0.0, 0.0, 59.0]]))) == pytest.approx(60.0)
    assert float(skill.force_n(a[0:1], torch.tensor([[0.0, 0.0, 0.0, 0.21]]))) == pytest.approx(0.2)



def test_slip_law_grip_raises_the_force_with_the_slip_in_the_hand_from_the_policys_starting_force() -> None:
    skill = GraspForceSkill(LAYOUT, SCALE, grip="slip_law", slip_step_m=0.004)
    start = _start_action(skill, 1.5)
    closed = (0.01, 0.01)

    def obs_with_slip(slip_m: float, fingers=closed) -> torch.Tensor:
        # The hand at 5 cm; the object's centre where the pads closed on it, 3 mm below, plus the slip.
        return _obs((0.5, 0.0, 0.05), (0.5, 0.0, 0.05 - 0.003 - slip_m), fingers)

    opened = torch.tensor([[0.0, 0.0, 0.0, -60.0]])
    assert float(skill.force_n(start, opened, obs_with_slip(0.0, (0.04, 0.04)))) == pytest.approx(1.5, rel=1e-5)
    prev = torch.tensor([[0.0, 0.0, 0.0, 1.5]])
    assert float(skill.force_n(start, prev, obs_with_slip(0.0039))) == pytest.approx(1.5, rel=1e-5)
    assert float(skill.force_n(start, prev, obs_with_slip(0.0041))) == pytest.approx(1.5 * 1.35, rel=1e-5)
    # Far more slip: the target is 1.35^3 times the start, reached one ratio per step.
    forces = []
    for _ in range(4):
        prev = torch.tensor([[0.0, 0.0, 0.0, float(skill.force_n(start, prev, obs_with_slip(0.0125)))]])
        forces.append(float(prev[0, 3]))
    assert forces == pytest.approx([1.5 * 1.35, 1.5 * 1.35**2, 1.5 * 1.35**3, 1.5 * 1.35**3], rel=1e-5)
    # An object sitting higher in the hand than where it was grasped is no slip.
    assert float(skill.force_n(start, torch.tensor([[0.0, 0.0, 0.0, 1.5]]), obs_with_slip(-0.01))) == pytest.approx(1.5, rel=1e-5)
    # The whole command reads the observation for it.
    command = skill(obs_with_slip(0.0125), start, torch.tensor([[0.0, 0.0, 0.0, 1.5]]))
    assert float(command[0, 3]) == pytest.approx(1.5 * 1.35, rel=1e-5)
    with pytest.raises(ValueError, match="reads the observation"):
        skill.force_n(start, prev)
    with pytest.raises(ValueError, match="grip mode"):
        GraspForceSkill(LAYOUT, SCALE, grip="torque")


def test_slip_law_labels_are_the_starting_force_of_the_first_squeeze() -> None:
    skill = GraspForceSkill(LAYOUT, SCALE, grip="slip_law")
    forces = [-60.0, -60.0, 1.0, 1.35, 1.8, -60.0, -60.0, 2.0, 2.7]
    commands = torch.tensor([[0.0, 0.0, 0.05, f] for f in forces])
    closed = [False, False, False, True, True, True, False, False, True]
    # No slip (the object's centre 3 mm under the grasp frame), so a label reads as the force it asks.
    obs = torch.stack([_obs((0.5, 0, 0.04), (0.5, 0, 0.037), (0.01, 0.01) if c else (0.04, 0.04))[0] for c in closed])
    labels, weights = skill.imitation_labels(obs, commands)
    asked = skill.force_n(labels, torch.zeros(len(forces), 4), obs)  # each label read as a first squeeze
    # After the gripper opens again the teacher grasps with the force it reached (2 N), which a policy
    # without memory cannot tell from a first approach: undefined from there on.
    expected = [1.0, 1.0, 1.0, 1.0, 1.0, None, None, None, None]
    for t, want in enumerate(expected):
        if want is None:
            assert weights[t, 3] == 0.0
        else:
            assert weights[t, 3] == 1.0 and float(asked[t]) == pytest.approx(want, rel=1e-4), t

def _obs(ee, obj, fingers=(0.04, 0.04), effort=(20.0, 20.0)) -> torch.Tensor:
    return torch.tensor([[*ee, *obj, *fingers, *effort]], dtype=torch.float32)


def test_phases_approach_descend_close_lift_and_release() -> None:
    skill = _skill()
    prev_open = torch.tensor([[0.0, 0.0, 0.0, -60.0]])
    act = _start_action(skill, 3.0, lift=0.0)  # half-speed lift
    # Far from the object: move over it, gripper open, no descent.
    far = skill(_obs((0.5, 0.0, 0.14), (0.52, 0.01, 0.03)), act, prev_open)[0]
    assert far[0] > 0 and far[1] > 0 and far[2] == 0 and far[3] == -60.0
    # Over it and at grasp height: close with the chosen force.
    there = skill(_obs((0.5, 0.0, 0.035), (0.5, 0.0, 0.03)), act, prev_open)[0]
    assert torch.allclose(there, torch.tensor([0.0, 0.0, 0.0, 3.0]), atol=1e-5)
    # Fingers closed on it and both pads pressing with the force: lift at the chosen speed.
    squeeze = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    lifting = skill(_obs((0.5, 0.0, 0.035), (0.5, 0.0, 0.03), (0.02, 0.02), (-3.0, -3.0)), torch.tensor([[-1.0, 0, 0.0, 0.0]]), squeeze)[0]
    assert torch.allclose(lifting, torch.tensor([0.0, 0.0, 0.075, 3.0]), atol=1e-5)
    # Not pressing yet (effort below 70% of the force) and still low: wait.
    waiting = skill(_obs((0.5, 0.0, 0.035), (0.5, 0.0, 0.03), (0.02, 0.02), (-1.0, -1.0)), torch.tensor([[-1.0, 0, 0.0, 0.0]]), squeeze)[0]
    assert waiting[2] == 0.0
    # Release: open and hold still, whatever the phase.
    released = skill(_obs((0.5, 0.0, 0.035), (0.5, 0.0, 0.03), (0.0, 0.0), (-3.0, -3.0)), torch.tensor([[0.5, 0, 1.0, 1.0]]), squeeze)[0]
    assert torch.equal(released, torch.tensor([0.0, 0.0, 0.0, -60.0]))


def test_entries_are_found_by_name_not_position() -> None:
    skill = _skill()
    order = [3, 0, 2, 1]  # a layout listing the four entries in another order
    shuffled = [LAYOUT[i] for i in order]
    other = GraspForceSkill(shuffled, SCALE)
    obs = _obs((0.5, 0.01, 0.05), (0.51, 0.0, 0.03), (0.035, 0.035), (5.0, 6.0))
    slices = layout_slices(LAYOUT)
    pieces = {name: obs[0, s : s + n] for name, (s, n) in slices.items()}
    reordered = torch.cat([pieces[LAYOUT[i]["name"]] for i in order])[None]
    act, prev = _start_action(skill, 2.0), torch.tensor([[0.0, 0.0, 0.0, -60.0]])
    assert torch.equal(skill(obs, act, prev), other(reordered, act, prev))


def test_a_layout_without_an_entry_the_skill_reads_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="finger_effort"):
        GraspForceSkill([e for e in LAYOUT if e["name"] != "finger_effort"], SCALE)
    with pytest.raises(ValueError, match="unknown skill 'nope'"):
        make_skill("nope", LAYOUT, SCALE)


def test_previous_command_features_use_the_log_force_scale() -> None:
    skill = _skill()
    cmd = torch.tensor([[0.15, -0.3, 0.0, -60.0], [0.0, 0.0, 0.075, 0.2], [0.0, 0.0, 0.0, 60.0], [0, 0, 0, math.sqrt(12.0)]])
    f = skill.prev_features(cmd)
    assert torch.allclose(f[:, 3], torch.tensor([-1.0, -1.0, 1.0, 0.0]), atol=1e-5)
    assert torch.allclose(f[0, :3], torch.tensor([1.0, -1.0, 0.0]))  # velocities over their scale, clipped
    assert torch.allclose(f[1, 2], torch.tensor(0.5))


def test_imitation_labels_reproduce_the_teachers_forces_through_the_skill() -> None:
    """Labels derived from a command sequence, fed back through the skill's force rule, give back the
    teacher's forces wherever the label is defined (weights 1)."""
    skill = _skill()
    forces = [-60.0, -60.0, 1.0, 1.0, 1.3, 1.69, 2.0, -60.0, -60.0, 2.0, 2.5, 2.5]
    commands = torch.tensor([[0.0, 0.0, 0.05, f] for f in forces])
    closed = [False, False, False, True, True, True, True, True, True, False, True, True]
    obs = torch.stack([_obs((0.5, 0, 0.04), (0.5, 0, 0.03), (0.01, 0.01) if c else (0.04, 0.04))[0] for c in closed])
    labels, weights = skill.imitation_labels(obs, commands)
    prev = torch.zeros(1, 4)
    checked = []
    for t, force in enumerate(forces):
        if force > 0 and weights[t, 3] > 0:
            got = float(skill.force_n(labels[t : t + 1], prev))
            assert got == pytest.approx(force, rel=1e-4), t
            checked.append(t)
        prev = commands[t : t + 1]
    assert checked == [2, 3, 4, 5, 6, 9, 10, 11]  # every step with a labelled positive force was compared
    # The approach steps learn the force of the next squeeze as the starting force.
    assert float(skill.force_n(labels[0:1], torch.tensor([[0, 0, 0, -60.0]]))) == pytest.approx(1.0, rel=1e-4)
    # Opening a closed gripper is a release; the grip label is undefined there.
    assert labels[7, 0] == 1.0 and weights[7, 3] == 0.0 and labels[3, 0] == -1.0
    assert weights[:, 1].sum() == 0  # the dimension the skill ignores is never trained


def test_the_skill_reproduces_the_scripted_grasp_in_the_grasp_env() -> None:
    """With a fixed start force, no force change and full lift speed, the skill sends the scripted
    grasp's commands step for step on a real episode."""
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    from sim.grasp import GraspEnv, scripted_grasp_action
    from sim.grasp_task import grasp_distribution

    env = GraspEnv(grasp_distribution(seed=0).train_tasks[3], max_episode_steps=40)
    scale = np.asarray(env.interface["action"]["scale"], dtype=np.float32)
    skill = GraspForceSkill(env.interface["observation_layout"], torch.as_tensor(scale))
    obs, _ = env.reset(seed=1)
    prev = torch.zeros(1, 4)
    for _ in range(40):
        start = _start_action(skill, 2.0)
        hold = torch.tensor([[-1.0, 0.0, 1.0, 0.0]])
        act = torch.where(prev[:, 3:4] > 0, hold, start)
        command = skill(torch.as_tensor(obs[None]), act, prev)
        expected = scripted_grasp_action(obs, 2.0) * scale
        np.testing.assert_allclose(command[0].numpy(), expected, atol=1e-5)
        prev = command
        obs, *_ = env.step(command[0].numpy() / scale)


def test_an_unknown_skill_option_is_refused_in_one_line_naming_the_options():
    with pytest.raises(ValueError, match=r"no option 'grp'; its options are \['min_force_n', 'max_step_ratio', 'grip', 'slip_step_m'\]"):
        make_skill("grasp_force", LAYOUT, SCALE, {"grp": "slip_law"})
    assert make_skill("grasp_force", LAYOUT, SCALE, {"grip": "slip_law"}).grip == "slip_law"
