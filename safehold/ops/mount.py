"""``safehold mount``: the MountView (ops/mountview.py) served read-only through FUSE.

Imports pyfuse3 and trio, so only the mount command imports this module (everything else in
safehold works without them). Requests are handled one at a time on trio's loop; every call
that would change anything fails with EROFS (the mount is also read-only in the kernel).
SIGINT and SIGTERM end the loop and unmount; ``fusermount3 -u`` ends it from outside. A mount
left behind by a killed process ("Transport endpoint is not connected") is released with
``fusermount3 -u -z`` by the next ``safehold mount`` at that place (``release_dead_mount``).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Callable

import pyfuse3
import trio

from safehold.errors import IntegrityError, MountUnavailable, SafeholdError
from safehold.ops.mountview import Attributes, BlobCache, MountView, Node, OpenFile


def _fuse_attributes(attributes: Attributes) -> pyfuse3.EntryAttributes:
    result = pyfuse3.EntryAttributes()
    result.st_ino = attributes.ino
    result.generation = 0
    result.entry_timeout = attributes.timeout
    result.attr_timeout = attributes.timeout
    result.st_mode = attributes.mode
    result.st_nlink = attributes.nlink
    result.st_uid = attributes.uid
    result.st_gid = attributes.gid
    result.st_rdev = attributes.rdev
    result.st_size = attributes.size
    result.st_blksize = 128 * 1024
    result.st_blocks = attributes.blocks
    result.st_atime_ns = attributes.mtime_ns
    result.st_mtime_ns = attributes.mtime_ns
    result.st_ctime_ns = attributes.ctime_ns
    return result


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class ReadOnlyFS(pyfuse3.Operations):
    """FUSE operations over a MountView."""

    def __init__(self, view: MountView, cache: BlobCache, report: Callable[[str], None]) -> None:
        super().__init__()
        self.view = view
        self.cache = cache
        self.report = report  # damaged data is named on stderr, the caller gets EIO
        self._handles: dict[int, object] = {}
        self._next_handle = 1

    # ---------------------------------------------------------------- helpers

    def _node(self, inode: int) -> Node:
        node = self.view.nodes.get(inode)
        if node is None:
            raise _fail(errno.ENOENT)
        return node

    def _handle(self, value: object) -> int:
        number = self._next_handle
        self._next_handle += 1
        self._handles[number] = value
        return number

    def _guard(self, action: Callable[[], object]) -> object:
        try:
            return action()
        except (IntegrityError, SafeholdError) as error:
            self.report(f"safehold: mount: {error}")
            raise _fail(errno.EIO) from None

    # ---------------------------------------------------------------- reading

    async def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
        return _fuse_attributes(self.view.attributes(self._node(inode)))

    async def lookup(self, parent_inode, name, ctx=None):  # type: ignore[no-untyped-def]
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise _fail(errno.ENOTDIR)
        child = self._guard(lambda: self.view.child(parent, name))
        if child is None:
            raise _fail(errno.ENOENT)
        node = self.view.remember(child)  # type: ignore[arg-type]
        return _fuse_attributes(self.view.attributes(node))

    async def forget(self, inode_list):  # type: ignore[no-untyped-def]
        for inode, count in inode_list:
            self.view.forget(inode, count)

    async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        node = self._node(inode)
        if not node.is_dir:
            raise _fail(errno.ENOTDIR)
        return self._handle(self._guard(lambda: self.view.children(node)))

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        children = self._handles[fh]
        assert isinstance(children, list)
        for number in range(start_id, len(children)):
            name, child = children[number]
            attributes = _fuse_attributes(self.view.attributes(child))
            if not pyfuse3.readdir_reply(token, name, attributes, number + 1):
                return
            self.view.remember(child)

    async def releasedir(self, fh):  # type: ignore[no-untyped-def]
        self._handles.pop(fh, None)

    async def readlink(self, inode, ctx):  # type: ignore[no-untyped-def]
        node = self._node(inode)
        if node.entry["type"] != "symlink":
            raise _fail(errno.EINVAL)
        return node.entry["target"]

    async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise _fail(errno.EROFS)
        if node.entry["type"] != "file":
            raise _fail(errno.EISDIR if node.is_dir else errno.EACCES)
        opened = self._guard(lambda: OpenFile(self.view.repository, node.entry))
        info = pyfuse3.FileInfo(fh=self._handle(opened))
        info.keep_cache = True  # contents never change
        return info

    async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        opened = self._handles[fh]
        assert isinstance(opened, OpenFile)
        return self._guard(lambda: opened.read(self.cache, off, size))

    async def release(self, fh):  # type: ignore[no-untyped-def]
        self._handles.pop(fh, None)

    async def getxattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
        value = (self._node(inode).entry.get("xattrs") or {}).get(name)
        if value is None:
            raise _fail(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode, ctx):  # type: ignore[no-untyped-def]
        return list((self._node(inode).entry.get("xattrs") or {}).keys())

    async def access(self, inode, mode, ctx):  # type: ignore[no-untyped-def]
        if mode & os.W_OK:
            raise _fail(errno.EROFS)

    async def statfs(self, ctx):  # type: ignore[no-untyped-def]
        result = pyfuse3.StatvfsData()
        result.f_bsize = result.f_frsize = 512
        result.f_namemax = 255
        return result

    # ---------------------------------------------------------------- every change: EROFS

    async def _read_only(self, *args):  # type: ignore[no-untyped-def]
        raise _fail(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only


def release_dead_mount(mountpoint: str) -> bool:
    """If ``mountpoint`` is a FUSE mount whose process is gone (listing it fails with ENOTCONN),
    detach it with ``fusermount3 -u -z``; True if it did."""
    try:
        os.listdir(mountpoint)  # not stat: the kernel may answer that from its cache
        return False
    except OSError as error:
        if error.errno != errno.ENOTCONN:
            return False
    program = shutil.which("fusermount3") or shutil.which("umount")
    if program is None:
        raise MountUnavailable(reason=f"{mountpoint} is a dead mount and fusermount3 is missing")
    arguments = (
        [program, "-u", "-z", mountpoint]
        if "fusermount" in program
        else [program, "-l", mountpoint]
    )
    subprocess.run(arguments, check=False, capture_output=True)
    return True


def check_available() -> None:
    """MountUnavailable unless the kernel's FUSE device and fusermount3 are there."""
    if not os.path.exists("/dev/fuse"):
        raise MountUnavailable(reason="/dev/fuse is missing (load the fuse module)")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise MountUnavailable(reason="fusermount3 is missing (Debian: apt-get install fuse3)")


def serve(
    view: MountView,
    cache: BlobCache,
    mountpoint: str,
    *,
    allow_other: bool = False,
    report: Callable[[str], None] = print,
    ready: Callable[[], None] | None = None,
) -> None:
    """Mount at ``mountpoint`` and serve until SIGINT, SIGTERM or an unmount from outside;
    always unmounts before returning. Raises MountUnavailable if mounting fails."""
    check_available()
    options = set(pyfuse3.default_options) | {"fsname=safehold", "subtype=safehold", "ro"}
    if allow_other:
        options.add("allow_other")
    operations = ReadOnlyFS(view, cache, report)
    try:
        pyfuse3.init(operations, mountpoint, options)
    except RuntimeError as error:
        raise MountUnavailable(reason=f"mounting {mountpoint} failed ({error})") from None
    try:
        if ready is not None:
            ready()
        trio.run(_main_loop)
    finally:
        pyfuse3.close(unmount=True)


async def _main_loop() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()  # unmounted from outside


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return
