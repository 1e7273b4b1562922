"""Crash-safe file and folder writes shared by every part that persists something.

Readers see either the old content or the whole new one: files go through a temp file in
the same folder plus ``os.replace``; folders are built under a hidden name and renamed in.
Temporary names are unique, so two writers never share one. New files and folders get the
usual modes (``0o666``/``0o777`` less the umask, as ``open`` and ``mkdir`` give); a replaced
file keeps its mode. :func:`exclusive_lock` keeps a second writer off an output it must
not share.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_TEMP_TRIES = 100


class OutputLockedError(OSError):
    """Another process holds the lock of an output; the message names the output."""


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _kept_mode(path: Path) -> int | None:
    """The permission bits of an existing ``path`` (kept when it is replaced), else ``None``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, uniquely named temp file beside ``path``, opened for writing.

    Created with mode ``0o666`` so the umask applies as for any new file (``mkstemp`` would
    give ``0o600``); an existing ``path``'s mode is copied instead.
    """
    mode = _kept_mode(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for _ in range(_TEMP_TRIES):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temp, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            os.chmod(temp, mode)
        return temp, descriptor
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **options: Any) -> Iterator[IO[Any]]:
    """Write ``path`` through a stream; it appears (whole, fsynced) only if the block succeeds.

    ``mode`` is ``"wb"`` or ``"w"``; ``options`` go to :func:`open` (``encoding=...``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp, descriptor = _create_temp(path)
    try:
        with os.fdopen(descriptor, mode, **options) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    with atomic_open(path) as stream:
        stream.write(data)
    return Path(path)


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` to build a tree in before :func:`swap_in`.

    Made with ``mkdir`` (the usual ``0o777`` less the umask), not ``mkdtemp``'s ``0o700``,
    so the folder renamed into place is as readable as any other output.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TEMP_TRIES):
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(errno.EEXIST, f"no free staging name in {parent}")


@contextmanager
def exclusive_lock(lock_file: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` for the block, or fail at once.

    ``busy`` is the message of the :class:`OutputLockedError` raised when another process
    (or another open of the same file) holds the lock. The file is removed on exit while it
    is still locked; a process that opened it just before then finds, once it gets the lock,
    that the name points elsewhere, and locks the new file instead.
    """
    handle = _locked(lock_file, busy)
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        handle.close()


def _locked(lock_file: Path, busy: str) -> IO[bytes]:
    for _ in range(_TEMP_TRIES):
        handle = open(lock_file, "a+b")  # noqa: SIM115 - held until the lock is released
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.close()
            raise OutputLockedError(busy) from error
        if _names_file(lock_file, handle):
            return handle
        handle.close()  # its holder removed it as it finished: lock the file now there
    raise OutputLockedError(busy)


def _names_file(path: Path, handle: IO[bytes]) -> bool:
    """Whether ``path`` still names the file open as ``handle``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root`` to disk (before the folder is renamed into place)."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def swap_in(staging: Path, target: Path) -> None:
    """Rename folder ``staging`` to ``target``; an old ``target`` is removed only afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
