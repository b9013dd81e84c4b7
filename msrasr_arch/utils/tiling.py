"""Inference helpers shared by the model class (``val.tile``, ``val.self_ensemble``) and ``msrasr upscale``.

``fn`` is any callable mapping an ``(N, C, h, w)`` tensor to ``(N, C, h*scale, w*scale)`` (a network, or a
network behind padding). Nothing here knows about BasicSR.
"""
import torch


def _starts(length, tile, stride):
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile sits flush with the far edge, overlapping more
    return starts


def _ramp(length, fade_lo, fade_hi, device, dtype):
    """1-D blending weight: 1 in the middle, easing in over ``fade_lo`` pixels and out over ``fade_hi``
    (0 = no fade, for an image border).

    The ease is smoothstep, ``t*t*(3-2t)``: it satisfies ``s(t) + s(1-t) = 1``, so two tiles fading across
    the same overlap still sum to a constant weight, and unlike a linear ramp it is nearly zero at a tile's
    edge, which is where a tile's output is worst (it lacks the context beyond its border). Strictly
    positive, so the normalised sum never divides by zero.
    """
    pos = torch.arange(length, device=device, dtype=dtype) + 0.5
    t = torch.ones(length, device=device, dtype=dtype)
    if fade_lo > 0:
        t = torch.minimum(t, pos / fade_lo)
    if fade_hi > 0:
        t = torch.minimum(t, (length - pos) / fade_hi)
    return t * t * (3 - 2 * t)


def _fades(start, size, starts, scale):
    """Output pixels to fade in at the low/high side of a tile: only towards neighbouring tiles (an
    image border keeps full weight), over the overlap actually shared with that neighbour (the last
    tile, flush with the edge, may overlap more than asked)."""
    k = starts.index(start)
    lo = (starts[k - 1] + size - start) if k > 0 else 0
    hi = (start + size - starts[k + 1]) if k + 1 < len(starts) else 0
    return lo * scale, hi * scale


def tile_grid(height, width, tile, overlap):
    """Top and left input coordinates of the tiles :func:`tile_bands` runs, ``(ys, xs)``."""
    tile, overlap = int(tile), int(overlap)
    if tile <= 0:
        raise ValueError(f'tile must be positive, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'overlap must be in [0, tile), got overlap={overlap} with tile={tile}')
    return _starts(height, tile, tile - overlap), _starts(width, tile, tile - overlap)


def _weight_sum(starts, length, tile, scale, device, dtype):
    """Sum of the 1-D ramps of every tile along one side. The 2-D weight of a tile is the product of its
    row and column ramps and the tiles form a full grid, so the total weight is the product of these sums."""
    total = torch.zeros(length * scale, device=device, dtype=dtype)
    for s in starts:
        size = min(tile, length - s)
        total[s * scale:(s + size) * scale] += _ramp(size * scale, *_fades(s, size, starts, scale), device, dtype)
    return total


@torch.no_grad()
def tile_bands(fn, crop, height, width, scale, tile, overlap, *, device='cpu', dtype=torch.float32):
    """Run ``fn`` over overlapping ``tile``x``tile`` crops of a ``height x width`` image and yield the
    blended output one band of rows at a time, as soon as no later tile can touch it.

    Args:
        fn: callable, ``(N, C, h, w)`` -> ``(N, C, h*scale, w*scale)``.
        crop: callable, ``(top, left, h, w)`` -> the ``(N, C, h, w)`` input tile, on the device ``fn``
            runs on. The image itself never has to exist as one tensor (a large photo stays uint8 in host
            memory and only the tile becomes float).
        height, width: input size; scale: integer upscaling factor of ``fn``.
        tile: tile size in input pixels (tiles are square; an image no larger runs as one tile).
        overlap: input pixels shared by neighbouring tiles (0 <= overlap < tile). The outputs of both
            tiles are cross-faded (smoothstep) across the overlap, which hides the seams that the tiles'
            missing context causes.
        device, dtype: where and in what the outputs are accumulated (at least float32: half-precision
            sums of many tiles would drift).

    Yields:
        ``(top, block)``: output rows ``top`` to ``top + block.shape[-2]`` in full width, ``(N, C, rows,
        width*scale)``, in order and covering the output once. ``block`` is a view of the one buffer of
        ``tile*scale`` rows that is reused for every tile row (so memory grows with the tile and the width,
        not with the image): use or copy it before asking for the next one; it may be modified in place.
    """
    scale = int(scale)
    ys, xs = tile_grid(height, width, tile, overlap)
    tile = int(tile)
    if len(ys) == len(xs) == 1:  # one tile: its output as it is (every weight would be 1)
        yield 0, fn(crop(0, 0, height, width)).to(device, dtype)
        return
    wy_all = _weight_sum(ys, height, tile, scale, device, dtype)
    wx_all = _weight_sum(xs, width, tile, scale, device, dtype)
    acc, acc_top = None, 0  # acc: one tile row of output, from row acc_top, reused for every tile row
    for y in ys:
        th = min(tile, height - y)
        if acc is not None and y * scale > acc_top:  # rows above this tile row are final
            done = y * scale - acc_top
            block = acc[:, :, :done]
            block.div_(wy_all[acc_top:acc_top + done, None]).div_(wx_all)
            yield acc_top, block
            keep = acc.shape[-2] - done  # rows this tile row shares with the previous one
            acc[:, :, :keep] = acc[:, :, done:].clone() if keep > done else acc[:, :, done:]
            acc[:, :, keep:].zero_()
            acc_top = y * scale
        wy = _ramp(th * scale, *_fades(y, th, ys, scale), device=device, dtype=dtype)
        for x in xs:
            tw = min(tile, width - x)
            piece = fn(crop(y, x, th, tw)).to(device, dtype)
            if acc is None:
                acc = torch.zeros(piece.shape[0], piece.shape[1], tile * scale, width * scale, device=device,
                                  dtype=dtype)
            wx = _ramp(tw * scale, *_fades(x, tw, xs, scale), device=device, dtype=dtype)
            rows = slice(y * scale - acc_top, (y + th) * scale - acc_top)
            acc[:, :, rows, x * scale:(x + tw) * scale].addcmul_(piece, wy[:, None] * wx[None, :])
    block = acc[:, :, :height * scale - acc_top]
    yield acc_top, block.div_(wy_all[acc_top:, None]).div_(wx_all)


@torch.no_grad()
def tile_forward(fn, img, scale, tile, overlap, device=None):
    """Run ``fn`` over overlapping ``tile``x``tile`` crops of ``img`` and blend the results (see
    :func:`tile_bands`, which this assembles into one tensor).

    Args:
        fn: callable, ``(N, C, h, w)`` -> ``(N, C, h*scale, w*scale)``.
        img: ``(N, C, H, W)`` input. It stays on its own device (e.g. a large image in CPU memory); the
            output is assembled there too.
        scale, tile, overlap: as in :func:`tile_bands`.
        device: where ``fn`` runs; each tile is moved there and its output brought back. ``None`` = the
            device of ``img``.

    Returns:
        ``(N, C, H*scale, W*scale)`` tensor on ``img``'s device, in ``img``'s dtype.
    """
    tile, overlap, scale = int(tile), int(overlap), int(scale)
    tile_grid(1, 1, tile, overlap)  # argument checks
    n, _, h, w = img.shape
    device = img.device if device is None else torch.device(device)
    if h <= tile and w <= tile:
        return fn(img.to(device)).to(img.device)

    def crop(y, x, th, tw):
        return img[:, :, y:y + th, x:x + tw].to(device)

    out = None
    acc = torch.promote_types(img.dtype, torch.float32)
    for top, block in tile_bands(fn, crop, h, w, scale, tile, overlap, device=img.device, dtype=acc):
        if out is None:
            out = torch.empty(n, block.shape[1], h * scale, w * scale, device=img.device, dtype=img.dtype)
        out[:, :, top:top + block.shape[-2]] = block
    return out


# The eight symmetries of the square: (transpose, flip H, flip W). Each is its own inverse except that a
# transpose must be undone after the flips, which `_undo` does.
_SYMMETRIES = [(t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True)]


def _do(x, t, fh, fw):
    if t:
        x = x.transpose(-2, -1)
    if fh:
        x = x.flip(-2)
    if fw:
        x = x.flip(-1)
    return x


def _undo(x, t, fh, fw):
    if fw:
        x = x.flip(-1)
    if fh:
        x = x.flip(-2)
    if t:
        x = x.transpose(-2, -1)
    return x


@torch.no_grad()
def self_ensemble(fn, img):
    """x8 geometric self-ensemble ("+" in SR papers): mean of ``fn`` over the 8 flips/transposes of ``img``,
    each output mapped back. Runs one transform at a time to keep peak memory at one forward pass."""
    acc, dtype = None, torch.promote_types(img.dtype, torch.float32)
    for sym in _SYMMETRIES:
        y = _undo(fn(_do(img, *sym)), *sym).to(dtype)
        acc = y if acc is None else acc + y
    return (acc / len(_SYMMETRIES)).to(img.dtype)
