"""safehold.crypto sealing and keys; safehold.repo.pack building and header parsing."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import FAST_KDF

from safehold.crypto import (
    OVERHEAD,
    AuthenticationFailed,
    Cipher,
    MasterKey,
    unwrap_key,
    wrap_key,
)
from safehold.repo.format import BLOB_DATA, BLOB_TREE, blob_aad, decode_body, encode_body
from safehold.repo.pack import PackBuilder, SpooledPackBuilder, pack_id_of, read_header


@pytest.fixture(scope="module")
def cipher() -> Cipher:
    return Cipher(MasterKey.generate())


def test_seal_and_open_round_trip(cipher: Cipher) -> None:
    sealed = cipher.seal(b"plain text", b"name")
    assert len(sealed) == len(b"plain text") + OVERHEAD
    assert cipher.open(sealed, b"name") == b"plain text"


def test_sealing_twice_uses_fresh_nonces(cipher: Cipher) -> None:
    assert cipher.seal(b"same", b"ad") != cipher.seal(b"same", b"ad")


@pytest.mark.parametrize("bit", [0, 8 * 12, 8 * 12 + 3, -1])
def test_a_flipped_bit_fails_authentication(cipher: Cipher, bit: int) -> None:
    sealed = bytearray(cipher.seal(b"some secret data", b"ad"))
    position = bit if bit >= 0 else len(sealed) * 8 - 1
    sealed[position // 8] ^= 1 << (position % 8)
    with pytest.raises(AuthenticationFailed):
        cipher.open(bytes(sealed), b"ad")


def test_wrong_associated_data_fails(cipher: Cipher) -> None:
    sealed = cipher.seal(b"data", blob_aad(BLOB_DATA, b"\x01" * 32))
    with pytest.raises(AuthenticationFailed):
        cipher.open(sealed, blob_aad(BLOB_TREE, b"\x01" * 32))
    with pytest.raises(AuthenticationFailed):
        cipher.open(sealed, blob_aad(BLOB_DATA, b"\x02" * 32))


def test_another_key_fails(cipher: Cipher) -> None:
    with pytest.raises(AuthenticationFailed):
        Cipher(MasterKey.generate()).open(cipher.seal(b"data", b"ad"), b"ad")


def test_too_short_object_fails(cipher: Cipher) -> None:
    with pytest.raises(AuthenticationFailed):
        cipher.open(b"\x00" * (OVERHEAD - 1), b"ad")


def test_blob_ids_are_keyed_and_deterministic(cipher: Cipher) -> None:
    assert cipher.blob_id(b"abc") == cipher.blob_id(b"abc")
    assert cipher.blob_id(b"abc") != cipher.blob_id(b"abd")
    assert Cipher(MasterKey.generate()).blob_id(b"abc") != cipher.blob_id(b"abc")
    assert len(cipher.blob_id(b"")) == 32


def test_master_key_serialisation_round_trip() -> None:
    key = MasterKey.generate()
    assert MasterKey.from_bytes(key.to_bytes()) == key
    assert 0 <= key.chunker_seed < 2**63


def test_wrapped_key_opens_only_with_its_passphrase() -> None:
    key = MasterKey.generate()
    document = wrap_key(key, b"passphrase", hostname="h", username="u", kdf=FAST_KDF)
    assert document["kdf"] == "argon2id" and document["memory_cost"] == FAST_KDF["memory_cost"]
    assert unwrap_key(document, b"passphrase") == key
    with pytest.raises(AuthenticationFailed):
        unwrap_key(document, b"Passphrase")


def test_unknown_key_derivation_is_refused() -> None:
    document = wrap_key(MasterKey.generate(), b"p", hostname="h", username="u", kdf=FAST_KDF)
    with pytest.raises(AuthenticationFailed):
        unwrap_key(dict(document, kdf="scrypt"), b"p")


@pytest.mark.parametrize("data", [b"", b"short", b"a" * 5000, os.urandom(5000)])
def test_body_encoding_round_trip(data: bytes) -> None:
    body = encode_body(data, 3)
    assert decode_body(body, len(data)) == data
    assert decode_body(body) == data
    if data == b"a" * 5000:
        assert len(body) < 100  # compressible data is compressed
    if len(data) == 5000 and data != b"a" * 5000:
        assert body[0] == 0  # random data is stored raw


def test_body_with_unknown_flag_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_body(b"\x07payload")


# ------------------------------------------------------------------ packs


def build_pack(cipher: Cipher, blobs: list[bytes]) -> tuple[bytes, bytes, PackBuilder]:
    builder = PackBuilder()
    for number, data in enumerate(blobs):
        blob_id = cipher.blob_id(data)
        blob_type = BLOB_TREE if number % 2 else BLOB_DATA
        builder.add(blob_type, blob_id, cipher.seal(data, blob_aad(blob_type, blob_id)), len(data))
    pack_id, data = builder.finish(cipher)
    return pack_id, data, builder


def test_pack_header_round_trip(cipher: Cipher) -> None:
    blobs = [b"first", os.urandom(1000), b"", b"last blob"]
    pack_id, data, builder = build_pack(cipher, blobs)
    assert pack_id == pack_id_of(data)
    entries = read_header(cipher, data)
    assert entries == builder.entries
    for entry, plain in zip(entries, blobs, strict=True):
        sealed = data[entry.offset : entry.offset + entry.length]
        assert cipher.open(sealed, blob_aad(entry.blob_type, entry.blob_id)) == plain
        assert entry.raw_length == len(plain)


def test_a_spooled_pack_filled_out_of_order_matches_its_id_and_header(cipher: Cipher) -> None:
    # As the writer fills it: each thread reserves its place (under a lock), then seals into
    # it; here the last place is filled first.
    blobs = [os.urandom(300_000), b"small", b"", os.urandom(3 * 1024 * 1024 + 5)]
    builder = SpooledPackBuilder(capacity=16 * 1024 * 1024)
    lock, reserved = threading.Lock(), threading.Barrier(len(blobs))

    def add(number: int) -> None:
        plain = blobs[number]
        blob_id = cipher.blob_id(plain)
        with lock:
            view = builder.reserve(BLOB_DATA, blob_id, len(plain) + OVERHEAD, len(plain))
            entry = builder.entries[-1]
        reserved.wait()
        time.sleep(0.05 * (len(blobs) - number))
        with view:
            cipher.seal_into(plain, blob_aad(BLOB_DATA, blob_id), view)
            builder.filled(entry, view)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(len(blobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pack_id, spooled = builder.finish(cipher)
    try:
        data = spooled.value()
        assert len(spooled) == len(data) == builder.size
        assert pack_id == pack_id_of(data)
        entries = read_header(cipher, data)
        assert entries == builder.entries
        for entry in entries:
            sealed = data[entry.offset : entry.offset + entry.length]
            plain = cipher.open(sealed, blob_aad(entry.blob_type, entry.blob_id))
            assert cipher.blob_id(plain) == entry.blob_id and entry.raw_length == len(plain)
        assert sorted(e.raw_length for e in entries) == sorted(len(b) for b in blobs)
        assert spooled.reader().read() == data
        with pytest.raises(RuntimeError):
            builder.reserve(BLOB_DATA, b"x" * 32, 1, 1)
    finally:
        builder.recycle()  # removes the file


def test_pack_with_no_blobs_has_an_empty_header(cipher: Cipher) -> None:
    _, data, _ = build_pack(cipher, [])
    assert read_header(cipher, data) == []


@pytest.mark.parametrize("cut", [1, 4, 20])
def test_truncated_pack_raises(cipher: Cipher, cut: int) -> None:
    _, data, _ = build_pack(cipher, [b"one", b"two"])
    with pytest.raises((ValueError, AuthenticationFailed)):
        read_header(cipher, data[:-cut])


def test_pack_shorter_than_its_trailer_raises(cipher: Cipher) -> None:
    with pytest.raises(ValueError, match="too short"):
        read_header(cipher, b"\x01\x02")


def test_pack_missing_its_first_blob_raises(cipher: Cipher) -> None:
    _, data, builder = build_pack(cipher, [b"one", b"two"])
    with pytest.raises(ValueError, match="does not match"):
        read_header(cipher, data[builder.entries[0].length :])


def test_modified_pack_header_fails_authentication(cipher: Cipher) -> None:
    _, data, _ = build_pack(cipher, [b"one", b"two"])
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF
    with pytest.raises(AuthenticationFailed):
        read_header(cipher, bytes(damaged))
