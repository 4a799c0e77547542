"""The run directory: one run per directory, one process writing it at a time.

``blocklab train --out DIR`` owns DIR. Two runs mixed in one directory (old
checkpoints beside new ones, two metric streams interleaved) are worse than a
refusal, so :func:`open_run_dir`

* refuses a DIR that is a file, or cannot be created or written, naming the path
  and the OS error;
* takes ``DIR/.lock``, an advisory ``flock`` held for the whole run: the kernel
  drops it when the process dies, however it dies, so a lock file left by a dead
  process is simply taken over, while a second live process on DIR is refused;
* refuses a DIR that already holds anything, unless the run resumes it or was
  asked to overwrite it (which removes the previous run's files first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunDirError", "RunLock", "open_run_dir", "RUN_FILES", "TOKENIZER_DIR", "INIT_FILE"]

LOCK = ".lock"
# The run's tokenizer (a copy; absent for the byte tokenizer) and, for a run started
# from another model, where from (init_from.json: path, format, Hugging Face family).
TOKENIZER_DIR, INIT_FILE = "tokenizer", "init_from.json"
# What a run writes; --overwrite removes exactly these (and ckpt-*).
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.jsonl.tmp", "config.yaml.tmp", "tensorboard",
             TOKENIZER_DIR, INIT_FILE, INIT_FILE + ".tmp")


class RunDirError(ValueError):
    """The run directory cannot be used: in use, not empty, or not writable."""


def os_error_line(err: OSError, fallback: Path | str) -> str:
    """``PATH: strerror`` for an OSError, the path it names or ``fallback``."""
    path = err.filename if err.filename is not None else fallback
    return f"{path}: {err.strerror or err}"


class RunLock:
    """An exclusive ``flock`` on ``DIR/.lock`` holding the owner's pid; :meth:`release`
    unlocks and removes it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:  # no advisory locks: the pid alone, best effort
                self.fd = fd
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirError(
                    f"{run_dir} is in use by another blocklab train (pid {owner}, lock "
                    f"{self.path}); wait for it to finish or use another --out"
                ) from None
            # The previous owner may have removed the file between our open and flock:
            # then we hold a lock on a file nobody else can see, so try again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                break
            os.close(fd)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def _contents(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)


def open_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Create and lock ``run_dir`` for a run; see the module docstring.

    Raises:
        RunDirError: DIR is a file, is locked by a live process, or is not empty
            without ``resume`` or ``overwrite``.
        OSError: DIR cannot be created or written (its ``filename`` says where).
    """
    if resume and overwrite:
        raise RunDirError("resume and overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a directory (--out names a file)")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        present = _contents(run_dir)
        if present and not (resume or overwrite):
            shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
            raise RunDirError(
                f"{run_dir} is not empty ({shown}); pass --resume to continue that run or "
                "--overwrite to replace it"
            )
        if overwrite:
            for name in present:
                path = run_dir / name
                if name in RUN_FILES or name.startswith("ckpt-"):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
