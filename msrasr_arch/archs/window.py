"""Window bookkeeping shared by the attention modules: padding, relative positions, the shift mask.

Tensors in the network body are channels-last images ``(B, H, W, C)``; windows are ``(B * nW, N, C)``
with ``N = window_size ** 2`` tokens in raster order, as in SwinIR (whose partition helpers we reuse).
"""
import functools
from typing import NamedTuple

import torch
from torch.nn import functional as F

from basicsr.archs.swinir_arch import window_partition, window_reverse

__all__ = ['window_partition', 'window_reverse', 'pad_to_multiple', 'relative_position_index', 'ShiftMask', 'shift_mask']


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


class ShiftMask(NamedTuple):
    """The shift mask of an image size, with its windows grouped by identical masks.

    ``mask`` (nW, N, N): 0 or -100 per window. A window's mask depends only on whether it lies in the last
    window row and/or column (the ones straddling the cyclic wrap), so there are at most four distinct
    masks: ``groups`` holds, for each, the window indices and that one ``(N, N)`` mask (None for the
    all-zero interior), and ``order`` puts ``cat(group windows)`` back in window order.
    """
    mask: torch.Tensor
    groups: tuple
    order: torch.Tensor


def _mask(h: int, w: int, window_size: int, shift: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
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


@functools.lru_cache(maxsize=16)
def _shift_mask(h: int, w: int, window_size: int, shift: int, device: torch.device, dtype: torch.dtype):
    mask = _mask(h, w, window_size, shift, device, dtype)
    # Grouped from the geometry rather than the mask's values, so this also works on the meta device.
    nwh, nww = h // window_size, w // window_size
    index = torch.arange(nwh * nww)
    last_row, last_col = index // nww == nwh - 1, index % nww == nww - 1
    groups, members = [], []
    for in_row in (False, True):
        for in_col in (False, True):
            idx = torch.nonzero((last_row == in_row) & (last_col == in_col)).flatten()
            if len(idx):
                members.append(idx)
                interior = not in_row and not in_col
                groups.append((idx.to(device), None if interior else mask[int(idx[0])]))
    order = torch.argsort(torch.cat(members)).to(device)
    return ShiftMask(mask, tuple(groups), order)


def capturing_graph() -> bool:
    """True while tracing, exporting or compiling: then sizes may be symbolic, so nothing may be cached or
    specialised on them (the window groups, whose count and indices depend on the size)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def shift_mask(h: int, w: int, window_size: int, shift: int, device, dtype) -> ShiftMask:
    """The additive mask for cyclically shifted windows of an ``h x w`` image (see :class:`ShiftMask`).

    Cached per size, device and dtype: every shifted layer of a forward, and every forward at the same
    size, reuses the same tensors. Callers must not modify them. While a graph is captured (ONNX export,
    tracing, ``torch.compile``) the mask is built from the traced sizes and comes without groups.
    """
    if capturing_graph():
        return ShiftMask(_mask(h, w, window_size, shift, torch.device(device), dtype), (), None)
    return _shift_mask(h, w, window_size, shift, torch.device(device), dtype)
