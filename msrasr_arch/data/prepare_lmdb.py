"""LMDB from a folder of PNGs, in BasicSR's format (keys = file stems, meta_info.txt lines
`<key>.png (h,w,c) <level>`), written with BasicSR's own `LmdbMaker` and `read_img_worker`.
We use those rather than `make_lmdb_from_imgs` because that one sys.exit()s, prints, and sizes the map
from the first image only (too small when images differ in size)."""
import os

from tqdm import tqdm

from msrasr_arch import _compat  # noqa: F401  (torchvision shim before basicsr)
from basicsr.utils.lmdb_util import LmdbMaker, read_img_worker

from msrasr_arch.data.prepare_io import LMDB_PNG_LEVEL, check_lmdb_key, image_stem


def _read(args):
    path, key = args
    return read_img_worker(path, key, LMDB_PNG_LEVEL)


def build_lmdb(folder, lmdb_path, *, executor=None, progress=False, desc=None):
    """Write every PNG of `folder` (sorted) into a new LMDB at `lmdb_path` (must end in .lmdb and not
    exist: build it at a temporary path, see prepare_staging). `executor` (a concurrent.futures
    executor) encodes in parallel. Returns the number of images."""
    names = sorted(n for n in os.listdir(folder) if n.endswith('.png'))
    paths = [os.path.join(folder, n) for n in names]
    keys = [image_stem(n) for n in names]
    for key, path in zip(keys, paths):
        check_lmdb_key(key, path)
    # The map is a ceiling, not an allocation on Linux, but Windows/macOS reserve it on disk: size it
    # from the data (PNG at level 1 is rarely larger than the files at level 3, x2 plus slack).
    map_size = 2 * sum(os.path.getsize(p) for p in paths) + (64 << 20)
    maker = LmdbMaker(os.fspath(lmdb_path), map_size=map_size, compress_level=LMDB_PNG_LEVEL)
    try:
        jobs = list(zip(paths, keys))
        results = executor.map(_read, jobs, chunksize=16) if executor is not None else map(_read, jobs)
        for key, img_byte, shape in tqdm(results, total=len(jobs), desc=desc, unit='img', disable=not progress):
            maker.put(img_byte, key, shape)
    finally:
        maker.close()
    return len(keys)
