"""The torch-free runtime on each onnxruntime execution provider: act/adapt latency and parity with CPU.

    PYTHONPATH=. python bench/gpu_providers.py --out gpu_providers.json [--bundle DIR ...]

For every bundle (the shipped ``models/maml_navigation/bundle``, a grasp bundle exported from
``models/grasp_context_ppo/checkpoint.safetensors`` in a subprocess when torch and the export code
import, and any ``--bundle DIR``) and every provider of ``--providers`` (cpu, cuda, tensorrt), it opens
the bundle with ``metarl_robot.runtime.load_controller(path, providers=[p])``, warms it up, and

* runs one fixed scenario (seeded exploration, synthetic transitions: enough episodes for one
  adaptation, one ``adapt``, then ``act`` again) and compares the commands before and after the
  adaptation and the adapted state with the CPU provider's, commands in normalised action units, against
  ``metarl_robot.parity.PARITY_TOLERANCE``;
* runs each graph alone on the bundle's test vectors, on raw onnxruntime sessions, against CPU (for a
  CUDA graph off by more than the tolerance, once more with ``use_tf32=0`` to tell TF32 matmuls apart);
* times ``act`` on one observation (p50/p99 over ``--iterations`` calls) and ``adapt`` (p50/max over
  ``--adapt-iterations`` calls, each on a freshly filled buffer or freshly collected episodes).

A provider that this onnxruntime build does not offer is reported as "not available"; one whose session
fell back to the CPU provider (missing CUDA or TensorRT libraries) as "fell back", with no timings.
Prints one table, with the GPU's name (nvidia-smi) and the CPU's model in the device column, and
writes everything to ``--out`` as JSON. Needs numpy, onnxruntime (or onnxruntime-gpu) and this repo on
the path; torch only for the grasp export, and only in its subprocess, so the timed process stays
torch-free like the robot's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

from metarl_robot.parity import PARITY_TOLERANCE, max_abs_diff  # noqa: E402
from metarl_robot.runtime import (  # noqa: E402
    PROVIDER_ALIASES,
    BundleError,
    ProviderError,
    default_session_options,
    load_bundle,
    load_controller,
)

NAVIGATION_BUNDLE = ROOT / "models" / "maml_navigation" / "bundle"
GRASP_CHECKPOINT = ROOT / "models" / "grasp_context_ppo" / "checkpoint.safetensors"
EPISODE_STEPS = 10
"""Length of the synthetic episodes the scenario and the adapt timing collect."""
TENSORRT_LIBS = ("libnvinfer.so.10", "libnvonnxparser.so.10")
CUDA_LIBS = ("libcudart.so.{v}", "libcublas.so.{v}", "libcublasLt.so.{v}", "libcurand.so.10", "libcudnn.so.9")
"""What the CUDA provider of an onnxruntime-gpu build for CUDA {v} loads (names as in 1.31.1's)."""


# ---------------------------------------------------------------------------------------- the machine
def run_quiet(cmd: list[str], timeout: float = 20.0) -> str | None:
    """stdout of ``cmd``, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def gpu_info() -> dict[str, str] | None:
    """Name, driver and memory of the first GPU as nvidia-smi reports them; None without one."""
    out = run_quiet(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if not out:
        return None
    name, driver, memory = (field.strip() for field in out.splitlines()[0].split(",")[:3])
    return {"name": name, "driver": driver, "memory": memory}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_loads(name: str) -> str | None:
    """None when the shared library ``name`` loads, else the loader's message."""
    try:
        ctypes.CDLL(name)
    except OSError as err:
        return str(err)
    return None


def build_cuda_version() -> str | None:
    """The CUDA version this onnxruntime was built with (None for a CPU build)."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None) or None


def cuda_libs() -> dict[str, str]:
    """Whether the CUDA libraries the CUDA provider needs load ("loads" or the loader's message);
    empty when this onnxruntime offers no CUDA provider."""
    version = build_cuda_version()
    if not version or "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {}
    names = [name.format(v=version.split(".")[0]) for name in CUDA_LIBS]
    return {name: library_loads(name) or "loads" for name in names}


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "gpu": gpu_info(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_file": onnxruntime.__file__,
        "onnxruntime_build_cuda": build_cuda_version(),
        "available_providers": onnxruntime.get_available_providers(),
        "cuda_libs": cuda_libs(),
        "tensorrt_libs": {name: library_loads(name) or "loads" for name in TENSORRT_LIBS},
        "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING"),
        "torch_in_process": "torch" in sys.modules,
    }


def device_label(provider: str, machine: dict[str, Any]) -> str:
    if provider == "CPUExecutionProvider":
        model = machine["cpu"].replace("(R)", "").replace(" CPU", "")
        return f"{model[:34]} x{machine['cpu_count']}"
    gpu = machine["gpu"]
    return gpu["name"] if gpu else "no GPU found"


# ---------------------------------------------------------------------------------------- bundles
def export_grasp(checkpoint: Path, out_dir: Path) -> tuple[Path | None, str]:
    """Export the grasp checkpoint in a subprocess (torch stays out of this process)."""
    code = (
        "import sys; from metarl_robot.export import export_bundle; "
        "export_bundle(sys.argv[1], sys.argv[2])"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(checkpoint), str(out_dir)],
            capture_output=True, text=True, timeout=600, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "export timed out after 600 s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"export failed ({last}); torch or the export's dependencies are missing here: pass --bundle DIR"
    shown = checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint
    return out_dir, f"exported from {shown} in {time.perf_counter() - start:.1f} s"


def test_vectors(bundle: Any) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{graph: {"inputs": {...}, "outputs": {...}}}`` from the bundle's test_vectors.npz."""
    vectors: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with np.load(bundle.file_path("test_vectors.npz")) as data:
        for key in data.files:
            graph, kind, name = key.split("/", 2)
            vectors.setdefault(graph, {}).setdefault(kind, {})[name] = data[key]
    return vectors


# ---------------------------------------------------------------------------------------- measurements
def transitions(obs_rows: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """The i-th synthetic transition: observation, next observation, reward, done."""
    obs, next_obs = obs_rows[i % len(obs_rows)], obs_rows[(i + 1) % len(obs_rows)]
    reward = -0.1 * float(np.linalg.norm(next_obs))
    return obs, next_obs, reward, (i % EPISODE_STEPS) == EPISODE_STEPS - 1


def fill(ctl: Any, obs_rows: np.ndarray, commands: list[np.ndarray] | None = None) -> None:
    """Act and observe synthetic episodes until one adaptation has what it needs."""
    buffer_size = int(getattr(ctl, "buffer_size", 0))  # context family: fill the whole buffer
    episodes = max(int(ctl.episodes_per_step), math.ceil(buffer_size / EPISODE_STEPS))
    for i in range(episodes * EPISODE_STEPS):
        obs, next_obs, reward, done = transitions(obs_rows, i)
        command = ctl.act(obs)
        if commands is not None:
            commands.append(command.copy())
        ctl.observe(obs, command, reward, next_obs, done)


def scenario(ctl: Any, obs_rows: np.ndarray) -> dict[str, Any]:
    """Commands before an adaptation, the adapted state, and commands after it."""
    before: list[np.ndarray] = []
    fill(ctl, obs_rows, before)
    ctl.adapt()
    state = ctl.get_state()
    after = [ctl.act(obs).copy() for obs in obs_rows]
    return {"before": np.stack(before), "state": state, "after": np.stack(after)}


def scenario_parity(run: dict[str, Any], reference: dict[str, Any], scale: np.ndarray) -> dict[str, float]:
    return {
        "act_before_adapt": max_abs_diff("policy", run["before"], reference["before"], scale, output="command"),
        "adapted_state": max(
            max_abs_diff("adapt", run["state"][k], reference["state"][k], scale) for k in reference["state"]
        ),
        "act_after_adapt": max_abs_diff("policy", run["after"], reference["after"], scale, output="command"),
    }


def graph_outputs(bundle: Any, vectors: dict, provider: str, options: dict[str, str] | None = None) -> dict | str:
    """Each graph's outputs on its test-vector inputs with a raw session; a string when the session
    does not run on ``provider``."""
    outputs = {}
    for graph in bundle.graphs:
        chain = [(provider, options) if options else provider]
        if provider != "CPUExecutionProvider":
            chain.append("CPUExecutionProvider")
        try:
            session = onnxruntime.InferenceSession(
                str(bundle.graph_path(graph)), sess_options=default_session_options(), providers=chain
            )
        except Exception as err:  # onnxruntime raises its own types
            return f"session failed: {err}"
        if session.get_providers()[0] != provider:
            return f"{graph} graph fell back to {session.get_providers()[0]}"
        names = [o.name for o in session.get_outputs()]
        outputs[graph] = dict(zip(names, session.run(None, vectors[graph]["inputs"])))
    return outputs


def graph_parity(bundle: Any, outputs: dict, reference: dict) -> dict[str, float]:
    scale = np.asarray(bundle.action["scale"], dtype=np.float32)
    return {
        f"{graph}.{name}": max_abs_diff(graph, value, reference[graph][name], scale, output=name)
        for graph, values in outputs.items()
        for name, value in values.items()
    }


def time_calls(fn: Any, n: int) -> np.ndarray:
    durations = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        durations[i] = time.perf_counter() - start
    return durations


def measure(path: Path, provider: str, args: argparse.Namespace, vectors: dict) -> dict[str, Any]:
    """Open, warm up, run the scenario and time one provider on one bundle."""
    start = time.perf_counter()
    ctl = load_controller(path, providers=[provider], seed=0)
    load_s = time.perf_counter() - start
    result: dict[str, Any] = {"session_providers": dict(ctl.session_providers), "load_s": load_s}
    if any(actual != provider for actual in ctl.session_providers.values()):
        result["status"] = "fell back"
        return result
    start = time.perf_counter()
    ctl.warmup(args.warmup)
    result["warmup_s"] = time.perf_counter() - start

    obs_rows = vectors["policy"]["inputs"]["obs"].astype(np.float32)
    result["scenario"] = scenario(ctl, obs_rows)

    ctl.reset()
    fill(ctl, obs_rows)
    act = time_calls(lambda i: ctl.act(obs_rows[i % len(obs_rows)]), args.iterations)
    adapt = []
    for _ in range(args.adapt_iterations):
        if ctl.episodes_ready < ctl.episodes_per_step:
            fill(ctl, obs_rows)
        start = time.perf_counter()
        ctl.adapt()
        adapt.append(time.perf_counter() - start)
    result.update(
        status="ok",
        act_p50_us=float(np.percentile(act, 50) * 1e6),
        act_p99_us=float(np.percentile(act, 99) * 1e6),
        adapt_p50_ms=float(np.percentile(adapt, 50) * 1e3),
        adapt_max_ms=float(np.max(adapt) * 1e3),
        act_calls=args.iterations,
        adapt_calls=args.adapt_iterations,
    )
    return result


# ---------------------------------------------------------------------------------------- main
def fmt(value: Any, width: int, digits: int) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return f"{'-':>{width}}" if missing else f"{value:{width}.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--bundle", action="append", default=[], help="another bundle directory (repeatable)")
    parser.add_argument("--providers", nargs="+", default=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--iterations", type=int, default=2000, help="timed act() calls per provider")
    parser.add_argument("--adapt-iterations", type=int, default=20, help="timed adapt() calls per provider")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up runs of each graph")
    parser.add_argument("--no-grasp", action="store_true", help="skip the grasp export")
    parser.add_argument("--grasp-checkpoint", default=str(GRASP_CHECKPOINT))
    parser.add_argument(
        "--preload-dlls", action="store_true",
        help="call onnxruntime.preload_dlls() first (CUDA/cuDNN from the nvidia pip packages) when CUDA is offered",
    )
    args = parser.parse_args()

    providers = [PROVIDER_ALIASES.get(p.lower(), p) for p in args.providers]
    if "CPUExecutionProvider" not in providers:
        providers.insert(0, "CPUExecutionProvider")  # the reference for parity
    providers.sort(key=lambda p: p != "CPUExecutionProvider")

    preload = None
    if args.preload_dlls and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        try:
            onnxruntime.preload_dlls()
            preload = "called"
        except Exception as err:  # best effort: LD_LIBRARY_PATH may already do it
            preload = f"failed: {err}"
    machine = machine_info()
    machine["preload_dlls"] = preload
    gpu = machine["gpu"]
    print(f"onnxruntime {machine['onnxruntime']} (build CUDA {machine['onnxruntime_build_cuda'] or 'none'}) "
          f"from {machine['onnxruntime_file']}")
    print(f"available providers: {', '.join(machine['available_providers'])}")
    print(f"cpu: {machine['cpu']}, {machine['cpu_count']} cores, load average {machine['load_average']}")
    gpu_line = f"{gpu['name']}, driver {gpu['driver']}, {gpu['memory']}" if gpu else "none (nvidia-smi absent or failed)"
    print(f"gpu: {gpu_line}")
    if preload:
        print(f"onnxruntime.preload_dlls(): {preload}")

    skipped: dict[str, str] = {}
    for provider in providers:
        short = next((k for k, v in PROVIDER_ALIASES.items() if v == provider), provider)
        if provider not in machine["available_providers"]:
            skipped[provider] = f"not available (this onnxruntime offers {', '.join(machine['available_providers'])})"
            print(f"{short}: {skipped[provider]}")
        else:
            libs = {"CUDAExecutionProvider": machine["cuda_libs"], "TensorrtExecutionProvider": machine["tensorrt_libs"]}
            missing = [message for message in libs.get(provider, {}).values() if message != "loads"]
            if missing:
                print(f"{short}: offered, but libraries it needs do not load ({'; '.join(missing)}); expect a fall-back")

    bundles: list[tuple[str, Path]] = [("maml_navigation", NAVIGATION_BUNDLE)]
    notes: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="gpu_providers."))
    if not args.no_grasp:
        grasp, note = export_grasp(Path(args.grasp_checkpoint).resolve(), tmp / "grasp_bundle")
        notes["grasp_context_ppo"] = note
        print(f"grasp_context_ppo: {note}")
        if grasp is not None:
            bundles.append(("grasp_context_ppo", grasp))
    bundles += [(Path(b).name, Path(b)) for b in args.bundle]

    rows: list[dict[str, Any]] = []
    for name, path in bundles:
        bundle = load_bundle(path)
        scale = np.asarray(bundle.action["scale"], dtype=np.float32)
        vectors = test_vectors(bundle)
        cpu_graphs = graph_outputs(bundle, vectors, "CPUExecutionProvider")
        reference = None
        for provider in providers:
            row: dict[str, Any] = {"bundle": name, "path": str(path), "family": bundle.family, "provider": provider,
                                   "device": device_label(provider, machine)}
            if provider in skipped:
                row.update(status="not available", reason=skipped[provider])
                rows.append(row)
                continue
            try:
                row.update(measure(path, provider, args, vectors))
            except (ProviderError, BundleError) as err:
                row.update(status="failed", reason=str(err))
            except Exception as err:  # a provider failing at run time (onnxruntime's own exception types)
                row.update(status="failed", reason=f"{type(err).__name__}: {err}")
            if row["status"] == "fell back":
                row["reason"] = f"sessions ran on {row['session_providers']} (see onnxruntime's log above)"
            if row["status"] == "ok":
                run = row.pop("scenario")
                if provider == "CPUExecutionProvider":
                    reference = run
                elif reference is not None:
                    row["parity"] = scenario_parity(run, reference, scale)
                if provider != "CPUExecutionProvider":
                    outputs = graph_outputs(bundle, vectors, provider)
                    row["graph_parity"] = outputs if isinstance(outputs, str) else graph_parity(bundle, outputs, cpu_graphs)
                    if (provider == "CUDAExecutionProvider" and isinstance(row["graph_parity"], dict)
                            and max(row["graph_parity"].values()) > PARITY_TOLERANCE):
                        outputs = graph_outputs(bundle, vectors, provider, {"use_tf32": "0"})
                        row["graph_parity_no_tf32"] = (
                            outputs if isinstance(outputs, str) else graph_parity(bundle, outputs, cpu_graphs)
                        )
                if provider != "CPUExecutionProvider" and reference is not None:
                    diffs = [*row["parity"].values()]
                    if isinstance(row["graph_parity"], dict):
                        diffs += row["graph_parity"].values()
                    row["parity_max"] = max(diffs)
                    row["parity_ok"] = row["parity_max"] <= PARITY_TOLERANCE
            rows.append(row)
            short = next((k for k, v in PROVIDER_ALIASES.items() if v == provider), provider)
            if row["status"] in ("fell back", "failed"):
                print(f"{name} / {short}: {row['status']}: {row['reason']}")

    print(f"\nparity: max |difference| against the CPU provider; commands in normalised units (command / scale), "
          f"tolerance {PARITY_TOLERANCE:g}")
    header = (f"{'bundle':17} {'provider':9} {'device':38} {'status':13} {'load s':>6} {'warm s':>6} "
              f"{'act p50 us':>10} {'act p99 us':>10} {'adapt p50 ms':>12} {'adapt max ms':>12} {'parity':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        short = next((k for k, v in PROVIDER_ALIASES.items() if v == row["provider"]), row["provider"])
        parity = "-" if "parity_max" not in row else f"{row['parity_max']:.1e}" + ("" if row["parity_ok"] else "!")
        if row["provider"] == "CPUExecutionProvider" and row["status"] == "ok":
            parity = "ref"
        print(f"{row['bundle'][:17]:17} {short[:9]:9} {row['device'][:38]:38} {row['status']:13} "
              f"{fmt(row.get('load_s'), 6, 2)} {fmt(row.get('warmup_s'), 6, 2)} "
              f"{fmt(row.get('act_p50_us'), 10, 1)} {fmt(row.get('act_p99_us'), 10, 1)} "
              f"{fmt(row.get('adapt_p50_ms'), 12, 3)} {fmt(row.get('adapt_max_ms'), 12, 3)} {parity:>8}")
    for row in rows:
        if row.get("graph_parity_no_tf32") is not None:
            print(f"{row['bundle']} / cuda: graph parity {row['graph_parity']} -> with use_tf32=0: {row['graph_parity_no_tf32']}")
        if row.get("parity_ok") is False:
            print(f"{row['bundle']} / {row['provider']}: PARITY EXCEEDED: {row.get('parity')} graphs {row.get('graph_parity')}")

    result = {
        "script": "bench/gpu_providers.py",
        "argv": sys.argv[1:],
        "machine": machine,
        "parity_tolerance": PARITY_TOLERANCE,
        "settings": {"iterations": args.iterations, "adapt_iterations": args.adapt_iterations, "warmup": args.warmup,
                     "episode_steps": EPISODE_STEPS},
        "notes": notes,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
