"""`BSRGANDataset`: HQ images degraded on the fly with the BSRGAN (or BSRGAN+) pipeline.

Options (``datasets.train`` of a BasicSR option file):
    dataroot_gt (str | list[str]): folder(s) of HQ images (searched recursively), or ``.lmdb`` folder(s)
        with ``meta_info.txt`` (with ``io_backend: {type: lmdb}``).
    meta_info (str, optional): disk backend only; a file listing image paths relative to ``dataroot_gt``
        (first whitespace-separated field of each line, as in BasicSR). Only with a single ``dataroot_gt``.
    io_backend: ``{type: disk}`` or ``{type: lmdb}``.
    scale (int): set by BasicSR from the top-level ``scale``.
    gt_size (int): HQ patch size; a multiple of ``scale``. The LQ patch is ``gt_size // scale``.
    use_hflip, use_rot (bool, default true): the 8 flips/rotations of the HQ patch (as KAIR's wrapper).
    degradation: ``bsrgan`` (default) or ``bsrgan_plus``.
    shuffle_prob (float, default 0.1), use_sharp (bool, default false): BSRGAN+ only.
    small_image: ``error`` (default) stops with the file name; ``skip`` logs a warning once per file and
        uses the next large enough image instead.
    seed (int, optional): see "Randomness".

Randomness: each sample draws from its own ``numpy.random.default_rng`` seeded with
``[seed, worker_seed, index, visit]``: ``seed`` is the option, or else ``torch.initial_seed()`` (BasicSR
sets it from ``manual_seed`` + rank); ``worker_seed`` is the DataLoader worker's torch seed (PyTorch derives
it from the main process's seeded RNG, anew each epoch) or 0 in the main process; ``visit`` counts how often
this process has served ``index``. So with the same ``manual_seed``, ``num_worker_per_gpu`` and batch size a
run sees the same pairs, every epoch sees new degradations, and the global ``random``/``np.random`` state
(which BasicSR's augmentations use) is never touched.
"""
import os.path as osp
from collections import defaultdict

import numpy as np
import torch
from torch.utils import data

from basicsr.data.data_util import paths_from_lmdb
from basicsr.utils import FileClient, get_root_logger, imfrombytes, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY

from msrasr_arch.data.bsrgan_degradation import degradation_bsrgan, degradation_bsrgan_plus
from msrasr_arch.utils.errors import UserError

DEGRADATIONS = ('bsrgan', 'bsrgan_plus')
SMALL_IMAGE_POLICIES = ('error', 'skip')
# Folders are scanned recursively (OST keeps one sub-folder per category) for these files only, so a
# meta_info.txt or README beside the images is not mistaken for one.
_EXTENSIONS = ('png', 'jpg', 'jpeg', 'bmp', 'tif', 'tiff', 'webp')
IMAGE_SUFFIXES = tuple(s for ext in _EXTENSIONS for s in (f'.{ext}', f'.{ext.upper()}'))


def augment_8way(img, mode):
    """One of the 8 flips/rotations of a square-grid image (mode 0 = identity)."""
    if mode >= 4:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, k=mode % 4))


@DATASET_REGISTRY.register()
class BSRGANDataset(data.Dataset):
    """HQ images -> (LQ, GT) pairs with the BSRGAN degradation; see the module docstring for options."""

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.scale = int(self._require('scale'))
        self.gt_size = int(self._require('gt_size'))
        if self.gt_size % self.scale:
            raise UserError(f'datasets: gt_size {self.gt_size} must be a multiple of scale {self.scale}')
        self.lq_size = self.gt_size // self.scale
        self.degradation = opt.get('degradation', 'bsrgan')
        if self.degradation not in DEGRADATIONS:
            raise UserError(f'datasets: degradation {self.degradation!r} must be one of {", ".join(DEGRADATIONS)}')
        self.small_image = opt.get('small_image', 'error')
        if self.small_image not in SMALL_IMAGE_POLICIES:
            raise UserError(f'datasets: small_image {self.small_image!r} must be one of '
                            f'{", ".join(SMALL_IMAGE_POLICIES)}')
        self.use_hflip = opt.get('use_hflip', True)
        self.use_rot = opt.get('use_rot', True)
        self.seed = opt.get('seed')

        self.io_backend_opt = dict(self._require('io_backend'))
        self.keys, self.paths = self._scan(self._require('dataroot_gt'))
        if not self.paths:
            raise UserError(f'datasets: dataroot_gt {opt["dataroot_gt"]!r} contains no images')
        self.file_client = None  # opened lazily, once per worker process
        self._visits = defaultdict(int)
        self._warned = set()

    def _require(self, key):
        if key not in self.opt:
            raise UserError(f'datasets.{self.opt.get("phase", "train")}: missing key {key!r} for BSRGANDataset')
        return self.opt[key]

    def _scan(self, roots):
        """Return (client key per image, path per image) for one or more roots."""
        roots = [osp.normpath(r) for r in ([roots] if isinstance(roots, str) else roots)]
        backend = self.io_backend_opt.get('type', 'disk')
        keys, paths = [], []
        for i, root in enumerate(roots):
            if not osp.isdir(root):
                raise UserError(f'datasets: dataroot_gt {root}: no such folder')
            key = f'gt{i}'
            if backend == 'lmdb':
                if not root.endswith('.lmdb') or not osp.isfile(osp.join(root, 'meta_info.txt')):
                    raise UserError(f'datasets: dataroot_gt {root}: an lmdb root must end in .lmdb and hold '
                                    'meta_info.txt')
                found = paths_from_lmdb(root)
            elif 'meta_info' in self.opt:
                if len(roots) > 1:
                    raise UserError('datasets: meta_info works with a single dataroot_gt folder')
                with open(self.opt['meta_info']) as fin:
                    found = [osp.join(root, line.split()[0]) for line in fin if line.strip()]
            else:
                found = sorted(scandir(root, suffix=IMAGE_SUFFIXES, recursive=True, full_path=True))
            keys += [key] * len(found)
            paths += found
        if backend == 'lmdb':
            self.io_backend_opt['db_paths'] = roots
            self.io_backend_opt['client_keys'] = [f'gt{i}' for i in range(len(roots))]
        return keys, paths

    def _rng(self, index):
        info = data.get_worker_info()
        worker_seed = info.seed if info is not None else 0
        seed = self.seed if self.seed is not None else torch.initial_seed()
        visit = self._visits[index]
        self._visits[index] += 1
        return np.random.default_rng([int(seed), int(worker_seed), int(index), visit])

    def _read(self, index):
        if self.file_client is None:
            opt = dict(self.io_backend_opt)
            self.file_client = FileClient(opt.pop('type'), **opt)
        path = self.paths[index]
        try:
            img_bytes = self.file_client.get(path, self.keys[index])
            img = imfrombytes(img_bytes, float32=True)  # BGR, HWC, [0, 1]
        except Exception as err:
            raise UserError(f'datasets: cannot read image {path}: {err}') from err
        if img is None or img.ndim != 3:
            raise UserError(f'datasets: {path} is not a colour image')
        return np.ascontiguousarray(img[:, :, ::-1]), path  # the degradation works in RGB (JPEG, noise)

    def _large_enough(self, index):
        """Return (RGB image, path) of the first image from ``index`` on that fits the patch."""
        for offset in range(len(self.paths)):
            i = (index + offset) % len(self.paths)
            img, path = self._read(i)
            h, w = img.shape[:2]
            if h >= self.gt_size and w >= self.gt_size:
                return img, path
            message = f'{path} is {h}x{w}, smaller than gt_size {self.gt_size}'
            if self.small_image == 'error':
                raise UserError(f'datasets: {message} (set small_image: skip to skip such images)')
            if path not in self._warned:
                self._warned.add(path)
                get_root_logger().warning(f'BSRGANDataset: skipping {message}')
        raise UserError(f'datasets: no image in dataroot_gt is at least {self.gt_size}x{self.gt_size}')

    def __getitem__(self, index):
        rng = self._rng(index)
        img, path = self._large_enough(index)

        h, w = img.shape[:2]
        top, left = int(rng.integers(0, h - self.gt_size + 1)), int(rng.integers(0, w - self.gt_size + 1))
        img = img[top:top + self.gt_size, left:left + self.gt_size]
        if self.use_hflip and self.use_rot:
            img = augment_8way(img, int(rng.integers(8)))
        elif self.use_hflip:
            img = augment_8way(img, 4 * int(rng.integers(2)))
        elif self.use_rot:
            img = augment_8way(img, int(rng.integers(4)))

        if self.degradation == 'bsrgan':
            lq, gt = degradation_bsrgan(img, self.scale, self.lq_size, rng)
        else:
            lq, gt = degradation_bsrgan_plus(
                img,
                self.scale,
                self.lq_size,
                rng,
                shuffle_prob=self.opt.get('shuffle_prob', 0.1),
                use_sharp=self.opt.get('use_sharp', False))

        lq, gt = img2tensor([lq, gt], bgr2rgb=False, float32=True)
        return {'lq': lq.clamp_(0, 1), 'gt': gt.clamp_(0, 1), 'lq_path': path, 'gt_path': path}

    def __len__(self):
        return len(self.paths)
