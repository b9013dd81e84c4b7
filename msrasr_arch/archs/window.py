"""Window bookkeeping: padding, relative positions, and the window layout of a layer.

Tensors in the network body are channels-last images ``(B, H, W, C)``; windows are ``(B * nW, N, C)``
with ``N = window_size ** 2`` tokens in raster order, SwinIR's layout.
"""
import functools
from typing import NamedTuple, Optional, Tuple

import torch
from torch.nn import functional as F

__all__ = ['window_partition', 'window_reverse', 'pad_to_multiple', 'relative_position_index', 'WindowPart',
           'WindowGroup', 'whole_windows', 'WindowLayout', 'window_layout']


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


class _Permute(torch.autograd.Function):
    """Rows of ``x`` (M, C) taken in the order ``index``; the gradient is the inverse permutation, one
    ``index_select`` as well (autograd's own backward of ``index_select`` is an accumulating scatter,
    5-6 ms per shifted layer of a light x2 training step on 2 cores)."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        inverse, = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class WindowPart(NamedTuple):
    """Tokens of every window of a group that attend in ``regions`` separate blocks of ``size`` tokens each.

    ``tokens`` (regions * size,): their indices in the window's raster order, region by region; ``block``
    (regions * size * size,): the flat positions of each region's ``size x size`` block in an ``N x N`` map.
    Both None for a whole window: one region of all N tokens in raster order, nothing gathered.
    """
    regions: int
    size: int
    tokens: Optional[torch.Tensor] = None
    block: Optional[torch.Tensor] = None

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(W, h, N, e) -> (W, h, regions, size, e): a view for a whole window, else one ``index_select``."""
        if self.tokens is None:
            return t.unsqueeze(2)
        return t.index_select(2, self.tokens).view(*t.shape[:2], self.regions, self.size, t.shape[-1])

    def blocks(self, maps: torch.Tensor) -> torch.Tensor:
        """(h, N, N) contiguous -> (h, regions, size, size), each region's block of the maps (a view of the
        maps for a whole window). ``gather`` with the positions broadcast over the heads: about twice as fast
        as ``index_select`` along the flattened maps."""
        h = maps.shape[0]
        if self.block is None:
            return maps.view(h, 1, self.size, self.size)
        return maps.view(h, -1).gather(1, self.block.expand(h, -1)).view(h, self.regions, self.size, self.size)


class WindowGroup(NamedTuple):
    """``count`` consecutive windows from ``start`` whose tokens split alike: ``parts`` cover each window's N
    tokens once; ``inverse`` (N,) puts the parts' tokens, concatenated, back in raster order (None for a whole
    window)."""
    start: int
    count: int
    parts: Tuple[WindowPart, ...]
    inverse: Optional[torch.Tensor] = None

    @property
    def windows(self) -> slice:
        """The group's windows, as a slice of the ``B * nW`` windows."""
        return slice(self.start, self.start + self.count)


def whole_windows(count: int, n: int, start: int = 0) -> WindowGroup:
    """``count`` windows of ``n`` tokens attending as wholes (regular windows, or interior shifted ones)."""
    return WindowGroup(start, count, (WindowPart(1, n), ))


def _split(window_size: int, shift: int, last_row: bool, last_col: bool,
           device: torch.device) -> Tuple[Tuple[WindowPart, ...], Optional[torch.Tensor]]:
    """The parts and the inverse order of a shifted window in the last window row and/or column.

    Its regions are those of :func:`_mask`: the window's rows (and columns) ``< ws - shift`` and
    ``>= ws - shift`` came from opposite sides of the cyclic wrap. Regions of one size share a part, so one
    batched product serves them (a shift of ws/2 gives equal regions: one part). Built from ``arange``
    only, so ``torch.compile`` traces it without data-dependent shapes."""
    ws, n = window_size, window_size**2

    def bands(last: bool):
        cut = ws - shift
        return (torch.arange(cut), torch.arange(cut, ws)) if last else (torch.arange(ws), )

    regions = [(rows[:, None] * ws + cols).flatten() for rows in bands(last_row) for cols in bands(last_col)]
    if len(regions) == 1:
        return (WindowPart(1, n), ), None
    by_size = {}
    for region in regions:
        by_size.setdefault(len(region), []).append(region)
    parts = tuple(
        WindowPart(len(group), size, torch.cat(group).to(device),
                   torch.cat([(r[:, None] * n + r).flatten() for r in group]).to(device))
        for size, group in by_size.items())
    order = torch.cat([p.tokens for p in parts])
    return parts, torch.empty_like(order).index_copy_(0, order, torch.arange(n, device=device))


class WindowLayout:
    """Where the tokens of a ``(B, H, W, C)`` image go among the windows of one kind of layer (regular or
    shifted by ``shift``), and which tokens of each window attend to each other. Built once per forward and
    kind.

    A shifted window's mask (0, or -100 between tokens from opposite sides of the cyclic wrap) depends only
    on whether it lies in the last window row and/or column, so there are at most four distinct masks; the
    mask splits a window's tokens into regions (up to four) that attend only among themselves. Two forms:

    * grouped (eager): the windows are ordered group by group (interior, last column, last row, corner;
      batch-major inside a group), so each group is a contiguous slice of windows that split alike. Each
      region attends alone, with its block of the bias and no mask: a corner window at shift ws/2 has four
      regions of N/4 tokens, a quarter of the map entries, and an edge window half. The masked entries
      are not computed at all, where the raster form gives them a weight of exp(-100) (4e-44, nothing
      at float precision). No per-window mask exists (the raster one is 1 GiB for a 1024x1024 input).
      Roll + partition, and reverse + roll back, are one row permutation each.
    * raster (while a graph is captured for every size, and for the reference implementation): windows in
      :func:`window_partition` order after ``torch.roll``, with one ``(nW, N, N)`` mask.

    Attributes:
        groups: :class:`WindowGroup` s in window order, grouped form; ``()`` in the raster form and for
            regular windows (all whole windows).
        mask: ``(nW, N, N)`` in the raster form of a shifted layout, else None.
        captured: a graph that must serve every size is being captured (tracing, ONNX export): the layers
            then use operators the tracer records with free sizes.
        eager: no graph is being captured or compiled, so kernels PyTorch cannot see into (the
            :mod:`.native` attention) may run.
    """

    def __init__(self, *, window_size: int, shift: int, hw: Tuple[int, int], groups: tuple = (),
                 mask: Optional[torch.Tensor] = None, gather: Optional[torch.Tensor] = None,
                 scatter: Optional[torch.Tensor] = None, captured: bool = False, eager: bool = True):
        self.window_size, self.shift, self.hw = window_size, shift, hw
        self.groups, self.mask, self._gather, self._scatter = groups, mask, gather, scatter
        self.captured, self.eager = captured, eager

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B * nW, N, C) in this layout's window order."""
        c, ws, s = x.shape[-1], self.window_size, self.shift
        if self._gather is not None:
            return _Permute.apply(x.reshape(-1, c), self._gather, self._scatter).view(-1, ws * ws, c)
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        return window_partition(x, ws).view(-1, ws * ws, c)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        """(B * nW, N, C) -> (B, H, W, C), the inverse of :meth:`partition`."""
        c, ws, s = y.shape[-1], self.window_size, self.shift
        h, w = self.hw
        if self._scatter is not None:
            return _Permute.apply(y.reshape(-1, c), self._scatter, self._gather).view(-1, h, w, c)
        y = window_reverse(y.view(-1, ws, ws, c), ws, h, w)
        return torch.roll(y, shifts=(s, s), dims=(1, 2)) if s else y


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


def _grouped(b: int, h: int, w: int, window_size: int, shift: int, device: torch.device,
             inference: bool, eager: bool = True) -> WindowLayout:
    # `inference` only keys the cache: tensors made under torch.inference_mode (spandrel and ComfyUI run
    # models in it) cannot enter a later forward that autograd records.
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
            groups.append(WindowGroup(start, count, *_split(window_size, shift, i >= 2, i % 2 == 1, device)))
            members.append(member)
            start += count
    gather = torch.cat(members)
    scatter = torch.empty_like(gather)
    scatter[gather] = torch.arange(len(gather))
    return WindowLayout(window_size=window_size, shift=shift, hw=(h, w), groups=tuple(groups),
                        gather=gather.to(device), scatter=scatter.to(device), eager=eager)


_grouped_cached = functools.lru_cache(maxsize=16)(_grouped)


def capturing_for_all_sizes() -> bool:
    """True while tracing or exporting (ONNX): the graph must then serve every size, so nothing may be
    specialised on it (the window groups, whose count and indices depend on the size; an inheriting layer's
    sliding ``unfold`` s, whose traced steps are fixed numbers)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def window_layout(b, h, w, *, window_size: int, shift: int, device, dtype, grouped: bool = True) -> WindowLayout:
    """The :class:`WindowLayout` of a ``b x h x w`` batch (h, w multiples of ``window_size``).

    This is the one place that asks how the forward runs. The grouped form is built for static sizes in
    eager mode and under ``torch.compile`` (inside the graph there, uncached); it is cached per size,
    device and inference mode, so every layer and every forward at one size share its tensors
    (callers must not modify them). The raster form is used for ``grouped=False`` (the reference
    implementation), while tracing or exporting, and for the symbolic sizes ``torch.compile`` passes after
    a size change.
    """
    captured, compiling = capturing_for_all_sizes(), torch.compiler.is_compiling()
    eager = not (captured or compiling)
    if not shift:
        return WindowLayout(window_size=window_size, shift=0, hw=(h, w), captured=captured, eager=eager)
    static = all(isinstance(s, int) for s in (b, h, w))
    if grouped and static and not captured:
        if compiling:
            return _grouped(b, h, w, window_size, shift, torch.device(device), False, eager=False)
        return _grouped_cached(b, h, w, window_size, shift, torch.device(device), torch.is_inference_mode_enabled())
    return WindowLayout(window_size=window_size, shift=shift, hw=(h, w), captured=captured, eager=eager,
                        mask=_mask(h, w, window_size, shift, torch.device(device), dtype))
