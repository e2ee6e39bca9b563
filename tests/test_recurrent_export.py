"""Export, verify and parity of recurrent (RL²) bundles, GRU and LSTM, and their run on the robot path.

Parity is held to 1e-5 (normalised command units, states as they are) over sequences of at least 200
steps from non-zero initial states, the graph's ``state_out`` fed back as its ``state_in`` as the robot
does. The exporter writes the core as an ONNX ``GRU``/``LSTM`` node; a GRU node written with the wrong
``linear_before_reset`` (an exporter bug reported upstream) must fail that check, and does: the test
flips the attribute and sees parity fail by orders of magnitude.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.parity import PARITY_TOLERANCE
from tests.runtime.conftest import ACTION_SCALE
from tests.runtime.test_recurrent_controller import HIDDEN, export_recurrent, recurrent_bundle, state_names, state_size  # noqa: F401 (fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_manifest_declares_the_memory_and_one_graph(recurrent_bundle) -> None:
    cell, _, bundle = recurrent_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["method"] == {"family": "recurrent", "name": "rl2"}
    size = state_size(cell)
    adaptation = manifest["adaptation"]
    assert adaptation["kind"] == "recurrent_memory" and adaptation["cell"] == cell
    assert adaptation["hidden_size"] == HIDDEN and adaptation["state_size"] == size
    assert [p["name"] for p in adaptation["state_layout"]] == state_names(cell)
    assert sum(p["size"] for p in adaptation["state_layout"]) == size
    assert adaptation["reset_between_trials"] is True and adaptation["carry_across_episodes"] is True
    assert adaptation["cadence"] == "step" and adaptation["steps"] == 0 and adaptation["initial_state"] == "zeros"
    assert list(manifest["graphs"]) == ["policy"]  # the memory is the adaptation: no adapt graph
    policy = manifest["graphs"]["policy"]
    assert list(policy["inputs"]) == ["obs", "prev_command", "prev_reward", "prev_done", "noise", "state_in"]
    assert policy["outputs"] == {"command": [None, 4], "state_out": [None, size]}
    assert sorted(manifest["files"]) == ["policy.onnx", "test_vectors.npz"]
    parity = manifest["provenance"]["parity_max_abs_diff"]
    assert set(parity) == {"policy", "policy_sequence"}
    assert all(0 <= v <= PARITY_TOLERANCE for v in parity.values()), parity


def test_verify_passes_with_checkpoint_parity_over_long_sequences(recurrent_bundle) -> None:
    from metarl_robot.verify import verify_bundle

    _, checkpoint, bundle = recurrent_bundle
    report = verify_bundle(bundle, checkpoint=checkpoint)
    assert report.ok, report.format()
    checks = {c.name: c for c in report.checks}
    assert checks["onnxruntime vs PyTorch checkpoint"].status == "pass"
    assert "policy_sequence max abs diff" in checks["onnxruntime vs PyTorch checkpoint"].detail
    assert checks["command bounds vs policy graph"].status == "pass"


def test_sequence_test_vectors_replay_in_onnxruntime_from_a_non_zero_state(recurrent_bundle) -> None:
    """The bundle carries a 200-step sequence; onnxruntime alone, state fed back, reproduces it."""
    import onnxruntime

    from metarl_robot.families.recurrent import FAMILY
    from metarl_robot.parity import max_abs_diff

    _, _, bundle = recurrent_bundle
    with np.load(bundle / "test_vectors.npz") as vectors:
        arrays = {k: vectors[k] for k in vectors.files}
    session = onnxruntime.InferenceSession(str(bundle / "policy.onnx"), providers=["CPUExecutionProvider"])
    state = arrays["policy_sequence/inputs/state_in"]
    assert np.abs(state).max() > 0.5  # a non-zero initial state
    steps = arrays["policy_sequence/inputs/obs"].shape[0]
    assert steps >= 200
    worst = 0.0
    for t in range(steps):
        feed = {n: arrays[f"policy_sequence/inputs/{n}"][t] for n in FAMILY.graph_io["policy"][0][:-1]}
        command, state = session.run(None, {**feed, "state_in": state})
        worst = max(
            worst,
            max_abs_diff("policy", command, arrays["policy_sequence/outputs/command"][t], np.asarray(ACTION_SCALE)),
            max_abs_diff("policy", state, arrays["policy_sequence/outputs/state_out"][t], np.asarray(ACTION_SCALE), output="state_out"),
        )
    assert worst <= PARITY_TOLERANCE, worst


def _recurrent_nodes(path: Path):
    import onnx

    model = onnx.load(str(path))
    return model, [n for n in model.graph.node if n.op_type in ("GRU", "LSTM")]


def test_a_gru_node_with_the_wrong_linear_before_reset_fails_the_parity_check(tmp_path: Path) -> None:
    """PyTorch's GRU applies the reset gate after the hidden-state matmul: ONNX ``linear_before_reset=1``.
    The exporter writes one GRU node with that value; written with 0 (the reported exporter bug), the
    same graph fails the export's sequence parity check far beyond the tolerance, and so does a single
    step from a non-zero state."""
    import onnx

    from metarl_robot.checkpoint import load_checkpoint
    from metarl_robot.export import cpu_session
    from metarl_robot.families import recurrent_torch

    checkpoint, bundle = export_recurrent(tmp_path, "gru")
    policy, _ = load_checkpoint(checkpoint)
    model, nodes = _recurrent_nodes(bundle / "policy.onnx")
    assert [n.op_type for n in nodes] == ["GRU"], "the exporter no longer writes an ONNX GRU node; revisit this test"
    (attribute,) = [a for a in nodes[0].attribute if a.name == "linear_before_reset"]
    assert attribute.i == 1

    rng = np.random.default_rng(0)
    good = recurrent_torch.sequence_parity(policy, cpu_session(bundle / "policy.onnx"), rng, sequences=2, steps=200)
    attribute.i = 0
    onnx.save(model, str(tmp_path / "flipped.onnx"))
    flipped = cpu_session(tmp_path / "flipped.onnx")
    bad = recurrent_torch.sequence_parity(policy, flipped, rng, sequences=2, steps=200)
    bad_step = recurrent_torch.step_parity(policy, flipped, rng, batches=5)
    assert good <= PARITY_TOLERANCE < 1e3 * PARITY_TOLERANCE < min(bad, bad_step), (good, bad, bad_step)


def test_lstm_is_exported_as_one_lstm_node(recurrent_bundle) -> None:
    cell, _, bundle = recurrent_bundle
    _, nodes = _recurrent_nodes(bundle / "policy.onnx")
    # The window (RMA) and prototype cells have no recurrent node: their memory is a shifted history
    # window, or a running sum.
    assert [n.op_type for n in nodes] == ([] if cell in ("window", "prototype", "pearl") else [cell.upper()])


def test_an_inconsistent_memory_section_is_refused(recurrent_bundle, tmp_path: Path) -> None:
    import shutil

    from metarl_robot.runtime import BundleError, load_bundle
    from metarl_robot.runtime.integrity import write_manifest

    cell, _, bundle = recurrent_bundle
    for edit, message in (
        (lambda a: a.update(state_size=a["state_size"] + 1), "state_size"),
        (lambda a: a.update(carry_across_episodes=False), "carry_across_episodes"),
        (lambda a: a.update(cell="rnn"), "adaptation.cell"),
        (lambda a: a.update(steps=1), "no adapt graph"),
    ):
        copy = tmp_path / f"edited_{message.replace(' ', '_')}"
        shutil.copytree(bundle, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        edit(manifest["adaptation"])
        write_manifest(copy / "manifest.json", manifest)  # re-sealed: only the family's own check can refuse it
        with pytest.raises(BundleError, match=message):
            load_bundle(copy)


def test_bundle_runs_through_the_control_loop_with_torch_blocked(recurrent_bundle) -> None:
    """RobotLoop, as the ROS node drives it: the memory changes every tick, carries across an attempt's
    end (no reset) and is zeroed by reset_adaptation (new object); torch is never imported."""
    cell, _, bundle = recurrent_bundle
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "onnx", "onnxscript"):
            sys.modules[name] = None
        import numpy as np
        from metarl_robot.contract import JointStateSample, PoseSample, RobotInputs
        from metarl_robot.runtime import RobotLoop

        loop = RobotLoop.load({str(bundle)!r}, ["cpu"])
        ctl = loop.controller
        ctl.explore = False  # mean commands: with the same inputs every tick, only the memory can move them
        loop.start()
        joints = loop.contract.observed_joints

        def robot(now):
            return RobotInputs(
                JointStateSample.create(joints, [0.01] * len(joints), [], [-1.0] * len(joints), now),
                {{s: PoseSample.create([0.5, 0.0, 0.1], [0, 0, 0, 1], now) for s in ("ee_pose", "object_pose")}},
            )

        states, commands = [], []
        for step in range(8):
            now = 10.0 + 0.1 * step
            command = loop.tick(now, robot(now))
            assert command is not None and command.hold is None, command
            commands.append(command.values.copy())
            states.append(ctl.state)
            loop.add_reward(1.0)
            if step == 3:
                loop.end_episode(True, now, robot(now))  # an attempt ends: the memory must carry on
        norms = [float(np.linalg.norm(s)) for s in states]
        assert all(n > 0 for n in norms), norms
        assert all(not np.array_equal(a, b) for a, b in zip(states, states[1:]))  # updated every tick
        assert not np.array_equal(commands[0], commands[5])
        level, message, values = loop.status()
        assert values["adaptation_family"] == "recurrent" and values["cell"] == {cell!r}, values
        assert int(values["steps_since_reset"]) == 8, values
        loop.reset_adaptation()  # new object: a new trial
        assert not ctl.state.any() and ctl.status()["steps_since_reset"] == "0"
        assert all(not v.any() for v in ctl.get_state().values())
        now = 11.0
        first = loop.tick(now, robot(now))
        assert ctl.status()["steps_since_reset"] == "1"
        assert not any(m.startswith("torch") for m in sys.modules if sys.modules[m] is not None)
        print("ok", norms[0], norms[-1])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
