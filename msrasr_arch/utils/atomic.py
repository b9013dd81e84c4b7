"""Write a file so that readers see either nothing or the complete file, never a partial one.

An interrupted upscale or export (Ctrl-C, a full disk, a killed job) must not leave a truncated image or
checkpoint under the final name, where a later run would take it for a finished result and skip it.
"""
import contextlib
import os
import uuid


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
    _fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)
