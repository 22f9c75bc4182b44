"""The one owner of a run folder: what may become one, the lock its trainer holds, default names,
and the leftovers of trainers that were killed.

A run folder belongs to one trainer at a time. :class:`RunFolder` checks the folder (without writing
anything), creates it, and takes an exclusive ``flock`` on ``DIR/.lock`` for the life of the run; the
file holds the holder's pid and host, so a second trainer is told who has it. The kernel drops the
lock when the holder exits, even after ``kill -9``. Under the lock, temporary checkpoint files of
trainers that died while writing (``checkpoints/.NAME.tmp-PID`` of a pid that no longer runs) are
removed.

``--out`` takes a new folder, an empty one, or a run of this program that has no checkpoint yet
(started over); a folder with other files is refused, as is one that already holds checkpoints
(continue it with ``--resume``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import time
from pathlib import Path

from .. import files
from ..errors import UserError
from .config import allowed_keys, parse_toml, read_text

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, the folder is not guarded
    fcntl = None

LOCK_NAME = ".lock"
_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")  # what older versions wrote first (NAME.tmp-PID)
_MKSTEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what files.write_atomic writes first


def default_run_dir(base: str | os.PathLike = "runs") -> Path:
    """``runs/<date>-<time>-<pid>``: trainers started in the same second get different folders."""
    return Path(base) / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run of this program: a ``config.toml`` of its sections and keys."""
    try:
        data = parse_toml(read_text(folder / "config.toml"), "config.toml")
    except (UserError, OSError):
        return False
    if not data or not all(isinstance(values, dict) for values in data.values()):
        return False
    return {f"{section}.{key}" for section, values in data.items() for key in values} <= set(allowed_keys())


def _what_blocks(path: Path) -> str | None:
    """Why a folder cannot be made at ``path`` (a file there or above it, no write permission, a
    read-only file system), or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        existing = path
    else:
        existing = path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{path} is below {existing}, which is a file"
    try:
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable for this user"
    return None


def check(run_dir: Path, resume: bool, owner: bool = True) -> None:
    """UserError when ``run_dir`` cannot hold this run; reads only, writes nothing.

    ``owner=False`` (the other processes of a torchrun job) checks only what does not change while
    the owning process sets the folder up.
    """
    try:
        _check(run_dir, resume, owner)
    except OSError as exc:  # e.g. a parent folder this user may not even look into
        raise UserError(f"{'--resume' if resume else '--out'} {run_dir} cannot be examined "
                        f"({exc.strerror or exc}); choose a folder you can write to") from None


def _check(run_dir: Path, resume: bool, owner: bool) -> None:
    flag = "--resume" if resume else "--out"
    if resume:
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"{run_dir} is not a run folder (no config.toml); --resume takes a folder written by "
                            "`twogpu-alexnet train`")
    elif owner and any((run_dir / "checkpoints").glob("*.pt")):
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; choose a folder")
    if not owner:
        return
    blocked = _what_blocks(run_dir)
    if blocked:
        raise UserError(f"{flag} {run_dir} cannot be written: {blocked}; choose a folder you can write to")
    if not resume and run_dir.is_dir():
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
        if others and not is_run(run_dir):
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UserError(f"--out {run_dir} is a folder with other files ({shown}), not a run of twogpu-alexnet; "
                            "choose a new or empty folder so nothing in it is overwritten")


class RunFolder:
    """``with RunFolder(run_dir, resume) as folder:`` checks the folder, makes it and holds its lock.

    ``folder.notes``: what was cleaned up (stale temporary files), for the user. On an error before the
    run wrote anything, a folder this call created is removed again.
    """

    def __init__(self, run_dir: str | os.PathLike, resume: bool = False, owner: bool = True):
        self.path, self.resume, self.owner = Path(run_dir), resume, owner
        self.notes: list[str] = []
        self._fd: int | None = None  # the locked .lock file
        self._created: Path | None = None  # the topmost folder this call made

    def __enter__(self) -> RunFolder:
        check(self.path, self.resume, self.owner)
        if not self.owner:
            return self
        try:
            self._make()
            self._lock()
            check(self.path, self.resume)  # again under the lock: another trainer may have been first
        except BaseException:
            self._release(failed=True)
            raise
        self.notes = remove_stale_temp_files(self.path / "checkpoints") + remove_stale_temp_files(self.path)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._release(failed=exc_type is not None)

    def _make(self) -> None:
        missing = []
        folder = self.path
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):  # top down; a folder another process made first is not ours
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise UserError(f"{self.path} cannot be created ({exc.strerror or exc}); "
                                "choose a folder you can write to") from None
            self._created = self._created or folder

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        try:
            fd = files.open_lock_file(lock)  # never through a link planted at .lock
        except OSError as exc:
            raise UserError(f"{self.path} cannot be written ({exc.strerror or exc}); "
                            "choose a folder you can write to") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process"
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise UserError(f"cannot lock {lock} ({exc.strerror}); use a folder on a local disk") from None
                other = "" if self.resume else ", or choose another --out"
                raise UserError(f"{self.path} is in use by another trainer ({holder}); wait for it to end or "
                                f"stop it{other}") from None
        try:  # who holds it, for a second trainer's message (the lock works without it: a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd

    def _release(self, failed: bool) -> None:
        locked, self._fd = self._fd, None
        if locked is not None and failed and self._created is not None:
            # still ours: nobody else can take the lock before the close; on a folder gone read-only
            # the lock file stays, and the lock itself ends with the close
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
        if locked is not None:
            os.close(locked)  # releases the lock
        if failed and self._created is not None:  # made by this call: removed again if the run left it empty
            folder = self.path
            try:
                while True:
                    folder.rmdir()  # removes empty folders only
                    if folder == self._created:
                        break
                    folder = folder.parent
            except OSError:
                pass
        self._created = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Delete the temporary files of writers that died (``.NAME.XXXXXXXX.tmp``: the lock is held, so no
    other writer runs; ``.NAME.tmp-PID`` of older versions: when PID no longer runs); one note, or none."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    removed, size = [], 0
    for path in sorted(folder.iterdir()):
        m = _TEMP_FILE.match(path.name)
        stale = (m and not _alive(int(m.group(1)))) or _MKSTEMP_FILE.match(path.name)
        if stale and (path.is_symlink() or path.is_file()):
            try:
                size += path.lstat().st_size
                path.unlink()  # a link is removed, not followed
            except OSError:  # a read-only folder: left for the next run
                continue
            removed.append(path.name)
    if not removed:
        return []
    return [f"removed {len(removed)} temporary file(s) left by a stopped trainer in {folder} "
            f"({', '.join(removed[:3])}{', ...' if len(removed) > 3 else ''}; {size / 1e6:.1f} MB)"]


def write_error(exc: OSError, what: str, run_dir: str | os.PathLike) -> UserError:
    """:func:`twogpu_alexnet.files.write_error` for a file of a run folder: go on with ``--resume``."""
    return files.write_error(exc, what, run_dir, then=resume_hint(run_dir))


def resume_hint(run_dir: str | os.PathLike) -> str:
    return f"continue with --resume {run_dir}"
