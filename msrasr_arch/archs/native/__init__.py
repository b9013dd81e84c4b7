"""The CPU kernels in C++ (window attention, ``window_attention.cpp``; the depth-wise conv, ``depthwise.cpp``; an
inheriting layer's Q' and K', ``factors.cpp``), built on first use with the machine's compiler into one library.

Built once per source, compiler and CPU into a cache folder (``$MSRASR_CACHE``, else
``$XDG_CACHE_HOME/msrasr_arch``, else ``~/.cache/msrasr_arch``; written atomically, so concurrent
processes may build it at the same time) and loaded through ``ctypes``: no PyTorch headers, so the build
takes a second or two rather than a C++ extension's minute. Where there is no compiler, the build fails or
``MSRASR_NATIVE=0`` is set, :func:`library` returns None and the networks attend with PyTorch operators
(see :mod:`..backend`).
"""
import ctypes
import functools
import hashlib
import math
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

__all__ = ['library', 'forward', 'backward', 'depthwise_conv', 'depthwise_weight_grad', 'depthwise_supports', 'factors',
           'factors_backward']

_SOURCES = [Path(__file__).with_name(name) for name in ('window_attention.cpp', 'depthwise.cpp', 'factors.cpp')]
# Included by every source: part of the cache key, not of the compiler's command line.
_HEADERS = [Path(__file__).with_name('common.h')]
_VERSION = 5
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
    sources = [source.read_bytes() for source in _SOURCES + _HEADERS]
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b'\0'.join(
        [*sources, ' '.join(_FLAGS).encode(), version.encode(), _cpu().encode(), sys.platform.encode()])).hexdigest()
    target = _cache_folder() / f'msrasr_kernels-{key[:16]}.so'
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(str(target)) as tmp:
            done = subprocess.run([compiler, *_FLAGS, *map(str, _SOURCES), '-o', tmp], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode:
                names = ', '.join(source.name for source in _SOURCES)
                raise RuntimeError(f'{compiler} failed on {names}: {done.stderr.strip()[-500:]}')
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
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.msrasr_window_attention_forward.argtypes = [ptr] * 7 + [i64] + [ptr] * 2 + [i64] * 7 + [i32]
    lib.msrasr_window_attention_forward.restype = None
    lib.msrasr_window_attention_backward.argtypes = [ptr] * 11 + [i64] + [ptr] * 3 + [i32] + [i64] * 7 + [i32]
    lib.msrasr_window_attention_backward.restype = None
    lib.msrasr_depthwise_forward.argtypes = [ptr] * 4 + [i64] * 5 + [i32]
    lib.msrasr_depthwise_forward.restype = None
    lib.msrasr_depthwise_weight_grad.argtypes = [ptr] * 3 + [i64] * 5 + [i32]
    lib.msrasr_depthwise_weight_grad.restype = None
    lib.msrasr_depthwise_supports.argtypes = [i64]
    lib.msrasr_factors_forward.argtypes = [ptr] * 6 + [i64] * 6 + [i32]
    lib.msrasr_factors_forward.restype = None
    lib.msrasr_factors_backward.argtypes = [ptr] * 8 + [i64] * 6 + [i32]
    lib.msrasr_factors_backward.restype = None
    return lib


@functools.lru_cache(maxsize=None)
def depthwise_supports(k: int) -> bool:
    """Whether the library has a depth-wise kernel for k x k (odd sizes up to 9)."""
    return bool(library().msrasr_depthwise_supports(k))


def _pointer(t: Optional[torch.Tensor], name: str, dtype=torch.float32, contiguous: bool = False):
    if t is None:
        return None
    laid_out = t.is_contiguous() if contiguous else t.stride(-1) == 1
    if t.dtype != dtype or t.device.type != 'cpu' or not laid_out:
        raise ValueError(f'window attention kernel: {name} must be a {dtype} CPU tensor with '
                         f'{"contiguous memory" if contiguous else "a contiguous last dimension"}, got {t.dtype} '
                         f'{tuple(t.stride())} on {t.device}')
    return t.data_ptr()


def _window_side(n: int) -> int:
    ws = math.isqrt(n)
    return ws if ws * ws == n else 0


def _bias_shape(bias: torch.Tensor, h: int, n: int):
    """What ``bias`` must be: the (H, N, N) map, or, 2-D, the (M, H) relative-position table of windows of
    side ws (N = ws^2, M = (2 ws - 1)^2)."""
    return ((2 * _window_side(n) - 1)**2, h) if bias.dim() == 2 else (h, n, n)


def _check(q, k, v, bias, tokens, regions: int, **others):
    """The part's sizes (windows, heads, size, n, e, c) from q, k (W, H, N, E) and v (W, H, N, C), with every
    other (W, H, N, C) tensor in ``others`` checked against them."""
    w, h, n, e = q.shape
    c = v.shape[-1]
    size = n if tokens is None else tokens.numel() // regions
    if bias.dim() == 2 and not _window_side(n):
        raise ValueError(f'window attention kernel: a bias table needs square windows, not {n} tokens')
    wrong = [name for name, t, shape in [('k', k, q.shape), ('v', v, (w, h, n, c)),
                                         ('bias', bias, _bias_shape(bias, h, n))]
             + [(name, t, (w, h, n, c)) for name, t in others.items()] if t is not None and t.shape != shape]
    if wrong or (tokens is None and regions != 1) or (tokens is not None and tokens.numel() != regions * size):
        raise ValueError(f'window attention kernel: shapes do not agree ({", ".join(wrong) or "tokens"}): q '
                         f'{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, bias {tuple(bias.shape)}')
    return w, h, size, n, e, c


def _strides(*tensors):
    return (ctypes.c_int64 * (3 * len(tensors)))(*(s for t in tensors for s in t.stride()[:3]))


def _bias_args(bias: torch.Tensor, n: int):
    """The kernel's (map, table, window side) arguments for a bias map or table."""
    pointer = _pointer(bias, 'bias', contiguous=True)
    return (None, pointer, _window_side(n)) if bias.dim() == 2 else (pointer, None, 0)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, bias: torch.Tensor,
            lse: Optional[torch.Tensor] = None, tokens: Optional[torch.Tensor] = None, regions: int = 1) -> None:
    """``out`` = softmax(q k^T + bias) v within each region of each window and head, in place.

    q, k (W, H, N, E), v and out (W, H, N, C), any strides with a contiguous last dimension; bias, contiguous:
    the (H, N, N) map, or the (M, H) relative-position table it is read from (windows of side ws, N = ws^2,
    M = (2 ws - 1)^2; SwinIR's index, see ``window_attention.cpp``). ``tokens`` (regions * size,) int64: each
    region's tokens (None: all N, one region); only those rows of ``out`` are written. ``lse`` (W * H * regions,
    size), when given, gets each row's log-sum-exp for :func:`backward`."""
    w, h, size, n, e, c = _check(q, k, v, bias, tokens, regions, out=out)
    if lse is not None and lse.shape != (w * h * regions, size):
        raise ValueError(f'window attention kernel: lse {tuple(lse.shape)} where {(w * h * regions, size)} belongs')
    args = [_pointer(t, name) for t, name in ((q, 'q'), (k, 'k'), (v, 'v'), (out, 'out'))]
    library().msrasr_window_attention_forward(
        *args, _strides(q, k, v, out), *_bias_args(bias, n), _pointer(tokens, 'tokens', torch.int64, contiguous=True),
        _pointer(lse, 'lse', contiguous=True), w, h, regions, size, n, e, c, torch.get_num_threads())


def backward(q, k, v, out, dout, dq, dk, dv, bias, lse, dbias=None, add_dbias: bool = True, tokens=None,
             regions: int = 1) -> None:
    """Gradients of :func:`forward` at the part's tokens: ``dq``, ``dk`` (W, H, N, E) and ``dv`` (W, H, N, C)
    written there; ``dbias`` (bias's shape), when given, gets the sum over the windows: a map's at the part's
    entries, added, or written over for a part of whole windows without ``add_dbias``; a table's, added."""
    w, h, size, n, e, c = _check(q, k, v, bias, tokens, regions, out=out, dout=dout, dv=dv)
    if dq.shape != q.shape or dk.shape != q.shape or (dbias is not None and dbias.shape != bias.shape):
        raise ValueError('window attention kernel: gradient buffers do not agree with q and bias')
    tensors = (q, k, v, out, dout, dq, dk, dv)
    names = ('q', 'k', 'v', 'out', 'dout', 'dq', 'dk', 'dv')
    library().msrasr_window_attention_backward(
        *(_pointer(t, name) for t, name in zip(tensors, names)), _strides(*tensors), *_bias_args(bias, n),
        _pointer(tokens, 'tokens', torch.int64, contiguous=True), _pointer(lse, 'lse', contiguous=True),
        _pointer(dbias, 'dbias', contiguous=True), int(add_dbias),
        w, h, regions, size, n, e, c, torch.get_num_threads())


def _float32(t: torch.Tensor, name: str, what: str, dims: int) -> None:
    if t.dtype != torch.float32 or t.device.type != 'cpu' or t.dim() != dims:
        raise ValueError(f'{what} kernel: {name} must be a {dims}-D float32 CPU tensor, got {t.dtype} '
                         f'{tuple(t.shape)} on {t.device}')


def _channels_last(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, C, H, W) -> its (B, H, W, C) memory, checked: a view of a channels-last tensor, else a copy."""
    _float32(x, name, 'depth-wise', 4)
    return x.permute(0, 2, 3, 1).contiguous()


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=k // 2, groups=C)`` for x (B, C, H, W) and weight (C, 1, k, k), k odd;
    returned channels-last in memory, as the FFN reads it."""
    b, c, h, w = x.shape
    k = weight.shape[-1]
    if weight.shape != (c, 1, k, k) or not depthwise_supports(k) or (bias is not None and bias.shape != (c, )):
        raise ValueError(f'depth-wise kernel: weight {tuple(weight.shape)} and bias '
                         f'{None if bias is None else tuple(bias.shape)} do not fit {c} channels')
    xl = _channels_last(x, 'x')
    taps = weight.detach().reshape(c, k * k).t().contiguous().float()
    # Held by a name through the call: a converted bias would otherwise be freed once its pointer is taken.
    bias = None if bias is None else bias.detach().float().contiguous()
    out = torch.empty_like(xl)
    library().msrasr_depthwise_forward(xl.data_ptr(), taps.data_ptr(), None if bias is None else bias.data_ptr(),
                                       out.data_ptr(), b, h, w, c, k, torch.get_num_threads())
    return out.permute(0, 3, 1, 2)


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """The (C, 1, k, k) weight gradient of :func:`depthwise_conv` of x given the output gradient ``grad``
    (both (B, C, H, W))."""
    b, c, h, w = x.shape
    if grad.shape != x.shape:
        raise ValueError(f'depth-wise kernel: grad {tuple(grad.shape)} where {tuple(x.shape)} belongs')
    xl, gl = _channels_last(x, 'x'), _channels_last(grad, 'grad')
    gw = xl.new_empty(k * k, c)
    library().msrasr_depthwise_weight_grad(xl.data_ptr(), gl.data_ptr(), gw.data_ptr(), b, h, w, c, k,
                                           torch.get_num_threads())
    return gw.t().reshape(c, 1, k, k)


def factors(q: torch.Tensor, k: torch.Tensor, taps: torch.Tensor, width: int):
    """Q' and K' (W, H, N, width), contiguous, of q and k (W, H, N, E; any strides with E contiguous) for the
    F kernel ``taps`` (H, s, s): see ``factors.cpp`` and :func:`~..shared_attention._shifted_factors`."""
    w, h, n, e = q.shape
    size = taps.shape[-1]
    for t, name in ((q, 'q'), (k, 'k')):
        _float32(t, name, 'shared-map factor', 4)
    if k.shape != q.shape or taps.shape != (h, size, size) or size % 2 == 0 or width < size * e or (
            q.stride(-1) != 1 or k.stride(-1) != 1):
        raise ValueError(f'shared-map factor kernel: q {tuple(q.shape)}, k {tuple(k.shape)}, taps '
                         f'{tuple(taps.shape)} and width {width} do not agree')
    taps = taps.detach().float().contiguous()
    qf, kf = (q.new_empty(w, h, n, width) for _ in range(2))
    library().msrasr_factors_forward(q.data_ptr(), k.data_ptr(), _strides(q, k), taps.data_ptr(), qf.data_ptr(),
                                     kf.data_ptr(), w, h, n, e, size, width, torch.get_num_threads())
    return qf, kf


def factors_backward(k: torch.Tensor, taps: torch.Tensor, dqf: torch.Tensor, dkf: torch.Tensor,
                     needs=(True, True, True)):
    """The gradients (dq, dk, dtaps) of :func:`factors` from those of Q' and K' (None where ``needs`` says so)."""
    w, h, n, e = k.shape
    size, width = taps.shape[-1], dqf.shape[-1]
    if dqf.shape != (w, h, n, width) or dkf.shape != dqf.shape:
        raise ValueError(f'shared-map factor kernel: gradients {tuple(dqf.shape)}, {tuple(dkf.shape)} where '
                         f'{(w, h, n, width)} belongs')
    dqf, dkf = dqf.float().contiguous(), dkf.float().contiguous()
    taps = taps.detach().float().contiguous()
    dq, dk = (k.new_empty(w, h, n, e, dtype=torch.float32) if need else None for need in needs[:2])
    dtaps = taps.new_empty(h, size, size) if needs[2] else None
    library().msrasr_factors_backward(
        k.data_ptr(), _strides(k), taps.data_ptr(), dqf.data_ptr(), dkf.data_ptr(),
        *(None if t is None else t.data_ptr() for t in (dq, dk, dtaps)), w, h, n, e, size, width,
        torch.get_num_threads())
    return dq, dk, dtaps
