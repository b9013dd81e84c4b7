"""`msrasr prepare` and the built-in dataset: what they write is what BasicSR reads, pixel for pixel."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import msrasr_arch  # noqa: F401  (torchvision shim before basicsr)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.matlab_functions import imresize

from msrasr_cli.main import main as msrasr_main
from msrasr_arch.data.bicubic import mod_crop
from msrasr_arch.data.builtin import TEST_PHOTOS, TRAIN_PHOTOS, build_builtin_dataset, load_photo
from msrasr_arch.data.prepare import prepare_benchmark_set, prepare_train_set
from msrasr_arch.data.prepare_staging import STAGING_PREFIX
from msrasr_arch.data.subimages import crop_positions
from msrasr_arch.utils.errors import UserError

CROP, STEP, SCALES = 48, 24, (2, 3)


@pytest.fixture(scope='module')
def hr_dir(tmp_path_factory):
    """Two natural-image HR files whose sizes are not multiples of 12, one a JPEG."""
    folder = tmp_path_factory.mktemp('hr')
    photo = load_photo('astronaut')[:, :, ::-1]  # BGR, as cv2 writes
    cv2.imwrite(str(folder / 'a.png'), photo[100:201, 150:280])  # 101 x 130
    cv2.imwrite(str(folder / 'b.jpg'), photo[300:362, 200:275])  # 62 x 75
    return folder


def _source(hr_dir, stem):
    """What prepare reads: the source image as BasicSR decodes it, mod-cropped to lcm(12, scales)."""
    path = next(p for p in hr_dir.iterdir() if p.stem == stem)
    return mod_crop(cv2.imread(str(path), cv2.IMREAD_COLOR), 12)


def _matlab_lr(img, scale):
    """Independent reference: BasicSR's MATLAB imresize on the whole image, rounded as MATLAB does."""
    return np.clip(np.round(imresize(img / 255., 1 / scale) * 255.), 0, 255).astype(np.uint8)


def _to_bgr_uint8(tensor):
    # Values are k/255 in float32, so *255 and rounding recovers them exactly.
    return np.round(tensor.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255.).astype(np.uint8)


def _dataset(gt, lq, scale, backend, tmpl='{}'):
    return PairedImageDataset({'dataroot_gt': gt, 'dataroot_lq': lq, 'io_backend': {'type': backend},
                               'filename_tmpl': tmpl, 'phase': 'val', 'scale': scale})


def _box(key):
    """(stem, y, x) of sub-image `key` from the DIV2K rule, recomputed here."""
    return key.rsplit('_s', 1)[0], int(key.rsplit('_s', 1)[1])


def _expected_crops(hr_dir, key, scale):
    stem, index = _box(key)
    src = _source(hr_dir, stem)
    ys = crop_positions(src.shape[0], CROP, STEP)
    xs = crop_positions(src.shape[1], CROP, STEP)
    y, x = [(y, x) for y in ys for x in xs][index - 1]
    lr = _matlab_lr(src, scale)
    c = CROP // scale
    return src[y:y + CROP, x:x + CROP], lr[y // scale:y // scale + c, x // scale:x // scale + c]


@pytest.fixture(scope='module')
def train_set(hr_dir, tmp_path_factory):
    return prepare_train_set(hr_dir, tmp_path_factory.mktemp('out') / 'DIV2K', scales=SCALES, crop_size=CROP,
                             step=STEP)


def test_crop_positions_follow_basicsr_rule():
    assert crop_positions(96, 48, 24) == [0, 24, 48]
    assert crop_positions(100, 48, 24) == [0, 24, 48, 52]  # flush-edge crop added
    assert crop_positions(100, 48, 24, thresh_size=4) == [0, 24, 48]
    assert crop_positions(40, 48, 24) == []


def test_lmdb_round_trip_through_paired_image_dataset(hr_dir, train_set):
    # 96x120 (a, mod 12) -> 3x4 crops; 60x72 (b) -> 2x2 crops
    assert train_set['images'] == 2 and train_set['subimages'] == 16
    for scale in SCALES:
        ds = _dataset(train_set['gt_lmdb'], train_set['lq_lmdb'][scale], scale, 'lmdb')
        assert len(ds) == 16
        for i in range(len(ds)):
            item = ds[i]
            key = item['gt_path']
            gt, lq = _expected_crops(hr_dir, key, scale)
            np.testing.assert_array_equal(_to_bgr_uint8(item['gt']), gt, err_msg=key)
            np.testing.assert_array_equal(_to_bgr_uint8(item['lq']), lq, err_msg=key)
            # and the LMDB holds exactly the PNG files of the disk layout
            disk = cv2.imread(os.path.join(train_set['lq'][scale], key + '.png'))
            np.testing.assert_array_equal(_to_bgr_uint8(item['lq']), disk, err_msg=key)
    with open(os.path.join(train_set['gt_lmdb'], 'meta_info.txt')) as f:
        assert f.readline().strip() == 'a_s001.png (48,48,3) 1'


def test_disk_layout_through_paired_image_dataset(train_set):
    ds = _dataset(train_set['gt'], train_set['lq'][3], 3, 'disk', tmpl=train_set['filename_tmpl'][3])
    assert len(ds) == 16
    item = ds[5]
    assert item['gt'].shape == (3, CROP, CROP) and item['lq'].shape == (3, CROP // 3, CROP // 3)
    assert os.path.basename(item['gt_path']) == os.path.basename(item['lq_path'])


def test_benchmark_layout_is_matlab_bicubic_of_mod_cropped_hr(hr_dir, tmp_path):
    out = prepare_benchmark_set(hr_dir, tmp_path / 'Set2', scales=(2, 3))
    assert sorted(os.listdir(out['lq'][3])) == ['ax3.png', 'bx3.png']
    for scale in (2, 3):
        ds = _dataset(out['gt'], out['lq'][scale], scale, 'disk', tmpl=out['filename_tmpl'][scale])
        item = ds[0]  # a.png: 101 x 130
        src = cv2.imread(str(hr_dir / 'a.png'))
        np.testing.assert_array_equal(_to_bgr_uint8(item['gt']), mod_crop(src, scale))
        np.testing.assert_array_equal(_to_bgr_uint8(item['lq']), _matlab_lr(mod_crop(src, scale), scale))


def test_benchmark_with_hr_already_in_place_writes_only_lr(hr_dir, tmp_path):
    (tmp_path / 'HR').mkdir()
    (tmp_path / 'HR' / 'a.png').write_bytes((hr_dir / 'a.png').read_bytes())
    out = prepare_benchmark_set(tmp_path / 'HR', tmp_path, scales=(2,))
    assert sorted(os.listdir(tmp_path)) == ['HR', 'LR_bicubic']
    assert os.listdir(out['gt']) == ['a.png'] and os.listdir(out['lq'][2]) == ['ax2.png']


def test_refuses_to_overwrite_unless_asked(hr_dir, tmp_path):
    kwargs = dict(scales=(2,), crop_size=CROP, step=STEP)
    first = prepare_train_set(hr_dir, tmp_path, **kwargs)
    marker = os.path.join(first['gt'], 'marker.txt')
    open(marker, 'w').close()
    with pytest.raises(UserError, match='DIV2K_train_HR_sub already exists; pass --overwrite'):
        prepare_train_set(hr_dir, tmp_path, **kwargs)
    assert os.path.exists(marker)
    # adding a scale later: HR is replaced, the existing X2_sub stays beside the new X3_sub
    prepare_train_set(hr_dir, tmp_path, overwrite=True, **{**kwargs, 'scales': (3,)})
    assert not os.path.exists(marker)
    assert sorted(os.listdir(tmp_path / 'DIV2K_train_LR_bicubic')) == ['X2_sub', 'X3_sub']
    assert not [n for n in os.listdir(tmp_path) if n.startswith(STAGING_PREFIX)]


@pytest.fixture
def hr_with_corrupt_image(hr_dir, tmp_path):
    folder = tmp_path / 'hr_bad'
    folder.mkdir()
    for p in hr_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    # sorted last, so good images have been written to the staging area when it fails
    (folder / 'zz_broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(200)))
    return folder


def test_corrupt_image_names_the_file_and_leaves_nothing(hr_with_corrupt_image, tmp_path):
    out = tmp_path / 'existing_out'
    out.mkdir()
    with pytest.raises(UserError, match=r'zz_broken\.png: corrupt'):
        prepare_train_set(hr_with_corrupt_image, out, scales=(2,), crop_size=CROP, step=STEP)
    assert os.listdir(out) == []
    with pytest.raises(UserError, match=r'zz_broken\.png: corrupt'):
        prepare_benchmark_set(hr_with_corrupt_image, tmp_path / 'new_out', scales=(2,))
    assert not (tmp_path / 'new_out').exists()


def test_cli_reports_one_line_and_exit_code_2(hr_with_corrupt_image, tmp_path):
    out = tmp_path / 'cli_out'
    proc = subprocess.run([sys.executable, '-m', 'msrasr_cli', 'prepare', '--hr', str(hr_with_corrupt_image),
                           '--out', str(out), '--scales', '2', '--crop-size', '48', '--step', '24'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('msrasr prepare: error: cannot read image ') and 'zz_broken.png' in lines[0]
    assert not out.exists()


@pytest.mark.parametrize('make, message', [
    (lambda d: d / 'missing', 'HR folder not found'),
    (lambda d: d, 'no images'),
])
def test_cli_missing_or_empty_folder(tmp_path, capsys, make, message):
    code = msrasr_main(['prepare', '--hr', str(make(tmp_path)), '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_cli_prepares_benchmark_set(hr_dir, tmp_path, capsys):
    assert msrasr_main(['prepare', '--benchmark', '--hr', str(hr_dir), '--out', str(tmp_path), '--scales', '4']) == 0
    assert "filename_tmpl: '{}x4'" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / 'LR_bicubic' / 'X4')) == ['ax4.png', 'bx4.png']


def test_builtin_dataset_builds_and_reads(tmp_path):
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    paths = build_builtin_dataset(tmp_path / 'builtin', scales=(2,))
    train, test = paths['train'], paths['test']
    assert sorted(os.listdir(paths['test_photos'])) == sorted(f'{n}.png' for n in TEST_PHOTOS)
    ds = _dataset(train['gt_lmdb'], train['lq_lmdb'][2], 2, 'lmdb')
    assert len(ds) == train['subimages'] > 100
    assert ds[0]['gt'].shape == (3, 192, 192) and ds[0]['lq'].shape == (3, 96, 96)
    ds = _dataset(test['gt'], test['lq'][2], 2, 'disk', tmpl=test['filename_tmpl'][2])
    assert len(ds) == len(TEST_PHOTOS)
