"""Kill `basicsr train` with SIGKILL at random moments, then check that `--auto_resume` still works and
that every checkpoint and training state on disk reads back.

    python benchmarks/kill_loop_train.py [--kills 10] [--seed 0] [--workdir DIR]

A tiny MSRA-SR (embed_dim 12, one stage of 2 layers) trains on 48x48 crops of scikit-image photos,
saving a checkpoint at every iteration so that many kills land inside a save. Each round starts
`basicsr train --auto_resume`, waits until the run has published a new training state, sleeps a random
0-1.5 s and kills the process group. Then a last `--auto_resume` run must finish a few more iterations
with exit status 0, every `*.pth` / `*.state` under experiments/ must load with `torch.load(...,
weights_only=True)`, and no temporary file may remain. Prints one JSON object with the figures; exit
status 1 if any check failed. POSIX only (SIGKILL). Takes about 15 s per kill on a 2-core CPU.
"""
import argparse
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'killed'


def make_data(root, scale=2, crops=12, size=48):
    import cv2
    import numpy as np
    from skimage import data

    hr_dir, lr_dir = os.path.join(root, 'HR'), os.path.join(root, f'LR_x{scale}')
    os.makedirs(hr_dir)
    os.makedirs(lr_dir)
    rng = np.random.default_rng(0)
    img = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    for k in range(crops):
        y, x = (int(v) for v in rng.integers(0, img.shape[0] - size, 2))
        hr = img[y:y + size, x:x + size]
        cv2.imwrite(os.path.join(hr_dir, f'{k:03d}.png'), hr)
        cv2.imwrite(os.path.join(lr_dir, f'{k:03d}.png'), cv2.resize(hr, (size // scale, size // scale),
                                                                      interpolation=cv2.INTER_AREA))
    return hr_dir, lr_dir


def write_options(workdir, hr_dir, lr_dir, total_iter):
    import yaml

    with open(os.path.join(REPO, 'msrasr_arch', 'options', 'train_MSRASR_x2.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt.update(name=NAME, num_gpu=0)
    opt['datasets'] = {'train': dict(opt['datasets']['train'], dataroot_gt=hr_dir, dataroot_lq=lr_dir, gt_size=32,
                                     io_backend={'type': 'disk'}, batch_size_per_gpu=2, num_worker_per_gpu=0)}
    opt.pop('val', None)
    opt['network_g'].update(embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4, mlp_ratio=2)
    opt['train']['total_iter'] = total_iter
    opt['logger'].update(save_checkpoint_freq=1, print_freq=1, use_tb_logger=False)
    path = os.path.join(workdir, 'kill.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def newest_state(workdir):
    states = glob.glob(os.path.join(workdir, 'experiments', NAME, 'training_states', '*.state'))
    iters = [int(os.path.basename(p)[:-len('.state')]) for p in states if os.path.basename(p)[:-6].isdigit()]
    return max(iters, default=0)


def temporaries(workdir):
    found = []
    for folder in glob.glob(os.path.join(workdir, 'experiments', '*', '*')):
        if os.path.isdir(folder):
            found += [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith('.')]
    return found


def basicsr(workdir, opt_path, extra=()):
    cmd = [sys.executable, '-m', 'msrasr_arch.cli.basicsr_cmd', 'train', '-opt', opt_path, '--auto_resume']
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    if extra:
        cmd += ['--force_yml'] + list(extra)
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill_loop(workdir, kills=10, seed=0, total_iter=100000, start_timeout=300.0):
    """Run the experiment in `workdir`; returns the figures (see the module docstring)."""
    rng = random.Random(seed)
    hr_dir, lr_dir = make_data(os.path.join(workdir, 'data'))
    opt_path = write_options(workdir, hr_dir, lr_dir, total_iter)
    started = time.time()
    killed_at, debris_seen = [], 0
    for _ in range(kills):
        before = newest_state(workdir)
        proc = basicsr(workdir, opt_path)
        deadline = time.time() + start_timeout
        while newest_state(workdir) <= before and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f'basicsr train exited ({proc.returncode}) before it was killed:\n'
                               f'{proc.stderr.read()[-3000:]}')
        time.sleep(rng.uniform(0.0, 1.5))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        killed_at.append(newest_state(workdir))
        debris_seen += len(temporaries(workdir))

    last = newest_state(workdir)
    final = basicsr(workdir, opt_path, [f'train:total_iter={last + 3}'])
    _, err = final.communicate(timeout=600)
    unreadable, checked = [], 0
    import torch

    for path in glob.glob(os.path.join(workdir, 'experiments', '*', '*', '*.pth')) + \
            glob.glob(os.path.join(workdir, 'experiments', '*', '*', '*.state')):
        checked += 1
        try:
            torch.load(path, map_location='cpu', weights_only=True)
        except Exception as exc:  # noqa: BLE001  any failure to read is what this counts
            unreadable.append(f'{path}: {type(exc).__name__}')
    figures = {
        'kills': kills,
        'newest_state_at_each_kill': killed_at,
        'temporary_files_seen_after_kills': debris_seen,
        'final_run_exit_status': final.returncode,
        'final_run_resumed_from': last,
        'final_newest_state': newest_state(workdir),
        'published_files_checked': checked,
        'unreadable_files': unreadable,
        'temporary_files_left': temporaries(workdir),
        'skipped_state_warnings': sum('skipping' in line for line in err.splitlines()),
        'seconds': round(time.time() - started, 1),
    }
    figures['ok'] = (final.returncode == 0 and not unreadable and not figures['temporary_files_left']
                     and figures['final_newest_state'] == last + 3)
    if final.returncode != 0:
        figures['final_run_stderr_tail'] = err[-2000:]
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kills', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workdir', help='folder to run in (default: a new temporary folder, kept)')
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix='kill_loop_')
    os.makedirs(workdir, exist_ok=True)
    figures = kill_loop(workdir, kills=args.kills, seed=args.seed)
    figures['workdir'] = workdir
    print(json.dumps(figures, indent=1))
    return 0 if figures['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
