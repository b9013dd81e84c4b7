"""`msrasr quickstart` end to end at a few iterations (a small network), and its re-run bookkeeping."""
import os
import re
import subprocess
import sys

from msrasr_arch.cli.quickstart import EXP_NAME, archive_previous

PHOTOS = ('chelsea', 'coffee', 'motorcycle')


def test_quickstart_few_iterations(tmp_path):
    out = tmp_path / 'qs'
    cmd = [sys.executable, '-m', 'msrasr_cli', 'quickstart', '--out', str(out), '--iters', '3', '--tiny']
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2')), capture_output=True,
                          text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert 'Disable distributed.' not in text
    assert 'setup' in proc.stderr and 'train' in proc.stderr  # the progress bars

    rows = {m[0]: [float(v) for v in m[1:]] for m in re.findall(
        r'^  (\w+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)$', proc.stdout, flags=re.M)}
    assert sorted(rows) == sorted(PHOTOS + ('mean',)), proc.stdout
    for name, (psnr, ssim, bic_psnr, bic_ssim) in rows.items():
        assert 25 < bic_psnr < 40 and 0.8 < bic_ssim < 1, (name, bic_psnr, bic_ssim)
        # Three warm-up steps leave the bicubic warm start where it was (full-LR Adam steps cost > 1 dB).
        assert psnr >= bic_psnr - 0.05, (name, psnr, bic_psnr)
        assert ssim >= bic_ssim - 0.002, (name, ssim, bic_ssim)

    assert re.search(r'^trained 3 iterations ', proc.stdout, flags=re.M), proc.stdout
    checkpoint = out / 'experiments' / EXP_NAME / 'models' / 'net_g_latest.pth'
    assert checkpoint.is_file()
    assert proc.stdout.rstrip().splitlines()[-1] == \
        f'next: msrasr upscale -i your_photo.png -o out/ --weights {checkpoint}'


def test_rerun_moves_previous_run_and_keeps_data(tmp_path):
    out = tmp_path
    log = out / f'{EXP_NAME}.log'
    assert archive_previous(str(out), str(log)) is None  # nothing to move
    for sub in ('experiments', 'results', os.path.join('datasets', 'builtin')):
        (out / sub / EXP_NAME).mkdir(parents=True)
        (out / sub / EXP_NAME / 'f.txt').write_text(sub)
    log.write_text('log')
    dest = archive_previous(str(out), str(log))
    assert dest is not None and dest.startswith(str(out / 'archived'))
    for sub in ('experiments', 'results'):
        assert not (out / sub / EXP_NAME).exists()
        assert (open(os.path.join(dest, sub, EXP_NAME, 'f.txt')).read()) == sub
    assert not log.exists() and os.path.isfile(os.path.join(dest, log.name))
    assert (out / 'datasets' / 'builtin' / EXP_NAME / 'f.txt').is_file()  # data stays for reuse
