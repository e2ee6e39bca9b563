"""Mutation testing of the code where a silent bug hurts most, with mutmut (``make mutation``).

    python -m tests.mutation [GROUP ...] [--jobs 2] [--fresh | --again] [--sample N | --whole]

Each group names the source files mutmut mutates and the tests that must catch the mutants. A group
runs in a copy of the tracked files under ``runs/mutation/<group>/`` (mutmut rewrites the code it
mutates in a ``mutants/`` folder there; this checkout is never touched), so groups can be resumed:
mutmut keeps its results and re-tests only functions that changed. The counts per source file are
written to ``runs/mutation/<group>.json`` and printed; ``docs/testing.md`` records the last full run
and what was done about every survivor.

Not part of ``make test``: a group takes minutes to hours on two cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "mutation"

GROUPS: dict[str, dict[str, Any]] = {
    "advantages": {
        "mutate": ["metarl_robot/runtime/advantages.py"],
        "tests": ["tests/test_known_answers.py", "tests/test_gradient_meta.py", "tests/test_context_ppo.py"],
    },
    "advantage_graph": {
        "mutate": ["metarl_robot/families/gradient_onnx.py"],
        "tests": ["tests/test_gradient_onnx.py"],
    },
    "integrity": {
        "mutate": ["metarl_robot/runtime/integrity.py"],
        "tests": ["tests/runtime/test_bundle_integrity.py", "tests/runtime/test_bundle.py", "tests/test_sign.py",
                  "tests/test_verify.py"],
    },
    "runtime": {
        "mutate": ["metarl_robot/runtime/base.py", "metarl_robot/runtime/bundle.py",
                   "metarl_robot/runtime/controller.py", "metarl_robot/runtime/recurrent_controller.py",
                   "metarl_robot/runtime/gradient_controller.py", "metarl_robot/runtime/schedule.py"],
        "tests": ["tests/runtime", "tests/test_known_answers.py", "tests/test_sign.py"],  # test_*_exact.py included
    },
    "loop": {
        "mutate": ["metarl_robot/runtime/loop.py", "metarl_robot/contract.py"],
        "tests": ["tests/runtime/test_loop.py", "tests/runtime/test_loop_exact.py", "tests/test_contract.py",
                  "tests/test_contract_exact.py", "tests/test_fuzz.py"],
    },
    "guard": {
        "mutate": ["metarl_robot/runtime/guard.py"],
        "tests": ["tests/runtime/test_guard.py"],
    },
    "export": {
        "sample": 100,  # every mutant: about a day on two cores (docs/testing.md)
        "mutate": ["metarl_robot/export.py", "metarl_robot/verify.py", "metarl_robot/parity.py"],
        "tests": ["tests/test_export.py", "tests/test_verify.py", "tests/test_verify_meaning.py",
                  "tests/test_gradient_export.py", "tests/test_recurrent_export.py", "tests/test_sign.py"],
    },
    "evaluation": {
        "mutate": ["metarl_robot/evaluation.py"],
        "tests": ["tests/test_evaluation_frozen.py", "tests/test_evaluation_exact.py", "tests/test_context_ppo.py", "tests/test_gradient_meta.py",
                  "tests/test_rl2.py"],
    },
    "algorithms": {
        "sample": 200,
        # the losses and updates of every method (rollout, config and bookkeeping modules are left out)
        "mutate": ["metarl_robot/algos/common/ppo.py", "metarl_robot/algos/context_ppo/algo.py",
                   "metarl_robot/algos/gradient/algo.py", "metarl_robot/algos/rl2/algo.py",
                   "metarl_robot/algos/rma/algo.py", "metarl_robot/algos/pearl/algo.py"],
        "tests": ["tests/test_learning_direction.py", "tests/test_known_answers.py", "tests/test_context_ppo.py",
                  "tests/test_gradient_meta.py", "tests/test_rl2.py", "tests/test_rma.py", "tests/test_pearl.py"],
    },
}
"""What each group mutates (mutmut ``only_mutate`` globs) and the tests run against its mutants."""

ALSO_COPY = ["sim/", "ros_nodes/", "configs/", "models/", "pytest.ini"]

EXPORTS_CACHED = {"runtime": "", "loop": "", "guard": "", "evaluation": "", "algorithms": "",
                  "export": "tests/test_verify.py,tests/test_verify_meaning.py,tests/test_sign.py",
                  "integrity": ""}
"""Groups whose tests are served exported bundles from a cache (see ``tests/conftest.py``), filled by
one run of the group's tests on the unmutated code before mutmut starts; the value names the only test
files served ("": every test). The first four groups do not mutate the export path; a mutant of
runtime code that export calls (its parity check runs the bundle) is then seen only where the tests
call that code themselves, which they do. In the export group only the verify and signing tests are
served; the tests of export export with the mutant. integrity was first measured exporting afresh
everywhere; its later runs (``--again``) are served too, which can only lose kills that export-time
uses of its functions would have made."""


def _setup_cfg(group: dict[str, list[str]]) -> str:
    def block(key: str, values: list[str]) -> str:
        return f"{key}=\n" + "".join(f"    {v}\n" for v in values)

    return ("[mutmut]\nsource_paths=\n    metarl_robot/\n" + block("only_mutate", group["mutate"])
            + block("pytest_add_cli_args_test_selection", group["tests"])
            + block("pytest_add_cli_args", ["-p", "no:cacheprovider", "-m", "not slow and not ros"])
            + block("also_copy", ALSO_COPY)
            # Each mutant's tests run in a process forked from a server that has imported the test
            # modules but run nothing: forked straight from a process whose torch and onnxruntime
            # thread pools had run, workers hung until their timeout (counted as killed, wrongly).
            + "process_isolation=forkserver\nforkserver_warmup=collect\n"
            # A mutant's tests rebuild their session fixtures (exported bundles) in each worker, far
            # beyond mutmut's estimate from the shared clean run: with its default limit (1 s), mutants
            # the tests do not catch were stopped and scored as timeouts (as killed). mutmut allows
            # (estimate + constant) * 30 CPU seconds; at 60 a mutant that loops forever held a
            # worker for 30 minutes. With the export cache the clean run's durations are close to a
            # mutant's, so the multiplier comes down from mutmut's 15 to 3: a mutant that loops is
            # stopped after 6 x (estimate + 10) CPU seconds, about a minute, instead of 5.
            + "timeout_constant=10\ntimeout_multiplier=3\n")


def _copy_tracked(dest: Path, fresh: bool) -> None:
    """The tracked files of this checkout (as they are now, edits included) into ``dest``."""
    if fresh and dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source, target = REPO / name, dest / name
        if not source.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            # A fresh modification time: mutmut regenerates a file's mutants only when the source is newer
            # than them, and a source edited while an earlier run was generating would look older.
            shutil.copyfile(source, target)
            shutil.copymode(source, target)


def _statuses(work: Path, mutmut: str) -> dict[str, str]:
    """``{mutant name: status}`` of every mutant mutmut has generated for the group."""
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True)
    statuses = {}
    for line in listing.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            statuses[name] = status
    return statuses


def _counts(work: Path, mutmut: str, only: set[str] | None = None) -> dict[str, dict[str, int]]:
    """``{source module: {status: count}}`` from ``mutmut results --all true`` (of the mutants in
    ``only`` when given)."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in _statuses(work, mutmut).items():
        if only is not None and name not in only:
            continue
        # mutmut names a mutant module.x_function__mutmut_N or module.xǁClassǁmethod__mutmut_N
        match = re.match(r"^(.*?)\.x(?:_|\u01c1)", name)
        counts[match.group(1) if match else name][status] += 1
    return {module: dict(c) for module, c in sorted(counts.items())}


def score(counts: dict[str, int]) -> float:
    """Killed over all mutants that ran; ``nan`` when none did. A timeout is not counted as a kill
    (mutmut does): here it was more often a slow test than a mutant that hangs, so each is re-run
    or read by hand and reported on its own."""
    total = sum(v for k, v in counts.items() if k not in ("skipped", "not checked"))
    return counts.get("killed", 0) / total if total else float("nan")


def _not_killed(work: Path, mutmut: str) -> list[str]:
    """The mutants of the last run that survived or timed out."""
    return [name for name, status in _statuses(work, mutmut).items() if status in ("survived", "timeout")]


def _broaden_test_selection(work: Path) -> None:
    """Run, for each mutated function, every test of each test module that mutmut saw calling it.

    mutmut runs for a mutant only the tests it saw call the mutated function. A bundle exported in a
    module- or session-scoped fixture is exported while the first test that asks for it is set up, so
    mutmut credits that call to the first test alone, and never runs the module's other tests (which
    check what the fixture built: the manifest's bounds, its provenance) against mutants of export: a
    mutant that they kill survived. This widens each function's tests to the whole modules."""
    path = work / "mutants" / "mutmut-stats.json"
    if not path.exists():
        return
    stats = json.loads(path.read_text())
    by_function = stats["tests_by_mangled_function_name"]
    by_module: dict[str, set[str]] = collections.defaultdict(set)
    for test in set(stats.get("duration_by_test", {})).union(*map(set, by_function.values())):
        by_module[test.split("::")[0]].add(test)
    for function, tests in by_function.items():
        by_function[function] = sorted(set(tests).union(*(by_module[t.split("::")[0]] for t in tests)))
    path.write_text(json.dumps(stats))


def _draw_sample(work: Path, mutmut: str, size: int) -> set[str]:
    """``size`` of the group's mutants (generated by then) drawn uniformly at random (seed 0), for groups
    whose every mutant would take hours: the score of the sample estimates the group's, with the
    interval of :func:`wilson`."""
    names = sorted(_statuses(work, mutmut))
    return set(random.Random(0).sample(names, min(size, len(names))))


def wilson(killed: int, total: int) -> tuple[float, float]:
    """The 95% Wilson interval of a proportion ``killed / total`` (for a sampled score)."""
    if total == 0:
        return float("nan"), float("nan")
    z, p = 1.96, killed / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def run_group(name: str, jobs: int, fresh: bool, again: bool = False, sample: int = 0) -> dict[str, dict[str, int]]:
    work = OUT / name
    _copy_tracked(work, fresh)
    (work / "setup.cfg").write_text(_setup_cfg(GROUPS[name]))
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if name in EXPORTS_CACHED:
        cache = work / ".export_cache"
        shutil.rmtree(cache, ignore_errors=True)
        env["METARL_TEST_EXPORT_CACHE"] = str(cache)
        env["METARL_TEST_EXPORT_CACHE_ONLY"] = EXPORTS_CACHED[name]
        fill = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m",
                               "not slow and not ros", *GROUPS[name]["tests"]], cwd=work,
                              env={**env, "METARL_TEST_EXPORT_CACHE_WRITE": "1"}, capture_output=True, text=True)
        if fill.returncode != 0:
            raise SystemExit(f"{name}: the group's tests fail on the unmutated code:\n{fill.stdout[-3000:]}")
    log = OUT / f"{name}.log"
    sampled: set[str] | None = None
    with open(log, "w") as out:  # mutmut's own progress and errors, for when a group ends early

        def run(*names: str) -> int:
            return subprocess.run([mutmut, "run", "--max-children", str(jobs), *names], cwd=work, env=env, check=False,
                                  stdout=out, stderr=subprocess.STDOUT).returncode

        # Generate the mutants and collect mutmut's test statistics (a name that matches no mutant makes it
        # do both and stop), then widen its test selection before any mutant runs.
        subprocess.run([mutmut, "run", "metarl_robot.no_such_mutant"], cwd=work, env=env, check=False, stdout=out,
                       stderr=subprocess.STDOUT)
        _broaden_test_selection(work)
        if sample:
            sampled = _draw_sample(work, mutmut, sample)
            (OUT / f"{name}.sample.json").write_text(json.dumps(sorted(sampled), indent=1))
            # --again: only the sampled mutants that survived, timed out, or were never run (new, or their
            # function changed since); the others are done
            pending = {n for n, status in _statuses(work, mutmut).items() if status == "not checked"}
            names = sorted(sampled & (set(_not_killed(work, mutmut)) | pending)) if again else sorted(sampled)
            code = run(*names) if names else 0
        else:
            code = run()
            # mutmut keeps a result until the mutated function changes; tests written since can kill it
            names = _not_killed(work, mutmut) if code == 0 and again else []
            if names:
                code = run(*names)
    counts = _counts(work, mutmut, sampled)
    if code != 0 or any("not checked" in c for c in counts.values()):
        print(f"{name}: mutmut exited with {code} and left mutants unchecked; see {log}", file=sys.stderr)
    (OUT / f"{name}.json").write_text(json.dumps(counts, indent=1))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: every group)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="forget earlier results of the group")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="run N mutants drawn at random (seed 0) instead of all; the score is then an estimate")
    parser.add_argument("--whole", action="store_true",
                        help="run every mutant of a group that is sampled by default (export, algorithms)")
    parser.add_argument("--again", action="store_true",
                        help="also re-test the mutants that survived or timed out in the last run (after new tests)")
    args = parser.parse_args()
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; the groups are {list(GROUPS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.groups or list(GROUPS):
        sample = 0 if args.whole else (args.sample or GROUPS[name].get("sample", 0))
        counts = run_group(name, args.jobs, args.fresh, args.again, sample)
        for module, c in counts.items():
            print(f"{name:11} {module:48} {score(c):6.1%}  {json.dumps(c)}", flush=True)
        killed = sum(c.get("killed", 0) for c in counts.values())
        ran = sum(v for c in counts.values() for k, v in c.items() if k not in ("skipped", "not checked"))
        interval = ""
        if sample:  # a sample estimates the group's score; a whole group's score is exact
            low, high = wilson(killed, ran)
            interval = f" (a sample: 95% CI {low:.1%} to {high:.1%})"
        print(f"{name:11} {'all modules':48} {killed}/{ran} = {killed / max(ran, 1):.1%}{interval}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
