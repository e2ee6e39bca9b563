"""Episode samplers: trial semantics, ordering, determinism across samplers, and worker crashes.

Fault injection is deterministic: :class:`FaultyGoalPolicy` reads what to do from the request's
options (kill its own worker once or always, wait to be killed from outside, raise), with marker files
in ``tmp_path`` so a re-run of the request behaves normally.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from metarl_robot.sampling import (
    BasePolicy,
    Episode,
    EpisodeBatch,
    EpisodeRequest,
    FunctionPolicy,
    RandomPolicy,
    SamplingError,
    SerialSampler,
    SubprocessSampler,
    WorkerCrashError,
    episode_seed,
    make_requests,
    policy_rng,
    run_trial,
)
from metarl_robot.tasks import TaskSpec
from metarl_robot.testing import PointGoalEnv, point_goal_distribution

POINT_ENV = "metarl_robot.testing:metarl/PointGoal-v0"
GRASP_ENV = "sim:metarl/PandaGrasp-v0"
POINT_KWARGS = {"max_episode_steps": 8}


class FaultyGoalPolicy(BasePolicy):
    """Noisy steps towards the goal (an oracle), counting adaptations; faults come from the options.

    ``kill_marker``: SIGKILL its own worker on the first attempt (the marker file records it);
    ``always_kill``: SIGKILL its worker on every attempt; ``pid_file``: write the worker's pid there on
    the first attempt and wait to be killed from outside; ``raise``: raise ValueError.
    """

    def __init__(self, noise: float = 0.3) -> None:
        self.noise = noise

    def reset(self, task, rng, options) -> None:
        super().reset(task, rng, options)
        self.adaptations = 0

    def end_episode(self) -> None:
        self.adaptations += 1

    def act(self, obs):
        options = self.options
        if options.get("always_kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        marker = options.get("kill_marker")
        if marker and not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        pid_file = options.get("pid_file")
        if pid_file and not Path(pid_file).exists():
            tmp = Path(f"{pid_file}.tmp")
            tmp.write_text(str(os.getpid()))
            tmp.rename(pid_file)
            time.sleep(30)
            raise RuntimeError("the test did not kill this worker within 30 s")
        if options.get("raise"):
            raise ValueError("policy failure injected by the test")
        goal = np.array([self.task["goal_x"], self.task["goal_y"]])
        noise = self.rng.normal(0.0, self.noise, 2)
        action = np.clip((goal - obs) / 0.1 + noise, -1, 1).astype(np.float32)
        return action, {"noise": noise, "adaptations": float(self.adaptations)}



def kill_when_running(pid_file: Path, sig: int, killed: list[int]) -> threading.Thread:
    """Start a thread that kills, with ``sig``, the worker whose pid appears in ``pid_file`` (within 30 s)."""

    def kill() -> None:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        killed.append(int(pid_file.read_text()))
        os.kill(killed[-1], sig)

    thread = threading.Thread(target=kill)
    thread.start()
    return thread

def scripted_grasp(obs, task, options):
    """The scripted grasp controller with the oracle grip force (or ``options["grip_force_n"]``)."""
    from sim import oracle_grip_force_n, scripted_grasp_action

    return scripted_grasp_action(obs, options.get("grip_force_n", oracle_grip_force_n(task)))


def point_requests(n: int = 6, episodes: int = 2, **options) -> list[EpisodeRequest]:
    return make_requests(point_goal_distribution().train_tasks[:n], seed=11, episodes=episodes, options=options)


def with_options(requests: list[EpisodeRequest], index: int, **options) -> list[EpisodeRequest]:
    out = list(requests)
    r = out[index]
    out[index] = EpisodeRequest(r.index, r.task, r.seed, r.episodes, {**r.options, **options})
    return out


@pytest.fixture(scope="module")
def serial_point():
    with SerialSampler(POINT_ENV, POINT_KWARGS) as sampler:
        yield sampler


@pytest.fixture(scope="module")
def reference(serial_point) -> list[Episode]:
    return serial_point.sample(FaultyGoalPolicy(), point_requests())


# ----------------------------------------------------------------------------------- requests


def test_request_validation_and_seeds() -> None:
    task = point_goal_distribution().train_tasks[0]
    with pytest.raises(ValueError, match="episodes"):
        EpisodeRequest(0, task, 1, episodes=0)
    with pytest.raises(ValueError, match="seed"):
        EpisodeRequest(0, task, -1)
    with pytest.raises(TypeError, match="TaskSpec"):
        EpisodeRequest(0, {"goal_x": 0.1}, 1)
    request = EpisodeRequest(np.int64(3), task, np.uint32(7))
    assert request.index == 3 and type(request.seed) is int
    assert request.describe() == f"request 3 (task {task.task_id!r}, seed 7)"
    requests = make_requests([task] * 3, seed=0, episodes=2)
    assert [r.index for r in requests] == [0, 1, 2] and len({r.seed for r in requests}) == 3
    assert make_requests([task] * 3, seed=0, episodes=2) == requests
    assert episode_seed(5, 0) == 5 and len({episode_seed(5, j) for j in range(4)}) == 4
    # The policy's stream is not the env's (which gymnasium seeds with the seed itself).
    assert policy_rng(5).random() != np.random.default_rng(5).random()


def test_duplicate_indices_are_refused(serial_point) -> None:
    requests = point_requests(2)
    with pytest.raises(ValueError, match="index 0"):
        serial_point.sample(FaultyGoalPolicy(), [requests[0], requests[0]])


# -------------------------------------------------------------------------------------- trials


def test_run_trial_resets_every_episode_and_calls_end_episode_between() -> None:
    env = PointGoalEnv(max_episode_steps=5)
    request = point_requests(1, episodes=3)[0]
    policy = FaultyGoalPolicy()
    episodes = run_trial(env, policy, request, worker="here")
    assert [e.episode_in_trial for e in episodes] == [0, 1, 2]
    assert [e.seed for e in episodes] == [episode_seed(request.seed, j) for j in range(3)]
    for j, episode in enumerate(episodes):
        assert np.all(episode.extras["adaptations"] == j)
        assert episode.truncated[-1] and not episode.truncated[:-1].any() and episode.worker == "here"
        first_obs, _ = PointGoalEnv(max_episode_steps=5).reset(seed=episode.seed)
        assert np.array_equal(episode.obs[0], first_obs)
    assert not np.array_equal(episodes[0].extras["noise"], episodes[1].extras["noise"])


def test_run_trial_cuts_episodes_at_max_steps() -> None:
    env = PointGoalEnv(max_episode_steps=50)
    (episode,) = run_trial(env, FaultyGoalPolicy(), point_requests(1, episodes=1)[0], max_steps=4)
    assert episode.length == 4 and episode.truncated.tolist() == [False, False, False, True]


def test_explicit_reset_seeds_replace_the_derived_ones() -> None:
    request = point_requests(1, episodes=2)[0]
    fixed = EpisodeRequest(request.index, request.task, request.seed, 2, reset_seeds=(7, 8))
    episodes = run_trial(PointGoalEnv(max_episode_steps=3), FaultyGoalPolicy(), fixed)
    assert [e.seed for e in episodes] == [7, 8]
    with pytest.raises(ValueError, match="one per episode"):
        EpisodeRequest(0, request.task, 0, 3, reset_seeds=(1, 2))


def test_episode_batch_is_the_episodes_side_by_side_with_padding() -> None:
    """The one episode record (Episode) and the learners' time-major layout hold the same data."""
    env = PointGoalEnv(max_episode_steps=6)
    episodes = [
        *run_trial(env, FaultyGoalPolicy(), point_requests(1, episodes=1)[0], max_steps=4),
        *run_trial(env, FaultyGoalPolicy(), point_requests(2, episodes=1)[1]),
    ]
    batch = EpisodeBatch.from_episodes(episodes)
    assert batch.obs.shape == (6, 2, 2) and batch.num_episodes == 2 and batch.num_steps == 6
    assert batch.valid.sum(0).tolist() == [4, 6] and batch.tasks == [e.task for e in episodes]
    for i, e in enumerate(episodes):
        for name in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "success"):
            np.testing.assert_array_equal(getattr(batch, name)[: e.length, i], getattr(e, name))
            assert not getattr(batch, name)[e.length :, i].any()
        np.testing.assert_array_equal(batch.extras["noise"][: e.length, i], e.extras["noise"])
    np.testing.assert_allclose(batch.episode_returns(), [e.total_reward for e in episodes], rtol=1e-6)
    assert batch.episode_success().tolist() == [e.succeeded for e in episodes]


def test_serial_orders_by_index_and_stacks_arrays(serial_point) -> None:
    requests = point_requests(4, episodes=2)[::-1]
    episodes = serial_point.sample(FaultyGoalPolicy(), requests)
    assert [(e.request_index, e.episode_in_trial) for e in episodes] == [(i, j) for i in range(4) for j in range(2)]
    e = episodes[0]
    T = POINT_KWARGS["max_episode_steps"]
    assert e.obs.shape == e.next_obs.shape == (T, 2) and e.actions.shape == (T, 2)
    assert e.rewards.shape == e.terminated.shape == e.truncated.shape == e.success.shape == (T,)
    assert e.rewards.dtype == np.float32 and e.success.dtype == bool
    assert e.extras["noise"].shape == (T, 2) and e.extras["adaptations"].shape == (T,)
    assert np.array_equal(e.obs[1:], e.next_obs[:-1])
    assert e.task == requests[-1].task and e.seed == requests[-1].seed
    assert e.total_reward == pytest.approx(float(e.rewards.astype(np.float64).sum()))
    assert e.succeeded == bool(e.success[-1])


def test_policy_passed_in_is_not_modified(serial_point) -> None:
    policy = FaultyGoalPolicy()
    serial_point.sample(policy, point_requests(2))
    assert policy.task is None and not hasattr(policy, "adaptations")


def test_random_policy_is_seeded_by_the_request(serial_point) -> None:
    policy = RandomPolicy(PointGoalEnv().action_space)
    a = serial_point.sample(policy, point_requests(3))
    b = serial_point.sample(policy, point_requests(3))
    assert a == b
    assert not np.array_equal(a[0].actions, a[2].actions)


# --------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("num_workers", [1, 2])
def test_subprocess_matches_serial(reference, num_workers: int) -> None:
    with SubprocessSampler(POINT_ENV, num_workers, POINT_KWARGS) as sampler:
        episodes = sampler.sample(FaultyGoalPolicy(), point_requests())
        assert episodes == reference
        assert 1 <= len({e.worker for e in episodes}) <= num_workers
        # A second batch with another policy: the new policy reaches every worker.
        noiseless = sampler.sample(FaultyGoalPolicy(noise=0.0), point_requests())
        assert all(np.all(e.extras["noise"] == 0) for e in noiseless)


@pytest.mark.sim
def test_grasp_env_subprocess_matches_serial() -> None:
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    from sim import default_grasp_distribution

    tasks = default_grasp_distribution().train_tasks[:3]
    requests = make_requests(tasks, seed=4, episodes=1)
    requests[1] = EpisodeRequest(1, tasks[1], requests[1].seed, 2, {"grip_force_n": 5.0})
    kwargs = {"max_episode_steps": 10}
    policy = FunctionPolicy(scripted_grasp)
    with SerialSampler(GRASP_ENV, kwargs) as serial:
        expected = serial.sample(policy, requests)
    with SubprocessSampler(GRASP_ENV, 2, kwargs) as sampler:
        episodes = sampler.sample(policy, requests)
    assert len(episodes) == 4 and episodes == expected
    assert episodes[0].obs.shape == (10, 10) and episodes[0].actions.shape == (10, 4)


# ------------------------------------------------------------------------------ worker crashes


def assert_each_request_once(episodes: list[Episode], requests: list[EpisodeRequest]) -> None:
    counts = Counter((e.request_index, e.episode_in_trial) for e in episodes)
    assert counts == Counter((r.index, j) for r in requests for j in range(r.episodes))


def test_worker_killing_itself_is_replaced_and_its_request_rerun(reference, tmp_path, caplog) -> None:
    requests = with_options(point_requests(), 2, kill_marker=str(tmp_path / "killed"))
    with SubprocessSampler(POINT_ENV, 2, POINT_KWARGS) as sampler:
        before = set(sampler.worker_pids)
        with caplog.at_level(logging.WARNING, logger="metarl_robot.sampling"):
            episodes = sampler.sample(FaultyGoalPolicy(), requests)
        assert (tmp_path / "killed").exists()
        assert_each_request_once(episodes, requests)
        assert episodes == reference
        assert len(set(sampler.worker_pids) - before) == 1
        assert "killed by signal SIGKILL while running request 2" in caplog.text
        assert "attempt 2 of 4" in caplog.text


def test_worker_killed_from_outside_mid_batch(reference, tmp_path) -> None:
    pid_file = tmp_path / "victim.pid"
    requests = with_options(point_requests(), 3, pid_file=str(pid_file))
    killed: list[int] = []

    with SubprocessSampler(POINT_ENV, 2, POINT_KWARGS) as sampler:
        killer = kill_when_running(pid_file, signal.SIGTERM, killed)
        episodes = sampler.sample(FaultyGoalPolicy(), requests)
        killer.join()
        assert killed and killed[0] not in sampler.worker_pids
        assert_each_request_once(episodes, requests)
        assert episodes == reference


def test_request_that_always_crashes_its_worker_raises_after_retries(reference, caplog) -> None:
    requests = with_options(point_requests(), 4, always_kill=True)
    with SubprocessSampler(POINT_ENV, 2, POINT_KWARGS, max_retries=2) as sampler:
        with pytest.raises(WorkerCrashError) as info:
            sampler.sample(FaultyGoalPolicy(), requests)
        message = str(info.value)
        assert requests[4].describe() in message and "lost 3 times" in message
        assert "SIGKILL" in message and "max_retries=2" in message
        assert len(sampler.worker_pids) == 2
        assert sampler.sample(FaultyGoalPolicy(), point_requests()) == reference


@pytest.mark.parametrize("sampler_kind", ["serial", "subprocess"])
def test_env_and_policy_exceptions_name_the_request(reference, sampler_kind: str) -> None:
    requests = point_requests()
    wrong_family = TaskSpec("grasp", {"object_mass_kg": 0.1}, "not-a-point-task")
    requests[1] = EpisodeRequest(1, wrong_family, 5)
    make = SerialSampler if sampler_kind == "serial" else lambda *a: SubprocessSampler(a[0], 2, a[1])
    with make(POINT_ENV, POINT_KWARGS) as sampler:
        with pytest.raises(SamplingError, match=r"request 1 \(task 'not-a-point-task', seed 5\).*TaskError") as info:
            sampler.sample(FaultyGoalPolicy(), requests)
        assert not isinstance(info.value, WorkerCrashError)
        with pytest.raises(SamplingError, match=r"request 0 .*ValueError: policy failure injected"):
            sampler.sample(FaultyGoalPolicy(), with_options(point_requests(), 0, **{"raise": True}))
        assert sampler.sample(FaultyGoalPolicy(), point_requests()) == reference


def test_unpicklable_policy_is_refused_with_the_fix() -> None:
    with SerialSampler(POINT_ENV, POINT_KWARGS) as sampler:
        with pytest.raises(SamplingError, match="module level"):
            sampler.sample(FunctionPolicy(lambda obs, task, options: obs), point_requests(1))


def test_closed_sampler_refuses_work() -> None:
    sampler = SubprocessSampler(POINT_ENV, 1, POINT_KWARGS)
    sampler.close()
    sampler.close()
    with pytest.raises(SamplingError, match="closed"):
        sampler.sample(FaultyGoalPolicy(), point_requests(1))


def test_bad_env_id_fails_at_construction() -> None:
    with pytest.raises(SamplingError, match="could not build env"):
        SubprocessSampler("metarl_robot.testing:metarl/NoSuchEnv-v0", 1)


def test_sampling_imports_without_ray_torch_or_pybullet_and_names_the_fix() -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import sys
        for name in ("ray", "torch", "pybullet", "rclpy"):
            sys.modules[name] = None
        from metarl_robot.sampling import RaySampler
        try:
            RaySampler({POINT_ENV!r}, 1)
        except ImportError as err:
            assert "pip install -e .[distributed]" in str(err), err
        else:
            raise AssertionError("RaySampler without ray did not raise")
        """
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr


class ThreadProbePolicy(BasePolicy):
    """Zero actions; reports the OMP_NUM_THREADS its process runs with (0 when unset)."""

    def act(self, obs):
        return np.zeros(2, np.float32), {"omp_threads": float(os.environ.get("OMP_NUM_THREADS", "0"))}


def test_workers_run_single_threaded_and_the_serial_host_is_left_alone(serial_point) -> None:
    before = os.environ.get("OMP_NUM_THREADS")
    serial_point.sample(ThreadProbePolicy(), point_requests(1))
    assert os.environ.get("OMP_NUM_THREADS") == before
    with SubprocessSampler(POINT_ENV, 1, POINT_KWARGS) as sampler:
        (episode,) = sampler.sample(ThreadProbePolicy(), point_requests(1, episodes=1))
    assert np.all(episode.extras["omp_threads"] == 1)


def test_worker_that_died_between_batches_is_replaced_without_a_retry(reference, caplog) -> None:
    with SubprocessSampler(POINT_ENV, 2, POINT_KWARGS, max_retries=0) as sampler:
        victim = sampler.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="metarl_robot.sampling"):
            assert sampler.sample(FaultyGoalPolicy(), point_requests()) == reference
        assert victim not in sampler.worker_pids
        assert "while idle" in caplog.text or "before starting" in caplog.text
