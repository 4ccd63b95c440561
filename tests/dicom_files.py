"""Small valid DICOM Part-10 files, written by hand (explicit VR little endian, one 8-bit
monochrome frame): enough for Orthanc to index them as patient/study/series/instance."""

from __future__ import annotations

import struct

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ROOT = "1.2.826.0.1.3680043.10.1138"  # an example UID root; the numbers below are generated

_LONG_VRS = {"OB", "OW", "OF", "SQ", "UT", "UN"}


def _element(group: int, element: int, vr: str, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        data = struct.pack("<H", value)
    elif isinstance(value, str):
        data = value.encode("ascii")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
    else:
        data = value + (b"\0" if len(value) % 2 else b"")
    head = struct.pack("<HH", group, element) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(data)) + data
    return head + struct.pack("<H", len(data)) + data


def uid(*numbers: int) -> str:
    """A UID below this module's root, such as ``uid(3, 7, 12)``."""
    return ".".join([ROOT, *map(str, numbers)])


def instance(patient: int, study: int, series: int, number: int, size: int = 64) -> bytes:
    """The bytes of one instance: patient ``P<patient>``, a ``size`` x ``size`` frame whose
    pixels depend on every number, so that no two instances are alike."""
    sop = uid(patient, study, series, number)
    meta = b"".join(
        [
            _element(0x0002, 0x0001, "OB", b"\0\1"),
            _element(0x0002, 0x0002, "UI", SECONDARY_CAPTURE),
            _element(0x0002, 0x0003, "UI", sop),
            _element(0x0002, 0x0010, "UI", EXPLICIT_LITTLE),
            _element(0x0002, 0x0012, "UI", ROOT + ".1"),
        ]
    )
    group_length = struct.pack("<HH", 2, 0) + b"UL" + struct.pack("<HI", 4, len(meta))
    seed = (patient * 7919 + study * 104729 + series * 1299709 + number * 15485863) & 0xFFFFFFFF
    pixels = bytes((seed >> (i % 24) ^ i * 31) & 0xFF for i in range(size * size))
    dataset = b"".join(
        [
            _element(0x0008, 0x0016, "UI", SECONDARY_CAPTURE),
            _element(0x0008, 0x0018, "UI", sop),
            _element(0x0008, 0x0020, "DA", "20261202"),
            _element(0x0008, 0x0060, "CS", "OT"),
            _element(0x0010, 0x0010, "PN", f"Test^Patient{patient}"),
            _element(0x0010, 0x0020, "LO", f"P{patient}"),
            _element(0x0020, 0x000D, "UI", uid(patient, study)),
            _element(0x0020, 0x000E, "UI", uid(patient, study, series)),
            _element(0x0020, 0x0013, "IS", str(number)),
            _element(0x0028, 0x0002, "US", 1),
            _element(0x0028, 0x0004, "CS", "MONOCHROME2"),
            _element(0x0028, 0x0010, "US", size),
            _element(0x0028, 0x0011, "US", size),
            _element(0x0028, 0x0100, "US", 8),
            _element(0x0028, 0x0101, "US", 8),
            _element(0x0028, 0x0102, "US", 7),
            _element(0x0028, 0x0103, "US", 0),
            _element(0x7FE0, 0x0010, "OW", pixels),
        ]
    )
    return b"\0" * 128 + b"DICM" + group_length + meta + dataset
