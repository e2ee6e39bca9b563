"""Exact answers of the recurrent and gradient controllers that the other tests left open (found by a
mutation run over ``runtime/``, docs/testing.md): the mean command once exploration stops, noise that
comes back when it resumes, the diagnostics' keys, the latencies, and the providers reaching the graphs."""

from __future__ import annotations

import numpy as np
import pytest

from metarl_robot.runtime import ProviderError, load_controller

from .gradient_fixtures import exported_gradient_bundle
from .test_recurrent_controller import _obs, recurrent_bundle  # noqa: F401  (a fixture)


def _explored_then_mean(ctl, twin, obs_list):
    """``ctl`` explores over ``obs_list``; then, exploration off, its command must be ``twin``'s (which
    never explored) on the same state."""
    first = [ctl.act(obs) for obs in obs_list]
    again = ctl.act(obs_list[-1])
    assert not np.array_equal(again, first[-1]), "exploration must change the command at these observations"
    ctl.set_learning(False)
    twin.set_learning(False)  # a recurrent twin's memory stays put too (it never drew noise either way)
    if hasattr(ctl, "get_state"):
        twin.set_state(ctl.get_state())
    for obs in obs_list:
        np.testing.assert_array_equal(ctl.act(obs), twin.act(obs))
    ctl.set_learning(True)
    assert ctl.explore is True
    assert not np.array_equal(ctl.act(obs_list[0]), ctl.act(obs_list[0]))  # the noise is back


def test_a_recurrent_controller_sends_exactly_the_mean_once_it_stops_exploring(recurrent_bundle):  # noqa: F811
    cell, _, bundle = recurrent_bundle
    rng = np.random.default_rng(5)
    obs_list = [0.05 * _obs(rng) for _ in range(3)]
    _explored_then_mean(load_controller(bundle, ["cpu"], seed=1), load_controller(bundle, ["cpu"], explore=False),
                        obs_list)


def test_a_recurrent_controller_reports_its_memory(recurrent_bundle):  # noqa: F811
    cell, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)
    assert ctl.explore is True and load_controller(bundle, ["cpu"], explore=False).explore is False
    rng = np.random.default_rng(0)
    for _ in range(3):
        ctl.act(_obs(rng))
    status = ctl.status()
    assert list(status)[:5] == ["adaptation_family", "cell", "steps_since_reset", "memory", "state_norm"]
    assert (status["adaptation_family"], status["cell"], status["steps_since_reset"], status["memory"]) == \
        ("recurrent", cell, "3", "carrying")
    assert status["state_norm"] == f"{float(np.linalg.norm(ctl.state)):.4g}"
    assert ctl.hidden_size == 16
    assert 0 < ctl.act_latency.p50_s < 10
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        load_controller(bundle, ["cuda"])


def test_a_recurrent_controller_names_the_bad_input_of_a_step(recurrent_bundle):  # noqa: F811
    _, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)
    good = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=r"^obs "):
        ctl.observe(np.zeros(3), np.zeros(4), 0.0, good, False)
    with pytest.raises(ValueError, match=r"^action "):
        ctl.observe(good, np.zeros(3), 0.0, good, False)


@pytest.fixture(scope="module", params=["maml", "cavia", "meta_sgd"])
def gradient_bundle(request, tmp_path_factory):
    return request.param, exported_gradient_bundle(tmp_path_factory, request.param)


def test_a_gradient_controller_sends_exactly_the_mean_once_it_stops_exploring(gradient_bundle):
    _, bundle = gradient_bundle
    twin = load_controller(bundle, ["cpu"], explore=False)
    rng = np.random.default_rng(2)
    obs_list = [rng.uniform(-0.05, 0.05, twin.obs_dim).astype(np.float32) for _ in range(3)]
    _explored_then_mean(load_controller(bundle, ["cpu"], seed=2), twin, obs_list)


def test_a_gradient_controller_reports_its_episodes_and_latencies(gradient_bundle):
    variant, bundle = gradient_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)
    obs = np.zeros(ctl.obs_dim, np.float32)
    for t in range(3):
        command = ctl.act(obs)
        ctl.observe(obs, command, 1.0, obs, False)
    assert ctl.status() == {"adaptation_family": "gradient", "episodes_ready": "0",
                            "episodes_per_step": str(ctl.episodes_per_step), "episode_len": "3"}
    assert 0 < ctl.act_latency.p50_s < 10
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        load_controller(bundle, ["cuda"])


class _Spy:
    """Counts the calls of a session's ``run`` and can replace its first output."""

    def __init__(self, session, replace=None) -> None:
        self.session, self.replace, self.calls = session, replace, 0

    def run(self, names, feed):
        self.calls += 1
        out = self.session.run(names, feed)
        return out if self.replace is None else [self.replace(out[0]), *out[1:]]


def test_warmup_runs_the_adapt_graph_where_there_is_one_and_leaves_the_state(gradient_bundle):
    _, bundle = gradient_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)
    policy, adapt = _Spy(ctl._policy_session), _Spy(ctl._adapt_session)
    ctl._policy_session, ctl._adapt_session = policy, adapt
    before = ctl.params.copy()
    ctl.warmup(3)
    assert (policy.calls, adapt.calls) == (3, 3)
    np.testing.assert_array_equal(ctl.params, before)
    assert len(ctl.act_latency) == 0 and len(ctl.adapt_latency) == 0


def test_non_finite_adapted_parameters_are_refused_with_where_and_the_old_ones_kept(gradient_bundle):
    _, bundle = gradient_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)

    where = [i for i in (0, 2, 3, 4, 7, 9, 11) if i < ctl.params.size]  # CAVIA adapts 3 numbers only

    def poison(params):
        params = params.copy()
        params.reshape(-1)[where] = [(np.nan, np.inf, -np.inf)[i % 3] for i in range(len(where))]
        return params

    obs = np.zeros(ctl.obs_dim, np.float32)
    for _ in range(ctl.episodes_per_step):
        for t in range(2):
            command = ctl.act(obs)
            ctl.observe(obs, command, 1.0 + t, obs, t == 1)
    before = ctl.params.copy()
    ctl._adapt_session = _Spy(ctl._adapt_session, poison)
    with pytest.raises(ValueError) as err:
        ctl.adapt()
    assert str(err.value) == (f"adapt graph returned non-finite parameters (at {len(where)} of {before.size} indices, "
                              f"first {where[:5]}); kept the old ones")
    np.testing.assert_array_equal(ctl.params, before)
    ctl._adapt_session = ctl._adapt_session.session
    ctl.adapt()
    assert not np.array_equal(ctl.params, before) and 0 < ctl.adapt_latency.p50_s < 10


def test_a_recurrent_controller_has_no_adapt_graph_to_warm(recurrent_bundle):  # noqa: F811
    _, _, bundle = recurrent_bundle
    ctl = load_controller(bundle, ["cpu"], seed=0)
    policy = _Spy(ctl._policy_session)
    ctl._policy_session = policy
    ctl.warmup(2)
    assert policy.calls == 2 and ctl._adapt_session is None and not ctl.state.any()
