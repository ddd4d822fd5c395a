"""Output folders that lose nothing: checked before the work starts, written all or nothing.

``check_writable(folder, flag)`` runs before a long job: it makes the folder (and its parents) and
writes and removes a probe file there, so a read-only folder, a folder under a file or a full disk is
one ``OutputError`` naming the flag before anything is simulated or measured.

``Staged(folder)`` collects a run's files: each writer gets a temporary path in the folder
(``stage.path("ttft.csv")``), and only when every file is written are they renamed into place, one
``os.replace`` each; if any write fails, every temporary file is removed. A failure therefore leaves
the old outputs or none, never a truncated file beside complete ones. (Renames within one folder do
not need space, so the rename phase does not fail on a full disk.)
"""
from __future__ import annotations

import errno
import os
import tempfile


class OutputError(ValueError):
    """An output path that cannot be written: ``--out DIR: <why>``."""


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "not writable (permission denied or a read-only file system)"
    if e.errno == errno.ENOTDIR:
        return "a path above it is a file, not a folder"
    if e.errno == errno.EEXIST:
        return "exists and is not a folder"
    return e.strerror or str(e)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str, flag: str = "--out") -> None:
    """Make ``folder`` if missing and prove a file can be written there; ``OutputError`` if not."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"{flag} {folder}: must be a folder, but it is a file")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)  # a page: an empty file can be made on a full disk
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {folder}: {_why(e)}") from None


def check_file_writable(path: str, flag: str = "--out") -> None:
    """``path`` can be written as a file: not a folder, in an existing folder that takes a file."""
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path}: is a folder; give the path of a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{flag} {path}: no such folder {folder}")
    check_writable(folder, f"{flag} {path}: folder")


class Staged:
    """A set of files written to temporary names in ``folder`` and renamed into place together.

    Use as a context manager: ``with Staged(dir, "--out") as stage: write(stage.path("a.csv"))``. On a
    clean exit every staged file is renamed to its name; on an exception none is, the temporary files
    are removed, and an ``OSError`` becomes one ``OutputError`` naming the flag and the file."""

    def __init__(self, folder: str, flag: str = "--out"):
        self.folder, self.flag = folder, flag
        self._staged: list[tuple[str, str]] = []  # (temporary path, final path)
        self._current = "a file"  # the file being written: the last one asked for

    def path(self, name: str) -> str:
        """A temporary path for the file ``name`` (relative to the folder), to write to now."""
        final = os.path.join(self.folder, name)
        base, ext = os.path.splitext(os.path.basename(name))
        fd, tmp = tempfile.mkstemp(prefix=f".{base}-", suffix=ext, dir=os.path.dirname(final) or ".")
        os.close(fd)
        self._staged.append((tmp, final))
        self._current = name
        return tmp

    @property
    def finals(self) -> list[str]:
        return [final for _, final in self._staged]

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            mode = 0o666 & ~_umask()  # mkstemp makes 0600 files: give them the mode open() would
            for tmp, final in self._staged:
                os.chmod(tmp, mode)
                os.replace(tmp, final)
            return False
        for tmp, _ in self._staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(error, OSError):
            name = self._current
            for tmp, final in self._staged:  # name the file as the user knows it, not its temporary name
                if error.filename and os.path.abspath(str(error.filename)) == os.path.abspath(tmp):
                    name = os.path.relpath(final, self.folder)
            raise OutputError(f"{self.flag} {self.folder}: cannot write {name}: {_why(error)}; "
                              "no output was changed") from None
        return False


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    with Staged(folder, path) as stage:
        tmp = stage.path(os.path.basename(path))
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
