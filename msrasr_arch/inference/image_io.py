"""Reading and writing the images people upscale, keeping their mode (L, LA, RGB, RGBA) and bit depth.

Arrays are ``uint8`` or ``uint16``, ``(H, W)`` for greyscale or ``(H, W, C)`` with channels in
L/LA/RGB/RGBA order (RGB, not OpenCV's BGR: this is the order of every numpy image API). OpenCV does
the decoding because it keeps 16-bit colour, which Pillow drops; Pillow only looks at the header, to
tell grey+alpha PNGs (which OpenCV widens to BGRA) from real RGBA and to read the EXIF orientation.
"""
import os
import struct
import sys
import warnings
from contextlib import contextmanager
from typing import Optional, Tuple

import cv2
import numpy as np

from msrasr_arch.utils.atomic import atomic_path
from msrasr_arch.utils.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
# Encoders that store 16 bits per sample; anything else gets an 8-bit copy (OpenCV would truncate).
SIXTEEN_BIT_EXTENSIONS = ('.png', '.tif', '.tiff', '.ppm', '.pgm')
ALPHA_EXTENSIONS = ('.png', '.tif', '.tiff', '.webp')
_CHANNEL_MODES = {1: 'L', 2: 'LA', 3: 'RGB', 4: 'RGBA'}
# Input images larger than this are refused from their header, before decoding: a few hundred bytes of
# PNG can claim 20000x20000 pixels (1.2 GB decoded, several more upscaled). Pillow's own guard is of the
# same order (a warning at 89.5 megapixels); 100 megapixels admits every common camera.
DEFAULT_MAX_PIXELS = 100_000_000

# OpenCV logs decoder complaints to stderr on its own; our error message says it once, on one line.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # very old OpenCV builds
    pass


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


@contextmanager
def _quiet_stderr():
    """libpng and libjpeg print their complaints about a broken file straight to the process's stderr,
    bypassing OpenCV's log level; our UserError says it once, on one line. Redirects file descriptor 2
    while decoding."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr to silence
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decode(data: np.ndarray, flags: int = cv2.IMREAD_UNCHANGED) -> Optional[np.ndarray]:
    """cv2.imdecode of the file's bytes without the codecs' own messages; None when it cannot decode."""
    if not data.size:
        return None
    with _quiet_stderr():
        return cv2.imdecode(data, flags)


def _png_size(head: bytes) -> Optional[Tuple[int, int]]:
    if head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR' and len(head) >= 24:
        return struct.unpack('>II', head[16:24])
    return None


def _jpeg_size(f) -> Optional[Tuple[int, int]]:
    """(width, height) from the first start-of-frame marker, skipping the segments before it (EXIF
    thumbnails are inside APP1, so they are skipped, not mistaken for the image)."""
    f.seek(2)
    while True:
        byte = f.read(1)
        while byte and byte != b'\xff':  # garbage between segments: libjpeg skips it too
            byte = f.read(1)
        while byte == b'\xff':  # fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, *range(0xD0, 0xD9)):  # no length field
            continue
        length = f.read(2)
        if len(length) < 2:
            return None
        size = struct.unpack('>H', length)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack('>HH', frame[1:5])
            return width, height
        if marker == 0xD9 or size < 2:
            return None
        f.seek(size - 2, os.SEEK_CUR)


class _OverPillowLimit(Exception):
    """Pillow refuses to even report the size of an image over twice its own limit."""


def _header_size(path: str) -> Optional[Tuple[int, int]]:
    """(width, height) as stored in the file's header, without decoding it; None where no header could
    be read (the decoder then says what is wrong). PNG and JPEG are parsed here; other formats by
    Pillow's lazy open, which reads the header only."""
    try:
        with open(path, 'rb') as f:
            head = f.read(32)
            if head[:8] == b'\x89PNG\r\n\x1a\n':
                return _png_size(head)
            if head[:3] == b'\xff\xd8\xff':
                return _jpeg_size(f)
    except OSError:
        return None
    try:
        from PIL import Image
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # our limit decides, not Pillow's warning
            with Image.open(path) as im:
                return im.size
    except Exception as err:  # noqa: BLE001  unknown or damaged header
        if type(err).__name__ == 'DecompressionBombError':
            raise _OverPillowLimit() from None
        return None


def check_pixels(path: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, size=None) -> None:
    """Refuse `path` if its header (or `size`, (width, height), once decoded) says it has more than
    `max_pixels` pixels; None or 0 = no limit."""
    if not max_pixels:
        return
    try:
        size = size or _header_size(path)
    except _OverPillowLimit:
        from PIL import Image
        bound = 2 * Image.MAX_IMAGE_PIXELS
        if max_pixels >= bound:
            return  # the size is known, and checked again, once decoded
        size, shown = None, f'more than {bound} pixels'
    else:
        if size is None or size[0] * size[1] <= max_pixels:
            return
        shown = f'{size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.3g} megapixels)'
    allow = f'--max-pixels {size[0] * size[1]}' if size else '--max-pixels 0 (no limit)'
    raise UserError(f'{path}: {shown} is over the limit of {max_pixels / 1e6:g} megapixels, a guard against '
                    f'decompression bombs; pass {allow} to allow it')


def check_output_extension(ext: str) -> str:
    """`ext` (as :func:`output_extension` returns it) if we can write it, else a UserError."""
    if ext not in IMAGE_EXTENSIONS:
        known = ', '.join(e[1:] for e in IMAGE_EXTENSIONS)
        raise UserError(f'cannot write {ext or "extension-less"} images; the output format (--ext) must be one '
                        f'of {known}')
    return ext


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


def read_image(path: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read `path` as uint8/uint16 L, LA, RGB or RGBA, upright. A file that is missing, not an image,
    corrupt, or larger than `max_pixels` (read from its header, before decoding; None = no limit) raises
    a :class:`UserError` naming it."""
    if not os.path.isfile(path):
        raise UserError(f'input image {path} does not exist')
    check_pixels(path, max_pixels)
    # imread cannot open non-ASCII paths on some platforms; decoding the bytes always works.
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UserError(f'cannot read {path}: {err.strerror or err}') from None
    image = decode(data)
    del data
    if image is None:
        raise UserError(f'cannot decode {path}: not an image, or the file is corrupt or truncated')
    # A header Pillow would not size (over twice its own limit) is checked now that the size is known.
    check_pixels(path, max_pixels, size=(image.shape[1], image.shape[0]))
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
        bgr = np.ascontiguousarray(bgr)
        if os.name != 'nt' or tmp.isascii():
            # Straight to the file: encoding into memory first held the whole encoded image twice more
            # (OpenCV's growing buffer, then its numpy copy), the largest part of an upscale's peak memory.
            with _quiet_stderr():  # libpng's own line on a write error (a full disk): ours says it
                ok = cv2.imwrite(tmp, bgr, params)
            if not ok:
                raise UserError(f'cannot write {path} as {ext} (is the disk full?)')
        else:  # imwrite cannot open non-ASCII paths on Windows
            ok, encoded = cv2.imencode(ext, bgr, params)
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
