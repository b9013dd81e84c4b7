"""BSRGAN degradation (Zhang et al., ICCV 2021) and its BSRGAN+ variant, written anew in numpy/OpenCV.

The reference is KAIR's ``utils/utils_blindsr.py`` (``degradation_bsrgan``, ``degradation_bsrgan_plus``),
which cannot be imported on SciPy >= 1.14 (it uses ``scipy.interpolate.interp2d``). The facts followed
here are listed in ``design/degradations.md``. Differences from the reference, all deliberate:

- every random draw comes from the ``numpy.random.Generator`` passed in (never the global RNGs), so a
  dataset can make each pair reproducible;
- the mod-crop uses (height, width) in the right order (the reference swaps them);
- Gaussian widths and covariance eigenvalues are floored at a tiny positive value, because an exact zero
  draw makes the reference kernel NaN;
- mirror-mode convolution runs through ``cv2.filter2D`` (BORDER_REFLECT_101 equals SciPy's ``mirror``,
  with the kernel flipped because OpenCV correlates), which is much faster than ``ndimage.convolve``;
- the ISP-noise operation (op 6) is not implemented: the reference never runs it without an ISP model.

All functions take and return HWC RGB float32 images in [0, 1]. Pass a list as ``trace`` to record the
operations applied, in order, as ``(name, params)`` tuples; tests use it to check the op order.
"""
import cv2
import numpy as np

from basicsr.utils.img_process_util import usm_sharp
from basicsr.utils.matlab_functions import imresize as matlab_imresize

# The reference draws from {INTER_LINEAR, INTER_CUBIC, INTER_AREA} (OpenCV flags 1, 2, 3).
_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA)
_MIN_WIDTH = 1e-6  # floor for Gaussian sigma / covariance eigenvalues; an exact 0 would make NaN kernels


def _record(trace, name, **params):
    if trace is not None:
        trace.append((name, params))


def _interpolation(rng):
    return _INTERPOLATIONS[rng.integers(len(_INTERPOLATIONS))]


def _resize(img, width, height, rng):
    # cv2.resize drops a trailing channel axis of size 1; never happens for RGB, but keep shapes honest.
    return cv2.resize(img, (max(1, int(width)), max(1, int(height))), interpolation=_interpolation(rng))


def mirror_convolve(img, kernel):
    """Per-channel 2-D convolution with SciPy's ``mode='mirror'`` border (OpenCV's REFLECT_101)."""
    flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
    out = cv2.filter2D(img.astype(np.float32, copy=False), -1, flipped, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(img.shape)


# ----------------------------------------------------------------------------------------------- kernels
def isotropic_gaussian_kernel(size, sigma):
    """MATLAB ``fspecial('gaussian', size, sigma)``: normalised, tiny tails zeroed."""
    sigma = max(float(sigma), _MIN_WIDTH)
    half = (size - 1) / 2.0
    x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    k[k < np.finfo(float).eps * k.max()] = 0
    return k / k.sum()


def anisotropic_gaussian_kernel(size, theta, l1, l2):
    """Gaussian with covariance eigenvalues ``l1``, ``l2`` rotated by ``theta``, sampled on a size x size grid."""
    v = np.array([np.cos(theta), np.sin(theta)])
    eigvecs = np.array([[v[0], v[1]], [v[1], -v[0]]])
    cov = eigvecs @ np.diag([max(l1, _MIN_WIDTH), max(l2, _MIN_WIDTH)]) @ np.linalg.inv(eigvecs)
    # Same grid as the reference: the centre pixel is at offset 0 for odd sizes.
    offsets = np.arange(size) - size / 2.0 + 0.5
    cx, cy = np.meshgrid(offsets, offsets)
    pts = np.stack([cx, cy], axis=-1)
    inv = np.linalg.inv(cov)
    k = np.exp(-0.5 * np.einsum('...i,ij,...j->...', pts, inv, pts))
    return k / k.sum()


def shift_kernel(kernel, sf):
    """Move the kernel centre by (sf - 1) / 2 pixels towards the upper left, bilinearly.

    Stands in for KAIR's ``shift_pixel`` (``interp2d(..., kind='linear')`` on clipped coordinates): on a
    regular grid bilinear interpolation is separable, so two passes of ``np.interp`` give the same result.
    """
    h, w = kernel.shape
    shift = (sf - 1) * 0.5
    ys, xs = np.arange(h, dtype=float), np.arange(w, dtype=float)
    y_new, x_new = np.clip(ys + shift, 0, h - 1), np.clip(xs + shift, 0, w - 1)
    rows = np.stack([np.interp(x_new, xs, row) for row in kernel])
    return np.stack([np.interp(y_new, ys, col) for col in rows.T], axis=1)


# ------------------------------------------------------------------------------------------- operations
def add_blur(img, sf, rng, trace=None):
    """Op 0/1: anisotropic (p 0.5) or isotropic Gaussian blur, kernel size 7..25."""
    if rng.random() < 0.5:
        l1, l2 = (4.0 + sf) * rng.random(), (4.0 + sf) * rng.random()
        size = 2 * int(rng.integers(2, 12)) + 3
        theta = rng.random() * np.pi
        kernel = anisotropic_gaussian_kernel(size, theta, l1, l2)
        _record(trace, 'blur', kind='anisotropic', size=size, theta=theta, l1=l1, l2=l2)
    else:
        size = 2 * int(rng.integers(2, 12)) + 3
        sigma = (2.0 + 0.2 * sf) * rng.random()
        kernel = isotropic_gaussian_kernel(size, sigma)
        _record(trace, 'blur', kind='isotropic', size=size, sigma=sigma)
    return mirror_convolve(img, kernel)


def downsample_random(img, sf, rng, trace=None):
    """Op 2 ("downsample 2"): random-factor resize (p 0.75) or shifted-Gaussian blur + nearest subsampling."""
    if rng.random() < 0.75:
        factor = rng.uniform(1, 2 * sf)
        h, w = img.shape[:2]
        img = _resize(img, w / factor, h / factor, rng)
        _record(trace, 'downsample2', kind='resize', factor=factor)
    else:
        sigma = rng.uniform(0.1, 0.6 * sf)
        kernel = shift_kernel(isotropic_gaussian_kernel(25, sigma), sf)
        img = mirror_convolve(img, kernel / kernel.sum())[0::sf, 0::sf, ...]
        _record(trace, 'downsample2', kind='gaussian_nearest', sigma=sigma)
    return np.clip(img, 0.0, 1.0)


def downsample_exact(img, width, height, rng, trace=None):
    """Op 3 ("downsample 3"): resize to the exact LQ size."""
    _record(trace, 'downsample3', width=int(width), height=int(height))
    return np.clip(_resize(img, width, height, rng), 0.0, 1.0)


def _random_channel_covariance(rng, level):
    # |L^2 U^T D U| with a random orthogonal U (the reference takes scipy.linalg.orth of a random matrix).
    d = np.diag(rng.random(3))
    u = np.linalg.svd(rng.random((3, 3)))[0]
    return np.abs(level**2 * (u.T @ d @ u))


def _correlated_noise(rng, shape, level):
    # The absolute value can make the matrix indefinite; the reference samples it anyway (NumPy's SVD
    # method), so do the same without the warning.
    cov = _random_channel_covariance(rng, level)
    return rng.multivariate_normal(np.zeros(3), cov, shape[:2], check_valid='ignore').astype(np.float32)


def add_gaussian_noise(img, rng, trace=None, low=2, high=25):
    """Op 4: Gaussian noise, level randint(low, high)/255: colour (p 0.4), grey (p 0.4), correlated (p 0.2)."""
    level = int(rng.integers(low, high + 1))
    r = rng.random()
    if r > 0.6:
        kind = 'color'
        noise = rng.normal(0, level / 255.0, img.shape).astype(np.float32)
    elif r < 0.4:
        kind = 'gray'
        noise = rng.normal(0, level / 255.0, (*img.shape[:2], 1)).astype(np.float32)
    else:
        kind = 'correlated'  # the reference uses the fixed level `high`/255 here
        noise = _correlated_noise(rng, img.shape, high / 255.0)
    _record(trace, 'gaussian_noise', kind=kind, level=level)
    return np.clip(img + noise, 0.0, 1.0)


def add_speckle_noise(img, rng, trace=None, low=2, high=25):
    """BSRGAN+ speckle noise: like :func:`add_gaussian_noise` but multiplied by the image."""
    level = int(rng.integers(low, high + 1))
    img = np.clip(img, 0.0, 1.0)
    r = rng.random()
    if r > 0.6:
        noise = rng.normal(0, level / 255.0, img.shape).astype(np.float32)
    elif r < 0.4:
        noise = rng.normal(0, level / 255.0, (*img.shape[:2], 1)).astype(np.float32)
    else:
        noise = _correlated_noise(rng, img.shape, high / 255.0)
    _record(trace, 'speckle_noise', level=level)
    return np.clip(img + img * noise, 0.0, 1.0)


def add_poisson_noise(img, rng, trace=None):
    """BSRGAN+ Poisson noise, colour or grey (p 0.5 each), 10^U[2,4] photons per unit."""
    img = np.clip((img * 255.0).round(), 0, 255) / 255.0
    vals = 10**(2 * rng.random() + 2.0)
    if rng.random() < 0.5:
        img = rng.poisson(img * vals).astype(np.float32) / vals
        kind = 'color'
    else:
        gray = np.clip((img[..., :3] @ np.array([0.299, 0.587, 0.114]) * 255.0).round(), 0, 255) / 255.0
        noise = rng.poisson(gray * vals).astype(np.float32) / vals - gray
        img = img + noise[:, :, None]
        kind = 'gray'
    _record(trace, 'poisson_noise', kind=kind, vals=vals)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def add_jpeg(img, rng, trace=None, name='jpeg'):
    """JPEG round trip through OpenCV with an integer quality in [30, 95] (OpenCV 5 rejects floats)."""
    quality = int(rng.integers(30, 96))
    bgr = cv2.cvtColor(np.uint8((np.clip(img, 0, 1) * 255.0).round()), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode('.jpg', bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise RuntimeError(f'OpenCV could not JPEG-encode an image of shape {img.shape}')
    _record(trace, name, quality=quality)
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(np.float32) / 255.0, cv2.COLOR_BGR2RGB)


def add_resize(img, sf, rng, trace=None):
    """BSRGAN+ resize: up by U(1,2) (p 0.2), down by U(0.5/sf, 1) (p 0.7), else keep."""
    r = rng.random()
    if r > 0.8:
        factor = rng.uniform(1, 2)
    elif r < 0.7:
        factor = rng.uniform(0.5 / sf, 1)
    else:
        factor = 1.0
    h, w = img.shape[:2]
    _record(trace, 'resize', factor=factor)
    return np.clip(_resize(img, factor * w, factor * h, rng), 0.0, 1.0)


def random_crop_pair(lq, hq, sf, lq_patchsize, rng, trace=None):
    """Aligned crop: an LQ patch of ``lq_patchsize`` and the HQ patch ``lq_patchsize * sf`` under it."""
    h, w = lq.shape[:2]
    top, left = int(rng.integers(0, h - lq_patchsize + 1)), int(rng.integers(0, w - lq_patchsize + 1))
    _record(trace, 'crop', top=top, left=left)
    lq = lq[top:top + lq_patchsize, left:left + lq_patchsize, :]
    hq = hq[top * sf:(top + lq_patchsize) * sf, left * sf:(left + lq_patchsize) * sf, :]
    return lq, hq


def _mod_crop_checked(img, sf, lq_patchsize):
    h, w = img.shape[:2]
    img = img[:h - h % sf, :w - w % sf, ...]
    if img.shape[0] < lq_patchsize * sf or img.shape[1] < lq_patchsize * sf:
        raise ValueError(f'image of size {h}x{w} is smaller than the HQ patch {lq_patchsize * sf} '
                         f'(lq_patchsize {lq_patchsize} x scale {sf})')
    return img


# -------------------------------------------------------------------------------------------- pipelines
def degradation_bsrgan(img, sf, lq_patchsize, rng, trace=None):
    """BSRGAN degradation. Returns ``(lq, hq)``: LQ ``lq_patchsize`` square, HQ ``lq_patchsize * sf``.

    Args:
        img: HWC RGB float32 in [0, 1], at least ``lq_patchsize * sf`` on each side.
        sf: scale factor (2, 3 or 4 in practice).
        lq_patchsize: LQ patch size.
        rng: ``numpy.random.Generator``; the only source of randomness.
        trace: optional list; receives ``(name, params)`` for each applied op, in order.
    """
    img = _mod_crop_checked(np.asarray(img, dtype=np.float32), sf, lq_patchsize)
    hq = img.copy()
    sf_out = sf

    if sf == 4 and rng.random() < 0.25:  # "downsample 1": halve first, then degrade as x2
        if rng.random() < 0.5:
            img = _resize(img, img.shape[1] / 2, img.shape[0] / 2, rng)
            _record(trace, 'downsample1', kind='cv2')
        else:
            img = matlab_imresize(img, 1 / 2, antialiasing=True)
            _record(trace, 'downsample1', kind='matlab_bicubic')
        img = np.clip(img, 0.0, 1.0).astype(np.float32)
        sf = 2
    # Ops 0, 1, 4, 5 keep the size, so the size here is the one op 3 divides by sf.
    base_h, base_w = img.shape[:2]

    order = list(rng.permutation(7))
    i2, i3 = order.index(2), order.index(3)
    if i2 > i3:  # op 2 must come before op 3
        order[i2], order[i3] = order[i3], order[i2]

    for op in order:
        if op in (0, 1):
            img = add_blur(img, sf, rng, trace)
        elif op == 2:
            img = downsample_random(img, sf, rng, trace)
        elif op == 3:
            img = downsample_exact(img, base_w / sf, base_h / sf, rng, trace)
        elif op == 4:
            img = add_gaussian_noise(img, rng, trace)
        elif op == 5:
            if rng.random() < 0.9:
                img = add_jpeg(img, rng, trace)
        # op 6 (camera ISP noise) needs an ISP model; the reference never runs it without one.

    img = add_jpeg(img, rng, trace, name='final_jpeg')
    return random_crop_pair(img, hq, sf_out, lq_patchsize, rng, trace)


def degradation_bsrgan_plus(img, sf, lq_patchsize, rng, shuffle_prob=0.5, use_sharp=True, trace=None):
    """BSRGAN+ degradation: two copies of each stage, Poisson and speckle noise, optional full shuffle.

    Same arguments and return value as :func:`degradation_bsrgan`, plus ``shuffle_prob`` (probability of
    shuffling all 13 ops; otherwise only the noise ops within each half are shuffled) and ``use_sharp``
    (USM-sharpen the HQ image first, so the target is sharpened and the LQ is derived from it).
    """
    img = _mod_crop_checked(np.asarray(img, dtype=np.float32), sf, lq_patchsize)
    if use_sharp:
        img = usm_sharp(img)  # channel order does not matter to USM
        _record(trace, 'sharpen')
    hq = img.copy()

    if rng.random() < shuffle_prob:
        order = list(rng.permutation(13))
    else:
        order = list(range(13))
        order[2:6] = list(rng.permutation(order[2:6]))
        order[9:13] = list(rng.permutation(order[9:13]))

    for op in order:
        if op in (0, 7):
            img = add_blur(img, sf, rng, trace)
        elif op in (1, 8):
            img = add_resize(img, sf, rng, trace)
        elif op in (2, 9):
            img = add_gaussian_noise(img, rng, trace)
        elif op in (3, 10):
            if rng.random() < 0.1:
                img = add_poisson_noise(img, rng, trace)
        elif op in (4, 11):
            if rng.random() < 0.1:
                img = add_speckle_noise(img, rng, trace)
        elif op == 6:
            img = add_jpeg(img, rng, trace)
        # ops 5 and 12 (camera ISP noise) need an ISP model; not implemented, as in the reference's use.

    img = np.clip(_resize(img, hq.shape[1] / sf, hq.shape[0] / sf, rng), 0.0, 1.0)
    _record(trace, 'resize_to_lq', width=hq.shape[1] // sf, height=hq.shape[0] // sf)
    img = add_jpeg(img, rng, trace, name='final_jpeg')
    return random_crop_pair(img, hq, sf, lq_patchsize, rng, trace)
