"""Kill `msrasr upscale` and `msrasr prepare` with SIGKILL at random moments, then check that a plain
rerun succeeds, that every published file reads back whole and that nothing of ours is left behind.

    python benchmarks/kill_loop_upscale.py --kills 10        # both commands, 10 kills each
    python benchmarks/kill_loop_upscale.py --only prepare --kills 30 --seed 1

The kill moments are uniform over the duration of one uninterrupted run (measured first), so they land
in imports, in computing, in writing and in publishing alike. Upscale runs alternate with and without
--overwrite; prepare always uses --overwrite, so that every run replaces a published dataset (the
riskiest case: the old folders are moved aside before the new ones arrive). After each kill the output
folder is checked: every visible output must read back, and besides what the killed run was writing
(our hidden temporary names) nothing may be there. The rerun must then leave no hidden file at all.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

TINY = dict(embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4, mlp_ratio=2)


def cli(*args):
    return [sys.executable, '-m', 'msrasr_cli', *map(str, args)]


def timed_run(cmd, env):
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f'{" ".join(cmd)} failed ({done.returncode}):\n{done.stderr}')
    return time.perf_counter() - start


def run_and_kill(cmd, env, delay):
    """Start `cmd`, SIGKILL it after `delay` seconds; True if it was killed (not finished before)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def hidden(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith('.')) if os.path.isdir(folder) else []


def check_upscale_outputs(out, names, shape):
    from msrasr_arch.inference.image_io import read_image
    problems = []
    if not os.path.isdir(out):
        return problems
    for name in os.listdir(out):
        if name.startswith('.'):
            continue
        if name not in names:
            problems.append(f'unexpected {name}')
            continue
        try:
            image = read_image(os.path.join(out, name))
            if image.shape != shape:
                problems.append(f'{name}: shape {image.shape}')
        except Exception as err:  # noqa: BLE001  any failure to read is a finding
            problems.append(f'{name}: {err}')
    return problems


def check_dataset(out, n_subimages):
    """Problems with a prepared x2 dataset in `out` (missing outputs are fine: none may be partial)."""
    import lmdb
    problems = []
    folders = {'DIV2K_train_HR_sub': (48, 48, 3), os.path.join('DIV2K_train_LR_bicubic', 'X2_sub'): (24, 24, 3)}
    present = [f for f in folders if os.path.isdir(os.path.join(out, f))]
    lmdbs = [f for f in ('DIV2K_train_HR_sub.lmdb', 'DIV2K_train_LR_bicubic_X2_sub.lmdb')
             if os.path.isdir(os.path.join(out, f))]
    if not os.path.isdir(out):
        return problems
    publishing = [n for n in os.listdir(out) if os.path.exists(os.path.join(out, n, 'publish.json'))]
    if (present or lmdbs) and (len(present) != 2 or len(lmdbs) != 2) and not publishing:
        # (killed between two renames, the list of renames left in `publishing` lets the next run finish)
        problems.append(f'half a dataset: {present + lmdbs}')
    for folder in present:
        names = os.listdir(os.path.join(out, folder))
        if len(names) != n_subimages:
            problems.append(f'{folder}: {len(names)} files, not {n_subimages}')
        for name in names:
            image = cv2.imread(os.path.join(out, folder, name))
            if image is None or image.shape != folders[folder]:
                problems.append(f'{folder}/{name} unreadable or wrong size')
    for db in lmdbs:
        with open(os.path.join(out, db, 'meta_info.txt')) as f:
            keys = [line.split('.')[0] for line in f if line.strip()]
        env = lmdb.open(os.path.join(out, db), readonly=True, lock=False, readahead=False)
        with env.begin() as txn:
            for key in keys:
                value = txn.get(key.encode('ascii'))
                if value is None or cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR) is None:
                    problems.append(f'{db}: {key} missing or unreadable')
        env.close()
        if len(keys) != n_subimages:
            problems.append(f'{db}: {len(keys)} keys, not {n_subimages}')
    return problems


def loop(name, cmds, env, kills, rng, check, out, leftovers_ok):
    """Kill `cmds` (alternating) `kills` times; check after each kill and after a final clean rerun."""
    duration = timed_run(cmds[0], env)
    killed, findings, seen_leftovers = 0, [], 0
    for i in range(kills):
        if run_and_kill(cmds[i % len(cmds)], env, rng.uniform(0, duration)):
            killed += 1
        findings += [f'after kill {i + 1}: {p}' for p in check()]
        left = [n for n in hidden(out) if not leftovers_ok(n)]
        findings += [f'after kill {i + 1}: foreign hidden file {n}' for n in left]
        seen_leftovers += bool(hidden(out))
    rerun = timed_run(cmds[-1], env)
    findings += [f'after the rerun: {p}' for p in check()]
    findings += [f'after the rerun: leftover {n}' for n in hidden(out)]
    print(f'{name}: one run {duration:.1f} s; {killed} of {kills} runs killed before finishing; '
          f'{seen_leftovers} kills left temporary files, removed by the next run; rerun {rerun:.1f} s, '
          f'{len(findings)} problem(s)')
    for f in findings[:20]:
        print('  ' + f)
    return not findings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kills', type=int, default=10, help='kills per command (default 10)')
    parser.add_argument('--only', choices=('upscale', 'prepare'), default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        from skimage import data
        photo = data.astronaut()[:, :, ::-1]
        if args.only in (None, 'upscale'):
            import torch

            from msrasr_arch.archs import MSRASR
            torch.manual_seed(0)
            weights = os.path.join(tmp, 'tiny.pth')
            torch.save({'params': MSRASR(**TINY).eval().state_dict()}, weights)
            photos = os.path.join(tmp, 'photos')
            os.makedirs(photos)
            names = []
            for k in range(8):
                cv2.imwrite(os.path.join(photos, f'p{k}.png'), photo[k * 40:k * 40 + 96, k * 50:k * 50 + 128])
                names.append(f'p{k}_x2.png')
            out = os.path.join(tmp, 'upscaled')
            base = cli('upscale', '-i', photos, '-o', out, '--weights', weights, '--tile', 32, '--tile-overlap', 8,
                       '--quiet')
            ok &= loop('upscale', [base + ['--overwrite'], base], env, args.kills, rng,
                       lambda: check_upscale_outputs(out, names, (192, 256, 3)), out,
                       lambda n: '.partial-' in n)
        if args.only in (None, 'prepare'):
            hr = os.path.join(tmp, 'hr')
            os.makedirs(hr)
            for k in range(4):
                cv2.imwrite(os.path.join(hr, f'h{k}.png'), photo[k * 100:k * 100 + 192, k * 60:k * 60 + 240])
            out = os.path.join(tmp, 'DIV2K')
            cmd = cli('prepare', '--hr', hr, '--out', out, '--scales', 2, '--crop-size', 48, '--step', 48,
                      '--overwrite', '--quiet')
            ok &= loop('prepare', [cmd], env, args.kills, rng, lambda: check_dataset(out, 4 * 4 * 5), out,
                       lambda n: n.startswith('.msrasr-prepare-'))
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
