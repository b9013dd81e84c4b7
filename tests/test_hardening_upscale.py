"""Hostile input to `msrasr upscale`, `export` and `prepare`: memory bounded by the tile, decompression
bombs, one-line errors, colliding or escaping output names, leftovers of killed runs, all-or-nothing
publishing of `prepare` (CPU, tiny networks and images)."""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

import msrasr_arch  # noqa: F401  (shim + registration before basicsr)
from msrasr_arch.archs import MSRASR
from msrasr_arch.archs.size_requirement import SizeRequirement
from msrasr_arch.inference import Upscaler, read_image, write_image
from msrasr_arch.utils.checkpoint import load_checkpoint
from msrasr_arch.utils.errors import UserError
from msrasr_cli.main import main

TINY = dict(embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4)


class Nearest(torch.nn.Module):
    """A pointwise x2 'network': tiling it must reproduce the untiled output exactly."""
    upscale, in_chans = 2, 3
    size_requirement = SizeRequirement(multiple=8, minimum=1)  # tiles on an 8-pixel grid, as a window-8 net

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode='nearest')


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('w') / 'tiny.pth'
    torch.save({'params': MSRASR(**TINY).eval().state_dict()}, path)
    return path


def _photo(h=21, w=27, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _upscale(capfd, *args):
    code = main(['upscale', *map(str, args), '--quiet'])
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def _one_line_error(code, lines, needle, prog='msrasr upscale'):
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f'{prog}: error:'), lines
    assert needle in lines[0], lines


# --- 1. streaming: memory set by the tile, not the image; a pixel limit read from the header -----------

def test_streamed_tiles_reproduce_a_pointwise_network_exactly():
    rng = np.random.default_rng(0)
    up = Upscaler(Nearest(), device='cpu', tile=16, tile_overlap=8)
    for image in (rng.integers(0, 256, (45, 37, 3), dtype=np.uint8),            # not on the 8-pixel grid
                  rng.integers(0, 65536, (40, 23, 2), dtype=np.uint16)):          # grey + alpha, 16 bit
        out = up.upscale(image)
        expect = image.repeat(2, axis=0).repeat(2, axis=1)
        assert out.dtype == image.dtype and out.shape == expect.shape
        assert np.array_equal(out[..., 0], expect[..., 0])
        # alpha is bicubic, computed band by band: the same as one whole-image resize
        if image.shape[2] == 2:
            alpha = image[..., 1].astype(np.float32) / 65535
            whole = np.clip(cv2.resize(alpha, (46, 80), interpolation=cv2.INTER_CUBIC), 0, 1)
            assert np.array_equal(out[..., 1], np.rint(whole * 65535).astype(np.uint16))


MEMORY_SCRIPT = textwrap.dedent('''
    import json, sys, numpy as np, torch
    from torch.nn import functional as F
    from msrasr_arch.archs.size_requirement import SizeRequirement
    from msrasr_arch.inference import Upscaler

    class Nearest(torch.nn.Module):
        upscale, in_chans = 2, 3
        size_requirement = SizeRequirement(multiple=8, minimum=1)
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode='nearest')

    def rss(field):
        with open('/proc/self/status') as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ':'))

    image = np.random.default_rng(0).integers(0, 256, (2400, 1600, 3), dtype=np.uint8)
    up = Upscaler(Nearest(), device='cpu', tile=128, tile_overlap=16)
    up.upscale(image[:300, :300])
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    base = rss('VmRSS')
    out = up.upscale(image)
    print(json.dumps({'peak': rss('VmHWM') - base, 'output': out.nbytes}))
''')


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='needs Linux peak-RSS reset')
def test_peak_memory_is_the_output_plus_a_band():
    done = subprocess.run([sys.executable, '-c', MEMORY_SCRIPT], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # The uint8 output (46 MB) and float bands of 2 x 256 output rows (~20 MB); the whole-image float
    # path needed about 8x the output.
    assert figures['peak'] < figures['output'] + 80 * 2**20, figures


def test_cli_default_pixel_limit_is_the_library_one():
    from msrasr_arch.inference.image_io import DEFAULT_MAX_PIXELS
    from msrasr_cli import upscale
    assert upscale.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS


def _png_header_only(path, width, height):
    """A PNG that claims width x height (8-bit RGB) and holds a few bytes of image data."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
                     + chunk(b'IEND', b''))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path, weights, capfd):
    bomb = _png_header_only(tmp_path / 'bomb.png', 20000, 20000)
    code, lines = _upscale(capfd, '-i', bomb, '-o', tmp_path / 'o', '--weights', weights)
    _one_line_error(code, lines, '20000x20000')
    assert '--max-pixels' in lines[0]
    # every format is checked from its header; the flag moves the limit either way
    for ext in ('.jpg', '.webp', '.bmp'):
        small = tmp_path / f'small{ext}'
        cv2.imwrite(str(small), _photo())
        code, lines = _upscale(capfd, '-i', small, '-o', tmp_path / 'o', '--weights', weights, '--max-pixels', 500)
        _one_line_error(code, lines, '27x21')
    code, lines = _upscale(capfd, '-i', tmp_path / 'small.bmp', '-o', tmp_path / 'o', '--weights', weights,
                           '--max-pixels', 567)
    assert code == 0 and read_image(str(tmp_path / 'o' / 'small_x2.bmp')).shape == (42, 54, 3)


# --- 2. one line, before any work --------------------------------------------------------------------

def test_unknown_output_format_is_refused_before_loading(tmp_path, capfd):
    src = tmp_path / 'a.png'
    write_image(str(src), _photo())
    # weights that do not exist: the format is checked first, so that is what the message names
    code, lines = _upscale(capfd, '-i', src, '-o', tmp_path / 'o', '--weights', tmp_path / 'none.pth', '--ext', 'xyz')
    _one_line_error(code, lines, '.xyz')


def test_corrupt_png_is_one_line(tmp_path, weights, capfd):
    src = tmp_path / 'a.png'
    write_image(str(src), _photo(64, 64))
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: libpng reports a CRC error on its own
    src.write_bytes(bytes(data))
    code, lines = _upscale(capfd, '-i', src, '-o', tmp_path / 'o', '--weights', weights)
    _one_line_error(code, lines, 'cannot decode')


class _NaN(Nearest):
    def forward(self, x):
        return super().forward(x) * float('nan')


def test_nan_message_fits_the_precision():
    with pytest.raises(UserError) as fp32:
        Upscaler(_NaN(), device='cpu', precision='fp32').upscale(_photo())
    assert 'fp32' in str(fp32.value) and 'use --precision fp32' not in str(fp32.value)
    with pytest.raises(UserError, match='use --precision fp32'):
        Upscaler(_NaN(), device='cpu', precision='bf16').upscale(_photo())


def test_checkpoint_with_a_flipped_byte_is_refused(tmp_path, weights):
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / 'flipped.pth'
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match='flipped.pth.*(CRC|corrupt)'):
        load_checkpoint(str(bad))


class _Code:
    def __reduce__(self):
        return (os.system, ('true',))


def test_pickle_with_code_is_refused_in_one_plain_line(tmp_path):
    path = tmp_path / 'code.pth'
    torch.save({'params': {'w': torch.zeros(1)}, 'x': _Code()}, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(str(path))
    text = str(err.value)
    assert 'carries code' in text and 'weights_only' not in text and '\n' not in text


# --- 4. collisions and escapes -----------------------------------------------------------------------

def test_colliding_output_names_are_refused_before_any_work(tmp_path, weights, capfd):
    photos = tmp_path / 'photos'
    photos.mkdir()
    write_image(str(photos / 'a.png'), _photo())
    cv2.imwrite(str(photos / 'a.jpg'), _photo())
    out = tmp_path / 'o'
    code, lines = _upscale(capfd, '-i', photos, '-o', out, '--weights', weights, '--ext', 'png')
    _one_line_error(code, lines, 'would both be written to')
    assert 'a.jpg' in lines[0] and 'a.png' in lines[0] and 'a_x<scale>.png' in lines[0]
    assert not out.exists() or not os.listdir(out)


def test_export_name_stays_inside_the_output_folder(tmp_path, weights, capfd):
    out = tmp_path / 'deep' / 'out'
    code = main(['export', '--weights', str(weights), '-o', str(out), '--name', '../../escaped', '--no-onnx'])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    _one_line_error(code, lines, '--name', prog='msrasr export')
    assert not list(tmp_path.rglob('escaped*'))


# --- 5. leftovers of killed runs ---------------------------------------------------------------------

def test_leftovers_of_killed_runs_are_removed(tmp_path, weights, capfd):
    out = tmp_path / 'o'
    out.mkdir()
    ours = [out / '.a_x2.partial-0123abcd.png', out / '.b.partial-89abcdef.safetensors']
    users = [out / '.notes.partial-mine.png', out / '.hidden.png', out / 'a.partial-0123abcd.png']
    for p in ours + users:
        p.write_bytes(b'x' * 10)
    src = tmp_path / 'a.png'
    write_image(str(src), _photo())
    code, lines = _upscale(capfd, '-i', src, '-o', out, '--weights', weights)
    assert code == 0, lines
    assert sorted(os.listdir(out)) == sorted(['a_x2.png'] + [p.name for p in users])


def test_prepare_removes_its_own_staging_leftovers(tmp_path):
    from msrasr_arch.data.prepare import prepare_benchmark_set
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'a.png'), _photo(24, 24))
    out = tmp_path / 'set'
    stale = out / '.msrasr-prepare-0123456789ab.tmp' / 'new' / 'HR'
    stale.mkdir(parents=True)
    (stale / 'a.png').write_bytes(b'x' * 100)
    user = out / '.msrasr-prepare-notes.txt'
    user.write_text('mine')
    prepare_benchmark_set(hr, out, scales=(2,))
    assert sorted(os.listdir(out)) == ['.msrasr-prepare-notes.txt', 'HR', 'LR_bicubic']


# --- 3. prepare publishes all or nothing, even when killed between renames -------------------------

KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from msrasr_arch.data.prepare import prepare_train_set
    hr, out, overwrite = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
    real = os.replace

    def replace(src, dst):
        # die right after the first output folder was published
        if os.path.dirname(os.path.abspath(dst)) == os.path.abspath(out) and '.msrasr-prepare-' in src:
            real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = replace
    prepare_train_set(hr, out, scales=(2, 3), crop_size=24, step=24, overwrite=overwrite)
''')


def _published(out):
    return sorted(n for n in os.listdir(out))


@pytest.mark.skipif(not hasattr(signal, 'SIGKILL'), reason='needs kill -9')
def test_prepare_killed_while_publishing_is_completed_by_the_next_run(tmp_path):
    from msrasr_arch.data.prepare import prepare_train_set
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'a.png'), _photo(48, 72))
    out = tmp_path / 'DIV2K'
    expected = ['DIV2K_train_HR_sub', 'DIV2K_train_HR_sub.lmdb', 'DIV2K_train_LR_bicubic',
                'DIV2K_train_LR_bicubic_X2_sub.lmdb', 'DIV2K_train_LR_bicubic_X3_sub.lmdb']
    prepare_train_set(hr, out, scales=(2, 3), crop_size=24, step=24)
    (out / 'DIV2K_train_HR_sub' / 'old.txt').write_text('from the first run')
    # --overwrite, killed when the old outputs are aside and only the first new one is in place
    done = subprocess.run([sys.executable, '-c', KILL_SCRIPT, str(hr), str(out), '1'],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == -signal.SIGKILL, done.stderr
    # The next run in that folder finishes what was killed (all or nothing) before looking at outputs.
    with pytest.raises(UserError, match='already exists'):
        prepare_train_set(hr, out, scales=(2, 3), crop_size=24, step=24)
    assert _published(out) == expected
    assert sorted(os.listdir(out / 'DIV2K_train_LR_bicubic')) == ['X2_sub', 'X3_sub']
    for folder in ('DIV2K_train_HR_sub', 'DIV2K_train_LR_bicubic/X2_sub', 'DIV2K_train_LR_bicubic/X3_sub'):
        assert len(os.listdir(out / folder)) == 6, folder  # the new set: old.txt went with the old one
