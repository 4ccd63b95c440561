"""The repository: format marker, keys, config, sealed objects, blobs and snapshots."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import msgpack

from safehold.crypto import AuthenticationFailed, Cipher, MasterKey, unwrap_key_flags, wrap_key
from safehold.errors import (
    DamagedMarker,
    IntegrityError,
    NoDeleteMode,
    NotARepository,
    RepositoryNotFound,
    UnsupportedFormat,
    WrongPassphrase,
)
from safehold.repo.cache import ObjectCache, TreeCache, remember_kdf
from safehold.repo.format import (
    BLOB_TREE,
    CONFIG_NAME,
    FORMAT_VERSION,
    MARKER_NAME,
    MARKER_TEXT,
    blob_aad,
    decode_body,
    encode_body,
    object_aad,
)
from safehold.repo.index import Index, Location, index_file_problem
from safehold.store import (
    LocationMissing,
    ObjectMissing,
    Store,
    location_exists,
    location_is_file,
    open_store,
)
from safehold.store.locks import Lock
from safehold.store.nodelete import NoDeleteStore

DEFAULT_CONFIG = {
    "chunker": {"min_size": 256 * 1024, "avg_size": 1024 * 1024, "max_size": 4 * 1024 * 1024},
    "compression_level": 3,
    "pack_size": 16 * 1024 * 1024,
}


PARALLEL_LOADS = 8  # objects to read before reading them over several connections


def _identity() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return socket.gethostname(), user


def pack_name(pack_id: bytes) -> str:
    return "data/" + pack_id.hex()


def open_blob(
    cipher: Cipher, blob_id: bytes, location: Location, sealed: bytes | memoryview
) -> bytes:
    """Decrypt, decompress and verify one blob; IntegrityError on any mismatch."""
    try:
        body = cipher.open(sealed, blob_aad(location.blob_type, blob_id))
        data = decode_body(body, location.raw_length)
    except (AuthenticationFailed, ValueError) as error:
        raise IntegrityError(
            f"blob {blob_id.hex()[:16]} in pack {location.pack_id.hex()[:16]} is damaged ({error})"
        ) from error
    if len(data) != location.raw_length or cipher.blob_id(data) != blob_id:
        raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its id")
    return data


class Repository:
    """An opened repository. Create with ``Repository.init`` or ``Repository.open``."""

    def __init__(
        self,
        store: Store,
        cipher: Cipher,
        config: dict,
        key_name: str,
        *,
        key_no_delete: bool = False,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.config = config
        self.key_name = key_name
        self.key_no_delete = key_no_delete  # the key used was added with --no-delete
        self.location = store.location  # the path or URL it was opened with (set by open/init)
        self._index: Index | None = None
        self._index_lock = threading.Lock()
        self.held_locks: list[Lock] = []  # the repository locks this process holds now
        # Objects found damaged and worked around (a snapshot skipped, an index file whose
        # packs were read from their headers): name -> what was done. Commands name them.
        self.damaged: dict[str, str] = {}
        self._tree_cache: TreeCache | bool | None = False  # False: not looked up yet
        self._object_cache: ObjectCache | bool | None = False
        # Index files and snapshots from the local object cache (authenticated on use, as
        # from the repository); proving operations turn it off (prove_from_repository).
        self.use_object_cache = True
        # Set by commands that read snapshots for what they hold (ls, diff, restore): trees may
        # then come from the local tree cache, authenticated and checked against their ids as
        # from a pack, so they are the very trees the snapshot names. Checks, drills, copies
        # and repairs leave it off: they exist to prove what the repository itself holds.
        self.use_tree_cache = False

    # ---------------------------------------------------------------- opening

    @classmethod
    def init(
        cls,
        location: str,
        passphrase: bytes,
        *,
        kdf: dict | None = None,
        config: dict | None = None,
        no_delete: bool = False,
    ) -> Repository:
        """Create a new repository at ``location`` (a path or URL) and return it opened.

        ``no_delete`` makes the whole repository no-delete for good (``no_delete: true`` in
        its config, which is never rewritten): see ``Repository.no_delete``."""
        store = open_store(location)
        store.create()
        store.open()
        master_key = MasterKey.generate()
        cipher = Cipher(master_key)
        full_config = {
            **DEFAULT_CONFIG,
            "pack_size": store.recommended_pack_size,  # per backend: 16 MiB local, 32 remote
            **(config or {}),
            **({"no_delete": True} if no_delete else {}),
            "version": FORMAT_VERSION,
            "id": os.urandom(16).hex(),
        }
        hostname, username = _identity()
        key_name = "keys/" + os.urandom(16).hex()
        document = wrap_key(master_key, passphrase, hostname=hostname, username=username, kdf=kdf)
        store.save(key_name, json.dumps(document).encode())
        if store.kind != "local":
            remember_kdf(location, document)
        repository = cls(store, cipher, full_config, key_name)
        repository.location = location
        repository.save_object(CONFIG_NAME, full_config)
        # The marker is written last: a half-initialised location is not taken for a repository.
        store.save(MARKER_NAME, MARKER_TEXT)
        if repository.no_delete:
            repository.store = NoDeleteStore(store, repository.no_delete_reason)
        return repository

    @classmethod
    def open(cls, location: str, passphrase: Callable[[], bytes] | bytes) -> Repository:
        """Open an existing repository; ``passphrase`` is bytes or a function returning them.

        Raises RepositoryNotFound, NotARepository, UnsupportedFormat or WrongPassphrase.
        """
        store = open_store(location)
        try:
            store.open()
            marker = store.load(MARKER_NAME)
        except (ObjectMissing, LocationMissing) as error:
            # Only now look closer (a round trip or two, a connection of their own over sftp):
            # nothing there at all, or something that is not a repository?
            with contextlib.suppress(Exception):
                store.close()
            if not location_exists(location):
                raise RepositoryNotFound(location=location) from None
            if location_is_file(location) or isinstance(error, ObjectMissing):
                raise NotARepository(location=location) from None
            raise
        version = _marker_version(marker)
        if version is None:
            if any(store.list("keys")):
                raise DamagedMarker(location=location)
            raise NotARepository(location=location)
        if version > FORMAT_VERSION:
            raise UnsupportedFormat(found=version, supported=FORMAT_VERSION)
        secret = passphrase() if callable(passphrase) else passphrase
        key_names = sorted(name for name, _ in store.list("keys"))
        for key_name in key_names:
            try:
                document = json.loads(store.load(key_name))
                master_key, flags = unwrap_key_flags(document, secret)
            except (AuthenticationFailed, ValueError, KeyError):
                continue
            repository = cls(
                store, Cipher(master_key), {}, key_name, key_no_delete=bool(flags.get("no_delete"))
            )
            repository.location = location
            if store.kind != "local":  # the next command derives while it connects
                remember_kdf(location, document)
            repository.config = repository.load_object(CONFIG_NAME)
            if repository.config.get("version", 0) > FORMAT_VERSION:
                raise UnsupportedFormat(
                    found=repository.config["version"], supported=FORMAT_VERSION
                )
            if repository.no_delete:  # every delete is refused below the commands too
                repository.store = NoDeleteStore(store, repository.no_delete_reason)
            return repository
        store.close()
        raise WrongPassphrase(count=len(key_names))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_another_store(self) -> Store:
        """A second, opened connection to this repository's location (``open_store`` again):
        borgstore runs one operation at a time per store, so each parallel upload has its own.
        Saves only: it does not carry the no-delete guard, and needs none."""
        return open_store(self.location).open()

    @contextlib.contextmanager
    def readers(self, size: int | None = None) -> Iterator[StorePool]:
        """Connections for reading in parallel (restores: trees and packs): the repository's
        own store and up to ``size - 1`` more (default: what the store recommends for
        uploads, 1 locally), opened when first needed and closed at the end."""
        pool = StorePool(self, size or self.store.recommended_uploads)
        try:
            yield pool
        finally:
            pool.close()

    # ---------------------------------------------------------------- no-delete mode

    @property
    def no_delete(self) -> bool:
        """True if safehold must delete and overwrite nothing here: the repository was created
        with ``init --no-delete``, or it was opened with a key added with ``key add
        --no-delete``. Backups, restores and checks work (with append-only locks); forget,
        prune, repair, unlock and key passwd/remove are refused (NoDeleteMode, exit 26)."""
        return self.key_no_delete or bool(self.config.get("no_delete"))

    @property
    def no_delete_reason(self) -> str:
        if self.config.get("no_delete"):
            return "this repository (created with 'init --no-delete')"
        return "the key this repository was opened with (added with 'key add --no-delete')"

    def require_delete(self, operation: str) -> None:
        """Raise NoDeleteMode (exit 26) if ``operation`` would delete or overwrite here."""
        if self.no_delete:
            raise NoDeleteMode(operation=operation, reason=self.no_delete_reason)

    def lock(
        self, *, exclusive: bool = False, wait: float = 0.0, operation: str | None = None
    ) -> Lock:
        """Return a (not yet acquired) lock; use it as a context manager.

        Exclusive locks are taken only by operations that delete (forget, prune, repair), so
        in no-delete mode they are refused here. Shared locks are append-only there: new lock
        objects, never an overwrite or a delete (safehold/store/locks.py)."""
        if exclusive:
            self.require_delete(operation or "an exclusive operation (forget, prune, repair)")
        return Lock(
            self.store,
            exclusive=exclusive,
            wait=wait,
            append_only=self.no_delete,
            held=self.held_locks,
        )

    def verify_locks(self) -> None:
        """Raise RepositoryLocked unless every lock this process holds on the repository was
        live all along and still exists (``Lock.verify``): called before every commit, so
        that nothing is committed on the strength of a lock another process took for stale."""
        for lock in list(self.held_locks):
            lock.verify()

    # ---------------------------------------------------------------- sealed objects

    def save_object(self, name: str, value: object) -> None:
        """Seal a msgpack-able value under ``name`` (compressed, encrypted, bound to the name);
        an index file or snapshot is kept in the object cache too, once stored."""
        body = encode_body(msgpack.packb(value, use_bin_type=True), 3)
        sealed = self.cipher.seal(body, object_aad(name))
        self.store.save(name, sealed)
        cache = self.object_cache
        if cache is not None:
            cache.put(name, sealed)

    def load_object(self, name: str, *, cached: bool = False) -> object:
        """Load and authenticate a sealed object; IntegrityError if it was damaged. With
        ``cached``, an index file or snapshot comes from the local object cache when it
        holds a copy that authenticates (one that does not is dropped), and one read from
        the repository is kept there."""
        return self.load_objects([name], cached=cached)[0]

    def load_objects(self, names: list[str], *, cached: bool = False) -> list[object]:
        """``load_object`` of each name, in order; the ones not cached are read several at
        once when there are many and the store is remote (``readers``)."""
        cache = self.object_cache if cached else None
        values: dict[str, object] = {}
        missing = []
        for name in names:
            sealed = cache.get(name) if cache is not None else None
            if sealed is not None:
                try:
                    values[name] = self._open_object(name, sealed)
                    continue
                except IntegrityError:
                    cache.discard(name)  # type: ignore[union-attr]
            missing.append(name)
        if len(missing) >= PARALLEL_LOADS and self.store.recommended_uploads > 1:
            with self.readers() as pool, ThreadPoolExecutor(pool.size, "objects") as workers:

                def fetch(name: str) -> object:
                    with pool.store() as store:
                        return self._fetch_object(store, name, cache)

                values.update(zip(missing, workers.map(fetch, missing), strict=True))
        else:
            for name in missing:
                values[name] = self._fetch_object(self.store, name, cache)
        return [values[name] for name in names]

    def note_damage(self, name: str, what: str) -> None:
        """Record that the damaged object ``name`` was worked around (``what``): kept in
        ``damaged`` and for ``take_damage_reports`` (the command line warns about each)."""
        self.damaged[name] = what
        _DAMAGE_REPORTS[name] = what

    def load_objects_tolerant(self, names: list[str], *, cached: bool = False) -> dict[str, object]:
        """``load_objects``, but a damaged object is left out of the result instead of
        stopping the rest: name -> value of every object that authenticates."""
        try:
            return dict(zip(names, self.load_objects(names, cached=cached), strict=True))
        except IntegrityError:
            pass
        values = {}
        for name in names:
            try:
                values[name] = self.load_object(name, cached=cached)
            except IntegrityError:
                continue
        return values

    def _fetch_object(self, store: Store, name: str, cache: ObjectCache | None) -> object:
        sealed = store.load(name)
        value = self._open_object(name, sealed)
        if cache is not None:
            cache.put(name, sealed)
        return value

    def _open_object(self, name: str, sealed: bytes) -> object:
        try:
            body = self.cipher.open(sealed, object_aad(name))
            return msgpack.unpackb(decode_body(body), raw=False, strict_map_key=False)
        except (AuthenticationFailed, ValueError) as error:
            raise IntegrityError(f"{name} is damaged ({error})") from error

    @property
    def object_cache(self) -> ObjectCache | None:
        """This repository's local cache of index files and snapshots, None when off."""
        if self._object_cache is False:
            self._object_cache = ObjectCache.for_repository(str(self.config["id"]))
        return self._object_cache  # type: ignore[return-value]

    def prove_from_repository(self) -> None:
        """From now on read index files, snapshots and trees from the repository only, never
        from the local caches (check, repair, drill: they prove what the repository holds);
        an index already loaded from the cache is dropped."""
        self.use_object_cache = False
        self.use_tree_cache = False
        with self._index_lock:
            self._index = None

    # ---------------------------------------------------------------- keys

    def key_documents(self) -> Iterator[tuple[str, dict]]:
        for name, _size in sorted(self.store.list("keys")):
            yield name, json.loads(self.store.load(name))

    def add_key(
        self, passphrase: bytes, kdf: dict | None = None, *, no_delete: bool = False
    ) -> str:
        """Add a key file wrapping this repository's master key; returns its name.

        A key added while the repository is opened with a no-delete key is no-delete too:
        such a key cannot make one that may delete."""
        hostname, username = _identity()
        document = wrap_key(
            self.cipher.master_key,
            passphrase,
            hostname=hostname,
            username=username,
            kdf=kdf,
            no_delete=no_delete or self.key_no_delete,
        )
        name = "keys/" + os.urandom(16).hex()
        self.store.save(name, json.dumps(document).encode())
        return name

    def remove_key(self, name: str, operation: str = "key remove") -> None:
        self.require_delete(operation)
        self.store.delete(name)

    # ---------------------------------------------------------------- index

    @property
    def index(self) -> Index:
        """The blob index, loaded from all index files on first use (a backup in which
        nothing changed never needs it). Called for every blob a backup adds: once loaded,
        it is returned without taking the lock."""
        index = self._index
        if index is not None:
            return index
        with self._index_lock:
            if self._index is None:
                index = Index()
                names = self.index_names()
                loaded = self.load_objects_tolerant(names, cached=self.use_object_cache)
                damaged = [name for name in names if name not in loaded]
                for name in names:
                    content = loaded.pop(name, None)  # the index holds the records alone
                    if content is None:
                        continue  # damaged: it does not authenticate
                    if index_file_problem(content) is not None:
                        damaged.append(name)  # it authenticates, but it is no index file
                        continue
                    index.load_file(content["packs"], content["records"])  # type: ignore[index]
                content = None
                index.finish_loading()
                if damaged:
                    self._index_from_headers(index, damaged)
                self._index = index
            return self._index

    def _index_from_headers(self, index: Index, damaged: list[str]) -> None:
        """Some index files are damaged (they do not authenticate, or are no index file: see
        ``index_file_problem``): add the blobs of every stored pack no intact index
        file lists, read from the pack's own (authenticated) header, so that restores and
        backups find them. Packs that fail the checks are left out (their blobs are lost
        until 'repair index' or 'check' says more)."""
        from safehold.repo.pack import verified_entries

        known = set(index.packs)
        for name, _size in list(self.store.list("data")):
            try:
                pack_id = bytes.fromhex(name.split("/", 1)[1])
            except ValueError:
                continue
            if pack_id in known:
                continue
            try:
                entries = verified_entries(self.cipher, pack_id, self.store.load(name))
            except (ObjectMissing, ValueError, AuthenticationFailed):
                continue
            for entry in entries:
                index.add(*entry.index_row(pack_id))
        for name in damaged:
            self.note_damage(
                name,
                "damaged index file: its blobs were found from the packs' headers; "
                "run 'safehold repair index'",
            )

    def load_index_file(self, name: str) -> dict:
        """One index file, read from the repository: IntegrityError ("<name> is damaged
        (...)") if it does not authenticate or is no index file (``index_file_problem``)."""
        content = self.load_object(name)
        problem = index_file_problem(content)
        if problem is not None:
            raise IntegrityError(f"{name} is damaged ({problem})")
        return content  # type: ignore[return-value]

    def forget_index(self) -> None:
        """Drop the loaded index, so the next use reads the index files again (a long-running
        reader, such as a mount, sees the blobs of backups made since)."""
        with self._index_lock:
            self._index = None

    def index_names(self) -> list[str]:
        """The names of all index files (the object cache drops copies of any others)."""
        names = sorted(name for name, _ in self.store.list("index"))
        self._retain("index", names)
        return names

    def _retain(self, namespace: str, names: list[str]) -> None:
        cache = self.object_cache
        if cache is not None:
            cache.retain(namespace, set(names))
            if namespace == "snapshots":  # a snapshot's directory table goes with it
                cache.retain("dirs", {"dirs/" + name.partition("/")[2] for name in names})

    # ---------------------------------------------------------------- blobs

    def seal_blob(self, blob_type: int, blob_id: bytes, data: bytes | memoryview) -> bytes:
        return self.cipher.seal(
            encode_body(data, self.config["compression_level"]), blob_aad(blob_type, blob_id)
        )

    def open_blob(self, blob_id: bytes, location: Location, sealed: bytes | memoryview) -> bytes:
        """Decrypt, decompress and verify one blob; IntegrityError on any mismatch."""
        return open_blob(self.cipher, blob_id, location, sealed)

    @property
    def tree_cache(self) -> TreeCache | None:
        """This repository's local tree cache (safehold/repo/cache.py), None when off."""
        if self._tree_cache is False:
            self._tree_cache = TreeCache.for_repository(str(self.config["id"]))
        return self._tree_cache  # type: ignore[return-value]

    def load_tree_blob(self, tree_id: bytes, *, cached: bool, store: Store | None = None) -> bytes:
        """A tree's verified plaintext. With ``cached`` (backups reading their parent, ls,
        diff, restore), from the local tree cache when it holds it, checked like a blob from
        a pack (a cached copy that fails is dropped and the repository read). Without it
        (check, drill, copy, repair), from the repository, which they must prove. Either way a
        tree read from the repository is kept in the cache. ``store``: one of ``readers()``
        (default: the repository's own)."""
        cache = self.tree_cache
        if cache is not None and cached:
            sealed = cache.get(tree_id)
            if sealed is not None:
                try:
                    return self._open_cached_tree(tree_id, sealed)
                except IntegrityError:
                    cache.discard(tree_id)
        location, sealed = self._load_sealed(tree_id, store)
        data = self.open_blob(tree_id, location, sealed)
        if cache is not None and location.blob_type == BLOB_TREE:
            cache.put(tree_id, sealed)
        return data

    def _open_cached_tree(self, tree_id: bytes, sealed: bytes) -> bytes:
        return open_cached_tree(self.cipher, tree_id, sealed)

    def load_blob(self, blob_id: bytes) -> bytes:
        """Return the verified plaintext of a blob; IntegrityError if missing or damaged."""
        return self.open_blob(blob_id, *self._load_sealed(blob_id))

    def _load_sealed(self, blob_id: bytes, store: Store | None = None) -> tuple[Location, bytes]:
        """The blob's index entry and its sealed bytes read from its pack (through ``store``,
        one of ``readers()``, or the repository's own)."""
        location = self.index.lookup(blob_id)
        if location is None:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not in the index")
        return location, self._load_pack_range(location, store or self.store)

    def _load_pack_range(self, location: Location, store: Store) -> bytes:
        try:
            data = store.load(pack_name(location.pack_id), location.offset, location.length)
        except ObjectMissing:
            raise IntegrityError(f"pack {location.pack_id.hex()[:16]} is missing") from None
        if len(data) != location.length:
            raise IntegrityError(f"pack {location.pack_id.hex()[:16]} is truncated")
        return data

    # ---------------------------------------------------------------- snapshots

    def snapshot_names(self) -> list[str]:
        """The names of all snapshots (the object cache drops copies of any others)."""
        names = sorted(name for name, _ in self.store.list("snapshots"))
        self._retain("snapshots", names)
        return names

    def save_snapshot(self, snapshot: dict) -> str:
        """Write a snapshot object (the last write of a backup) after verifying the locks
        held (``verify_locks``); returns its hex id."""
        self.verify_locks()
        snapshot_id = os.urandom(32).hex()
        self.save_object("snapshots/" + snapshot_id, snapshot)
        return snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot object (forget, repair, tag) after verifying the locks held;
        ObjectMissing if it is gone already."""
        self.verify_locks()
        self.store.delete("snapshots/" + snapshot_id)

    # ---------------------------------------------------------------- directory tables

    def load_dir_table(self, snapshot: dict) -> dict[bytes, tuple[bytes, dict[bytes, bytes]]]:
        """What the local cache remembers of the directories of ``snapshot`` (a parent, as
        listed now): listing signature -> (tree id, {name: tree id} of its subdirectories);
        see safehold.archive.archiver. Empty when the cache is off, has none, or holds one
        that does not authenticate or belongs to another version of the snapshot."""
        cache = self.object_cache
        if cache is None:
            return {}
        name = "dirs/" + snapshot["id"]
        sealed = cache.get(name)
        if sealed is None:
            return {}
        try:
            value = self._open_object(name, sealed)
            if not isinstance(value, dict) or value.get("version") != 1:
                return {}
            if value.get("tree") != snapshot["tree"]:
                return {}
            return {sig: (tree, subdirs) for sig, (tree, subdirs) in value["dirs"].items()}
        except (IntegrityError, TypeError, ValueError, KeyError):
            cache.discard(name)
            return {}

    def save_dir_table(
        self,
        snapshot_id: str,
        tree: bytes,
        table: dict[bytes, tuple[bytes, dict[bytes, bytes]]],
        *,
        superseded: str | None = None,
    ) -> None:
        """Keep the directory table of the snapshot just written, sealed like an object of
        the repository but only in the local cache (no other copy exists or is needed); the
        table of ``superseded`` (its parent) is dropped."""
        cache = self.object_cache
        if cache is None:
            return
        name = "dirs/" + snapshot_id
        value = {"version": 1, "tree": tree, "dirs": {s: list(v) for s, v in table.items()}}
        body = encode_body(msgpack.packb(value, use_bin_type=True), 3)
        cache.put(name, self.cipher.seal(body, object_aad(name)))
        if superseded is not None and superseded != snapshot_id:
            cache.discard("dirs/" + superseded)

    def load_snapshot(self, snapshot_id: str) -> dict:
        return self.load_snapshots([snapshot_id])[0]

    def load_snapshots(self, snapshot_ids: list[str], *, skip_damaged: bool = False) -> list[dict]:
        """The snapshots with these ids (from the object cache where it has them).

        A snapshot that fails authentication, or is not a snapshot at all, raises
        IntegrityError; with ``skip_damaged`` it is left out and named in ``damaged``."""
        names = ["snapshots/" + snapshot_id for snapshot_id in snapshot_ids]
        if skip_damaged:
            loaded = self.load_objects_tolerant(names, cached=self.use_object_cache)
        else:
            values = self.load_objects(names, cached=self.use_object_cache)
            loaded = dict(zip(names, values, strict=True))
        result = []
        for snapshot_id, name in zip(snapshot_ids, names, strict=True):
            snapshot = loaded.get(name)
            problem = "damaged" if snapshot is None else snapshot_problem(snapshot)
            if problem is None:
                result.append(dict(snapshot, id=snapshot_id))  # type: ignore[arg-type]
                continue
            if not skip_damaged:
                raise IntegrityError(f"{name} is {problem}")
            self.note_damage(
                name,
                f"{problem} snapshot, skipped: 'safehold repair snapshots' salvages or removes it",
            )
        return result


_DAMAGE_REPORTS: dict[str, str] = {}  # what every repository of this process noted


def take_damage_reports() -> list[tuple[str, str]]:
    """(object name, what was done) of every damaged object that the repositories opened in
    this process met and worked around (``Repository.note_damage``) since the last call."""
    found = sorted(_DAMAGE_REPORTS.items())
    _DAMAGE_REPORTS.clear()
    return found


def snapshot_problem(snapshot: object) -> str | None:
    """None if ``snapshot`` has the fields every command relies on, else what is wrong (a
    snapshot object that authenticates was still written by someone holding the key: its
    fields are checked, not trusted)."""
    if not isinstance(snapshot, dict):
        return "not a snapshot"
    if not isinstance(snapshot.get("tree"), bytes) or len(snapshot["tree"]) != 32:
        return "without a valid root tree"
    if not isinstance(snapshot.get("time"), int | float):
        return "without a valid time"
    for key in ("hostname", "platform", "username"):
        if snapshot.get(key) is not None and not isinstance(snapshot[key], str):
            return f"with an invalid {key}"
    for key in ("paths", "tags"):
        value = snapshot.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return f"with invalid {key}"
    return None


class StorePool:
    """Up to ``size`` connections to one repository, each used by one thread at a time (see
    ``Repository.readers``). The first is the repository's own store (its operations are
    serialised, so its lock refreshes just wait their turn); the others are opened on
    demand, so a pool that is never busy costs no connection."""

    def __init__(self, repository: Repository, size: int) -> None:
        self.repository = repository
        self.size = max(1, size)
        self._idle: list[Store] = [repository.store]
        self._count = 1
        self._opened: list[Store] = []
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """A connection for this thread until the ``with`` block ends (waits for one)."""
        with self._changed:
            while not self._idle and self._count >= self.size:
                self._changed.wait()
            store = self._idle.pop() if self._idle else None
            if store is None:
                self._count += 1
        if store is None:
            try:
                store = self.repository.open_another_store()
            except BaseException:
                with self._changed:
                    self._count -= 1
                    self._changed.notify()
                raise
            with self._changed:
                self._opened.append(store)
        try:
            yield store
        finally:
            with self._changed:
                self._idle.append(store)
                self._changed.notify()

    def close(self) -> None:
        """Close the connections this pool opened (the repository's own stays open)."""
        with self._changed:
            opened, self._opened = self._opened, []
            self._idle = [self.repository.store]
            self._count = 1
        for store in opened:
            with contextlib.suppress(Exception):  # closing a spare must not mask an error
                store.close()


def _marker_version(marker: bytes) -> int | None:
    lines = marker.decode(errors="replace").splitlines()
    if len(lines) < 2 or lines[0] != "safehold repository" or not lines[1].startswith("format "):
        return None
    try:
        return int(lines[1].split()[1])
    except (IndexError, ValueError):
        return None


def open_cached_tree(cipher: Cipher, tree_id: bytes, sealed: bytes) -> bytes:
    """The plaintext of a tree blob from the local tree cache, checked like one from a pack;
    IntegrityError if it is damaged or is not the tree ``tree_id``."""
    try:
        data = decode_body(cipher.open(sealed, blob_aad(BLOB_TREE, tree_id)))
    except (AuthenticationFailed, ValueError) as error:
        raise IntegrityError(f"cached tree {tree_id.hex()[:16]} is damaged") from error
    if cipher.blob_id(data) != tree_id:
        raise IntegrityError(f"cached tree {tree_id.hex()[:16]} does not match its id")
    return data
