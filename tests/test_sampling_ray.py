"""RaySampler on a local Ray instance: same episodes as the serial sampler, worker crashes survived,
and the instance kept on loopback. Ray starts once for the module (two CPUs) and is shut down after.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("ray")

from metarl_robot.sampling import (  # noqa: E402
    EpisodeRequest,
    FunctionPolicy,
    RaySampler,
    SamplingError,
    SerialSampler,
    WorkerCrashError,
    make_requests,
    start_local_ray,
)
from metarl_robot.tasks import TaskSpec  # noqa: E402
from tests.test_sampling import (  # noqa: E402
    kill_when_running,
    GRASP_ENV,
    POINT_ENV,
    POINT_KWARGS,
    FaultyGoalPolicy,
    assert_each_request_once,
    point_requests,
    scripted_grasp,
    with_options,
)


@pytest.fixture(scope="module")
def ray_instance():
    ray = start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_point(ray_instance):
    # One sampler per test: the instance has two CPUs and each actor takes one.
    with RaySampler(POINT_ENV, 2, POINT_KWARGS) as sampler:
        yield sampler


@pytest.fixture(scope="module")
def reference():
    with SerialSampler(POINT_ENV, POINT_KWARGS) as sampler:
        return sampler.sample(FaultyGoalPolicy(), point_requests())


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _socket_rows(args: list[str], pids: set[int]) -> list[tuple[str, str]]:
    """(local, peer) addresses of the sockets ``ss`` lists for processes in ``pids``."""
    rows = []
    for line in subprocess.run(["ss", *args], capture_output=True, text=True, check=True).stdout.splitlines()[1:]:
        owners = {int(part.split(",")[0]) for part in line.split("pid=")[1:]}
        if owners & pids:
            fields = line.split()
            rows.append((fields[3], fields[4]))
    return rows


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or host.startswith("127.")


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_local_ray_listens_and_connects_on_loopback_only(ray_point) -> None:
    ray = ray_point._ray
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    pids = _descendants(os.getpid()) | {os.getpid()}
    listening = _socket_rows(["-tlnpH"], pids) + _socket_rows(["-ulnpH"], pids)
    connected = _socket_rows(["-tnpH"], pids)
    assert listening, "found no sockets of the Ray processes; is ss showing process ids?"
    assert all(_is_loopback(local) for local, _ in listening), listening
    assert all(_is_loopback(local) and _is_loopback(peer) for local, peer in connected), connected


def test_ray_matches_serial(ray_point, reference) -> None:
    episodes = ray_point.sample(FaultyGoalPolicy(), point_requests())
    assert episodes == reference
    assert {e.worker.split(":")[0] for e in episodes} <= {"ray-1", "ray-2"}


def test_ray_actor_killing_itself_is_replaced(ray_point, reference, tmp_path, caplog) -> None:
    requests = with_options(point_requests(), 2, kill_marker=str(tmp_path / "killed"))
    before = set(ray_point.worker_pids)
    with caplog.at_level(logging.WARNING, logger="metarl_robot.sampling"):
        episodes = ray_point.sample(FaultyGoalPolicy(), requests)
    assert (tmp_path / "killed").exists()
    assert_each_request_once(episodes, requests)
    assert episodes == reference
    assert len(set(ray_point.worker_pids) - before) == 1
    assert "while running request 2" in caplog.text and "attempt 2 of 4" in caplog.text


def test_ray_actor_killed_from_outside_mid_batch(ray_point, reference, tmp_path) -> None:
    pid_file = tmp_path / "victim.pid"
    requests = with_options(point_requests(), 3, pid_file=str(pid_file))
    killed: list[int] = []

    killer = kill_when_running(pid_file, signal.SIGKILL, killed)
    episodes = ray_point.sample(FaultyGoalPolicy(), requests)
    killer.join()
    assert killed and killed[0] not in ray_point.worker_pids
    assert_each_request_once(episodes, requests)
    assert episodes == reference


def test_ray_request_that_always_crashes_raises_after_retries(ray_instance, reference) -> None:
    requests = with_options(point_requests(), 4, always_kill=True)
    with RaySampler(POINT_ENV, 2, POINT_KWARGS, max_retries=1) as sampler:
        with pytest.raises(WorkerCrashError, match=r"request 4 \(task 'train-0004', seed \d+\) was lost 2 times"):
            sampler.sample(FaultyGoalPolicy(), requests)
        assert len(sampler.worker_pids) == 2
        assert sampler.sample(FaultyGoalPolicy(), point_requests()) == reference


def test_ray_env_exception_names_the_request(ray_point, reference) -> None:
    requests = point_requests()
    requests[1] = EpisodeRequest(1, TaskSpec("grasp", {"object_mass_kg": 0.1}, "not-a-point-task"), 5)
    with pytest.raises(SamplingError, match=r"request 1 \(task 'not-a-point-task', seed 5\).*TaskError") as info:
        ray_point.sample(FaultyGoalPolicy(), requests)
    assert not isinstance(info.value, WorkerCrashError)
    assert ray_point.sample(FaultyGoalPolicy(), point_requests()) == reference


@pytest.mark.sim
def test_ray_grasp_env_matches_serial(ray_instance) -> None:
    import pybullet  # noqa: F401  (a dependency: an import error fails)
    from sim import default_grasp_distribution

    requests = make_requests(default_grasp_distribution().train_tasks[:3], seed=4, episodes=1)
    kwargs = {"max_episode_steps": 10}
    policy = FunctionPolicy(scripted_grasp)
    with SerialSampler(GRASP_ENV, kwargs) as serial:
        expected = serial.sample(policy, requests)
    with RaySampler(GRASP_ENV, 2, kwargs) as sampler:
        assert sampler.sample(policy, requests) == expected
