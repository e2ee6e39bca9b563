"""The node's CDR readers (``ros_nodes.cdr``) agree with rclpy's own deserialisation on any message."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rclpy  # noqa: E402,F401  (a dependency: an import error fails these tests)

import ros_nodes  # noqa: F401,E402
from geometry_msgs.msg import PoseStamped, TwistStamped  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from ros_nodes import cdr  # noqa: E402

floats = st.floats(allow_nan=True, allow_infinity=True)
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=9)
stamps = st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(0, 2**32 - 1))


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True)


@settings(max_examples=150, deadline=None)
@given(stamp=stamps, frame=names, joints=st.lists(names, max_size=6), data=st.data())
def test_joint_state_reader_matches_rclpy(stamp, frame, joints, data) -> None:
    n = len(joints)
    position = data.draw(st.lists(floats, min_size=0, max_size=n + 1))
    velocity = data.draw(st.lists(floats, min_size=0, max_size=n))
    effort = data.draw(st.lists(floats, min_size=0, max_size=n))
    msg = JointState(name=joints, position=position, velocity=velocity, effort=effort)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame
    sec, nanosec, got_names, got_position, got_velocity, got_effort = cdr.joint_state(serialize_message(msg))
    assert (sec, nanosec) == stamp and got_names == tuple(joints)
    assert _same(got_position, position) and _same(got_velocity, velocity) and _same(got_effort, effort)


def _pose(values):
    msg = PoseStamped()
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z, q.x, q.y, q.z, q.w = values
    return msg


def _twist(values):
    msg = TwistStamped()
    v, w = msg.twist.linear, msg.twist.angular
    v.x, v.y, v.z, w.x, w.y, w.z = values
    return msg


@pytest.mark.parametrize(("build", "read", "size"), [(_pose, cdr.pose_stamped, 7), (_twist, cdr.twist_stamped, 6)],
                         ids=["pose", "twist"])
@settings(max_examples=100, deadline=None)
@given(stamp=stamps, frame=names, data=st.data())
def test_stamped_vector_readers_match_rclpy(build, read, size, stamp, frame, data) -> None:
    values = data.draw(st.lists(floats, min_size=size, max_size=size))
    msg = build(values)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame
    sec, nanosec, first, second = read(serialize_message(msg))
    assert (sec, nanosec) == stamp and _same(first, values[:3]) and _same(second, values[3:])


def test_malformed_bytes_raise_the_readers_error() -> None:
    good = serialize_message(JointState(name=["a"], position=[1.0]))
    for bad in (b"", b"\x01\x00\x00\x00", good[:10], b"\x00\x07\x00\x00" + good[4:]):
        with pytest.raises(cdr.CdrError):
            cdr.joint_state(bad)
