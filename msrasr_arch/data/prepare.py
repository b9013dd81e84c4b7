"""Turn a folder of HR images into the dataset layouts BasicSR option files read, replacing BasicSR's
scripts (extract_subimages.py, generate_bicubic_img.m, create_lmdb.py), which pip does not install.

Training layout (`prepare_train_set`, DIV2K-style; `name` = DIV2K, DF2K, ...)::

    <out>/<name>_train_HR_sub/<stem>_s001.png ...            crop_size x crop_size HR sub-images
    <out>/<name>_train_LR_bicubic/X<s>_sub/<stem>_s001.png   the matching (crop_size/s)^2 LR crops
    <out>/<name>_train_HR_sub.lmdb                           the same, as BasicSR LMDBs
    <out>/<name>_train_LR_bicubic_X<s>_sub.lmdb              (keys = file stems, meta_info.txt)

HR is first mod-cropped to a multiple of lcm(12, scales) (a no-op on DIV2K/Flickr2K, whose sizes are
multiples of 12) so HR sub-images do not depend on which scales one run asked for. LR is the MATLAB
bicubic downscale of the whole image, then cropped, as the official DIV2K LR images are made from whole
images. LR and HR sub-images share names, so option files use `filename_tmpl: '{}'`.

Benchmark layout (`prepare_benchmark_set`, as in EDSR's benchmark.tar)::

    <out>/HR/<stem>.png
    <out>/LR_bicubic/X<s>/<stem>x<s>.png    bicubic of HR mod-cropped to a multiple of s

HR is kept whole; BasicSR's PairedImageDataset crops ground truth to LR size x s when testing. Option
files use `filename_tmpl: '{}x<s>'` (`'{}'` with `lr_suffix=False`).

Nothing appears in <out> unless the whole run succeeds (see prepare_staging)."""
import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from tqdm import tqdm

from msrasr_arch.data.bicubic import bicubic_downscale, mod_crop
from msrasr_arch.data.prepare_io import check_lmdb_key, image_stem, list_images, read_image, write_png
from msrasr_arch.data.prepare_lmdb import build_lmdb
from msrasr_arch.data.prepare_staging import Staging
from msrasr_arch.data.subimages import check_geometry, subimage_boxes, subimage_name
from msrasr_arch.utils.errors import UserError

DEFAULT_SCALES = (2, 3, 4)


def _check_scales(scales):
    scales = sorted(set(int(s) for s in scales))
    if not scales or any(s < 2 for s in scales):
        raise UserError(f'scales must be integers >= 2, got {scales}')
    return scales


def train_set_paths(out_dir, *, name='DIV2K', scales=DEFAULT_SCALES, lmdb=True):
    """Paths `prepare_train_set` writes (without writing anything): dict with 'gt', 'lq' {scale: dir},
    'gt_lmdb' (None without lmdb), 'lq_lmdb' {scale: path} and 'filename_tmpl' {scale: '{}'}."""
    out_dir = os.path.normpath(os.fspath(out_dir))
    scales = _check_scales(scales)
    return {
        'gt': os.path.join(out_dir, f'{name}_train_HR_sub'),
        'lq': {s: os.path.join(out_dir, f'{name}_train_LR_bicubic', f'X{s}_sub') for s in scales},
        'gt_lmdb': os.path.join(out_dir, f'{name}_train_HR_sub.lmdb') if lmdb else None,
        'lq_lmdb': {s: os.path.join(out_dir, f'{name}_train_LR_bicubic_X{s}_sub.lmdb') for s in scales} if lmdb else {},
        'filename_tmpl': {s: '{}' for s in scales},
    }


def benchmark_set_paths(out_dir, *, scales=DEFAULT_SCALES, lr_suffix=True):
    """Paths `prepare_benchmark_set` writes: dict with 'gt', 'lq' {scale: dir}, 'filename_tmpl'
    {scale: '{}x<s>' or '{}'}."""
    out_dir = os.path.normpath(os.fspath(out_dir))
    scales = _check_scales(scales)
    return {
        'gt': os.path.join(out_dir, 'HR'),
        'lq': {s: os.path.join(out_dir, 'LR_bicubic', f'X{s}') for s in scales},
        'filename_tmpl': {s: (f'{{}}x{s}' if lr_suffix else '{}') for s in scales},
    }


def _executor(workers):
    if workers is None or workers <= 1:
        return None
    # spawn, not fork: torch's OpenMP pool (used by imresize) is not fork-safe once the parent used it.
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context('spawn'), initializer=_init_worker)


def _init_worker():
    import torch
    torch.set_num_threads(1)  # one process per core already


def _run(executor, func, jobs, *, progress, desc):
    results = executor.map(func, jobs) if executor is not None else map(func, jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, unit='img', disable=not progress))


def _train_image(job):
    path, hr_dir, lr_dirs, crop_size, step, thresh_size, modulus = job
    img = read_image(path)
    img = mod_crop(img, modulus)
    h, w = img.shape[:2]
    boxes = subimage_boxes(h, w, crop_size, step, thresh_size)
    stem = image_stem(path)
    for index, y, x in boxes:
        write_png(os.path.join(hr_dir, subimage_name(stem, index) + '.png'), img[y:y + crop_size, x:x + crop_size])
    if boxes:
        for scale, lr_dir in lr_dirs.items():
            lr = bicubic_downscale(img, scale)
            size = crop_size // scale
            for index, y, x in boxes:
                y, x = y // scale, x // scale
                write_png(os.path.join(lr_dir, subimage_name(stem, index) + '.png'), lr[y:y + size, x:x + size])
    return len(boxes)


def prepare_train_set(hr_dir, out_dir, *, scales=DEFAULT_SCALES, name='DIV2K', crop_size=480, step=240,
                      thresh_size=0, lmdb=True, workers=1, overwrite=False, progress=False):
    """DIV2K-style training set from the images in `hr_dir` (layout in the module docstring).

    Returns `train_set_paths(...)` plus 'images' (count), 'subimages' (count per scale folder) and
    'skipped' (input paths smaller than crop_size, which yield no sub-image). Raises UserError on a
    missing/empty folder, an unreadable image, existing outputs (unless `overwrite`), or when no image
    is large enough."""
    scales = _check_scales(scales)
    check_geometry(scales=scales, crop_size=crop_size, step=step, thresh_size=thresh_size)
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise UserError(f'--name must be a plain name, got {name!r}')
    paths = list_images(hr_dir)
    if lmdb:
        for path in paths:
            check_lmdb_key(image_stem(path), path)
    final = train_set_paths(out_dir, name=name, scales=scales, lmdb=lmdb)
    folders = [final['gt'], *final['lq'].values()]
    lmdbs = [final['gt_lmdb'], *final['lq_lmdb'].values()] if lmdb else []
    rel = {p: os.path.relpath(p, out_dir) for p in folders + lmdbs}
    modulus = math.lcm(12, *scales)
    executor = _executor(workers)
    try:
        with Staging(out_dir, list(rel.values()), overwrite=overwrite, protect=[hr_dir]) as staging:
            staged = {p: staging.path(r) for p, r in rel.items()}
            for p in folders:
                os.makedirs(staged[p])
            lr_dirs = {s: staged[final['lq'][s]] for s in scales}
            jobs = [(p, staged[final['gt']], lr_dirs, crop_size, step, thresh_size, modulus) for p in paths]
            counts = _run(executor, _train_image, jobs, progress=progress, desc='sub-images')
            if not any(counts):
                raise UserError(f'no image in {hr_dir} is at least {crop_size}x{crop_size} pixels; '
                                'lower --crop-size')
            for folder, db in zip(folders, lmdbs):
                build_lmdb(staged[folder], staged[db], executor=executor, progress=progress,
                           desc=os.path.basename(db))
            staging.publish()
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return {**final, 'images': len(paths), 'subimages': sum(counts),
            'skipped': [p for p, n in zip(paths, counts) if n == 0]}


def _benchmark_image(job):
    path, hr_dir, lr_dirs, lr_suffix = job
    img = read_image(path)
    stem = image_stem(path)
    if hr_dir is not None:
        write_png(os.path.join(hr_dir, stem + '.png'), img)
    for scale, lr_dir in lr_dirs.items():
        if min(img.shape[:2]) < scale:
            raise UserError(f'{path}: image smaller than the scale {scale}')
        lr = bicubic_downscale(mod_crop(img, scale), scale)
        write_png(os.path.join(lr_dir, f'{stem}x{scale}.png' if lr_suffix else f'{stem}.png'), lr)
    return 1


def prepare_benchmark_set(hr_dir, out_dir, *, scales=DEFAULT_SCALES, lr_suffix=True, workers=1, overwrite=False,
                          progress=False):
    """Benchmark/validation set (`<out>/HR`, `<out>/LR_bicubic/X<s>`) from the images in `hr_dir`.

    When `hr_dir` already is `<out>/HR` (you have only the HR images of, say, Set14), HR is left as it
    is and only LR_bicubic is written; those HR images must then be PNGs, since BasicSR pairs files by
    name and extension. Returns `benchmark_set_paths(...)` plus 'images'."""
    scales = _check_scales(scales)
    paths = list_images(hr_dir)
    final = benchmark_set_paths(out_dir, scales=scales, lr_suffix=lr_suffix)
    hr_in_place = os.path.realpath(hr_dir) == os.path.realpath(final['gt'])
    if hr_in_place:
        other = [p for p in paths if not p.endswith('.png')]
        if other:
            raise UserError(f'{other[0]}: HR images in {final["gt"]} must be .png to pair with LR_bicubic; '
                            'prepare into another --out instead')
    targets = ([] if hr_in_place else [final['gt']]) + list(final['lq'].values())
    rel = {p: os.path.relpath(p, out_dir) for p in targets}
    executor = _executor(workers)
    try:
        with Staging(out_dir, list(rel.values()), overwrite=overwrite, protect=[hr_dir]) as staging:
            staged = {p: staging.path(r) for p, r in rel.items()}
            for p in targets:
                os.makedirs(staged[p])
            hr_dir_staged = None if hr_in_place else staged[final['gt']]
            lr_dirs = {s: staged[final['lq'][s]] for s in scales}
            jobs = [(p, hr_dir_staged, lr_dirs, lr_suffix) for p in paths]
            _run(executor, _benchmark_image, jobs, progress=progress, desc='images')
            staging.publish()
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return {**final, 'images': len(paths)}
