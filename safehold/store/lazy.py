"""Importing borgstore without loading the remote backends' libraries until they are used.

borgstore imports every backend module as soon as its Store is imported, and with them
paramiko, boto3 and requests: about 0.4 s and 30 MB on every command, even for a local
repository. ``import_borgstore`` imports it while those libraries look absent (each backend
module then keeps ``None`` in their place, as it does when they are not installed);
``enable`` brings one back for its backend module just before a remote store needs it
(paramiko, for sftp; the s3 store builds its client with botocore and never imports boto3).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# library -> the borgstore backend modules that import it
BACKENDS = {
    "paramiko": ("borgstore.backends.sftp",),
    "boto3": ("borgstore.backends.s3",),
    "requests": ("borgstore.backends.rclone", "borgstore.backends.rest"),
}


def import_borgstore() -> ModuleType:
    """Import borgstore.store with the remote libraries hidden; returns the module."""
    hidden = [name for name in BACKENDS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "not installed" for import
    try:
        return importlib.import_module("borgstore.store")
    finally:
        for name in hidden:
            if sys.modules.get(name) is None:
                del sys.modules[name]


def enable(library: str) -> None:
    """Make ``library`` available to the borgstore backends that use it (re-running them)."""
    importlib.import_module(library)
    for backend in BACKENDS[library]:
        module = sys.modules.get(backend)
        if module is not None and getattr(module, library, None) is None:
            importlib.reload(module)
