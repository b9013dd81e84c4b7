"""Write a file so that readers see either nothing or the complete file, never a partial one.

An interrupted upscale or export (Ctrl-C, a full disk, a killed job) must not leave a truncated image or
checkpoint under the final name, where a later run would take it for a finished result and skip it.
"""
import contextlib
import os
import re
import uuid

try:
    import fcntl
except ImportError:  # Windows: no folder locks; clean-up then trusts that nobody else writes there
    fcntl = None

# What temporary_name makes: '.<stem>.partial-<8 hex digits><ext>'.
_PARTIAL = re.compile(r'^\..*\.partial-[0-9a-f]{8}(\.[^.]*)?$')


def temporary_name(path: str) -> str:
    """A hidden sibling of `path` in the same folder (so `os.replace` is a rename on one file system),
    keeping the extension because writers such as OpenCV pick the format from it."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f'.{stem}.partial-{uuid.uuid4().hex[:8]}{ext}')


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # some platforms cannot open folders; durability of the rename is then best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write `path` through; on success it is flushed to disk and renamed
    over `path`, on any exception (KeyboardInterrupt included) it is removed and `path` is untouched.

    >>> with atomic_path('out.png') as tmp:
    ...     cv2.imwrite(tmp, img)
    """
    tmp = temporary_name(path)
    lock = lock_folder(os.path.dirname(tmp), exclusive=False)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OSError(f'nothing was written to {tmp}')
        # Some writers (safetensors) create files private to the owner; give the result the permissions
        # an ordinary open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)


def lock_folder(folder: str, exclusive: bool):
    """A file descriptor holding a lock on `folder` (released when closed, or when the process dies), or
    None where folders cannot be locked. Atomic writes hold a shared lock while their temporary file
    exists, so that :func:`remove_partial_files` in another process (exclusive, non-blocking: raises
    BlockingIOError while anyone writes) never takes a live temporary file for a leftover."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # a file system without locks (some network mounts)
        os.close(fd)
        return None
    return fd


def remove_partial_files(folder: str) -> list:
    """Delete the temporary files that interrupted writes (a killed process) left in `folder`, i.e. names
    made by :func:`temporary_name`; returns their paths. A folder that another process is writing into
    at that moment (an atomic write holds a lock on it) is left alone until a later call."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    try:
        lock = lock_folder(folder, exclusive=True)
    except BlockingIOError:  # another process is writing here right now: leave it for a later run
        return removed
    try:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if _PARTIAL.match(name) and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.remove(path)
                    removed.append(path)
    finally:
        if lock is not None:
            os.close(lock)
    return removed
