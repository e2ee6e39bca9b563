"""Recording what the policy node sees and sends, and replaying it through the runtime.

With ``record_path`` set, the node writes an MCAP file (the rosbag2 default format; Foxglove opens it).
It holds:

* every input message as received, ROS 2 CDR with its message definition, log time = the node clock's
  time at receipt: ``joint_states``, the pose and twist topics, the reward topic, ``episode_end``;
* every command as published: ``cmd_twist``, ``joint_command``, ``joint_trajectory``, ``gripper_command``;
* ``/diagnostics`` as published (the adaptation state is in its values);
* ``/metarl/session`` (JSON) once per activation: the bundle, its seed and the loop settings;
* ``/metarl/tick`` (JSON) once per control step: the node time it ran at and the command it produced
  (values, which were known, the hold reason).

:func:`replay` rebuilds the loop from the session record and runs every recorded input, reward,
episode end and tick through it in log order, as the node did, and compares each tick's command with
the recorded one bit for bit. Nothing in a recording is executed when it is read: messages are CDR or
JSON and are decoded as the types the node subscribes to.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TICK_TOPIC = "/metarl/tick"
SESSION_TOPIC = "/metarl/session"
_JSON_SCHEMA = json.dumps({"type": "object"}).encode()


def message_definition(msg_type: Any) -> str:
    """The ``ros2msg`` schema text of ``msg_type``: its ``.msg`` file, then each type it uses after a
    separator line (the form rosbag2 writes into MCAP), read from the installed message packages."""
    seen: dict[str, str] = {}

    def text_of(full: str) -> str:
        package, _, name = full.partition("/msg/") if "/msg/" in full else full.partition("/")
        for root in _share_roots():
            path = root / package / "msg" / f"{name}.msg"
            if path.is_file():
                return path.read_text(encoding="utf-8")
        raise FileNotFoundError(f"no message definition for {full} under {[str(r) for r in _share_roots()]}")

    def visit(full: str, package: str) -> None:
        if full in seen:
            return
        seen[full] = text_of(full)
        for line in seen[full].splitlines():
            field = line.split("#", 1)[0].strip().split()
            if len(field) < 2 or "=" in field[1]:
                continue
            base = field[0].split("[", 1)[0]
            if base in _PRIMITIVES:
                continue
            dep = base if "/" in base else f"{package}/{base}"
            if base == "Header":
                dep = "std_msgs/Header"
            dep_package = dep.split("/", 1)[0]
            visit(f"{dep_package}/msg/{dep.split('/')[-1]}", dep_package)

    module = msg_type.__module__.split(".")[0]
    top = f"{module}/msg/{msg_type.__name__}"
    visit(top, module)
    parts = [seen.pop(top)]
    for full, text in seen.items():
        parts.append("=" * 80 + f"\nMSG: {full.replace('/msg/', '/')}\n" + text)
    return "\n".join(parts)


_PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
               "int64", "uint64", "string", "wstring"}


def _share_roots() -> list[Path]:
    import os

    roots = [Path(sys.prefix) / "share"]
    roots += [Path(p) / "share" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return roots


class Recorder:
    """An open MCAP recording (see the module docstring); :meth:`close` finishes the file."""

    def __init__(self, path: str | Path) -> None:
        from mcap.writer import Writer

        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file)
        self._writer.start(profile="ros2", library="metarl_robot")
        self._channels: dict[str, int] = {}
        self._schemas: dict[str, int] = {}

    def _channel(self, topic: str, msg_type: Any | None) -> int:
        channel = self._channels.get(topic)
        if channel is None:
            if msg_type is None:
                schema = self._schemas.get("json")
                if schema is None:
                    schema = self._schemas["json"] = self._writer.register_schema("object", "jsonschema", _JSON_SCHEMA)
                channel = self._writer.register_channel(topic, "json", schema)
            else:
                name = f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"
                schema = self._schemas.get(name)
                if schema is None:
                    schema = self._schemas[name] = self._writer.register_schema(
                        name, "ros2msg", message_definition(msg_type).encode())
                channel = self._writer.register_channel(topic, "cdr", schema)
            self._channels[topic] = channel
        return channel

    def message(self, topic: str, msg: Any, log_time_ns: int, msg_type: Any = None) -> None:
        """Write a ROS message on ``topic`` at ``log_time_ns``: a message object, or its CDR bytes with
        ``msg_type``."""
        if isinstance(msg, bytes):
            data = msg
        else:
            from rclpy.serialization import serialize_message

            data, msg_type = serialize_message(msg), type(msg)
        self._writer.add_message(self._channel(topic, msg_type), log_time_ns, data, log_time_ns)

    def record(self, topic: str, data: Mapping[str, Any], log_time_ns: int) -> None:
        """Write a JSON record on ``topic`` (floats as their shortest exact repr)."""
        self._writer.add_message(self._channel(topic, None), log_time_ns, json.dumps(data).encode(), log_time_ns)

    def close(self) -> None:
        if self._file.closed:
            return
        self._writer.finish()
        self._file.close()


def initial_input(topic: str, msg_type: Any, data: bytes, received_ns: int) -> dict[str, Any]:
    """A sample the loop held when recording began, for the session record: topic, type, receive time
    and its CDR bytes (base64)."""
    return {"topic": topic, "type": f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}",
            "received_ns": int(received_ns), "cdr": base64.b64encode(data).decode("ascii")}


def command_record(now_ns: int, command: Any) -> dict[str, Any]:
    """The ``/metarl/tick`` record of one control step."""
    return {"now_ns": int(now_ns), "values": [float(v) for v in command.values], "known": [bool(k) for k in command.known],
            "hold": None if command.hold is None else command.hold.kind.value}


@dataclasses.dataclass
class ReplayReport:
    ticks: int = 0
    mismatches: list[str] = dataclasses.field(default_factory=list)
    sessions: int = 0

    @property
    def ok(self) -> bool:
        return self.ticks > 0 and not self.mismatches


def _messages(path: Path) -> Iterator[tuple[str, int, bytes, str]]:
    import struct

    from mcap.exceptions import McapError
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        try:
            reader = make_reader(f)
            messages = list(reader.iter_messages(log_time_order=True))
        except (McapError, struct.error, EOFError, ValueError) as err:
            raise ValueError(f"not a readable MCAP file ({type(err).__name__}: {err})") from None
    for schema, channel, message in messages:
        yield channel.topic, message.log_time, message.data, schema.name if schema else ""


def replay(path: str | Path, bundle: str | Path | None = None, providers: list[str] | None = None) -> ReplayReport:
    """Run a recording through the runtime (see the module docstring). ``bundle`` replaces the recorded
    bundle path (the same bundle, moved); the result lists every tick whose command differs."""
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Bool, Float64

    from metarl_robot.contract import RobotInputs
    from metarl_robot.runtime import GuardSettings, LoopSettings, RobotLoop, SafetyLimits
    from ros_nodes import cdr

    path = Path(path)
    report = ReplayReport()
    loop = None
    inputs = RobotInputs()
    reward_topic, poses, twists = "", set(), set()

    def take(name: str, data: bytes, schema: str, now_s: float) -> bool:
        """Apply one input sample to ``inputs`` as the node's callbacks do; False if it is not one."""
        if name == "joint_states" and schema.endswith("JointState"):
            inputs.joint_state = cdr.joint_state_sample(data, now_s)[0]
        elif name in poses and schema.endswith("PoseStamped"):
            inputs.poses[name] = cdr.pose_sample(data, now_s)[0]
        elif name in twists and schema.endswith("TwistStamped"):
            inputs.twists[name] = cdr.twist_sample(data, now_s)[0]
        else:
            return False
        return True

    for topic, log_ns, data, schema in _messages(path):
        now_s = log_ns * 1e-9
        if topic == SESSION_TOPIC:
            session = json.loads(data)
            settings = session["settings"]
            loop = RobotLoop.load(
                str(bundle or session["bundle_path"]), providers or session["providers"],
                LoopSettings(max_obs_age_s=settings["max_obs_age_s"], limits=SafetyLimits(**settings["limits"]),
                             adaptation_enabled=settings["adaptation_enabled"],
                             adapt_every_n_steps=settings["adapt_every_n_steps"],
                             guard=GuardSettings(**settings.get("guard", {}))),
                control_rate_hz=session["control_rate_hz"], seed=session["seed"],
            )
            loop.start()
            inputs = RobotInputs()
            reward_topic = session["reward_topic"]
            poses, twists = set(session["pose_topics"]), set(session["twist_topics"])
            for sample in session.get("inputs", []):
                take(sample["topic"].rsplit("/", 1)[-1], base64.b64decode(sample["cdr"]), sample["type"],
                     sample["received_ns"] * 1e-9)
            report.sessions += 1
            continue
        if loop is None:
            continue
        name = topic.rsplit("/", 1)[-1]
        if topic == TICK_TOPIC:
            recorded = json.loads(data)
            command = loop.tick(recorded["now_ns"] * 1e-9, inputs)
            report.ticks += 1
            replayed = command_record(recorded["now_ns"], command)
            if replayed != recorded:
                report.mismatches.append(f"tick at {recorded['now_ns']} ns: recorded {recorded}, replayed {replayed}")
        elif take(name, data, schema, now_s):
            pass
        elif name == reward_topic and schema.endswith("Float64"):
            loop.add_reward(deserialize_message(data, Float64).data)
        elif name == "episode_end" and schema.endswith("Bool"):
            loop.end_episode(bool(deserialize_message(data, Bool).data), now_s, inputs)
    return report
