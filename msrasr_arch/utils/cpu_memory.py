"""Keep freed memory inside a CPU training, testing or upscaling process (glibc's malloc).

A training step frees hundreds of megabytes (activations, attention probabilities) and allocates them
again in the next step. By default glibc gives freed memory at the top of its heap back to the system,
and serves blocks above its mmap threshold with fresh mappings, so every step touches new pages, and a
page fault is expensive on a virtual machine. With the trim threshold at 1 GiB and the mmap threshold
at its 32 MiB ceiling, freed memory is reused: on a 2-core AMD EPYC VM a light x2 training step at batch
4 of 16x16 LR patches (the quick start's) took 395-431 ms instead of 484-561 ms, and BasicSR's
SwinIR-light's 242-284 ms instead of 291-370 ms (``benchmarks/speed.py --keep-freed-memory``, alternating
runs; docs/speed.md); at 32x32 patches nothing changed. The price is a resident size that stays
at its peak, which a training process reaches every step anyway.

Inference frees and takes memory the same way, image after image and tile after tile: a light x2
forward at 128x128 took up to 90K page faults under glibc's defaults (BasicSR's SwinIR-light 50K-370K;
the count varies from process to process with the allocator's history) and none with both thresholds
set (``benchmarks/speed.py`` prints the faults per run; docs/speed.md). ``msrasr upscale`` and
``basicsr test`` set them too.
"""
import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TRIM_THRESHOLD = 2**30
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for the mmap threshold on 64-bit systems


def keep_freed_memory() -> bool:
    """Set the two thresholds for this process; True when glibc took them (False elsewhere: macOS,
    Windows, musl)."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
