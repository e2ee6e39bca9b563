"""The policy node at 1 kHz over Fast DDS on loopback, driven by a separate process acting as the robot.

    python bench/ros_control_loop.py [--bundle DIR] [--rate 1000] [--seconds 20] [--providers cpu cuda]

This process plays the robot driver: at ``--rate`` it publishes ``joint_states``, ``ee_pose`` and
``object_pose`` stamped with the time of publication, a ``reward`` per command received and an
``episode_end`` every ``--episode-steps`` ticks (each one triggers an adaptation step in the node).
The policy node runs as a child process (``ros_nodes.graph``), one run per execution provider.

Reported per run:

* achieved rate: policy commands received per second, and the node's control ticks per second;
* control step latency: the node's own measure of one step, start to command published;
* loop period: the node's own tick-to-tick periods, p50/p99 and p99 deviation from the nominal period
  (read from its ``/diagnostics``, one window of 1000 ticks per second; the worst window is reported);
  for the echoes, the same statistics of the periods between their joint-state callbacks, per second
  of the measurement window;
* observation-to-command latency: receive time of each ``cmd_twist`` minus its header stamp, which the
  node sets to the stamp of the newest input the command was computed from (same host clock);
* CPU use of the node process (user + system time over wall time, 100% = one core).

Two baseline runs in the same script replace the policy node by an echo node (a child process, the
same Python, rclpy executor, Fast DDS and QoS): one answers each joint state with a ``cmd_twist``
carrying its stamp, nothing else; the I/O echo also subscribes to the poses and the reward and sends a
``gripper_command`` before each ``cmd_twist``, as the policy node does. The I/O echo is the floor that
transport and the Python client library set for this node's traffic; what the policy node adds on
top is its own cost.

Without ``--bundle`` the shipped grasp checkpoint (models/grasp_context_ppo) is exported to a
temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import random  # noqa: E402

# A DDS domain of the run's own unless the caller chose one; discovery stays on loopback (ros_nodes).
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(100, 200)))

import ros_nodes  # noqa: E402,F401  (loopback discovery before rclpy loads)

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import ExternalShutdownException  # noqa: E402
from rclpy.experimental import EventsExecutor  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64, Float64MultiArray  # noqa: E402

from ros_nodes import POLICY_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph, policy_status  # noqa: E402

PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]


def export_shipped_bundle(out: Path) -> Path:
    from metarl_robot.export import export_bundle

    return export_bundle(REPO / "models" / "grasp_context_ppo" / "checkpoint.safetensors", out / "bundle")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_echo(io: bool = False, periods_path: Path | None = None) -> None:
    """The baseline node: answer every joint state with a cmd_twist stamped like it, nothing else. With
    ``io`` it also does all the transport work the policy node does per tick, without computing: it
    subscribes to the poses and the reward as well and sends a gripper_command before each cmd_twist.
    With ``periods_path`` it writes the ``time.perf_counter()`` of every joint-state callback there on
    exit (the system-wide monotonic clock: the bench cuts them to its own measurement window)."""
    rclpy.init()
    node = rclpy.create_node("bench_echo")
    pub = node.create_publisher(TwistStamped, "cmd_twist", QoSProfile(depth=10))
    grip = node.create_publisher(Float64MultiArray, "gripper_command", QoSProfile(depth=10))
    reply = TwistStamped()
    force = Float64MultiArray(data=[1.0])
    arrivals: list[float] = []

    def on_joint_state(msg: JointState) -> None:
        arrivals.append(time.perf_counter())
        reply.header.stamp = msg.header.stamp
        if io:
            grip.publish(force)
        pub.publish(reply)

    # The policy node's own sample QoS (keep last 1, best effort), so both pay the same transport.
    sample = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(JointState, "joint_states", on_joint_state, sample)
    if io:
        kept = {}
        for topic in ("ee_pose", "object_pose"):
            node.create_subscription(PoseStamped, topic, lambda msg, t=topic: kept.__setitem__(t, msg), sample)
        node.create_subscription(Float64, "reward", lambda msg: kept.__setitem__("reward", msg), QoSProfile(depth=100))
    executor = EventsExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    if periods_path is not None:
        np.save(periods_path, np.asarray(arrivals))


def run_echo(args: argparse.Namespace, io: bool = False) -> dict:
    graph = NodeGraph(None, start_robot=False, activate=False)
    graph._start_driver()
    env = graph.child_env()
    periods_path = Path(tempfile.mkdtemp(prefix="echo_periods_")) / "arrivals.npy"
    echo = subprocess.Popen([sys.executable, __file__, "--serve-io-echo" if io else "--serve-echo",
                             "--periods-out", str(periods_path)], env=env)
    try:
        node = rclpy.create_node("bench_robot_driver", context=graph.node.context)
        executor = EventsExecutor(context=graph.node.context)
        executor.add_node(node)
        got = []
        node.create_subscription(TwistStamped, "cmd_twist", got.append, QoSProfile(depth=10))
        joint_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:  # discovery
            joint_pub.publish(JointState())
            executor.spin_once(timeout_sec=0.05)
        stats = drive(node, executor, args, pid=echo.pid)
        executor.shutdown()
        node.destroy_node()
    finally:
        echo.send_signal(signal.SIGINT)
        try:
            echo.wait(10)
        except subprocess.TimeoutExpired:
            echo.kill()
        graph.stop()
    name = "I/O echo (the policy node's topics, no compute)" if io else "echo baseline (joint_states in, cmd_twist out)"
    window, periods = stats.pop("window"), {}
    if periods_path.exists():  # the echo's own callback-to-callback periods, as the node reports its ticks'
        periods = callback_period_windows(np.load(periods_path), window, args.rate)
    return {"target": name, **periods, **stats}


def callback_period_windows(arrivals: np.ndarray, window: tuple[float, float], rate: float) -> dict:
    """Per whole second of the measurement window: the p50 and p99 of the periods between callbacks, as
    the policy node's diagnostics report its own tick periods; the median and worst window."""
    start, end = window
    p50, p99 = [], []
    for second in range(int(end - start)):
        inside = arrivals[(arrivals >= start + second) & (arrivals < start + second + 1)]
        if len(inside) > 2:
            periods_ms = np.diff(inside) * 1e3
            p50.append(np.percentile(periods_ms, 50))
            p99.append(np.percentile(periods_ms, 99))
    if not p99:
        return {}
    return {
        "loop_period_p50_ms_median_window": round(float(np.median(p50)), 3),
        "loop_period_p99_ms_median_window": round(float(np.median(p99)), 3),
        "loop_period_p99_ms_worst_window": round(float(np.max(p99)), 3),
        "loop_period_p99_deviation_ms_worst_window": round(float(np.max(p99) - 1e3 / rate), 3),
    }


def drive(node, executor, args: argparse.Namespace, pid: int, on_measure_start=None) -> dict:
    """Play the robot at ``args.rate`` for warm-up + ``args.seconds``; measure commands and CPU of ``pid``."""
    clock = node.get_clock()
    period_s = 1.0 / args.rate
    joint_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    ee_pub = node.create_publisher(PoseStamped, "ee_pose", qos_profile_sensor_data)
    object_pub = node.create_publisher(PoseStamped, "object_pose", qos_profile_sensor_data)
    reward_pub = node.create_publisher(Float64, "reward", QoSProfile(depth=100))
    end_pub = node.create_publisher(Bool, "episode_end", QoSProfile(depth=10))
    latencies_ns: list[int] = []
    received: list[int] = []
    measuring = [False]

    def on_twist(msg: TwistStamped) -> None:
        now_ns = clock.now().nanoseconds
        if measuring[0]:
            latencies_ns.append(now_ns - (msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec))
            received.append(now_ns)
        reward_pub.publish(Float64(data=-0.01))

    node.create_subscription(TwistStamped, "cmd_twist", on_twist, QoSProfile(depth=100))
    joints = JointState(name=list(PANDA_JOINTS), position=[0.0] * 9, velocity=[0.0] * 9, effort=[0.0] * 9)
    joints.position[7] = joints.position[8] = 0.04
    ee, obj = PoseStamped(), PoseStamped()
    ee.header.frame_id = obj.header.frame_id = "world"
    ee.pose.position.x, ee.pose.position.z = 0.5, 0.3
    obj.pose.position.x, obj.pose.position.z = 0.5, 0.02
    ee.pose.orientation.w = obj.pose.orientation.w = 1.0

    start = time.perf_counter()
    next_tick, tick = start, 0
    cpu0 = wall0 = 0.0
    while True:
        now = time.perf_counter()
        if now - start >= args.warmup_s + args.seconds:
            break
        if not measuring[0] and now - start >= args.warmup_s:
            measuring[0] = True
            cpu0, wall0 = cpu_seconds(pid), now
            if on_measure_start is not None:
                on_measure_start()
        if now >= next_tick:
            # Poses first, joint states last: with trigger joint_states the node steps on the latter.
            stamp = clock.now().to_msg()
            joints.header.stamp = ee.header.stamp = obj.header.stamp = stamp
            ee_pub.publish(ee)
            object_pub.publish(obj)
            joint_pub.publish(joints)
            tick += 1
            if args.episode_steps and tick % args.episode_steps == 0:
                end_pub.publish(Bool(data=False))
            next_tick += period_s
            if next_tick < now:  # fell behind: do not burst to catch up
                next_tick = now + period_s
        executor.spin_once(timeout_sec=max(0.0, next_tick - time.perf_counter()))
    end = time.perf_counter()
    wall = end - wall0
    lat = np.array(latencies_ns, dtype=np.float64) / 1e3
    return {
        "window": (wall0, end),
        "seconds": round(wall, 2),
        "commands_per_s": round(len(received) / wall, 1),
        "latency_us_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_us_p99": round(float(np.percentile(lat, 99)), 1),
        "latency_us_max": round(float(lat.max()), 1),
        "cpu_percent": round(100.0 * (cpu_seconds(pid) - cpu0) / wall, 1),
    }


def run_once(bundle: Path, provider: str, trigger: str, args: argparse.Namespace, log_dir: Path) -> dict:
    overrides = {
        POLICY_NODE_NAME: {
            "control_rate_hz": float(args.rate),
            "execution_providers": [provider],
            "max_obs_age_s": args.max_obs_age_s,
            "adapt_every_n_steps": args.adapt_every,
            "trigger": trigger,
        }
    }
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=bundle, overrides=overrides, log_dir=log_dir,
                   start_robot=False) as graph:
        # The robot driver: a node of its own on rclpy's EventsExecutor (the lightest way to spin here).
        node = rclpy.create_node("bench_robot_driver", context=graph.node.context)
        executor = EventsExecutor(context=graph.node.context)
        executor.add_node(node)
        diagnostics: list[dict[str, str]] = []

        def on_diagnostics(array: DiagnosticArray) -> None:
            level, _, values = policy_status([array])
            if level >= 0:
                diagnostics.append(values)

        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        first = [0]
        stats = drive(node, executor, args, graph.processes[POLICY_NODE_NAME].pid,
                      on_measure_start=lambda: first.__setitem__(0, len(diagnostics)))
        executor.shutdown()
        node.destroy_node()
    stats.pop("window")
    windows = diagnostics[first[0] + 1:]  # windows wholly inside the measurement
    if len(windows) < 2:
        raise RuntimeError("too few diagnostics from the policy node during the run")
    ticks = [int(w["control_ticks"]) for w in windows]
    p99 = np.array([float(w["loop_period_p99_ms"]) for w in windows])
    p50 = np.array([float(w["loop_period_p50_ms"]) for w in windows])
    adapt_steps = [int(w["adaptation_steps"]) for w in windows]
    nominal_ms = 1e3 / args.rate
    return {
        "target": "policy node",
        "provider": windows[-1]["execution_provider"],
        "trigger": windows[-1]["trigger"],
        "rate_hz_nominal": args.rate,
        "node_ticks_per_s": round((ticks[-1] - ticks[0]) / (len(ticks) - 1), 1),
        "loop_period_p50_ms_median_window": round(float(np.median(p50)), 3),
        "loop_period_p99_ms_median_window": round(float(np.median(p99)), 3),
        "loop_period_p99_ms_worst_window": round(float(p99.max()), 3),
        "loop_period_p99_deviation_ms_worst_window": round(float(p99.max() - nominal_ms), 3),
        "step_latency_p50_ms": windows[-1]["step_latency_p50_ms"],
        "step_latency_p99_ms": windows[-1]["step_latency_p99_ms"],
        "inference_latency_p50_ms": windows[-1]["inference_latency_p50_ms"],
        "inference_latency_p99_ms": windows[-1]["inference_latency_p99_ms"],
        "adapt_latency_p99_ms": windows[-1]["adapt_latency_p99_ms"],
        "adaptation_steps_during_run": adapt_steps[-1] - adapt_steps[0],
        "hold_ticks_during_run": int(windows[-1]["hold_ticks"]) - int(windows[0]["hold_ticks"]),
        **stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--providers", nargs="+", default=["cpu", "cuda", "tensorrt"],
                        help="one run per provider that this onnxruntime offers")
    parser.add_argument("--episode-steps", type=int, default=1000, help="episode_end every N ticks (0: never)")
    parser.add_argument("--adapt-every", type=int, default=0, help="adapt_every_n_steps of the node")
    parser.add_argument("--max-obs-age-s", type=float, default=0.02)
    parser.add_argument("--triggers", nargs="+", default=["timer", "joint_states"], help="one run per trigger")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo baseline")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-io-echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--periods-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.serve_echo or args.serve_io_echo:
        serve_echo(io=args.serve_io_echo, periods_path=args.periods_out)
        return

    import onnxruntime

    from metarl_robot.runtime import PROVIDER_ALIASES

    available = set(onnxruntime.get_available_providers())
    tmp = Path(tempfile.mkdtemp(prefix="ros_control_loop_"))
    bundle = args.bundle or export_shipped_bundle(tmp)
    results = []
    if not args.no_echo:
        for io in (False, True):
            results.append(run_echo(args, io=io))
            print(json.dumps(results[-1], indent=1), flush=True)
    for provider in args.providers:
        if PROVIDER_ALIASES.get(provider, provider) not in available:
            print(f"[skip] {provider}: not offered by this onnxruntime ({sorted(available)})")
            continue
        for trigger in args.triggers:
            results.append(run_once(bundle, provider, trigger, args, tmp / f"logs_{provider}_{trigger}"))
            print(json.dumps(results[-1], indent=1), flush=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
              "command": " ".join(sys.argv), "results": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
