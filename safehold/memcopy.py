"""Copying large buffers without holding the GIL, and without numpy.

A slice assignment copies while holding the GIL; ``ctypes.memmove`` is a foreign call, and
ctypes releases the GIL around those, so the other threads (chunking, hashing, compressing,
encrypting) keep running while a chunk is copied. Importing ctypes costs a few milliseconds;
numpy, which did this before, cost 50-100 ms at the first large file of every backup.
"""

from __future__ import annotations

import ctypes


def copy_into(destination: bytearray, offset: int, source: bytes | bytearray | memoryview) -> None:
    """Copy all of ``source`` into the writable ``destination`` starting at ``offset`` (the
    two may be the same buffer and may overlap: memmove). Raises ValueError if it does not
    fit; nothing is written then."""
    view = memoryview(source)
    size = view.nbytes
    if not size:
        return
    target = (ctypes.c_char * size).from_buffer(destination, offset)  # checks the bounds
    if isinstance(source, bytes):
        ctypes.memmove(target, source, size)  # a bytes object is passed as its data's address
    elif not view.readonly and view.c_contiguous:
        ctypes.memmove(target, (ctypes.c_char * size).from_buffer(view), size)
    else:  # a read-only view of something else: copy with the GIL
        memoryview(destination)[offset : offset + size] = view.cast("B")
