"""Recording and replay: the policy node, driving the simulated robot, writes an MCAP file that
`metarl-robot replay` runs through the runtime, reproducing every recorded command bit for bit; the same
recording with its rewards changed does not reproduce them (the replay recomputes, so the check can fail)."""

from __future__ import annotations

import pytest

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)
import mcap  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402  (loopback discovery before rclpy loads)

from ros_nodes import POLICY_NODE_NAME, SIM_ROBOT_NODE_NAME  # noqa: E402
from ros_nodes.graph import DEFAULT_PARAMS_FILE, NodeGraph  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark.*")]


@pytest.fixture(scope="module")
def recording(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("recording")
    path = root / "run.mcap"
    overrides = {
        POLICY_NODE_NAME: {"control_rate_hz": 20.0, "record_path": str(path), "seed": 7},
        SIM_ROBOT_NODE_NAME: {"step_mode": "lockstep", "episode_steps": 8},
    }
    with NodeGraph(DEFAULT_PARAMS_FILE, bundle_path=tiny_bundle, overrides=overrides, log_dir=root) as graph:
        from std_msgs.msg import String

        results = graph.collect(String, f"/{SIM_ROBOT_NODE_NAME}/episode_result")
        assert graph.spin_until(lambda: len(results) >= 2, 30.0), "no episodes ran"
    assert path.is_file() and path.stat().st_size > 0
    return path


def test_the_recording_holds_inputs_commands_ticks_and_diagnostics(recording):
    from mcap.reader import make_reader

    with open(recording, "rb") as f:
        summary = make_reader(f).get_summary()
    topics = {channel.topic for channel in summary.channels.values()}
    assert {"/joint_states", "/ee_pose", "/object_pose", "/reward", "/episode_end", "/cmd_twist", "/gripper_command",
            "/metarl/tick", "/metarl/session", "/diagnostics"} <= topics, topics
    encodings = {channel.topic: channel.message_encoding for channel in summary.channels.values()}
    assert encodings["/joint_states"] == "cdr" and encodings["/metarl/tick"] == "json"
    schemas = {schema.name: schema for schema in summary.schemas.values()}
    text = schemas["sensor_msgs/msg/JointState"].data.decode()
    assert "MSG: std_msgs/Header" in text and "float64[] position" in text  # the definition Foxglove decodes with


def test_replay_reproduces_every_command_bit_for_bit(recording, capsys):
    from metarl_robot.cli import main

    assert main(["replay", str(recording)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert out.startswith("PASS: ") and " recorded commands reproduced bit for bit" in out
    ticks = int(out.split("PASS: ", 1)[1].split(" of ", 1)[1].split()[0])
    assert ticks >= 16


def test_replay_with_other_rewards_does_not_reproduce_them(recording, tmp_path):
    """The same recording with every reward raised by 1: the policy adapts on other transitions after
    the first episode, so replayed commands must differ from the recorded ones."""
    from mcap.reader import make_reader
    from mcap.writer import Writer
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Float64

    changed = tmp_path / "other_rewards.mcap"
    with open(recording, "rb") as f, open(changed, "wb") as out:
        reader = make_reader(f)
        writer = Writer(out)
        writer.start(profile="ros2", library="test")
        schema_ids, channel_ids = {}, {}
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            if schema.id not in schema_ids:
                schema_ids[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
            if channel.id not in channel_ids:
                channel_ids[channel.id] = writer.register_channel(channel.topic, channel.message_encoding,
                                                                  schema_ids[schema.id])
            data = message.data
            if channel.topic == "/reward":
                data = serialize_message(Float64(data=deserialize_message(data, Float64).data + 1.0))
            writer.add_message(channel_ids[channel.id], message.log_time, data, message.publish_time)
        writer.finish()
    from ros_nodes.recording import replay

    report = replay(changed)
    assert report.ticks >= 16 and report.mismatches, "other rewards reproduced every command"


def test_replay_of_a_file_that_is_not_a_recording_gives_one_line(tmp_path, capsys) -> None:
    from metarl_robot.cli import main

    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file at all")
    assert main(["replay", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be replayed: not a readable MCAP file" in err
    assert main(["replay", str(tmp_path / "missing.mcap")]) == 2
    assert "does not exist; record one with the policy node's record_path parameter" in capsys.readouterr().err
