"""MATLAB-style bicubic downscaling of 8-bit images, the degradation of the DIV2K / benchmark "bicubic"
tracks. The arithmetic is BasicSR's `imresize` (MATLAB's antialiased cubic kernel); this module only
adds the uint8 round trip MATLAB performs on uint8 input."""
import numpy as np

from msrasr_arch import _compat  # noqa: F401  (torchvision shim before basicsr)
from basicsr.utils.matlab_functions import imresize


def mod_crop(img, modulus):
    """Crop the bottom/right of `img` (h, w, c) so both sides are multiples of `modulus`."""
    h, w = img.shape[:2]
    return img[:h - h % modulus, :w - w % modulus]


def bicubic_downscale(img, scale):
    """Downscale an 8-bit (h, w, c) image by the integer `scale` like MATLAB's
    `imresize(img, 1/scale, 'bicubic')`; h and w must be multiples of `scale` (see `mod_crop`).

    Returns uint8 of shape (h/scale, w/scale, c). Channel order does not matter (channels are
    independent)."""
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'image size {w}x{h} is not a multiple of the scale {scale}; mod_crop it first')
    lr = imresize(img.astype(np.float32) / 255., 1 / scale)
    # imresize returns ceil(h * (1/scale)); guard against 1/scale rounding up by an ulp.
    lr = lr[:h // scale, :w // scale]
    # MATLAB rounds when it converts its result back to uint8.
    return np.clip(np.round(lr * 255.), 0, 255).astype(np.uint8)
