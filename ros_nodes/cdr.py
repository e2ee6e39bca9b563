"""Reading the policy node's input messages straight from their serialized (CDR) bytes.

rclpy turns every received message into Python objects, one ``__init__`` per nested field: a
``PoseStamped`` is six objects, and at 1 kHz the three inputs of a grasp tick cost the node about a
hundred microseconds before the policy runs. The node subscribes with ``raw=True`` and reads the few
fields it uses here, with ``struct`` and ``numpy.frombuffer``: stamp, joint names and values, pose,
twist. The layout is XCDR1 as ROS 2 writes it: a 4-byte encapsulation header (little- or big-endian
plain CDR), then each primitive aligned to its size relative to the end of that header, strings as
a ``uint32`` length (with the terminating NUL) and bytes, sequences as a ``uint32`` count and elements.

Anything else (another encapsulation, a truncated buffer) raises :class:`CdrError`; the ``*_sample``
functions, which the node and ``metarl-robot replay`` share, then fall back to
``rclpy.serialization.deserialize_message``. ``tests/ros/test_cdr.py`` holds every reader
to rclpy's own deserialisation.
"""

from __future__ import annotations

import struct

import numpy as np

from metarl_robot.contract import JointStateSample, PoseSample, TwistSample

_HEADER = 4


class CdrError(ValueError):
    """The bytes are not plain CDR of the expected type."""


def _order(data: bytes) -> str:
    if len(data) < _HEADER or data[0] != 0:
        raise CdrError("not a CDR encapsulation")
    if data[1] == 1:
        return "<"
    if data[1] == 0:
        return ">"
    raise CdrError(f"unsupported CDR encapsulation {data[1]}")


def _align(offset: int, size: int) -> int:
    rel = offset - _HEADER
    return offset + (-rel % size)


def _string(data: bytes, offset: int, order: str) -> tuple[str, int]:
    offset = _align(offset, 4)
    (length,) = struct.unpack_from(order + "I", data, offset)
    start = offset + 4
    end = start + length
    if length == 0 or end > len(data):
        raise CdrError("truncated string")
    return data[start:end - 1].decode("utf-8"), end


def _stamp(data: bytes, order: str) -> tuple[int, int, int]:
    """``(sec, nanosec, offset after the header's frame_id)``."""
    sec, nanosec = struct.unpack_from(order + "iI", data, _HEADER)
    _, offset = _string(data, _HEADER + 8, order)
    return sec, nanosec, offset


def _doubles(data: bytes, offset: int, order: str, count: int) -> tuple[np.ndarray, int]:
    offset = _align(offset, 8) if count else offset
    end = offset + 8 * count
    if end > len(data):
        raise CdrError("truncated float64 array")
    return np.frombuffer(data, dtype=order + "f8", count=count, offset=offset).astype(np.float64), end


def _sequence(data: bytes, offset: int, order: str) -> tuple[np.ndarray, int]:
    offset = _align(offset, 4)
    (count,) = struct.unpack_from(order + "I", data, offset)
    return _doubles(data, offset + 4, order, count)


def joint_state(data: bytes) -> tuple[int, int, tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """``(sec, nanosec, names, position, velocity, effort)`` of a serialized ``sensor_msgs/JointState``."""
    try:
        order = _order(data)
        sec, nanosec, offset = _stamp(data, order)
        offset = _align(offset, 4)
        (count,) = struct.unpack_from(order + "I", data, offset)
        offset += 4
        names = []
        for _ in range(count):
            name, offset = _string(data, offset, order)
            names.append(name)
        position, offset = _sequence(data, offset, order)
        velocity, offset = _sequence(data, offset, order)
        effort, offset = _sequence(data, offset, order)
    except (struct.error, UnicodeDecodeError) as err:
        raise CdrError(f"not a JointState: {err}") from None
    return sec, nanosec, tuple(names), position, velocity, effort


def _stamped_vector(data: bytes, count: int, what: str) -> tuple[int, int, np.ndarray]:
    """``(sec, nanosec, values)``: a Header followed by ``count`` float64 (PoseStamped, TwistStamped)."""
    try:
        order = _order(data)
        sec, nanosec, offset = _stamp(data, order)
        values, _ = _doubles(data, offset, order, count)
    except (struct.error, UnicodeDecodeError) as err:
        raise CdrError(f"not a {what}: {err}") from None
    return sec, nanosec, values


def pose_stamped(data: bytes) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(sec, nanosec, position (3,), orientation_xyzw (4,))`` of a serialized ``geometry_msgs/PoseStamped``."""
    sec, nanosec, values = _stamped_vector(data, 7, "PoseStamped")
    return sec, nanosec, values[:3], values[3:]


def twist_stamped(data: bytes) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(sec, nanosec, linear (3,), angular (3,))`` of a serialized ``geometry_msgs/TwistStamped``."""
    sec, nanosec, values = _stamped_vector(data, 6, "TwistStamped")
    return sec, nanosec, values[:3], values[3:]


# ----------------------------------------------------------------------------- samples for the loop
# What the policy node's callbacks and `metarl-robot replay` both build from an input's bytes: one
# decoding, so a replay sees exactly what the node saw. rclpy's deserialisation is the fallback.

def stamp_seconds(sec: int, nanosec: int) -> float:
    """A header stamp in seconds, as the control loop compares it."""
    return sec + nanosec * 1e-9


def joint_state_sample(data: bytes, received_s: float) -> tuple[JointStateSample, int, int]:
    """The loop's sample of a serialized JointState, and its stamp ``(sec, nanosec)``."""
    try:
        sec, nanosec, names, position, velocity, effort = joint_state(data)
    except CdrError:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import JointState

        msg = deserialize_message(data, JointState)
        sec, nanosec, names = msg.header.stamp.sec, msg.header.stamp.nanosec, tuple(msg.name)
        position, velocity, effort = msg.position, msg.velocity, msg.effort
    sample = JointStateSample.create(names, position, velocity, effort, stamp_seconds(sec, nanosec), received_s)
    return sample, sec, nanosec


def pose_sample(data: bytes, received_s: float) -> tuple[PoseSample, int, int]:
    """The loop's sample of a serialized PoseStamped, and its stamp ``(sec, nanosec)``."""
    try:
        sec, nanosec, position, orientation = pose_stamped(data)
    except CdrError:
        from geometry_msgs.msg import PoseStamped
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(data, PoseStamped)
        p, q = msg.pose.position, msg.pose.orientation
        sec, nanosec, position, orientation = msg.header.stamp.sec, msg.header.stamp.nanosec, (p.x, p.y, p.z), (
            q.x, q.y, q.z, q.w)
    return PoseSample.create(position, orientation, stamp_seconds(sec, nanosec), received_s), sec, nanosec


def twist_sample(data: bytes, received_s: float) -> tuple[TwistSample, int, int]:
    """The loop's sample of a serialized TwistStamped, and its stamp ``(sec, nanosec)``."""
    try:
        sec, nanosec, linear, angular = twist_stamped(data)
    except CdrError:
        from geometry_msgs.msg import TwistStamped
        from rclpy.serialization import deserialize_message

        msg = deserialize_message(data, TwistStamped)
        v, w = msg.twist.linear, msg.twist.angular
        sec, nanosec, linear, angular = msg.header.stamp.sec, msg.header.stamp.nanosec, (v.x, v.y, v.z), (w.x, w.y, w.z)
    return TwistSample.create(linear, angular, stamp_seconds(sec, nanosec), received_s), sec, nanosec
