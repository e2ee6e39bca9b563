"""The runtime's shared pieces on the per-tick path: the bound graph call and the block-drawn noise."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from metarl_robot.runtime import base
from metarl_robot.runtime.base import NormalRows, bound_run


def _session(inner_run, outer_run, inputs=("obs",), outputs=("command",)):
    return SimpleNamespace(
        _sess=SimpleNamespace(run=inner_run),
        run=outer_run,
        get_inputs=lambda: [SimpleNamespace(name=n, type="tensor(float)") for n in inputs],
        get_outputs=lambda: [SimpleNamespace(name=n) for n in outputs],
    )


def test_bound_run_calls_the_binding_with_the_feed_and_output_names():
    calls = []
    feed = {"obs": np.zeros(3)}
    session = _session(lambda names, f, options: calls.append((names, f, options)) or ["inner"],
                       lambda names, f: ["outer"])
    assert bound_run(session, feed)() == ["inner"]
    assert calls == [(["command"], feed, None)]


def test_bound_run_hands_a_provider_failure_to_the_public_run_which_falls_back():
    def failing(names, feed, options):
        raise base._EP_FAILURE("CUDA failure")

    outer = []
    session = _session(failing, lambda names, feed: outer.append(names) or ["fell back"])
    assert bound_run(session, {"obs": np.zeros(3)})() == ["fell back"]
    assert outer == [["command"]]


def test_bound_run_lets_other_errors_through():
    def broken(names, feed, options):
        raise RuntimeError("shape mismatch")

    session = _session(broken, lambda names, feed: pytest.fail("only provider failures go to the public run"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bound_run(session, {"obs": np.zeros(3)})()


def test_bound_run_looks_the_binding_up_on_every_call():
    """onnxruntime's fallback replaces the session's binding; the bound call must use the new one."""
    session = _session(lambda *a: ["old"], lambda names, feed: ["outer"])
    run = bound_run(session, {"obs": np.zeros(3)})
    session._sess = SimpleNamespace(run=lambda *a: ["new"])
    assert run() == ["new"]


def test_bound_run_refuses_a_feed_without_every_input():
    session = _session(lambda *a: None, lambda *a: None, inputs=("obs", "context"))
    with pytest.raises(ValueError, match=r"\['context'\]"):
        bound_run(session, {"obs": np.zeros(3)})


@pytest.mark.parametrize("block", [1, 7, 256])
def test_normal_rows_are_the_generators_rows_in_order(block):
    rows = NormalRows(5, width=3, block=block)
    drawn = np.zeros((20, 3), dtype=np.float32)
    for row in drawn:
        rows.draw_into(row)
    reference = np.random.default_rng(5)
    expected = np.stack([reference.standard_normal(3, dtype=np.float32) for _ in range(20)])
    np.testing.assert_array_equal(drawn, expected)


def test_normal_rows_reseed_restarts_the_stream():
    rows = NormalRows(1, width=2, block=4)
    first, again = np.zeros(2, np.float32), np.zeros(2, np.float32)
    rows.draw_into(first)
    rows.draw_into(np.zeros(2, np.float32))
    rows.reseed(1)
    rows.draw_into(again)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, np.zeros(2))


# ------------------------------------------------------------------------- latency statistics
def test_latency_summary_in_microseconds_with_known_percentiles():
    from metarl_robot.runtime.base import LatencyStats

    stats = LatencyStats(capacity=200)
    for i in range(1, 101):
        stats.record(i * 1e-6)  # 1 .. 100 us
    summary = stats.summary()
    assert set(summary) == {"count", "p50_us", "p99_us", "max_us"}
    assert summary["count"] == 100
    assert summary["p50_us"] == pytest.approx(50.5, rel=1e-9)
    assert summary["p99_us"] == pytest.approx(99.01, rel=1e-9)
    assert summary["max_us"] == pytest.approx(100.0, rel=1e-9)


def test_latency_reset_forgets_every_duration_and_starts_over():
    from metarl_robot.runtime.base import LatencyStats

    stats = LatencyStats(capacity=4)
    for _ in range(6):
        stats.record(1.0)
    stats.reset()
    assert len(stats) == 0 and np.isnan(stats.p50_s)
    stats.record(5.0)
    assert stats.durations_s().tolist() == [5.0] and stats.p50_s == 5.0 and stats.summary()["max_us"] == 5e6
    for value in (6.0, 7.0, 8.0, 9.0):  # wraps: the oldest (5.0) goes first
        stats.record(value)
    assert sorted(stats.durations_s().tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_a_family_without_its_own_status_reports_its_name():
    from metarl_robot.runtime.base import BundleController

    assert BundleController.status(SimpleNamespace(family="toy")) == {"adaptation_family": "toy"}


def test_context_controller_reset_refills_its_buffer_from_the_first_slot(tmp_path):
    from metarl_robot.export import export_bundle
    from metarl_robot.runtime import AdaptiveController
    from tests.runtime.conftest import make_checkpoint

    controller = AdaptiveController.load(export_bundle(make_checkpoint(tmp_path / "c.safetensors"), tmp_path / "b"), ["cpu"])
    obs = np.full(controller.obs_dim, 0.5, np.float32)
    command = controller.act(obs)
    for _ in range(3):
        controller.observe(obs, command, 1.0, obs, False)
    controller.reset()
    assert controller.buffer_len == 0 and not controller._buf_mask.any()
    controller.observe(obs, command, 2.0, obs, False)
    assert controller._buf_mask[0].tolist()[:2] == [1.0, 0.0]  # the first slot, nothing else
    assert controller._buf_reward[0, 0, 0] == 2.0


# ------------------------------------------------------------- input checks, options, latencies, schedule


def test_load_vector_names_non_finite_and_huge_values_of_a_two_dimensional_row():
    row = np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError) as err:
        base.load_vector(row, np.array([[0.0, np.nan, np.inf]]), "state")
    assert str(err.value) == ("state has non-finite values at indices [1, 2]: [nan, inf] "
                              "(values beyond float32 range count as non-finite)")
    with pytest.raises(ValueError) as err:
        base.load_vector(row, np.array([[0.0, 2e19, 1.0]]), "state")
    assert str(err.value) == ("state has values beyond ±1.8e+19 at indices [1]: [2e+19]; check the sensor and its "
                              "units")
    with pytest.raises(ValueError) as err:
        base.load_vector(row, np.array([[1.5e19, 1.5e19, 0.0]]), "state")
    assert str(err.value) == "state has a norm beyond float32 range (largest magnitude 1.5e+19); check the sensor and its units"
    base.load_vector(row, [[1e19, -1.0, 2.0]], "state")  # a list is taken too
    np.testing.assert_array_equal(row, np.float32([[1e19, -1.0, 2.0]]))


def test_scalar_takes_one_number_up_to_the_float32_range():
    limit = float(np.finfo(np.float32).max)
    assert base.scalar(limit, "reward") == limit and base.scalar(np.array([2.5]), "reward") == 2.5
    with pytest.raises(ValueError) as err:
        base.scalar(np.zeros((1, 1)), "reward")
    assert str(err.value) == "reward must be a single number, got shape (1, 1)"
    with pytest.raises(ValueError) as err:
        base.scalar("high", "reward")
    assert str(err.value) == "reward must be a number, got 'high'"
    with pytest.raises(ValueError) as err:
        base.scalar(limit * 2, "reward")
    assert str(err.value) == f"reward is not finite: {limit * 2!r}"


def test_default_session_options_leave_the_other_cores_to_the_robot():
    options = base.default_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (1, 1, 3)


def test_latency_summary_is_in_microseconds():
    stats = base.LatencyStats(capacity=4)
    for duration in (0.001, 0.002, 0.003):
        stats.record(duration)
    assert stats.summary() == pytest.approx({"count": 3, "p50_us": 2000.0, "p99_us": 2980.0, "max_us": 3000.0})


def test_schedule_refusals_are_whole_sentences():
    from metarl_robot.runtime import AdaptationSchedule

    with pytest.raises(ValueError) as err:
        AdaptationSchedule("weekly", 0)
    assert str(err.value) == "adaptation cadence 'weekly' is not supported; use one of ['episode', 'step', 'episodes']"
    with pytest.raises(ValueError) as err:
        AdaptationSchedule("episode", -2)
    assert str(err.value) == "adapt_every_n_steps must be >= 0, got -2"
    with pytest.raises(ValueError) as err:
        AdaptationSchedule("episodes", 0, 0)
    assert str(err.value) == "episodes_per_step must be >= 1, got 0"


def test_latency_stats_keep_at_least_one_duration_and_say_so_otherwise():
    one = base.LatencyStats(capacity=1)
    one.record(0.5)
    one.record(0.25)
    assert len(one) == 1 and one.p50_s == 0.25 and one.count == 2
    with pytest.raises(ValueError) as err:
        base.LatencyStats(capacity=0)
    assert str(err.value) == "LatencyStats capacity must be positive, got 0"


def test_a_provider_may_be_named_alone_and_an_empty_list_is_refused():
    from metarl_robot.runtime import ProviderError

    assert base.resolve_provider("cpu") == "CPUExecutionProvider"
    assert base.resolve_provider("CPU") == "CPUExecutionProvider"
    with pytest.raises(ProviderError) as err:
        base.resolve_provider([])
    assert str(err.value) == "providers is empty; name at least one, e.g. ['cuda', 'cpu']"
