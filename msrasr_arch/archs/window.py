"""Window bookkeeping shared by the attention modules: padding, relative positions, the shift mask.

Tensors in the network body are channels-last images ``(B, H, W, C)``; windows are ``(B * nW, N, C)``
with ``N = window_size ** 2`` tokens in raster order, as in SwinIR (whose partition helpers we reuse).
"""
import functools

import torch
from torch.nn import functional as F

from basicsr.archs.swinir_arch import window_partition, window_reverse

__all__ = ['window_partition', 'window_reverse', 'pad_to_multiple', 'relative_position_index', 'shift_mask']


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad an NCHW image on the bottom/right to a multiple of ``multiple``.

    Reflection, like SwinIR's test code, keeps the padded border image-like; an input smaller than the
    pad (reflect needs pad < size) falls back to edge replication so that any size works.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = 'reflect' if ph < h and pw < w else 'replicate'
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def relative_position_index(window_size: int) -> torch.Tensor:
    """``(N, N)`` index into a ``((2ws-1)^2, heads)`` bias table, SwinIR's layout."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


@functools.lru_cache(maxsize=16)
def _shift_mask(h: int, w: int, window_size: int, shift: int, device: torch.device, dtype: torch.dtype):
    img = torch.zeros(1, h, w, 1, device=device, dtype=dtype)
    bands = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for ws in bands:
            img[:, hs, ws, :] = label
            label += 1
    windows = window_partition(img, window_size).view(-1, window_size * window_size)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def shift_mask(h: int, w: int, window_size: int, shift: int, device, dtype) -> torch.Tensor:
    """``(nW, N, N)`` additive mask (0 or -100) for cyclically shifted windows of an ``h x w`` image.

    Cached per size, device and dtype: every shifted layer of a forward, and every forward at the same
    size, reuses one tensor. Callers must not modify it.
    """
    return _shift_mask(h, w, window_size, shift, torch.device(device), dtype)
