"""safehold's file chunker (archive/reader.py cut_file) cuts exactly where pyfastcdc's
streaming chunker does, across buffer refills, so chunk ids and dedup do not change."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from pyfastcdc import FastCDC

from safehold.archive.reader import cut_file

MIN, AVG, MAX = 2 * 1024, 8 * 1024, 32 * 1024


def streamed(path: Path, cdc: FastCDC) -> list[bytes]:
    with open(path, "rb", buffering=0) as stream:
        return [bytes(chunk.data) for chunk in cdc.cut_stream(stream)]


def cut(path: Path, cdc: FastCDC, buffer_size: int) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [bytes(data) for data in cut_file(fd, cdc, MAX, buffer_size)]
    finally:
        os.close(fd)


@pytest.mark.parametrize("buffer_size", [3 * MAX, 3 * MAX + 4097, 16 * MAX])
@pytest.mark.parametrize("seed", range(4))
def test_cuts_match_the_streaming_chunker(tmp_path: Path, buffer_size: int, seed: int) -> None:
    rnd = random.Random(seed)
    cdc = FastCDC(AVG, min_size=MIN, max_size=MAX, seed=rnd.randrange(2**32))
    sizes = [0, 1, MIN, MAX - 1, MAX, buffer_size - 1, buffer_size, buffer_size + 1]
    sizes += [rnd.randrange(1, 12 * buffer_size) for _ in range(6)]
    for size in sizes:
        # runs of zeros too: no content-defined cut there, only max-size cuts
        data = (
            rnd.randbytes(size // 2)
            + bytes(size // 4)
            + rnd.randbytes(size - size // 2 - size // 4)
        )
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        chunks = cut(path, cdc, buffer_size)
        assert chunks == streamed(path, cdc), size
        assert b"".join(chunks) == data


def test_a_buffer_smaller_than_three_largest_chunks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        cut(path, FastCDC(AVG, min_size=MIN, max_size=MAX), 3 * MAX - 1)
