"""A tiny paired SR dataset (HR + MATLAB-bicubic LR) cut from scikit-image's bundled photos, for tests.

Layout under ``root``: ``train/HR/*.png``, ``train/LR_x{s}/*.png`` (same names) and ``test/HR/<name>.png``,
``test/LR_bicubic/X{s}/<name>x{s}.png`` (the EDSR benchmark naming the option files expect).
"""
import os

import cv2
import numpy as np


def _photos():
    from skimage import data

    out = []
    for name in ('astronaut', 'coffee', 'chelsea', 'rocket'):
        img = getattr(data, name)()
        out.append((name, np.ascontiguousarray(img[..., ::-1])))  # RGB -> BGR for cv2
    return out


def make_tiny_sr_set(root, scale=2, train_crops=6, crop=48, test_size=(40, 56)):
    import msrasr_arch  # noqa: F401  (shim before basicsr)
    from basicsr.utils.matlab_functions import imresize

    dirs = {k: os.path.join(root, v) for k, v in dict(
        train_hr='train/HR', train_lr=f'train/LR_x{scale}', test_hr='test/HR', test_lr=f'test/LR_bicubic/X{scale}').items()}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = _photos()

    def write_pair(hr, hr_path, lr_path):
        cv2.imwrite(hr_path, hr)
        lr = imresize(hr.astype(np.float32) / 255.0, 1 / scale)
        cv2.imwrite(lr_path, np.clip(np.round(lr * 255), 0, 255).astype(np.uint8))

    for name, img in photos[:-1]:
        for k in range(train_crops):
            y = rng.integers(0, img.shape[0] - crop)
            x = rng.integers(0, img.shape[1] - crop)
            fn = f'{name}_{k:02d}.png'
            write_pair(img[y:y + crop, x:x + crop], os.path.join(dirs['train_hr'], fn), os.path.join(dirs['train_lr'], fn))
    # held-out photo for testing, two crops with sizes that are not multiples of the window
    name, img = photos[-1]
    h, w = test_size
    h, w = h - h % scale, w - w % scale
    for k, (y, x) in enumerate([(100, 150), (250, 200)]):
        stem = f'{name}{k}'
        write_pair(img[y:y + h, x:x + w], os.path.join(dirs['test_hr'], f'{stem}.png'),
                   os.path.join(dirs['test_lr'], f'{stem}x{scale}.png'))
    return dirs
