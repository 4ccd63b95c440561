"""safehold.memcopy.copy_into: the GIL-free copy behind chunk reading and blob sealing."""

from __future__ import annotations

import os

import pytest

from safehold.memcopy import copy_into


def test_bytes_into_the_middle_of_a_bytearray() -> None:
    destination = bytearray(b"." * 16)
    copy_into(destination, 3, b"abcde")
    assert destination == b"...abcde........"


def test_a_writable_view_and_a_read_only_one() -> None:
    data = os.urandom(200_000)
    for source in (memoryview(bytearray(data)), memoryview(data), memoryview(data)[1000:5000]):
        destination = bytearray(len(data) + 10)
        copy_into(destination, 7, source)
        assert destination[7 : 7 + source.nbytes] == source.tobytes()
        assert (
            destination[:7] == bytes(7)
            and destination[7 + source.nbytes :].count(0) == len(destination) - 7 - source.nbytes
        )


def test_moving_the_tail_of_a_buffer_to_its_front_even_overlapping() -> None:
    data = os.urandom(1 << 20)
    buffer = bytearray(data)
    view = memoryview(buffer)
    copy_into(buffer, 0, view[1000:])  # overlaps all but the first 1000 bytes
    assert buffer[: len(data) - 1000] == data[1000:]


def test_what_does_not_fit_raises_and_writes_nothing() -> None:
    destination = bytearray(8)
    with pytest.raises(ValueError):
        copy_into(destination, 4, b"123456789")
    assert destination == bytearray(8)
    copy_into(destination, 8, b"")  # nothing to copy: fine even at the end
    assert destination == bytearray(8)
