"""Window bookkeeping shared by the attention modules: padding, relative positions, the shift mask.

Tensors in the network body are channels-last images ``(B, H, W, C)``; windows are ``(B * nW, N, C)``
with ``N = window_size ** 2`` tokens in raster order, SwinIR's layout.
"""
import functools
from typing import NamedTuple, Optional

import torch
from torch.nn import functional as F

__all__ = ['window_partition', 'window_reverse', 'pad_to_multiple', 'relative_position_index', 'ShiftMask', 'shift_mask']


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws, ws, C): the windows image by image, each image's in raster order."""
    b, h, w, c = x.shape
    ws = window_size
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws, ws, C) -> (B, H, W, C), the inverse of :func:`window_partition`.

    The batch is left to ``view`` (-1) rather than computed, so a traced graph keeps it free."""
    ws, c = window_size, windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, w, c)


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
    """The shift mask of a batch and image size, in one of two layouts.

    A window's mask (0 or -100 between tokens from different sides of the cyclic wrap) depends only on
    whether it lies in the last window row and/or column, so there are at most four distinct masks.

    * Raster (``mask`` set, the rest empty): ``mask`` (nW, N, N) for the windows in the order of
      :func:`window_partition` after ``torch.roll``. Used by the reference implementation and while a graph
      is captured.
    * Grouped (``mask`` None): the ``B * nW`` windows are ordered group by group (interior, last column,
      last row, corner; batch-major inside a group), so that each group is a contiguous slice that one
      attention call handles with one broadcast ``(N, N)`` mask, and no per-window mask exists at all
      (the raster one is 1 GiB for a 1024x1024 input).

      - ``gather`` (B*H*W,): for each token of the grouped windows, its flat index in the *unshifted*
        ``(B, H, W)`` image, so one ``index_select`` does the roll and the partition together;
      - ``scatter`` (B*H*W,): the inverse permutation (window reverse and roll back in one ``index_select``);
      - ``groups``: ``(start, count, mask (N, N) or None for the all-zero interior)``, in windows.
    """
    mask: Optional[torch.Tensor]
    groups: tuple
    gather: Optional[torch.Tensor]
    scatter: Optional[torch.Tensor]


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
def _grouped(b: int, h: int, w: int, window_size: int, shift: int, device: torch.device, dtype: torch.dtype,
             inference: bool):
    # `inference` only keys the cache: tensors made under torch.inference_mode (spandrel and ComfyUI run
    # models in it) cannot enter a later forward that autograd records.
    # The four masks, from a 2 x 2-window image: interior, last column, last row, corner.
    masks = _mask(2 * window_size, 2 * window_size, window_size, shift, device, dtype)
    nwh, nww = h // window_size, w // window_size
    pixels = torch.arange(b * h * w).view(b, h, w, 1)
    windows = window_partition(torch.roll(pixels, shifts=(-shift, -shift), dims=(1, 2)), window_size)
    windows = windows.view(b, nwh, nww, window_size * window_size)
    inner_h, inner_w = slice(0, nwh - 1), slice(0, nww - 1)
    last_h, last_w = slice(nwh - 1, nwh), slice(nww - 1, nww)
    groups, members, start = [], [], 0
    for i, (rows, cols) in enumerate(((inner_h, inner_w), (inner_h, last_w), (last_h, inner_w), (last_h, last_w))):
        member = windows[:, rows, cols].reshape(-1)
        count = len(member) // (window_size * window_size)
        if count:
            groups.append((start, count, None if i == 0 else masks[i]))
            members.append(member)
            start += count
    gather = torch.cat(members)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(len(gather))
    return ShiftMask(None, tuple(groups), gather.to(device), scatter.to(device))


def exporting() -> bool:
    """True while tracing or exporting (ONNX): sizes are symbolic and the graph must serve every size, so
    nothing may be specialised on them (the window groups, whose count and indices depend on the size).
    ``torch.compile`` is not included: it specialises on sizes and guards them itself."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def static_sizes(*sizes) -> bool:
    """False for symbolic sizes (``torch.compile`` after a size change recompiles with ``SymInt`` sizes):
    the grouped layout's Python-level structure cannot be guarded on them."""
    return all(isinstance(s, int) for s in sizes)


def shift_mask(b: int, h: int, w: int, window_size: int, shift: int, device, dtype, grouped: bool = True) -> ShiftMask:
    """The additive mask for cyclically shifted windows of a ``b x h x w`` batch (see :class:`ShiftMask`).

    The grouped layout is cached per size, device, dtype and inference mode (built anew while compiling):
    every shifted layer of a forward, and every forward at the same size, reuses the same tensors; callers
    must not modify them. The raster layout (``grouped=False``, and always while tracing or exporting, or when
    ``torch.compile`` passes symbolic sizes) is built anew.
    """
    if grouped and not exporting() and static_sizes(b, h, w):
        if torch.compiler.is_compiling():
            return _grouped.__wrapped__(b, h, w, window_size, shift, torch.device(device), dtype, False)
        return _grouped(b, h, w, window_size, shift, torch.device(device), dtype, torch.is_inference_mode_enabled())
    return ShiftMask(_mask(h, w, window_size, shift, torch.device(device), dtype), (), None, None)
