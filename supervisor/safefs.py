"""File operations of a root daemon inside directories that users control.

When the daemon runs as root, a job's user owns HOME/jobs/NAME (the training
writes there) and anyone who may write to the drop directory can put links
there. Root must never become a tool for them: no file they could not read is
read for them, none they could not write is written, none is chowned to them.
Two tools, and every file operation in those directories uses one of them:

- ``as_user(identity)``: for a block, the *calling thread's* file system
  identity (fsuid, fsgid, supplementary groups) becomes the job user's. The
  kernel then checks every path the block touches as that user, links and all,
  and what the block creates belongs to the user. Per thread on purpose: the
  socket threads stay root meanwhile. This is the "helper that drops
  privileges" without a process per file operation (the daemon looks at every
  job's checkpoint each second).
- no-follow operations relative to directory descriptors (``open_dir``,
  ``open_regular``, ``write_atomic_at``, ``chown_tree``), for places with no
  single owner (the drop directory) and for what root itself must do there.

Pure stdlib (ctypes for the per-thread calls): the daemon and the child both import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import pwd
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

# setgroups(2) by number: glibc's setgroups() changes every thread of the process (POSIX
# semantics), and we want only the calling one. Unknown machine: root mode is refused.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81, "s390x": 206}
_NO_CHANGE = 0xFFFFFFFF  # (uid_t)-1: setfsuid/setfsgid return the current value and change nothing


class NoSuchUser(OSError):
    """A job's owner has no account on this host: nothing may run or be done as them."""


class UnsafePath(OSError):
    """A link, hard link or special file where the daemon expects a plain file or folder of its own."""


@dataclass(frozen=True)
class Identity:
    """Who a job runs as: the owner's uid, primary group and all groups of their account."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str


def identity_for(uid: int) -> Identity:
    """The account's own groups (as initgroups would set them), never a group taken from a file."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        raise NoSuchUser(errno.ENOENT, f"uid {uid} has no account on this host; nothing runs as it") from None
    return Identity(uid, pw.pw_gid, tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)), pw.pw_name)


# -- acting as the job's user (this thread only) ------------------------------------------
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _set_thread_groups(libc: ctypes.CDLL, groups: tuple[int, ...]) -> None:
    nr = _SYS_SETGROUPS.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"no per-thread setgroups known for {platform.machine()}")
    array = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if libc.syscall(ctypes.c_long(nr), ctypes.c_size_t(len(groups)), array) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setgroups: {os.strerror(err)}")


def _set_fs_ids(libc: ctypes.CDLL, uid: int, gid: int) -> None:
    libc.setfsgid(ctypes.c_uint(gid))
    libc.setfsuid(ctypes.c_uint(uid))
    # They report no errors: read the values back.
    now = (libc.setfsuid(ctypes.c_uint(_NO_CHANGE)), libc.setfsgid(ctypes.c_uint(_NO_CHANGE)))
    if now != (uid, gid):
        raise OSError(errno.EPERM, f"setfsuid/setfsgid to {uid}/{gid} did not take (now {now})")


def needs_switch(identity: Optional[Identity]) -> bool:
    return identity is not None and os.geteuid() == 0 and identity.uid != 0


@contextlib.contextmanager
def as_user(identity: Optional[Identity]) -> Iterator[None]:
    """Run the block's file operations as ``identity`` (no-op when not root, or for root's own jobs).

    Start no thread inside the block: a new thread inherits the identity.
    Changing the fsuid away from 0 also drops CAP_DAC_OVERRIDE, CAP_CHOWN and the
    other file capabilities for the thread; going back to 0 restores them.
    """
    if not needs_switch(identity):
        yield
        return
    assert identity is not None
    libc = _libc()
    saved_uid, saved_gid = libc.setfsuid(ctypes.c_uint(_NO_CHANGE)), libc.setfsgid(ctypes.c_uint(_NO_CHANGE))
    saved_groups = tuple(os.getgroups())  # a plain syscall: this thread's groups
    try:
        _set_thread_groups(libc, identity.groups)
        _set_fs_ids(libc, identity.uid, identity.gid)
        yield
    finally:
        _set_fs_ids(libc, saved_uid, saved_gid)
        _set_thread_groups(libc, saved_groups)


def check_as_user_works() -> None:
    """At start-up as root: prove the switch works here, so no job file is ever touched as root instead."""
    if os.geteuid() != 0:
        return
    import tempfile

    fd, probe_file = tempfile.mkstemp(prefix=".yolo-supervisor-probe-")  # root's, mode 0600
    os.close(fd)
    try:
        with as_user(Identity(65534, 65534, (65534,), "nobody")):
            try:
                os.close(os.open(probe_file, os.O_RDONLY))
            except PermissionError:
                return
        raise OSError(errno.EPERM, "switching a thread's file system identity has no effect here; "
                      "refusing to act on job files as root")
    finally:
        os.unlink(probe_file)


# -- no-follow operations -------------------------------------------------------------------
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path: PathLike, dir_fd: Optional[int] = None) -> int:
    """A directory's descriptor; ``UnsafePath`` when the last component is a link or not a folder.

    Callers name paths whose parents the daemon controls (HOME/jobs/NAME, the inbox);
    below that, they walk with ``dir_fd``.
    """
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(err.errno, f"{os.fspath(path)}: not a folder (a link, or a file)") from None
        raise


@contextlib.contextmanager
def opened_dir(path: PathLike, dir_fd: Optional[int] = None) -> Iterator[int]:
    fd = open_dir(path, dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def ensure_subdir(parent_fd: int, name: str, mode: Optional[int] = None) -> int:
    """Descriptor of the folder ``name`` in ``parent_fd``, made if missing (with exactly ``mode``
    when given, whatever the umask; else 0777 less the umask).

    Whatever else holds the name (a link planted there, a file) is moved aside,
    not followed and not deleted: nothing is lost and the folder is real.
    """
    made = False
    for _ in range(3):
        try:
            fd = open_dir(name, parent_fd)
            break
        except UnsafePath:
            aside = f".{name}.displaced-{time.time_ns()}"
            os.rename(name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        try:
            os.mkdir(name, 0o777 if mode is None else mode, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            pass  # made meanwhile: open it on the next round
    else:
        fd = open_dir(name, parent_fd)
    if made and mode is not None:
        os.fchmod(fd, mode)
    return fd


def check_regular(fd: int, what: PathLike) -> os.stat_result:
    """The open file's stat; ``UnsafePath`` unless it is a regular file with one link.

    A second hard link may be a name for a file elsewhere (someone else's, or root's).
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(errno.EINVAL, f"{os.fspath(what)}: not a regular file")
    if st.st_nlink > 1:
        raise UnsafePath(errno.EMLINK, f"{os.fspath(what)}: has {st.st_nlink} hard links; not used")
    return st


def open_regular(path: PathLike, flags: int = os.O_RDONLY, mode: int = 0o644,
                 dir_fd: Optional[int] = None) -> int:
    """Open a plain file without following a link at its name; ``UnsafePath`` for anything else."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, mode,
                     dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath(err.errno, f"{os.fspath(path)}: is a symbolic link; links are not followed") from None
        raise
    try:
        check_regular(fd, path)
        os.set_blocking(fd, True)  # O_NONBLOCK only kept a FIFO from hanging the open
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: PathLike, limit: int, dir_fd: Optional[int] = None) -> bytes:
    """Up to ``limit`` bytes of a plain file (``UnsafePath`` for a link, hard link or special file)."""
    fd = open_regular(path, os.O_RDONLY, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def write_atomic_at(dir_fd: int, name: str, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data``: a fresh temp name opened O_EXCL, then a rename.

    Nothing at ``name`` is followed or written through: a link there is replaced, not its target.
    ``durable``: the data and the rename reach the disk before this returns (a checkpoint must
    survive a power cut; the JSON files are rewritten every few seconds and need not). A kill
    leaves the old file and, at worst, a ``.NAME.*.partial`` temp file.
    """
    tmp = f".{name}.{secrets.token_hex(8)}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # not narrowed by the umask: the job's user must read the plan
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if durable:
        os.fsync(dir_fd)


def write_atomic(path: PathLike, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """``write_atomic_at`` for a path whose folder is not itself a link."""
    path = Path(path)
    with opened_dir(path.parent) as dfd:
        write_atomic_at(dfd, path.name, data, mode, durable)


def fsync_dir(path: PathLike) -> None:
    """Make a rename in ``path`` durable: the directory entry must reach the disk too."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def chown_tree(top: PathLike, uid: int, gid: int) -> None:
    """Give the daemon's own files and folders under ``top`` to ``uid``/``gid``, following no link.

    Only entries the daemon itself owns change hands: what is already the user's
    stays, and so does anything of someone else's that was linked in (a hard link
    to a root file, which the no-follow walk alone would not catch).
    """
    me = os.geteuid()
    for _root, dirs, files, dfd in os.fwalk(top, follow_symlinks=False):
        _chown_own(".", dfd, uid, gid, me)
        for name in files:
            _chown_own(name, dfd, uid, gid, me, skip_hard_links=True)


def _chown_own(name: str, dfd: int, uid: int, gid: int, me: int, skip_hard_links: bool = False) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if st.st_uid != me or stat.S_ISLNK(st.st_mode):
            return
        if skip_hard_links and st.st_nlink > 1:
            return
        os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        pass  # gone meanwhile, or a read-only file system: the next launch tries again


def resolve_inside(path: PathLike, root: PathLike) -> Optional[Path]:
    """``path`` with every link resolved, if that lies inside ``root`` (resolved too); else None."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    return real if real == base or base in real.parents else None
