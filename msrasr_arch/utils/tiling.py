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


@torch.no_grad()
def tile_forward(fn, img, scale, tile, overlap, device=None):
    """Run ``fn`` over overlapping ``tile``x``tile`` crops of ``img`` and blend the results.

    Args:
        fn: callable, ``(N, C, h, w)`` -> ``(N, C, h*scale, w*scale)``.
        img: ``(N, C, H, W)`` input. It stays on its own device (e.g. a large image in CPU memory); the
            output is assembled there too.
        scale: integer upscaling factor of ``fn``.
        tile: tile size in input pixels (tiles are square; smaller images run in one piece).
        overlap: input pixels shared by neighbouring tiles (0 <= overlap < tile). The outputs of both
            tiles are cross-faded (smoothstep) across the overlap, which hides the seams that the tiles'
            missing context causes.
        device: where ``fn`` runs; each tile is moved there and its output brought back. ``None`` = the
            device of ``img``.

    Returns:
        ``(N, C, H*scale, W*scale)`` tensor on ``img``'s device, in ``img``'s dtype.
    """
    tile, overlap, scale = int(tile), int(overlap), int(scale)
    if tile <= 0:
        raise ValueError(f'tile must be positive, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'overlap must be in [0, tile), got overlap={overlap} with tile={tile}')
    n, _, h, w = img.shape
    device = img.device if device is None else torch.device(device)
    if h <= tile and w <= tile:
        return fn(img.to(device)).to(img.device)

    # Accumulate in at least float32 (half-precision sums of many tiles would drift).
    acc = torch.promote_types(img.dtype, torch.float32)
    stride = tile - overlap
    ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
    out = None
    weight = torch.zeros(1, 1, h * scale, w * scale, device=img.device, dtype=acc)
    for y in ys:
        for x in xs:
            th, tw = min(tile, h - y), min(tile, w - x)
            piece = fn(img[:, :, y:y + th, x:x + tw].to(device)).to(img.device, acc)
            if out is None:
                out = torch.zeros(n, piece.shape[1], h * scale, w * scale, device=img.device, dtype=acc)
            wy = _ramp(th * scale, *_fades(y, th, ys, scale), device=img.device, dtype=acc)
            wx = _ramp(tw * scale, *_fades(x, tw, xs, scale), device=img.device, dtype=acc)
            wmap = (wy[:, None] * wx[None, :])[None, None]
            ys_, xs_ = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            out[:, :, ys_, xs_] += piece * wmap
            weight[:, :, ys_, xs_] += wmap
    return (out / weight).to(img.dtype)


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
