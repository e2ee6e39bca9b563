"""Motion skills a policy can sit on: the part of a command a robotics engineer would script, written in
PyTorch so that it is inside the exported graph, and the part the policy learns.

A skill maps a raw observation and the policy's clipped action ``[-1, 1]^A`` to the physical command.
It declares which action dimensions it reads (:attr:`Skill.learned`): only those are the policy's
decisions, so only their log-probabilities enter a policy-gradient loss; the others are ignored.
Because the skill is part of the policy module, an exported step graph computes exactly what training
ran, and the robot needs nothing besides the bundle.

:class:`GraspForceSkill` (``"grasp_force"``): centre over the object, descend, close, lift — the same
stateless phases as the suite's scripted grasp, read from the observation — with the **grip force**
(log scale) and the **lift speed** chosen by the policy at every control step. The decision that depends
on the object (how hard to squeeze, when to raise the force, how fast to lift while it may slip) is
learned; approaching an object whose position is observed is not what adaptation is about.

Observation entries are found by name (``ee_position``, ``object_position``, ``finger_position``,
``finger_effort``) through the ``layout`` the policy was built with (the robot contract's observation
layout), so the skill follows the contract rather than fixed indices.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["SKILLS", "GraspForceSkill", "Skill", "layout_slices", "make_skill", "manifest_section"]


def layout_slices(layout: Sequence[Any]) -> dict[str, tuple[int, int]]:
    """``{name: (start, size)}`` from a contract observation layout (dicts with ``name`` and ``size``) or
    from ``[name, start, size]`` triples (how a policy config stores it)."""
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for item in layout:
        if isinstance(item, Mapping):
            out[str(item["name"])] = (start, int(item["size"]))
            start += int(item["size"])
        else:
            name, begin, size = item
            out[str(name)] = (int(begin), int(size))
    return out


class Skill(nn.Module):
    """A motion skill: ``forward(obs, action, prev_command) -> command`` (physical units) and
    ``prev_features(command)``, the previous command as the policy's core reads it (normalised to about
    ``[-1, 1]``)."""

    name = ""
    learned: tuple[int, ...] = ()
    needs: Mapping[str, int] = {}
    initial_mean: Mapping[int, float] = {}
    """Initial mean of some action dimensions (e.g. "do not release" until learned otherwise)."""
    feature_dim = 0
    """Size of :meth:`features`, what the skill adds to the core's input."""

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Extra inputs of the core computed from the raw observation ``[..., feature_dim]``."""
        return obs[..., :0]

    def used(self, obs: torch.Tensor, prev_command: torch.Tensor) -> torch.Tensor:
        """``[..., A]``, 1 where the skill's command at this step depends on that action dimension (a
        decision the policy took) and 0 where it is ignored at this step (e.g. the grip force while the
        gripper is held open during the approach). A policy-gradient loss counts only the former: the
        noise drawn on an ignored dimension changes nothing, so its log-probability would only add noise
        to the gradient. Default: every dimension at every step."""
        return torch.ones(*obs.shape[:-1], int(self.action_scale.numel()), dtype=obs.dtype, device=obs.device)

    def __init__(self, layout: Sequence[Any], action_scale: torch.Tensor) -> None:
        super().__init__()
        slices = layout_slices(layout)
        for entry, size in self.needs.items():
            if entry not in slices:
                raise ValueError(f"the {self.name!r} skill reads observation entry {entry!r}, which the layout lacks ({sorted(slices)})")
            if slices[entry][1] != size:
                raise ValueError(f"the {self.name!r} skill reads {size} values of {entry!r}, the layout has {slices[entry][1]}")
        self.slices = {k: slices[k] for k in self.needs}
        self.register_buffer("action_scale", action_scale.clone())

    def entry(self, obs: torch.Tensor, name: str) -> torch.Tensor:
        start, size = self.slices[name]
        return obs[..., start : start + size]


class GraspForceSkill(Skill):
    """The scripted grasp's motion with a learned grip force and lift speed (see the module docstring).

    Action dimension 3 sets the grip force. When the previous command opened the gripper (the approach,
    or the first step of a trial) it is the **starting force** on a log scale: ``-1`` is ``min_force_n``,
    ``+1`` the action scale's force (the motor limit). While the gripper closes and squeezes it is a
    **change** of the force: the previous command's force times ``max_step_ratio ** action`` (at most a
    1.35x raise or cut per control step, below the narrowest force window), so exploration noise on it
    is a slow random walk rather than a jitter that would crush or drop the object at every step.
    Dimension 2 sets the lift speed once the pads press (or once the hand is already above the grasp
    height): ``-1`` holds still, ``+1`` is full speed. Dimension 0 > 0 **releases**: the gripper opens and
    the hand holds still, so that once the fingers are open the skill centres, descends and grasps again
    (what to do when the pads closed on nothing). Dimension 1 is not read.

    With ``grip="slip_law"`` the within-attempt feedback is the skill's, not the policy's: dimension 3
    is the **starting force** at every step (the same log scale), and while the fingers close the skill
    commands ``start * max_step_ratio ** floor(slip / slip_step_m)``, where ``slip`` is how far the
    object has dropped in the hand below where the pads closed on it (``held_below_m`` under the grasp
    frame), moving the previous command's force towards it by at most one ``max_step_ratio`` per
    step. That is the classical ramp's law (:class:`sim.grasp_baselines.SlipLawRampController`) written
    without memory; the policy then decides only what one attempt can teach about an object, the force
    to start from (and the lift speed and the release), and an adaptation step moves that.
    """

    name = "grasp_force"
    learned = (0, 2, 3)
    needs = {"ee_position": 3, "object_position": 3, "finger_position": 2, "finger_effort": 2}
    initial_mean = {0: -1.0}
    feature_dim = 3

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The object's position relative to the grasp frame in centimetres: a slip during the lift is a
        change of its height, a few millimetres that the whole-workspace normalisation of the raw
        positions would flatten."""
        return (self.entry(obs, "object_position") - self.entry(obs, "ee_position")) * 100.0

    approach_gain_per_s = 6.0
    aligned_m = 0.006
    descend_within_m = 0.012
    grasp_above_centre_m = 0.005
    min_grasp_height_m = 0.012
    closed_by_m = 0.006
    pressing_fraction = 0.7
    finger_open_m = 0.04
    """Each finger's opening when the gripper is open (the suite's parallel-jaw grippers)."""
    held_below_m = 0.003
    """How far the object's centre sits below the grasp frame when the pads close on it (2-3 mm in the
    suite: the descent stops within 3 mm of the grasp height): the zero of the slip law's slip."""

    def __init__(self, layout: Sequence[Any], action_scale: torch.Tensor, min_force_n: float = 0.2,
                 max_step_ratio: float = 1.35, grip: str = "ratio", slip_step_m: float = 0.004) -> None:
        super().__init__(layout, action_scale)
        if not 1.0 < max_step_ratio < 2.0:
            raise ValueError(f"max_step_ratio={max_step_ratio} must lie in (1, 2)")
        if grip not in GRIP_MODES:
            raise ValueError(f"grip={grip!r} is not a grip mode of the grasp_force skill; use one of {list(GRIP_MODES)}")
        if not slip_step_m > 0:
            raise ValueError(f"slip_step_m={slip_step_m} must be > 0 (metres of slip per force raise)")
        self.grip, self.slip_step_m = grip, float(slip_step_m)
        self.log_step = math.log(max_step_ratio)
        if action_scale.numel() != 4:
            raise ValueError(f"the grasp_force skill drives [vx, vy, vz, grip_force]; the action has {action_scale.numel()} dimensions")
        max_force = float(action_scale[3])
        if not 0 < min_force_n < max_force:
            raise ValueError(f"min_force_n={min_force_n} must lie in (0, {max_force})")
        self.log_min = math.log(min_force_n)
        self.log_max = math.log(max_force)

    def force_n(self, action: torch.Tensor, prev_command: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        """The grip force ``[...]`` a clipped action asks for after ``prev_command`` (``obs``, the raw
        observation, is read by the ``slip_law`` grip mode only)."""
        start = torch.exp(self.log_min + (action[..., 3] + 1.0) * 0.5 * (self.log_max - self.log_min))
        prev = prev_command[..., 3]
        if self.grip == "slip_law":
            if obs is None:
                raise ValueError("the slip_law grip mode reads the observation (the slip of the object in the hand)")
            target = start * torch.exp(self.log_step * torch.floor(self.slip_m(obs) / self.slip_step_m))
            changed = torch.minimum(torch.maximum(target, prev * math.exp(-self.log_step)), prev * math.exp(self.log_step))
            first = torch.clamp(target, max=math.exp(self.log_max))
        else:
            changed = prev * torch.exp(self.log_step * action[..., 3])
            first = start
        changed = torch.clamp(changed, math.exp(self.log_min), math.exp(self.log_max))
        return torch.where(prev > 0, changed, first)

    def slip_m(self, obs: torch.Tensor) -> torch.Tensor:
        """``[...]``: how much further than ``held_below_m`` the object's centre sits below the grasp
        frame, while the fingers close (0 otherwise and when it sits higher): the slip in the hand."""
        ee, obj = self.entry(obs, "ee_position"), self.entry(obs, "object_position")
        closing = self.entry(obs, "finger_position").sum(-1) < 2 * self.finger_open_m - self.closed_by_m
        slip = torch.clamp(ee[..., 2] - obj[..., 2] - self.held_below_m, min=0.0)
        return torch.where(closing, slip, torch.zeros_like(slip))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, prev_command: torch.Tensor) -> torch.Tensor:
        scale = self.action_scale.to(obs.dtype)
        v_max = scale[:3]
        ee, obj = self.entry(obs, "ee_position"), self.entry(obs, "object_position")
        fingers, effort = self.entry(obs, "finger_position"), self.entry(obs, "finger_effort")
        force = self.force_n(action, prev_command.to(obs.dtype), obs)
        lift = (action[..., 2] + 1.0) * 0.5 * v_max[2]
        grasp_height = torch.clamp(obj[..., 2] + self.grasp_above_centre_m, min=self.min_grasp_height_m)
        offset = obj[..., :2] - ee[..., :2]
        distance = torch.linalg.vector_norm(offset, dim=-1)
        closing = fingers.sum(-1) < 2 * self.finger_open_m - self.closed_by_m
        pressing = torch.all(-effort >= self.pressing_fraction * force.unsqueeze(-1), dim=-1)
        lifting = closing & (pressing | (ee[..., 2] > grasp_height + 0.01))
        zero = torch.zeros_like(force)
        descend = torch.where(distance < self.descend_within_m, self.approach_gain_per_s * (grasp_height - ee[..., 2]), zero)
        vz = torch.where(closing, torch.where(lifting, lift, zero), descend)
        vxy = torch.where(closing.unsqueeze(-1), torch.zeros_like(offset), self.approach_gain_per_s * offset)
        velocity = torch.clamp(torch.cat([vxy, vz.unsqueeze(-1)], dim=-1), -v_max, v_max)
        in_place = (distance < self.aligned_m) & (ee[..., 2] <= grasp_height + 0.003)
        open_n = -scale[3].expand_as(force)
        grip = torch.where(closing | in_place, force, open_n)
        release = action[..., 0] > 0
        velocity = torch.where(release.unsqueeze(-1), torch.zeros_like(velocity), velocity)
        grip = torch.where(release, open_n, grip)
        return torch.cat([velocity, grip.unsqueeze(-1)], dim=-1)

    def used(self, obs: torch.Tensor, prev_command: torch.Tensor) -> torch.Tensor:
        """The grip dimension counts where the gripper is commanded to squeeze (closing, or in place to
        close); the lift dimension where the hand lifts (closing, and the pads pressed with the previous
        command's force or the hand is already above the grasp height); the release dimension at every
        step (releasing also stops the approach). Decided from the observation and the previous command
        only, so that the same steps count whatever action was drawn.

        Computed in float32 whatever the dtype of ``obs`` (and without a square root): a graph that
        runs in float64 then makes every comparison exactly as float32 PyTorch does, where a threshold
        met to the last bit would otherwise flip a step's weight between the two."""
        x = obs.to(torch.float32)
        ee, obj = self.entry(x, "ee_position"), self.entry(x, "object_position")
        fingers, effort = self.entry(x, "finger_position"), self.entry(x, "finger_effort")
        prev_force = prev_command[..., 3].to(torch.float32)
        grasp_height = torch.clamp(obj[..., 2] + self.grasp_above_centre_m, min=self.min_grasp_height_m)
        offset = obj[..., :2] - ee[..., :2]
        distance_sq = offset[..., 0] * offset[..., 0] + offset[..., 1] * offset[..., 1]
        closing = fingers[..., 0] + fingers[..., 1] < 2 * self.finger_open_m - self.closed_by_m
        in_place = (distance_sq < self.aligned_m**2) & (ee[..., 2] <= grasp_height + 0.003)
        pressing = (prev_force > 0) & torch.all(-effort >= self.pressing_fraction * prev_force.unsqueeze(-1), dim=-1)
        lifting = closing & (pressing | (ee[..., 2] > grasp_height + 0.01))
        one = torch.ones_like(prev_force)
        zero = torch.zeros_like(prev_force)
        return torch.stack([one, zero, lifting.to(torch.float32), (closing | in_place).to(torch.float32)], dim=-1).to(obs.dtype)

    def prev_features(self, command: torch.Tensor) -> torch.Tensor:
        """Velocities divided by their scale; the grip force on the same log scale as the action (an open
        command, force <= 0, reads as -1)."""
        scale = self.action_scale.to(command.dtype)
        velocity = torch.clamp(command[..., :3] / scale[:3], -1.0, 1.0)
        force = command[..., 3:4]
        log_force = torch.log(torch.clamp(force, min=math.exp(self.log_min)))
        grip = (log_force - self.log_min) / (self.log_max - self.log_min) * 2.0 - 1.0
        grip = torch.where(force > 0, torch.clamp(grip, -1.0, 1.0), -torch.ones_like(grip))
        return torch.cat([velocity, grip], dim=-1)


    def imitation_labels(self, obs: torch.Tensor, commands: torch.Tensor, prev_commands: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions that make this skill send what a teacher sent, and where they are defined.

        ``obs [T, D]`` and the teacher's physical ``commands [T, 4]`` of one stretch of steps, in order;
        ``prev_commands [T, 4]`` what was actually sent the step before each (default: the teacher's own
        commands shifted by one, zero first; when the learner acts and the teacher only labels, the
        learner's). Returns
        ``(labels [T, 4], weights [T, 4])``: the grip dimension is the starting force (log scale) where
        the previous command opened the gripper (during the approach: the force of the teacher's next
        squeeze in the episode) and the force ratio to the previous command otherwise (clipped to one
        step; with ``grip="slip_law"`` the starting force of the episode's first squeeze, on the steps up
        to its end, and undefined after it); the lift dimension is the teacher's vertical speed while the fingers close or hold; the
        release dimension is +1 where the teacher opens a closed gripper (to grasp again), else -1.
        Weight 0 marks what is undefined (the grip while releasing, the lift outside the lift) and the
        dimensions the skill ignores.
        """
        commands = commands.to(torch.float64)
        force = commands[:, 3]
        steps = len(force)
        if prev_commands is None:
            prev = torch.cat([torch.zeros(1, dtype=force.dtype), force[:-1]])
        else:
            prev = prev_commands.to(torch.float64)[:, 3]
        # The force of the next squeeze, for the steps whose grip decision is a starting force.
        upcoming = torch.full_like(force, float("nan"))
        nxt = float("nan")
        for t in range(steps - 1, -1, -1):
            if force[t] > 0:
                nxt = float(force[t])
            upcoming[t] = nxt
        start = torch.where(force > 0, force, upcoming)
        start_label = (torch.log(torch.clamp(start, min=math.exp(self.log_min))) - self.log_min) / (self.log_max - self.log_min) * 2 - 1
        ratio_label = torch.log(torch.clamp(force, min=1e-9) / torch.clamp(prev, min=1e-9)) / self.log_step
        grip = torch.where(prev > 0, ratio_label, start_label)
        if self.grip == "slip_law":
            # The starting force of the squeeze a step belongs to (or, before it, of the next one).
            own = torch.full_like(force, float("nan"))
            current = float("nan")
            for t in range(steps):
                if force[t] > 0 and (t == 0 or force[t - 1] <= 0):
                    current = float(force[t])
                own[t] = current if force[t] > 0 else float("nan")
            nxt = float("nan")
            for t in range(steps - 1, -1, -1):
                if force[t] > 0:
                    nxt = float(own[t])
                else:
                    own[t] = nxt
            # Only the first squeeze of an episode: a teacher that grasps again starts from the force it
            # reached, which a policy without memory cannot tell from a first approach; labelled both
            # ways, the same states would ask for two forces and the clone would learn their blend.
            opened_again = [t for t in range(1, steps) if force[t] <= 0 < force[t - 1]]
            if opened_again:
                own[opened_again[0]:] = float("nan")
            grip = (torch.log(torch.clamp(own, min=math.exp(self.log_min))) - self.log_min) / (self.log_max - self.log_min) * 2 - 1
        fingers = self.entry(obs.to(torch.float64), "finger_position").sum(-1)
        closing = fingers < 2 * self.finger_open_m - self.closed_by_m
        releasing = closing & (force <= 0)
        grip_ok = torch.isfinite(grip) & ~releasing
        lift = commands[:, 2] / float(self.action_scale[2]) * 2 - 1
        lift_ok = closing & (force > 0)
        labels = torch.zeros(steps, 4, dtype=torch.float64)
        weights = torch.zeros(steps, 4, dtype=torch.float64)
        labels[:, 3] = torch.where(grip_ok, torch.clamp(grip, -1, 1), torch.zeros_like(grip))
        labels[:, 2] = torch.clamp(lift, -1, 1)
        labels[:, 0] = torch.where(releasing, 1.0, -1.0)
        weights[:, 0] = 1.0
        weights[:, 3] = grip_ok.to(torch.float64)
        weights[:, 2] = lift_ok.to(torch.float64)
        return labels.to(torch.float32), weights.to(torch.float32)


GRIP_MODES = ("ratio", "slip_law")
"""How :class:`GraspForceSkill` reads the grip action (its ``grip`` option): a change of the previous
force while squeezing, or the starting force of the skill's own slip law."""

SKILLS: dict[str, type[Skill]] = {GraspForceSkill.name: GraspForceSkill}


def manifest_section(skill: Skill) -> dict[str, Any]:
    """The bundle manifest's ``adaptation.skill``: the skill's name and the action dimensions that are
    the policy's decisions (the others do not enter its log-probability)."""
    return {"name": skill.name, "learned_dims": [int(d) for d in skill.learned]}


def make_skill(name: str, layout: Sequence[Any], action_scale: torch.Tensor, options: Mapping[str, Any] | None = None) -> Skill:
    if name not in SKILLS:
        raise ValueError(f"unknown skill {name!r}; known skills: {sorted(SKILLS)}")
    cls = SKILLS[name]
    known = [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "layout", "action_scale")]
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        raise ValueError(f"the {name!r} skill has no option {unknown[0]!r}; its options are {known}")
    return cls(layout, action_scale, **dict(options or {}))
