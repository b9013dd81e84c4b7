"""BSRGAN degradation and BSRGANDataset: pair sizes/range, seeding, op order (instrumented), small images."""
import logging

import cv2
import numpy as np
import pytest
import torch

from msrasr_arch.data import bsrgan_degradation as deg
from msrasr_arch.data.bsrgan_dataset import BSRGANDataset
from msrasr_arch.utils.errors import UserError


def _write_photos(folder, size=(72, 80)):
    """Three small RGB photos from scikit-image, written as PNG (BGR on disk, as cv2 expects)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ('astronaut', 'coffee', 'chelsea'):
        img = cv2.resize(getattr(data, name)()[:, :, ::-1], size[::-1], interpolation=cv2.INTER_AREA)
        path = folder / f'{name}.png'
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


@pytest.fixture(scope='module')
def hq_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('bsrgan') / 'hq'
    _write_photos(folder)
    return folder


def _opt(root, scale=4, gt_size=64, **extra):
    opt = dict(name='t', type='BSRGANDataset', phase='train', dataroot_gt=str(root), io_backend={'type': 'disk'},
               scale=scale, gt_size=gt_size, seed=0)
    opt.update(extra)
    return opt


@pytest.mark.parametrize('degradation', ['bsrgan', 'bsrgan_plus'])
@pytest.mark.parametrize('scale', [2, 4])
def test_pair_sizes_and_range(hq_dir, scale, degradation):
    gt_size = 16 * scale
    ds = BSRGANDataset(_opt(hq_dir, scale=scale, gt_size=gt_size, degradation=degradation, use_sharp=True))
    assert len(ds) == 3
    for index in range(len(ds)):
        item = ds[index]
        assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path'}
        assert item['lq'].shape == (3, 16, 16) and item['gt'].shape == (3, gt_size, gt_size)
        for key in ('lq', 'gt'):
            assert item[key].dtype == torch.float32
            assert 0.0 <= item[key].min() and item[key].max() <= 1.0
        assert item['gt_path'].endswith('.png')


def test_same_seed_same_pair_different_seed_different_pair(hq_dir):
    a, b, c = (BSRGANDataset(_opt(hq_dir, seed=s)) for s in (7, 7, 8))
    first_a, first_b, first_c = a[1], b[1], c[1]
    assert torch.equal(first_a['lq'], first_b['lq']) and torch.equal(first_a['gt'], first_b['gt'])
    assert not torch.equal(first_a['lq'], first_c['lq'])
    # a second visit of the same index (next epoch) is degraded anew, reproducibly
    second_a, second_b = a[1], b[1]
    assert not torch.equal(first_a['lq'], second_a['lq'])
    assert torch.equal(second_a['lq'], second_b['lq'])


def test_dataloader_workers_reproducible(hq_dir):
    """In a worker the stream comes from the worker's torch seed, which follows torch.manual_seed."""

    def first_batch(seed):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(BSRGANDataset(_opt(hq_dir)), batch_size=3, num_workers=1)
        return next(iter(loader))['lq']

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def _instrument(monkeypatch):
    """Wrap the module-level op functions the pipelines call, recording (name, input, output) in call order."""
    calls = []
    for name in ('add_blur', 'downsample_random', 'downsample_exact', 'add_gaussian_noise', 'add_jpeg', 'add_resize',
                 'add_poisson_noise', 'add_speckle_noise', 'random_crop_pair'):
        original = getattr(deg, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            calls.append((_name, args[0], out))
            return out

        monkeypatch.setattr(deg, name, wrapper)
    return calls


@pytest.mark.parametrize('sf', [2, 4])
def test_bsrgan_downsample2_before_3_and_final_jpeg_always(monkeypatch, sf):
    calls = _instrument(monkeypatch)
    img = np.random.default_rng(0).random((24 * sf, 24 * sf, 3), dtype=np.float32)
    seen_orders = set()
    for seed in range(150):
        calls.clear()
        trace = []
        lq, hq = deg.degradation_bsrgan(img, sf, 8, np.random.default_rng(seed), trace=trace)
        names = [name for name, _, _ in calls]
        assert names.count('downsample_random') == 1 and names.count('downsample_exact') == 1
        assert names.index('downsample_random') < names.index('downsample_exact')
        # the last op before the crop is a JPEG round trip, and the crop works on its output
        assert names[-1] == 'random_crop_pair' and names[-2] == 'add_jpeg'
        assert calls[-1][1] is calls[-2][2]
        assert np.allclose(lq * 255, np.round(lq * 255), atol=1e-4)  # JPEG output is 8-bit
        assert lq.shape == (8, 8, 3) and hq.shape == (8 * sf, 8 * sf, 3)
        # the recorded trace tells the same story
        traced = [name for name, _ in trace]
        assert traced[-2:] == ['final_jpeg', 'crop']
        assert traced.index('downsample2') < traced.index('downsample3')
        seen_orders.add(tuple(n for n in names if n in ('add_blur', 'downsample_random', 'add_gaussian_noise')))
    assert len(seen_orders) > 10  # the order really is shuffled


def test_bsrgan_plus_final_jpeg_always(monkeypatch):
    calls = _instrument(monkeypatch)
    img = np.random.default_rng(1).random((64, 64, 3), dtype=np.float32)
    for seed in range(60):
        calls.clear()
        lq, hq = deg.degradation_bsrgan_plus(img, 4, 8, np.random.default_rng(seed), shuffle_prob=0.5, use_sharp=False)
        names = [name for name, _, _ in calls]
        assert names[-2:] == ['add_jpeg', 'random_crop_pair']
        assert names.count('add_blur') == 2 and names.count('add_resize') == 2
        assert lq.shape == (8, 8, 3) and hq.shape == (32, 32, 3)
        assert np.allclose(lq * 255, np.round(lq * 255), atol=1e-4)


def test_shifted_kernel_moves_the_centre():
    k = deg.isotropic_gaussian_kernel(25, 2.0)
    shifted = deg.shift_kernel(k, 3)  # (3 - 1) / 2 = 1 pixel towards the upper left
    assert np.unravel_index(shifted.argmax(), shifted.shape) == (11, 11)
    assert np.allclose(shifted[:-1, :-1], k[1:, 1:])


def test_degradation_rejects_small_image():
    with pytest.raises(ValueError, match='smaller than the HQ patch'):
        deg.degradation_bsrgan(np.zeros((30, 40, 3), np.float32), 4, 8, np.random.default_rng(0))


def _small_and_large(tmp_path):
    folder = tmp_path / 'mixed'
    _write_photos(folder)
    small = folder / 'b_small.png'
    cv2.imwrite(str(small), np.full((40, 50, 3), 128, np.uint8))
    return folder, small


def test_small_image_error_names_the_file(tmp_path):
    folder, small = _small_and_large(tmp_path)
    ds = BSRGANDataset(_opt(folder))
    index = ds.paths.index(str(small))
    with pytest.raises(UserError, match=f'{small}.*40x50.*gt_size 64'):
        ds[index]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_small_image_skip_warns_and_uses_another(tmp_path):
    folder, small = _small_and_large(tmp_path)
    ds = BSRGANDataset(_opt(folder, small_image='skip'))
    index = ds.paths.index(str(small))
    records = _Records()
    logger = logging.getLogger('basicsr')  # BasicSR's root logger does not propagate, so listen on it
    logger.addHandler(records)
    try:
        item = ds[index]
        ds[index]
    finally:
        logger.removeHandler(records)
    assert item['gt_path'] != str(small) and item['gt'].shape == (3, 64, 64)
    assert len([m for m in records.messages if str(small) in m]) == 1  # once per file


def test_only_small_images_is_an_error_even_with_skip(tmp_path):
    folder = tmp_path / 'tiny'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(UserError, match='no image in dataroot_gt'):
        BSRGANDataset(_opt(folder, small_image='skip'))[0]


def test_lmdb_backend_and_option_errors(tmp_path):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    folder = tmp_path / 'hq'
    paths = _write_photos(folder)
    lmdb_root = tmp_path / 'hq.lmdb'
    make_lmdb_from_imgs(str(folder), str(lmdb_root), [p.name for p in paths], [p.stem for p in paths])
    ds = BSRGANDataset(_opt(lmdb_root, io_backend={'type': 'lmdb'}))
    disk = BSRGANDataset(_opt(folder))
    assert sorted(ds.paths) == sorted(p.stem for p in paths)
    i_lmdb, i_disk = ds.paths.index('coffee'), disk.paths.index(str(folder / 'coffee.png'))
    # PNG in the LMDB: same pixels, so the same seed/index/visit gives the same pair
    ds.paths, ds.keys = [ds.paths[i_lmdb]], [ds.keys[i_lmdb]]
    disk.paths, disk.keys = [disk.paths[i_disk]], [disk.keys[i_disk]]
    assert torch.equal(ds[0]['lq'], disk[0]['lq'])

    with pytest.raises(UserError, match='multiple of scale'):
        BSRGANDataset(_opt(folder, gt_size=30))
    with pytest.raises(UserError, match="degradation 'bsrgan3'"):
        BSRGANDataset(_opt(folder, degradation='bsrgan3'))
    with pytest.raises(UserError, match="missing key 'gt_size'"):
        opt = _opt(folder)
        del opt['gt_size']
        BSRGANDataset(opt)
    with pytest.raises(UserError, match='no such folder'):
        BSRGANDataset(_opt(tmp_path / 'nope'))
