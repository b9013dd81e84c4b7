"""Reading and writing the images people upscale, keeping their mode (L, LA, RGB, RGBA) and bit depth.

Arrays are ``uint8`` or ``uint16``, ``(H, W)`` for greyscale or ``(H, W, C)`` with channels in
L/LA/RGB/RGBA order (RGB, not OpenCV's BGR: this is the order of every numpy image API). OpenCV does
the decoding because it keeps 16-bit colour, which Pillow drops; Pillow only looks at the header, to
tell grey+alpha PNGs (which OpenCV widens to BGRA) from real RGBA and to read the EXIF orientation.
"""
import os
import warnings
from typing import Optional

import cv2
import numpy as np

from msrasr_arch.utils.atomic import atomic_path
from msrasr_arch.utils.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
# Encoders that store 16 bits per sample; anything else gets an 8-bit copy (OpenCV would truncate).
SIXTEEN_BIT_EXTENSIONS = ('.png', '.tif', '.tiff', '.ppm', '.pgm')
ALPHA_EXTENSIONS = ('.png', '.tif', '.tiff', '.webp')
_CHANNEL_MODES = {1: 'L', 2: 'LA', 3: 'RGB', 4: 'RGBA'}

# OpenCV logs decoder complaints to stderr on its own; our error message says it once, on one line.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # very old OpenCV builds
    pass


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def image_mode(image: np.ndarray) -> str:
    """'L', 'LA', 'RGB' or 'RGBA' from the array's shape."""
    if image.ndim == 2:
        return 'L'
    if image.ndim == 3 and image.shape[2] in _CHANNEL_MODES:
        return _CHANNEL_MODES[image.shape[2]]
    raise ValueError(f'not an image array: shape {image.shape}')


def _header(path: str):
    """Pillow's view of the header: (mode, EXIF orientation), or (None, 1) where Pillow cannot open it."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            orientation = 1
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # a malformed EXIF block must not stop an otherwise fine image
                pass
            return im.mode, orientation
    except Exception:
        return None, 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip to how viewers show the photo: the output carries no EXIF, so it must be upright."""
    if orientation in (5, 7):
        image = np.swapaxes(image, 0, 1)
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a, 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    if orientation in ops:
        image = ops[orientation](image)
    return np.ascontiguousarray(image)


def read_image(path: str) -> np.ndarray:
    """Read `path` as uint8/uint16 L, LA, RGB or RGBA, upright. A file that is missing, not an image or
    corrupt raises a :class:`UserError` naming it."""
    if not os.path.isfile(path):
        raise UserError(f'input image {path} does not exist')
    # imread cannot open non-ASCII paths on some platforms; decoding the bytes always works.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UserError(f'cannot read {path}: {err.strerror or err}') from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise UserError(f'cannot decode {path}: not an image, or the file is corrupt or truncated')
    if image.dtype not in (np.uint8, np.uint16):
        raise UserError(f'{path}: {image.dtype} samples are not supported (8- and 16-bit images are)')
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    mode, orientation = _header(path)
    if image.ndim == 3:
        if image.shape[2] == 3:
            image = image[:, :, ::-1]
        elif image.shape[2] == 4:
            if mode in ('LA', 'La') and image.dtype == np.uint8:
                image = image[:, :, [0, 3]]  # OpenCV widened grey+alpha to BGRA; undo it
            else:
                image = image[:, :, [2, 1, 0, 3]]
        else:
            raise UserError(f'{path}: {image.shape[2]}-channel images are not supported')
    return _apply_orientation(image, orientation)


def write_image(path: str, image: np.ndarray, overwrite: bool = False, jpeg_quality: int = 95) -> str:
    """Write `image` (as :func:`read_image` returns it) to `path` through a temporary file and a rename,
    so an interrupted run leaves no partial file. An existing `path` raises FileExistsError unless
    `overwrite`. Formats without 16-bit or alpha support get an 8-bit / alpha-free copy, with a warning."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(path)
    ext = os.path.splitext(path)[1].lower()
    mode = image_mode(image)
    if image.dtype == np.uint16 and ext not in SIXTEEN_BIT_EXTENSIONS:
        warnings.warn(f'{os.path.basename(path)}: {ext} holds 8 bits per sample; writing an 8-bit copy')
        image = ((image.astype(np.float32) / 257.0).round()).astype(np.uint8)
    if mode in ('LA', 'RGBA') and ext not in ALPHA_EXTENSIONS:
        warnings.warn(f'{os.path.basename(path)}: {ext} has no alpha channel; dropping it')
        image = image[..., :-1]
        mode = mode[:-1]
    if mode == 'RGB':
        bgr = image[:, :, ::-1]
    elif mode == 'RGBA':
        bgr = image[:, :, [2, 1, 0, 3]]
    elif mode == 'LA':
        # OpenCV has no grey+alpha encoder: Pillow writes LA (8-bit only; 16-bit LA is written as RGBA).
        if image.dtype == np.uint8 and ext == '.png':
            return _write_la_png(path, image)
        bgr = image[:, :, [0, 0, 0, 1]]
    else:
        bgr = image
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in ('.jpg', '.jpeg') else []
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
        if not ok:
            raise UserError(f'cannot encode {path} as {ext}')
        with open(tmp, 'wb') as f:
            encoded.tofile(f)
    return path


def _write_la_png(path: str, image: np.ndarray) -> str:
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format='PNG')
    return path


def output_extension(input_path: str, ext: Optional[str]) -> str:
    """The extension to write: `ext` if given (with or without the dot), else the input's."""
    if ext:
        return ext.lower() if ext.startswith('.') else '.' + ext.lower()
    return os.path.splitext(input_path)[1].lower()
