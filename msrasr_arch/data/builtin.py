"""A tiny, offline, deterministic super-resolution dataset from the photos bundled with scikit-image,
for the quick start and tests: a DIV2K-like training set and a Set5-like held-out test set.

Only photos that ship inside the scikit-image wheel are used (no pooch download). The test photos never
appear in training; the right view of `stereo_motorcycle` is left out because it nearly duplicates the
left view (a test photo)."""
import os

import numpy as np

from msrasr_arch.data.prepare import benchmark_set_paths, prepare_benchmark_set, prepare_train_set, train_set_paths
from msrasr_arch.data.prepare_io import LMDB_PNG_LEVEL, write_png
from msrasr_arch.data.prepare_staging import Staging

# name -> (skimage.data function, how to get an (h, w, 3) RGB uint8 array)
_RGB = lambda img: img  # noqa: E731
_GREY = lambda img: np.repeat(img[:, :, None], 3, axis=2)  # noqa: E731
_LEFT = lambda pair: pair[0]  # noqa: E731
PHOTOS = {
    'astronaut': ('astronaut', _RGB),  # 512x512
    'rocket': ('rocket', _RGB),  # 427x640
    'immunohistochemistry': ('immunohistochemistry', _RGB),  # 512x512
    'hubble_deep_field': ('hubble_deep_field', _RGB),  # 872x1000
    'retina': ('retina', _RGB),  # 1411x1411
    # Greyscale photos, as 3 equal channels: textures (brick, grass, gravel) teach SR more than
    # their lack of colour costs when PSNR/SSIM are measured on Y.
    'camera': ('camera', _GREY),  # 512x512
    'moon': ('moon', _GREY),
    'brick': ('brick', _GREY),
    'grass': ('grass', _GREY),
    'gravel': ('gravel', _GREY),
    'coins': ('coins', _GREY),  # 303x384
    # held out
    'chelsea': ('chelsea', _RGB),  # 300x451
    'coffee': ('coffee', _RGB),  # 400x600
    'motorcycle': ('stereo_motorcycle', _LEFT),  # 500x741
}
TRAIN_PHOTOS = ('astronaut', 'rocket', 'immunohistochemistry', 'hubble_deep_field', 'retina', 'camera', 'moon',
                'brick', 'grass', 'gravel', 'coins')
TEST_PHOTOS = ('chelsea', 'coffee', 'motorcycle')


def load_photo(name):
    """The photo `name` (a key of PHOTOS) as an RGB uint8 array (h, w, 3)."""
    import skimage.data
    func, convert = PHOTOS[name]
    img = np.ascontiguousarray(convert(getattr(skimage.data, func)()))
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (name, img.shape)
    return img


def write_builtin_photos(out_dir, *, split='train', names=None, overwrite=False):
    """Write the `split` ('train' or 'test') photos, or the given `names`, as `<out_dir>/<name>.png`
    (an all-or-nothing new folder). Returns the list of written paths, sorted."""
    if names is None:
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        names = TRAIN_PHOTOS if split == 'train' else TEST_PHOTOS
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent, leaf = os.path.split(out_dir)
    with Staging(parent, [leaf], overwrite=overwrite) as staging:
        folder = staging.path(leaf)
        os.makedirs(folder)
        for name in names:
            # RGB -> BGR for cv2; level 1: these are intermediate files, and level 3 costs seconds here.
            write_png(os.path.join(folder, f'{name}.png'), load_photo(name)[:, :, ::-1], compress_level=LMDB_PNG_LEVEL)
        staging.publish()
    return sorted(os.path.join(out_dir, f'{name}.png') for name in names)


def builtin_dataset_paths(root, *, scales=(2,), lmdb=True):
    """The paths `build_builtin_dataset(root, ...)` returns, without building anything."""
    root = os.path.abspath(os.fspath(root))
    train = train_set_paths(os.path.join(root, 'train'), name='builtin', scales=scales, lmdb=lmdb)
    test = benchmark_set_paths(os.path.join(root, 'test'), scales=scales)
    return {
        'root': root,
        'train_photos': os.path.join(root, 'photos', 'train'),
        'test_photos': os.path.join(root, 'photos', 'test'),
        'train': train,
        'test': test,
    }


def build_builtin_dataset(root, *, scales=(2,), crop_size=192, step=192, lmdb=True, overwrite=False,
                          progress=False, on_step=None):
    """Build the whole small dataset under `root` in a few seconds::

        <root>/photos/train/*.png, <root>/photos/test/*.png     the source photos
        <root>/train/builtin_train_HR_sub(.lmdb)                 DIV2K-like training set
        <root>/train/builtin_train_LR_bicubic/X<s>_sub, builtin_train_LR_bicubic_X<s>_sub.lmdb
        <root>/test/HR, <root>/test/LR_bicubic/X<s>/<stem>x<s>.png   Set5-like test set

    Returns `builtin_dataset_paths(...)` with 'train' / 'test' being what `prepare_train_set` /
    `prepare_benchmark_set` return (keys 'gt', 'lq' {scale: path}, 'gt_lmdb', 'lq_lmdb' {scale: path},
    'filename_tmpl' {scale: template}). Raises UserError if any output exists, unless `overwrite`.
    `on_step`, if given, is called with 'photos', 'train' and 'test' as each stage ends (a progress display)."""
    paths = builtin_dataset_paths(root, scales=scales, lmdb=lmdb)
    on_step = on_step or (lambda stage: None)
    write_builtin_photos(paths['train_photos'], split='train', overwrite=overwrite)
    write_builtin_photos(paths['test_photos'], split='test', overwrite=overwrite)
    on_step('photos')
    paths['train'] = prepare_train_set(paths['train_photos'], os.path.join(paths['root'], 'train'), scales=scales,
                                       name='builtin', crop_size=crop_size, step=step, lmdb=lmdb,
                                       overwrite=overwrite, progress=progress)
    on_step('train')
    paths['test'] = prepare_benchmark_set(paths['test_photos'], os.path.join(paths['root'], 'test'), scales=scales,
                                          overwrite=overwrite, progress=progress)
    on_step('test')
    return paths
