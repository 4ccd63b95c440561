"""Argon2id key derivation, and deriving a key file's key ahead of need.

Unwrapping the master key costs one Argon2id run (64 MiB, about 0.15 s) on every command. It
does not depend on anything the command computes first, only on the passphrase and the key
file, and Argon2id releases the GIL: so ``safehold.cli.prefetch`` starts it in a background
thread at start-up, while the main thread imports the rest of safehold and parses options.
``derive`` then finds the result instead of computing it again.

This module imports only the argon2 C library's bindings (``_argon2_cffi_bindings``, the
layer below argon2-cffi's ``hash_secret_raw``, which does exactly this call), not argon2-cffi's
high-level package (18 ms of imports: password hashing profiles, dataclasses, inspect) nor the
rest of safehold.crypto, so the background thread gets going within milliseconds.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import Future

from _argon2_cffi_bindings import ffi, lib

# Derivations started ahead of need, by (passphrase, salt, parameters). Each is taken out by
# the one ``derive`` call that needs it, so no derived key stays here after use.
_ahead: dict[tuple, Future] = {}
_ahead_lock = threading.Lock()


def _key(passphrase: bytes, salt: bytes, params: dict) -> tuple:
    return passphrase, salt, params["time_cost"], params["memory_cost"], params["parallelism"]


def derive_now(passphrase: bytes, salt: bytes, params: dict) -> bytes:
    """The 32-byte Argon2id (version 0x13) key of ``passphrase`` and ``salt`` under ``params``.

    Raises ValueError if the library refuses the parameters (e.g. a salt that is too short).
    """
    output = ffi.new("uint8_t[]", 32)
    status = lib.argon2_hash(
        params["time_cost"],
        params["memory_cost"],
        params["parallelism"],
        ffi.new("uint8_t[]", passphrase),
        len(passphrase),
        ffi.new("uint8_t[]", salt),
        len(salt),
        output,
        32,
        ffi.NULL,
        0,
        lib.Argon2_id,
        lib.ARGON2_VERSION_13,
    )
    if status != lib.ARGON2_OK:
        raise ValueError(ffi.string(lib.argon2_error_message(status)).decode())
    return bytes(ffi.buffer(output, 32))


def derive(passphrase: bytes, salt: bytes, params: dict) -> bytes:
    """Like ``derive_now``, but takes the result of a ``derive_ahead`` of the same inputs
    (waiting for it if it is still running) instead of computing it a second time."""
    with _ahead_lock:
        future = _ahead.pop(_key(passphrase, salt, params), None)
    if future is not None:
        try:
            return future.result()
        except Exception:
            pass  # computed again below, where an error is reported in its proper place
    return derive_now(passphrase, salt, params)


def derive_ahead(passphrase: bytes, document: dict) -> None:
    """Start deriving the key-encryption key of a key-file document in a background thread,
    for a later ``derive`` with the same passphrase and salt (registered before this returns,
    so that ``derive`` waits for it rather than racing it). Anything unexpected in the
    document is left for the real unwrapping to report."""
    if document.get("kdf") != "argon2id":
        return
    salt = base64.b64decode(document["salt"])
    key = _key(passphrase, salt, document)
    future: Future = Future()
    with _ahead_lock:
        if key in _ahead:
            return
        _ahead[key] = future

    def run() -> None:
        try:
            future.set_result(derive_now(passphrase, salt, document))
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=run, name="kdf-ahead", daemon=True).start()
