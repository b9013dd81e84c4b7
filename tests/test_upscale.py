"""`msrasr upscale` and its Python API: tiling accuracy and memory, image modes, CLI errors (CPU)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import msrasr_arch  # noqa: F401  (shim + registration before basicsr)
from msrasr_arch.archs import MSRASR
from msrasr_arch.inference import Upscaler, read_image, write_image
from msrasr_arch.utils.errors import UserError

TINY = dict(embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4)
SCALE = 2


def tiny_net():
    torch.manual_seed(0)
    return MSRASR(**TINY).eval()


def psnr(a, b, peak=255.0):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
    return float('inf') if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.fixture(scope='module')
def upscaler():
    return Upscaler(tiny_net(), device='cpu')


def test_tiled_output_matches_whole_image(upscaler):
    from skimage import data
    photo = data.astronaut()[100:249, 150:331]  # 149 x 181: neither side a multiple of the window
    whole = upscaler.upscale(photo)
    tiled = Upscaler(upscaler.net, device='cpu', tile=80, tile_overlap=24)
    calls = []
    out = tiled.upscale(photo, on_tile=lambda: calls.append(1))
    assert out.shape == whole.shape == (149 * SCALE, 181 * SCALE, 3)
    assert len(calls) == tiled.tile_count(149, 181) == 9
    assert psnr(out, whole) > 50


MEMORY_SCRIPT = textwrap.dedent('''
    import json, numpy as np, torch
    torch.set_num_threads(1)
    import msrasr_arch
    from msrasr_arch.archs import MSRASR
    from msrasr_arch.inference import Upscaler

    def status(field):
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ':'))

    def reset_peak():  # Linux: writing 5 resets the peak RSS (VmHWM) to the current RSS
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return status('VmRSS')

    torch.manual_seed(0)
    net = MSRASR(**{tiny})
    image = np.random.default_rng(0).integers(0, 256, ({side}, {side}, 3), dtype=np.uint8)
    peaks = {{}}
    for name, tile in (('tiled', 64), ('whole', None)):
        up = Upscaler(net, device='cpu', tile=tile, tile_overlap=16)
        up.upscale(image[:32, :32])  # warm-up: lazy initialisation must not count
        try:
            base = reset_peak()
        except OSError as err:  # some sandboxes refuse clear_refs
            print(json.dumps({{'skip': str(err)}}))
            raise SystemExit(0)
        up.upscale(image)
        peaks[name] = status('VmHWM') - base
    print(json.dumps(peaks))
''')


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='needs Linux peak-RSS reset')
def test_tiling_bounds_peak_memory():
    # A fresh process, so allocations of other tests cannot blur the peak.
    script = MEMORY_SCRIPT.format(tiny=repr(TINY), side=320)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    if 'skip' in peaks:
        pytest.skip(f'cannot reset the peak RSS here: {peaks["skip"]}')
    mb = {k: v / 2**20 for k, v in peaks.items()}
    print('peak RSS increase (MB):', mb)
    assert mb['whole'] > 100, mb  # the measurement sees the untiled activations at all
    assert mb['tiled'] < mb['whole'] / 4, mb


def _sample(mode, dtype, h=21, w=27):
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    channels = {'L': None, 'LA': 2, 'RGB': 3, 'RGBA': 4}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    return rng.integers(0, top, shape, dtype=dtype, endpoint=True)


MODES = [('L', np.uint8), ('L', np.uint16), ('LA', np.uint8), ('RGB', np.uint8), ('RGB', np.uint16),
         ('RGBA', np.uint8), ('RGBA', np.uint16)]


@pytest.mark.parametrize('mode,dtype', MODES, ids=[f'{m}{np.dtype(d).itemsize * 8}' for m, d in MODES])
def test_every_mode_round_trips(tmp_path, upscaler, mode, dtype):
    from PIL import Image
    image = _sample(mode, dtype)
    src = str(tmp_path / 'in.png')
    write_image(src, image)
    assert np.array_equal(read_image(src), image)  # lossless I/O in this mode and depth
    out = upscaler.upscale(read_image(src))
    dst = str(tmp_path / 'out.png')
    write_image(dst, out)
    back = read_image(dst)
    h, w = image.shape[:2]
    assert back.dtype == dtype and back.shape == (h * SCALE, w * SCALE) + image.shape[2:]
    if dtype == np.uint8:  # Pillow reads 8-bit modes faithfully: the file itself is in the right mode
        assert Image.open(dst).mode == mode
    if mode in ('LA', 'RGBA'):  # alpha is upscaled separately (bicubic): a constant alpha stays constant
        flat = image.copy()
        flat[..., -1] = np.iinfo(dtype).max // 3
        assert np.all(upscaler.upscale(flat)[..., -1] == np.iinfo(dtype).max // 3)


def test_existing_output_is_kept(tmp_path):
    target = tmp_path / 'a.png'
    target.write_bytes(b'keep')
    with pytest.raises(FileExistsError):
        write_image(str(target), _sample('RGB', np.uint8))
    assert target.read_bytes() == b'keep'
    write_image(str(target), _sample('RGB', np.uint8), overwrite=True)
    assert read_image(str(target)).shape == (21, 27, 3)
    assert sorted(os.listdir(tmp_path)) == ['a.png']


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image
    image = _sample('RGB', np.uint8, h=16, w=40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = str(tmp_path / 'phone.jpg')
    Image.fromarray(image).save(path, exif=exif, quality=100)
    assert read_image(path).shape == (40, 16, 3)


def test_precision_and_device_checks(upscaler):
    with pytest.raises(UserError, match='fp16 is not supported on CPU'):
        Upscaler(upscaler.net, device='cpu', precision='fp16')
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match='CUDA was asked for but is not available'):
            Upscaler(upscaler.net, device='cuda')
    image = _sample('RGB', np.uint8)
    bf16 = Upscaler(upscaler.net, device='cpu', precision='bf16').upscale(image)
    assert psnr(bf16, upscaler.upscale(image)) > 30
    ensemble = Upscaler(upscaler.net, device='cpu', self_ensemble=True, tile=24, tile_overlap=8).upscale(image)
    assert ensemble.shape == (21 * SCALE, 27 * SCALE, 3)


# --- the command line: one subprocess runs every case in turn (each interpreter start costs seconds) ---

def _cli(*args):
    return ['upscale', *args, '--quiet']


@pytest.fixture(scope='module')
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('cli')
    weights = root / 'net_g_5.pth'
    state = tiny_net().state_dict()
    torch.save({'params': state, 'params_ema': state}, weights)
    photos = root / 'photos'
    photos.mkdir()
    write_image(str(photos / 'rgb.png'), _sample('RGB', np.uint8))
    write_image(str(photos / 'grey16.png'), _sample('L', np.uint16))
    write_image(str(photos / 'la.png'), _sample('LA', np.uint8))
    write_image(str(photos / 'rgba16.png'), _sample('RGBA', np.uint16))
    write_image(str(photos / 'keep.png'), _sample('RGB', np.uint8))
    (photos / 'notes.txt').write_text('not an image')
    out = root / 'out'
    out.mkdir()
    (out / 'keep_x2.png').write_bytes(b'an earlier result')
    corrupt = root / 'corrupt.png'
    corrupt.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 64)
    x4 = root / 'x4.yml'
    x4.write_text('network_g:\n  type: MSRASR\n  upscale: 4\n' + ''.join(f'  {k}: {v}\n' for k, v in TINY.items()))
    blocker = root / 'a_file'
    blocker.write_text('')
    one = str(photos / 'rgb.png')
    w = ['--weights', str(weights)]
    cases = {
        # An error case first: nothing imported yet, so a warning at import time would show in its stderr.
        'corrupt': _cli('-i', str(corrupt), '-o', str(root / 'o1'), *w),
        'folder': _cli('-i', str(photos), '-o', str(out), *w, '--tile', '16', '--tile-overlap', '8'),
        'missing_weights': _cli('-i', one, '-o', str(root / 'o2'), '--weights', str(root / 'nope.pth')),
        'scale_flag': _cli('-i', one, '-o', str(root / 'o3'), *w, '--scale', '4'),
        'scale_opt': _cli('-i', one, '-o', str(root / 'o4'), *w, '-opt', str(x4)),
        'unwritable': _cli('-i', one, '-o', str(blocker / 'sub'), *w),
    }
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), 'cli_driver.py')],
                          input=json.dumps(list(cases.values())), capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, dict(zip(cases, json.loads(proc.stdout)))


def test_cli_folder_skips_non_images_and_keeps_modes(cli_runs):
    root, results = cli_runs
    code, _, stderr = results['folder']
    assert code == 0, stderr
    assert 'warning: skipping' in stderr and 'notes.txt: not an image file' in stderr
    assert 'keep_x2.png exists' in stderr
    out = root / 'out'
    assert (out / 'keep_x2.png').read_bytes() == b'an earlier result'
    expected = {'rgb_x2.png': ((42, 54, 3), np.uint8), 'grey16_x2.png': ((42, 54), np.uint16),
                'la_x2.png': ((42, 54, 2), np.uint8), 'rgba16_x2.png': ((42, 54, 4), np.uint16)}
    for name, (shape, dtype) in expected.items():
        image = read_image(str(out / name))
        assert image.shape == shape and image.dtype == dtype, name
    assert sorted(os.listdir(out)) == sorted(list(expected) + ['keep_x2.png'])  # no partial files


@pytest.mark.parametrize('case,message', [
    ('corrupt', 'cannot decode'),
    ('missing_weights', 'nope.pth does not exist'),
    ('scale_flag', 'x2 model, but x4 was asked'),
    ('scale_opt', 'says upscale: 4'),
    ('unwritable', 'cannot create output folder'),
])
def test_cli_errors_are_one_line(cli_runs, case, message):
    code, _, stderr = cli_runs[1][case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith('msrasr upscale: error:') and message in lines[0], stderr
