"""One build at a time per index folder: a lock file that the OS releases if the build dies.

``vsearch.build`` holds it for the whole build and ``vsearch.store.gc`` while it prunes (a build may
have cached vectors for a generation it has not published yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vsearch.errors import VsearchError


@contextmanager
def exclusive_build(index_dir: Path) -> Iterator[None]:
    """One build at a time per index folder (a second one fails at once with a clear message)."""
    lock_path = index_dir / ".build.lock"
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+")
    except OSError as e:  # parent is a file, read-only file system, no permission, disk full...
        raise VsearchError(
            f"cannot write to the index folder {index_dir} ({e.strerror or e}); "
            "choose a writable folder with --index"
        ) from None
    with f:
        unlock = _lock_exclusive(f)
        if unlock is None:
            raise VsearchError(
                f"another build is already running on {index_dir}; wait for it to finish"
            )
        try:
            yield
        finally:
            unlock()


def _lock_exclusive(f) -> Callable[[], None] | None:
    """Lock an open file without waiting; returns the unlock function, or None when another holds
    it.

    POSIX: flock (released by the OS if the build dies). Windows, which has no fcntl: msvcrt.locking
    on the file's first byte (also released when the process ends). Where neither exists the build
    runs unlocked: publishing a generation is atomic either way, only the work may be done twice.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        return lambda: fcntl.flock(f, fcntl.LOCK_UN)
    try:
        import msvcrt
    except ImportError:
        return lambda: None
    f.seek(0)  # msvcrt locks bytes from the current position; "a+" opens at the end
    try:
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return None

    def unlock() -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)

    return unlock
