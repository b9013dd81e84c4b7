"""Finding, reading and writing the images `msrasr prepare` handles, with one-line errors that name the
file. Images are always handled as 8-bit, 3-channel BGR arrays: that is what BasicSR's readers
(`imfrombytes(..., flag='color')`) hand to a model, so preparing anything richer would only hide a
conversion that happens at training time anyway."""
import os
from contextlib import contextmanager

import cv2
import numpy as np

from msrasr_arch.inference.image_io import decode
from msrasr_arch.utils.errors import UserError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm')
# BasicSR's extract_subimages.py writes PNG level 3; its create_lmdb.py stores PNG level 1.
SUBIMAGE_PNG_LEVEL = 3
LMDB_PNG_LEVEL = 1


def list_images(folder):
    """Sorted paths of the image files directly inside `folder` (not recursive, hidden files skipped).

    Raises UserError when the folder is missing, not a folder, holds no images, or holds two images
    with the same stem (they would collide in the output, which is always `<stem>.png`)."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise UserError(f'HR folder not found: {folder}')
    if not os.path.isdir(folder):
        raise UserError(f'HR path is not a folder: {folder}')
    paths = sorted(
        os.path.join(folder, name) for name in os.listdir(folder)
        if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(folder, name)))
    if not paths:
        raise UserError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {folder}')
    seen = {}
    for path in paths:
        stem = image_stem(path)
        if stem in seen:
            raise UserError(f'two images share the name {stem!r}: {seen[stem]} and {path}; rename one')
        seen[stem] = path
    return paths


def image_stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def check_lmdb_key(stem, path):
    """BasicSR derives LMDB keys from meta_info.txt with `line.split('.')[0]` and encodes them as ASCII,
    so a stem with a dot, a space or a non-ASCII character would silently pair the wrong images or
    crash mid-way: refuse it up front."""
    if '.' in stem or any(ch.isspace() for ch in stem) or not stem.isascii():
        raise UserError(f'{path}: name unusable as an LMDB key (needs ASCII without dots or spaces); '
                        'rename the file or pass --no-lmdb')


@contextmanager
def _quiet_opencv():
    # OpenCV logs its own WARN/ERROR lines for broken files; our UserError already says what is wrong,
    # and the CLI promises one line.
    logging = getattr(getattr(cv2, 'utils', None), 'logging', None)
    if logging is None:
        yield
        return
    old = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(old)


def read_image(path):
    """Read `path` as an 8-bit BGR array of shape (h, w, 3); grey, alpha and 16-bit inputs are
    converted the way BasicSR's own reader converts them. Raises UserError naming the file."""
    path = os.fspath(path)
    try:
        # np.fromfile + imdecode, unlike cv2.imread, also copes with non-ASCII paths on Windows.
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise UserError(f'cannot read {path}: {err.strerror or err}') from None
    if data.size == 0:
        raise UserError(f'cannot read image {path}: the file is empty')
    with _quiet_opencv():
        img = decode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f'cannot read image {path}: corrupt or not a supported image format')
    return img


def write_png(path, img, compress_level=SUBIMAGE_PNG_LEVEL):
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise UserError(f'cannot encode {path} as PNG')
    buf.tofile(os.fspath(path))
