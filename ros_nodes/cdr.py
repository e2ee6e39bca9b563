"""Reading the policy node's input messages straight from their serialized (CDR) bytes.

rclpy turns every received message into Python objects, one ``__init__`` per nested field: a
``PoseStamped`` is six objects, and at 1 kHz the three inputs of a grasp tick cost the node about a
hundred microseconds before the policy runs. The node subscribes with ``raw=True`` and reads the few
fields it uses here, with ``struct`` and ``numpy.frombuffer``: stamp, joint names and values, pose,
twist. The layout is XCDR1 as ROS 2 writes it: a 4-byte encapsulation header (little- or big-endian
plain CDR), then each primitive aligned to its size relative to the end of that header, strings as
a ``uint32`` length (with the terminating NUL) and bytes, sequences as a ``uint32`` count and elements.

Anything else (another encapsulation, a truncated buffer) raises :class:`CdrError`; the node then
falls back to ``rclpy.serialization.deserialize_message``. ``tests/ros/test_cdr.py`` holds every reader
to rclpy's own deserialisation.
"""

from __future__ import annotations

import struct

import numpy as np

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


def pose_stamped(data: bytes) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(sec, nanosec, position (3,), orientation_xyzw (4,))`` of a serialized ``geometry_msgs/PoseStamped``."""
    try:
        order = _order(data)
        sec, nanosec, offset = _stamp(data, order)
        values, _ = _doubles(data, offset, order, 7)
    except (struct.error, UnicodeDecodeError) as err:
        raise CdrError(f"not a PoseStamped: {err}") from None
    return sec, nanosec, values[:3], values[3:]


def twist_stamped(data: bytes) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(sec, nanosec, linear (3,), angular (3,))`` of a serialized ``geometry_msgs/TwistStamped``."""
    try:
        order = _order(data)
        sec, nanosec, offset = _stamp(data, order)
        values, _ = _doubles(data, offset, order, 6)
    except (struct.error, UnicodeDecodeError) as err:
        raise CdrError(f"not a TwistStamped: {err}") from None
    return sec, nanosec, values[:3], values[3:]
