"""The shipped grasp bundle through the robot path: the policy node against the simulated robot on five
objects drawn at random from the grasp suite's test split (the seed is printed; METARL_DEMO_SEED
repeats a run), the demo driver's per-object table beside the fixed-force baseline.

Mechanics only: every object gets its attempts through ROS, the node reports no error, the memory is
zeroed when the object changes and carried across the attempts on one object. Success margins are
measured over the whole split with confidence intervals in BENCHMARKS.md (bench/grasp_adaptation.py);
a few attempts on five objects cannot show them.
"""

import csv
import os
import secrets

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]

SEED = int(os.environ.get("METARL_DEMO_SEED", secrets.randbelow(2**31)))
OBJECTS, ATTEMPTS = 5, 2


@pytest.fixture(scope="module")
def shipped_bundle(tmp_path_factory):
    from metarl_robot.cli import SHIPPED_CHECKPOINT
    from metarl_robot.export import export_bundle

    return export_bundle(SHIPPED_CHECKPOINT, tmp_path_factory.mktemp("shipped") / "bundle")


def test_shipped_bundle_adapts_in_the_node_on_randomly_drawn_test_objects(shipped_bundle, tmp_path, capsys):
    import json

    from ros_nodes import demo

    manifest = json.loads((shipped_bundle / "manifest.json").read_text())
    assert manifest["adaptation"]["kind"] == "recurrent_memory" and manifest["adaptation"]["skill"]["name"] == "grasp_force"
    code = demo.main(["--bundle", str(shipped_bundle), "--out", str(tmp_path), "--objects", str(OBJECTS),
                      "--episodes-per-object", str(ATTEMPTS), "--object-seed", str(SEED), "--fixed-force", "1.5"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert f"object seed {SEED}: suite test-split objects" in out
    with (tmp_path / "demo_episodes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == OBJECTS * ATTEMPTS
    assert len({row["task_index"] for row in rows}) == OBJECTS
    assert [int(row["episode_on_object"]) for row in rows] == list(range(1, ATTEMPTS + 1)) * OBJECTS
    # The table: one line per object and the mean, each with the fixed-force columns beside.
    table = out[out.index("fixed first"):]
    assert table.count("\n") >= OBJECTS + 2 and "1.5 N" in table
    log = (tmp_path / "metarl_policy_node.log").read_text() if (tmp_path / "metarl_policy_node.log").exists() else ""
    assert "Traceback" not in log
