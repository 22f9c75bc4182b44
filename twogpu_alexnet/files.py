"""The one writer: every file the program writes in a run folder, a store or a cache goes through here.

:func:`write_atomic` writes a file whole or not at all: the bytes go to a temporary file that
``tempfile.mkstemp`` creates (``O_EXCL``, an unpredictable name) in the target's own folder, are
flushed and fsynced, and ``os.replace`` puts the file in place, followed by an fsync of the folder.
A symbolic link planted at the target name is refused in one sentence naming it (``os.replace``
would replace the link, not write through it, but a link there is someone else's file, and the
user should know); a folder at the name is refused the same way. :func:`append_text` (the metrics
log) and :func:`open_lock_file` (a run folder's lock) open with ``O_NOFOLLOW`` and refuse anything
but a plain file with one name.

A write the disk refuses -- full (ENOSPC, EDQUOT), read-only (EROFS), no permission (EACCES,
EPERM) -- becomes the one :func:`write_error` sentence; the temporary file is removed and the
file that was there before is unchanged. torch's zip writer turns an ``OSError`` of the file it
writes to into ``RuntimeError: ... unexpected pos``; the writer sees the ``OSError`` first and
reports that instead.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def write_error(exc: OSError, what: str, folder: str | os.PathLike, then: str | None = None) -> UserError:
    """One sentence for an OSError while writing ``what`` in ``folder`` (a full disk, a quota, a file
    system gone read-only, no permission): the files written before are unchanged; ``then`` is what
    to do once the cause is fixed (default: run the command again; one that goes on with ``--resume``
    says the previous checkpoints are unchanged)."""
    code = getattr(exc, "errno", None)
    if code in DISK_FULL:
        why, fix = "the disk is full", "free space"
    elif code == errno.EROFS:
        why, fix = f"{folder} is on a read-only file system", f"make {folder} writable"
    elif code in (errno.EACCES, errno.EPERM):
        why, fix = f"no permission to write in {folder}", f"give this user write permission on {folder}"
    else:
        why, fix = exc.strerror or str(exc), "fix that"
    kept = "the previous checkpoints are" if then and "--resume" in then else "the files written before are"
    return UserError(f"could not write {what} ({why}); {kept} unchanged: {fix} and {then or 'run the command again'}")


def refuse_link(path: str | os.PathLike, what: str | None = None) -> None:
    """UserError when ``path`` is a symbolic link or a folder (the program writes only plain files of its own)."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}); refusing to write "
                        f"{what or 'it'} through it: remove the link and run again")
    if path.is_dir():
        raise UserError(f"{path} is a folder, but the program writes {what or 'a file'} there; move the folder away "
                        "and run again")


class _Recorded:
    """A file object that remembers the OSError of a failed write (torch's zip writer replaces it with a
    RuntimeError of its own)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def write_atomic(path: str | os.PathLike, data_or_writer: bytes | str | Callable, *, what: str | None = None,
                 then: str | None = None, error_folder: str | os.PathLike | None = None) -> Path:
    """Write ``path`` whole or not at all; returns ``path``.

    ``data_or_writer``: bytes, text (UTF-8), or a function given the open binary file (e.g.
    ``lambda f: torch.save(obj, f)``). ``what`` names the file in errors (default: the path),
    ``then`` and ``error_folder`` complete the :func:`write_error` sentence.
    """
    path = Path(path)
    what = what or str(path)
    refuse_link(path, what)
    folder = error_folder if error_folder is not None else path.parent
    tmp = None
    try:
        fd, tmp = temporary_file(path)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the usual permissions of a new file, not mkstemp's 0600
        with os.fdopen(fd, "wb") as raw:
            f = _Recorded(raw)
            try:
                if callable(data_or_writer):
                    data_or_writer(f)
                else:
                    f.write(data_or_writer.encode("utf-8") if isinstance(data_or_writer, str) else data_or_writer)
                f.flush()
            except RuntimeError:
                if f.error is not None:  # torch's "unexpected pos": the file write failed first
                    raise f.error from None
                raise
            os.fsync(raw.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_folder(path.parent)
    except OSError as exc:
        raise write_error(exc, what, folder, then) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def temporary_file(path: str | os.PathLike) -> tuple[int, str]:
    """(fd, name) of a new file beside ``path`` to write it under first: ``.NAME.XXXXXXXX.tmp``, created
    exclusively (``O_EXCL``, so never through a link) under a name nobody can predict."""
    path = Path(path)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder, so a rename in it survives a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename itself is done
        pass
    finally:
        os.close(fd)


def _open_plain(path: Path, flags: int, what: str) -> int:
    """``os.open`` without following a link at ``path``; refuses anything but a plain file with one name."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink() or path.is_dir():
            refuse_link(path, what)
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "is not a plain file" if not stat.S_ISREG(info.st_mode) else "has other names (hard links)"
        raise UserError(f"{path} {kind}; refusing to write {what} into it: remove it and run again")
    return fd


def append_text(path: str | os.PathLike, text: str, *, what: str | None = None, then: str | None = None,
                error_folder: str | os.PathLike | None = None) -> None:
    """Append ``text`` to ``path`` (created when missing) without following a link planted there."""
    path = Path(path)
    what = what or str(path)
    folder = error_folder if error_folder is not None else path.parent
    try:
        fd = _open_plain(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
        try:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(exc, what, folder, then) from None


def open_lock_file(path: str | os.PathLike) -> int:
    """The file descriptor of a lock file at ``path``: created exclusively, or an existing plain file,
    never through a link. OSError (permissions, read-only) is left to the caller."""
    path = Path(path)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    except FileExistsError:
        return _open_plain(path, os.O_RDWR, "the lock")


def make_folder(path: str | os.PathLike, what: str | None = None) -> Path:
    """``mkdir -p`` for a folder the program writes into; a symbolic link there is refused in one sentence."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}); refusing to write "
                        f"{what or 'files'} through it: remove the link and run again")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_plain_text(path: str | os.PathLike, what: str | None = None) -> str:
    """The text of a file the program wrote earlier; a folder or link there is one sentence."""
    path = Path(path)
    refuse_link(path, what)
    return path.read_text(errors="replace")
