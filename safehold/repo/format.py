"""Constants and byte layouts of the repository format (docs/format.md is the spec)."""

from __future__ import annotations

import struct
import threading

import zstandard

from safehold.memcopy import copy_into

FORMAT_VERSION = 1
MARKER_NAME = "meta/format"
CONFIG_NAME = "meta/config"
MARKER_TEXT = b"safehold repository\nformat 1\n"

BLOB_DATA = 0
BLOB_TREE = 1
BLOB_TYPE_NAMES = {BLOB_DATA: "data", BLOB_TREE: "tree"}

# Body of every encrypted blob or object: one flag byte, then the payload.
FLAG_RAW = 0
FLAG_ZSTD = 1
FLAG_RAW_BYTE = bytes((FLAG_RAW,))
FLAG_ZSTD_BYTE = bytes((FLAG_ZSTD,))

# A pack header record: blob type, blob id, stored (sealed) length, plaintext length.
PACK_RECORD = struct.Struct("<B32sII")
PACK_TRAILER = struct.Struct("<I")
PACK_HEADER_AAD = b"safehold-pack-header"

# An index file record: blob id, pack number (into the file's pack table), offset, stored length,
# plaintext length, blob type.
INDEX_RECORD = struct.Struct("<32sIIIIB")

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard compressor objects are not thread-safe: one per thread and level.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


SAMPLE = 64 * 1024


def encode_body(data: bytes | memoryview, level: int) -> bytes:
    """Return flag byte + payload: zstd-compressed when that saves at least 1/32, else raw.

    ``level`` 0 disables compression. For large blobs a 64 KiB sample is tried first, so
    incompressible data (images, DICOM pixel data, archives) costs almost nothing.
    """
    flag, payload = _encode(data, level)
    return (FLAG_ZSTD_BYTE if flag == FLAG_ZSTD else FLAG_RAW_BYTE) + payload


def encode_body_scratch(data: bytes | memoryview, level: int) -> memoryview:
    """``encode_body`` written into this thread's scratch buffer instead of a new object (no
    allocation per blob). The view is valid until this thread's next call."""
    flag, payload = _encode(data, level)
    size = 1 + len(payload)
    scratch = getattr(_local, "scratch", None)
    if scratch is None or len(scratch) < size:
        scratch = _local.scratch = bytearray(max(size, SCRATCH_SIZE))
    scratch[0] = flag
    if size > COPY_WITHOUT_GIL:  # copied without holding the GIL; a slice would hold it
        copy_into(scratch, 1, payload)
    else:
        scratch[1:size] = payload
    return memoryview(scratch)[:size]


SCRATCH_SIZE = 4 * 1024 * 1024 + 64
COPY_WITHOUT_GIL = 64 * 1024


def _encode(data: bytes | memoryview, level: int) -> tuple[int, bytes | memoryview]:
    size = len(data)
    if level > 0 and size >= 64:
        compressor = _compressor(level)
        if size <= 2 * SAMPLE or _saves(compressor.compress(data[:SAMPLE]), SAMPLE):
            compressed = compressor.compress(data)
            if _saves(compressed, size):
                return FLAG_ZSTD, compressed
    return FLAG_RAW, data


def _saves(compressed: bytes, size: int) -> bool:
    return len(compressed) < size - (size >> 5)


def decode_body(body: bytes, raw_length: int | None = None) -> bytes:
    """Inverse of encode_body. Raises ValueError on an unknown flag or bad compressed data."""
    flag = body[0]
    if flag == FLAG_RAW:
        return body[1:]
    if flag == FLAG_ZSTD:
        try:
            if raw_length is not None:
                return _decompressor().decompress(body[1:], max_output_size=raw_length)
            return _decompressor().decompressobj().decompress(body[1:])
        except zstandard.ZstdError as error:
            raise ValueError(f"bad compressed data: {error}") from error
    raise ValueError(f"unknown body flag {flag}")


def blob_aad(blob_type: int, blob_id: bytes) -> bytes:
    """Associated data that binds a sealed blob to its type and id."""
    return bytes((blob_type,)) + blob_id


def object_aad(name: str) -> bytes:
    """Associated data that binds a sealed repository object to its name."""
    return b"safehold-object:" + name.encode()
