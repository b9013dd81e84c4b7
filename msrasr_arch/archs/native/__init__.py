"""The window attention kernel in C++ (``window_attention.cpp``), built on first use with the machine's compiler.

Built once per source, compiler and CPU into a cache folder (``$MSRASR_CACHE``, else
``$XDG_CACHE_HOME/msrasr_arch``, else ``~/.cache/msrasr_arch``; written atomically, so concurrent
processes may build it at the same time) and loaded through ``ctypes``: no PyTorch headers, so the build
takes about a second rather than a C++ extension's minute. Where there is no compiler, the build fails or
``MSRASR_NATIVE=0`` is set, :func:`library` returns None and the networks attend with PyTorch operators
(see :mod:`..backend`).
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

from ...utils.atomic import atomic_path

__all__ = ['library', 'forward', 'backward']

_SOURCE = Path(__file__).with_name('window_attention.cpp')
_VERSION = 2
# -march=native: the library is built where it runs. No -ffast-math: the kernel's exp rounds by adding a
# constant, which reassociation would undo.
_FLAGS = ['-O3', '-march=native', '-fno-math-errno', '-fopenmp', '-std=c++17', '-shared', '-fPIC']


def _compiler() -> Optional[str]:
    return os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++') or shutil.which('clang++')


def _cpu() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = ('model name', 'flags', 'Features', 'CPU part')
    return '\n'.join(sorted({line for line in lines if line.split(':')[0].strip() in keep}))


def _cache_folder() -> Path:
    if os.environ.get('MSRASR_CACHE'):
        return Path(os.environ['MSRASR_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'msrasr_arch'


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b'\0'.join(
        [source, ' '.join(_FLAGS).encode(), version.encode(), _cpu().encode(), sys.platform.encode()])).hexdigest()
    target = _cache_folder() / f'window_attention-{key[:16]}.so'
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(str(target)) as tmp:
            done = subprocess.run([compiler, *_FLAGS, str(_SOURCE), '-o', tmp], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode:
                raise RuntimeError(f'{compiler} failed on {_SOURCE.name}: {done.stderr.strip()[-500:]}')
    return target


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, or None where it is switched off or cannot be built (a warning says why
    when a compiler was found and failed)."""
    if os.environ.get('MSRASR_NATIVE', '1') == '0' or not sys.platform.startswith('linux'):
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
        if lib.msrasr_window_attention_version() != _VERSION:
            raise RuntimeError('the built library reports another interface version')
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f'msrasr_arch: CPU window attention kernel unavailable, attending with PyTorch '
                      f'operators ({err})', RuntimeWarning, stacklevel=2)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.msrasr_window_attention_forward.argtypes = [ptr] * 6 + [i64] * 5 + [ctypes.c_int]
    lib.msrasr_window_attention_forward.restype = None
    lib.msrasr_window_attention_backward.argtypes = [ptr] * 11 + [ctypes.c_int] + [i64] * 5 + [ctypes.c_int]
    lib.msrasr_window_attention_backward.restype = None
    return lib


def _pointer(t: Optional[torch.Tensor], name: str):
    if t is None:
        return None
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != 'cpu':
        raise ValueError(f'window attention kernel: {name} must be a contiguous float32 CPU tensor, '
                         f'got {t.dtype} {tuple(t.stride())} on {t.device}')
    return t.data_ptr()


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
            lse: Optional[torch.Tensor] = None) -> None:
    """``out`` (M, S, C) = softmax(q k^T + bias[m % HR]) v for q, k (M, S, E), v (M, S, C) and bias (HR, S, S),
    HR dividing M; ``lse`` (M, S), when given, gets each row's log-sum-exp for :func:`backward`."""
    m, s, e = q.shape
    c, hr = v.shape[-1], bias.shape[0]
    if (k.shape != q.shape or v.shape[:2] != (m, s) or bias.shape[1:] != (s, s) or out.shape != v.shape
            or m % hr):
        raise ValueError(f'window attention kernel: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, '
                         f'v {tuple(v.shape)}, bias {tuple(bias.shape)}, out {tuple(out.shape)} do not agree')
    args = [_pointer(t, name) for t, name in ((q, 'q'), (k, 'k'), (v, 'v'), (bias, 'bias'), (out, 'out'),
                                              (lse, 'lse'))]
    library().msrasr_window_attention_forward(*args, m, s, e, c, hr, torch.get_num_threads())


def backward(q, k, v, bias, lse, dout, rowsum, dq, dk, dv, dbias=None, add_dbias: bool = True) -> None:
    """Gradients of :func:`forward`: ``dq``, ``dk``, ``dv`` written; ``dbias`` (HR, S, S), when given, added to
    (``add_dbias``) or written over. ``rowsum`` (M, S) is ``(dout * out).sum(-1)``."""
    m, s, e = q.shape
    c, hr = v.shape[-1], bias.shape[0]
    for t, shape in ((k, q.shape), (dq, q.shape), (dk, q.shape), (dv, v.shape), (dout, v.shape), (lse, (m, s)),
                     (rowsum, (m, s))):
        if t.shape != shape:
            raise ValueError(f'window attention kernel: a gradient buffer of shape {tuple(t.shape)} where '
                             f'{tuple(shape)} belongs')
    if v.shape[:2] != (m, s) or bias.shape[1:] != (s, s) or m % hr or (dbias is not None and dbias.shape != bias.shape):
        raise ValueError(f'window attention kernel: shapes q {tuple(q.shape)}, v {tuple(v.shape)}, '
                         f'bias {tuple(bias.shape)} do not agree')
    names = ('q', 'k', 'v', 'bias', 'lse', 'dout', 'rowsum', 'dq', 'dk', 'dv', 'dbias')
    args = [_pointer(t, name) for t, name in zip((q, k, v, bias, lse, dout, rowsum, dq, dk, dv, dbias), names)]
    library().msrasr_window_attention_backward(*args, int(add_dbias), m, s, e, c, hr, torch.get_num_threads())
