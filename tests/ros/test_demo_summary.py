"""The demo's object draw and summary, without a ROS graph: objects come from a seeded random draw
(no hand-picking) and the table sets the policy beside the fixed-force baseline, per object and on average."""

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

from ros_nodes.demo import draw_objects, summarize  # noqa: E402


def test_objects_are_a_seeded_random_draw_of_distinct_test_indices():
    first = draw_objects(5, seed=123, num_test_tasks=16)
    assert first == draw_objects(5, seed=123, num_test_tasks=16)
    assert len(set(first)) == 5 and all(0 <= i < 16 for i in first)
    draws = {tuple(draw_objects(5, seed=s, num_test_tasks=16)) for s in range(20)}
    assert len(draws) > 15  # different seeds, different objects
    with pytest.raises(ValueError, match="between 1 and 16"):
        draw_objects(17, seed=0, num_test_tasks=16)


def test_summary_reports_first_and_later_success_beside_the_fixed_force():
    rows = [
        {"object": "A", "task_index": 3, "task_id": "test-0003", "success": 0},
        {"object": "A", "task_index": 3, "task_id": "test-0003", "success": 1},
        {"object": "A", "task_index": 3, "task_id": "test-0003", "success": 1},
        {"object": "B", "task_index": 9, "task_id": "test-0009", "success": 1},
        {"object": "B", "task_index": 9, "task_id": "test-0009", "success": 0},
    ]
    table = summarize(rows, {"A": 3, "B": 2}, {3: [True, True, False], 9: [False, False]}, 5.0).splitlines()
    assert table[1].split() == ["A", "test-0003", "0.00", "1.00", "3", "1.00", "0.50"]
    assert table[2].split() == ["B", "test-0009", "1.00", "0.00", "2", "0.00", "0.00"]
    # Means over objects' first attempts and over all later attempts.
    assert table[3].split() == ["mean", "0.50", "0.67", "0.50", "0.33"]
    assert "5 N" in table[4]
