"""The Python API behind ``msrasr upscale``: a trained network plus how to run it on numpy images.

>>> from msrasr_arch.inference import Upscaler, read_image, write_image
>>> up = Upscaler.from_checkpoint('net_g_latest.pth', device='cuda', precision='fp16', tile=256)
>>> write_image('photo_x2.png', up.upscale(read_image('photo.png')))

The image and its output stay in host memory, in their own dtype (uint8 or uint16); only one tile at a time
(with its activations) goes to the device and becomes float, and the output is blended one band of tile rows
at a time, so peak device memory is set by ``tile`` and peak host memory by the two images plus one band.
"""
import math
from contextlib import nullcontext
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from msrasr_arch.archs.size_requirement import size_requirement
from msrasr_arch.archs.window import pad_to_multiple
from msrasr_arch.inference.device import resolve_device, resolve_precision
from msrasr_arch.inference.image_io import image_mode
from msrasr_arch.utils.errors import UserError
from msrasr_arch.utils.tiling import self_ensemble as _self_ensemble
from msrasr_arch.utils.tiling import tile_bands, tile_forward

ALPHA_METHODS = ('bicubic', 'model')
_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _count(length: int, tile: int, overlap: int) -> int:
    """Tiles along one side, as tile_forward lays them out."""
    return 1 if length <= tile else math.ceil((length - tile) / (tile - overlap)) + 1


class Upscaler:
    """Runs a super-resolution network on whole images.

    Args:
        net: a network mapping ``(N, C, h, w)`` in [0, 1] to ``(N, C, h*s, w*s)``, with an ``upscale``
            attribute (any MSRASR / MSRAGANNet).
        device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        precision: 'fp32', 'bf16' or 'fp16' (autocast; fp16 is refused on CPU).
        tile: tile side in input pixels, or None for the whole image in one pass.
        tile_overlap: input pixels shared by neighbouring tiles; their outputs are cross-faded over it.
            Both are rounded to multiples of the network's window size (the tile down, the overlap up, at
            most tile - window), so that every tile sees the attention windows the whole image would.
        self_ensemble: average the 8 flips/transposes (x8 time, usually +0.1 dB or so).
        alpha: how to upscale an alpha channel: 'bicubic' (default: fast, and alpha masks are smooth or
            binary, where a network trained on photos adds nothing) or 'model' (the network on the alpha
            plane replicated to 3 channels; doubles the time).
    """

    def __init__(self, net: torch.nn.Module, *, device: str = 'auto', precision: str = 'fp32',
                 tile: Optional[int] = None, tile_overlap: int = 32, self_ensemble: bool = False,
                 alpha: str = 'bicubic'):
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.precision = precision
        if tile is not None and tile <= 0:
            tile = None
        if tile is not None and tile_overlap < 0:
            raise UserError(f'tile overlap must be >= 0; got {tile_overlap}')
        if alpha not in ALPHA_METHODS:
            raise UserError(f'alpha must be one of {", ".join(ALPHA_METHODS)}; got {alpha!r}')
        self.self_ensemble, self.alpha = self_ensemble, alpha
        self.net = net.eval().to(self.device)
        self.scale = int(net.upscale)
        self.in_chans = int(getattr(net, 'in_chans', 3))
        # Tiles must start on the window grid of the whole image: a tile whose windows are offset from it
        # attends over different pixel sets everywhere, not only near its edges (measured: 36 dB against
        # the whole image instead of 56 dB). So tile and overlap are multiples of the network's padding
        # multiple and the image is padded the way the network pads it.
        self.align = size_requirement(net).multiple
        self.tile, self.tile_overlap = None, 0
        if tile is not None:
            # Same rule as the model class's val.tile: the tile rounds down (it bounds memory), the overlap
            # rounds up (it hides seams) and always leaves at least one window of stride.
            self.tile = max(self.align, int(tile) // self.align * self.align)
            self.tile_overlap = min(self.tile - self.align, -(-int(tile_overlap) // self.align) * self.align)

    @classmethod
    def from_checkpoint(cls, weights: str, *, opt: Optional[str] = None, scale: Optional[int] = None,
                        param_key: Optional[str] = None, reparameterize: bool = True, **kwargs) -> 'Upscaler':
        """Build from a weights file (any format :func:`msrasr_arch.utils.checkpoint.load_checkpoint`
        reads), with the architecture from `opt`'s ``network_g`` or inferred from the weights. `scale`, if
        given, must match the checkpoint's. The multi-branch convs are merged (same output, faster) unless
        `reparameterize` is False. Other keyword arguments go to the constructor."""
        from msrasr_arch.inference.network import build_network
        net, options, _ = build_network(weights, opt_path=opt, scale=scale, param_key=param_key)
        if reparameterize and hasattr(net, 'reparameterize'):
            net.reparameterize()
        upscaler = cls(net, **kwargs)
        upscaler.options = options
        return upscaler

    def tile_count(self, height: int, width: int) -> int:
        """Network calls (tiles) one colour plane of a ``height x width`` image takes."""
        if self.tile is None:
            return 1
        height, width = (-(-n // self.align) * self.align for n in (height, width))
        return _count(height, self.tile, self.tile_overlap) * _count(width, self.tile, self.tile_overlap)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (torch.autocast(device_type=self.device.type, dtype=self.dtype)
                    if self.dtype != torch.float32 else nullcontext())
        with autocast:
            y = self.net(x)
        y = y.float()
        if not torch.isfinite(y).all():
            if self.precision == 'fp32':
                raise UserError('the network produced NaN/inf values in fp32: the weights are broken (a diverged '
                                'or damaged checkpoint?)')
            other = 'fp32 (or bf16)' if self.precision == 'fp16' else 'fp32'
            raise UserError(f'the network produced NaN/inf values in {self.precision}; use --precision {other}')
        return y

    @torch.inference_mode()
    def upscale_tensor(self, x: torch.Tensor, on_tile: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """``(N, C, H, W)`` float in [0, 1], anywhere (normally host memory) -> ``(N, C, sH, sW)`` float32
        on `x`'s device, clamped to [0, 1]. `on_tile` is called after every tile (progress bars)."""

        def run(t):
            y = _self_ensemble(self._forward, t) if self.self_ensemble else self._forward(t)
            if on_tile is not None:
                on_tile()
            return y

        x = x.float()
        h, w = x.shape[-2:]
        if self.tile is None or (h <= self.tile and w <= self.tile):
            return run(x.to(self.device)).to(x.device).clamp_(0, 1)
        y = tile_forward(run, pad_to_multiple(x, self.align), self.scale, self.tile, self.tile_overlap,
                         device=self.device)
        return y[..., :h * self.scale, :w * self.scale].clamp_(0, 1)

    def _bands(self, plane: np.ndarray, peak: Optional[float], on_tile):
        """Upscale `plane`, ``(H, W, 1 or 3)`` integer or float samples (1 = grey, run as equal RGB), band
        by band: yields ``(top, rows)``, float32 ``(n, sW, 3)`` in [0, 1] for output rows top..top+n.
        Only the current tile is ever float; padding to the window grid is done per tile by index, as
        :func:`pad_to_multiple` would pad the whole image."""
        h, w = plane.shape[:2]
        if self.tile is None or (h <= self.tile and w <= self.tile):
            tile, overlap, rows, cols = max(h, w), 0, np.arange(h), np.arange(w)
        else:
            tile, overlap = self.tile, self.tile_overlap
            ph, pw = (-h) % self.align, (-w) % self.align
            reflect = ph < h and pw < w
            rows, cols = _padded_index(h, ph, reflect), _padded_index(w, pw, reflect)

        def crop(y, x, th, tw):
            t = plane[np.ix_(rows[y:y + th], cols[x:x + tw])].astype(np.float32) / (peak or 1.0)
            if t.shape[2] == 1:
                t = np.repeat(t, 3, axis=2)
            return torch.from_numpy(np.ascontiguousarray(t.transpose(2, 0, 1)))[None].to(self.device)

        def run(t):
            y = _self_ensemble(self._forward, t) if self.self_ensemble else self._forward(t)
            if on_tile is not None:
                on_tile()
            return y

        s = self.scale
        # (tile_bands runs each step under no_grad; a context held open across these yields would leak
        # into the caller's code)
        for top, block in tile_bands(run, crop, len(rows), len(cols), s, tile, overlap):
            n = min(block.shape[-2], h * s - top)
            if n > 0:  # bands wholly in the bottom padding are dropped
                yield top, block[0, :, :n, :w * s].clamp_(0, 1).permute(1, 2, 0).numpy()

    def calls_for(self, image: np.ndarray) -> int:
        """Tiles :meth:`upscale` will run for `image` (for a progress bar's total)."""
        per_plane = self.tile_count(*image.shape[:2])
        has_alpha = image_mode(image) in ('LA', 'RGBA')
        return per_plane * (2 if has_alpha and self.alpha == 'model' else 1)

    def upscale(self, image: np.ndarray, on_tile: Optional[Callable[[], None]] = None) -> np.ndarray:
        """Upscale a numpy image and return it in the same mode and dtype.

        `image`: ``(H, W)`` grey, or ``(H, W, C)`` with C = 2 (grey+alpha), 3 (RGB) or 4 (RGBA); uint8,
        uint16, or float in [0, 1]. Grey is run as RGB with equal channels and averaged back; alpha is
        upscaled separately (see ``alpha``). Returns ``(sH, sW[, C])``.

        The output is filled band by band in the image's own dtype: besides the input and the output,
        memory holds one band of float rows (``tile * scale`` high), never a float copy of the image.
        """
        mode = image_mode(image)
        if self.in_chans != 3:
            raise UserError(f'the network takes {self.in_chans} channels; this API handles 3-channel networks')
        peak = _MAX.get(image.dtype)
        if peak is None and not np.issubdtype(image.dtype, np.floating):
            raise UserError(f'unsupported image dtype {image.dtype} (uint8, uint16 or float in [0, 1])')
        h, w = image.shape[:2]
        s = self.scale
        src = image if image.ndim == 3 else image[:, :, None]
        out = np.empty((h * s, w * s) + image.shape[2:], dtype=image.dtype)
        dst = out if out.ndim == 3 else out[:, :, None]
        has_alpha = mode in ('LA', 'RGBA')
        colour = src[..., :-1] if has_alpha else src
        grey = colour.shape[2] == 1
        for top, block in self._bands(colour, peak, on_tile):
            if grey:
                block = block.mean(axis=2, keepdims=True)
            dst[top:top + len(block), :, :colour.shape[2]] = _quantise(block, peak)
        if has_alpha:
            for top, block in self._alpha(src[..., -1:], peak, on_tile):
                dst[top:top + len(block), :, -1] = _quantise(block, peak)
        return out

    def _alpha(self, alpha: np.ndarray, peak: Optional[float], on_tile, band: int = 256):
        """Yields ``(top, rows)`` of the upscaled alpha plane ``(H, W, 1)``, float in [0, 1]."""
        if self.alpha == 'model':
            for top, block in self._bands(alpha, peak, on_tile):
                yield top, block.mean(axis=2)
            return
        # Bicubic, in bands of input rows with a margin wider than the kernel (2 rows each side), so
        # every kept output row is computed from the same input rows, with the same weights, as one
        # whole-image resize would use.
        h, w = alpha.shape[:2]
        s, margin = self.scale, 4
        for y in range(0, h, band):
            a, b = max(0, y - margin), min(h, y + band + margin)
            slab = alpha[a:b, :, 0].astype(np.float32) / (peak or 1.0)
            up = cv2.resize(slab, (w * s, (b - a) * s), interpolation=cv2.INTER_CUBIC)
            n = min(band, h - y) * s
            yield y * s, np.clip(up[(y - a) * s:(y - a) * s + n], 0, 1)


def _padded_index(length: int, pad: int, reflect: bool) -> np.ndarray:
    """Source index of every row (or column) of the image padded by `pad` at the far end, the way
    :func:`pad_to_multiple` pads: reflection without repeating the edge, or replication of it."""
    index = np.arange(length + pad)
    if pad:
        tail = index[length:]
        index[length:] = 2 * (length - 1) - tail if reflect else length - 1
    return index


def _quantise(block: np.ndarray, peak: Optional[float]) -> np.ndarray:
    """Float samples in [0, 1] -> values for the image's dtype (rounded for integer images), in place:
    `block` is a band buffer of the tiler, and whole-band temporaries would double its memory."""
    if peak is not None:
        np.multiply(block, peak, out=block)
        np.rint(block, out=block)
        np.clip(block, 0, peak, out=block)
    return block
