"""Peak host memory of `msrasr upscale` on the CPU: a 6000x4000 photo against a 256x256 one, same tile.

    python benchmarks/upscale_memory.py                  # tiny network (embed_dim 12, one group of 2 blocks)
    python benchmarks/upscale_memory.py --net light_x2   # the paper's light x2 network (slow on a CPU)

Each upscale runs as the real command (`python -m msrasr_cli upscale ... --device cpu`) in its own
process, and its peak RSS is read from the kernel when it exits (os.wait4), so it counts everything: the
interpreter, torch, the network, the decoded input, the output and the PNG encoder. With tiles, memory
should grow with the tile and the output, not with a float copy of the image: the difference between the
two runs is mostly the uint8 output (6000x4000 x2 = 288 MB) and its encoding. The weights are random:
memory and the number of tiles do not depend on them. The photo is a smooth image with mild noise, so
that its PNG is about as large as a real photo's.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

TINY = dict(type='MSRASR', upscale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4,
            mlp_ratio=2)


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def make_weights(folder: str, net: str) -> str:
    import torch

    import msrasr_arch  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    from msrasr_arch.archs.presets import get_preset

    options = dict(TINY) if net == 'tiny' else get_preset(net)
    kind = options.pop('type')
    torch.manual_seed(0)
    model = ARCH_REGISTRY.get(kind)(**options).eval()
    path = os.path.join(folder, f'{net}.pth')
    torch.save({'params': model.state_dict()}, path)
    return path


def make_photo(path: str, width: int, height: int) -> None:
    from skimage import data
    base = cv2.resize(data.astronaut()[:, :, ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).normal(0, 3, base.shape)
    cv2.imwrite(path, np.clip(base + noise, 0, 255).astype(np.uint8))


# Measures its child from a fresh, small process: Linux charges a child's peak RSS with the peak of the
# process that spawned it (vfork shares its memory until exec), and this script's own peak, with the photo
# it made, would otherwise be counted as the upscale's.
_WRAPPER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss(cmd, env) -> tuple:
    """(peak RSS in bytes, seconds) of `cmd` run to completion; exits if it fails."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would block the child
        start = time.perf_counter()
        done = subprocess.run([sys.executable, '-c', _WRAPPER, *cmd], env=env, stdout=subprocess.PIPE,
                              stderr=log, text=True)
        seconds = time.perf_counter() - start
        code, maxrss = map(int, done.stdout.split()[-2:])
        if code != 0:
            log.seek(0)
            sys.exit(f'{" ".join(cmd)} failed ({code}):\n{log.read().decode(errors="replace")}')
    return maxrss * 1024, seconds  # Linux reports kilobytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--net', default='tiny', help='tiny, or a preset name such as light_x2 (default tiny)')
    parser.add_argument('--tile', type=int, default=384)
    parser.add_argument('--size', type=int, nargs=2, default=[6000, 4000], metavar=('W', 'H'))
    parser.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS of the runs (default: all)')
    args = parser.parse_args()

    env = dict(os.environ)
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(tmp, args.net)
        rows = []
        for name, (w, h) in (('small', (256, 256)), ('large', tuple(args.size))):
            src = os.path.join(tmp, f'{name}.png')
            make_photo(src, w, h)
            cmd = [sys.executable, '-m', 'msrasr_cli', 'upscale', '-i', src, '-o', os.path.join(tmp, 'out'),
                   '--weights', weights, '--tile', str(args.tile), '--device', 'cpu', '--quiet']
            rss, seconds = peak_rss(cmd, env)
            out = next(os.path.join(tmp, 'out', n) for n in os.listdir(os.path.join(tmp, 'out'))
                       if n.startswith(f'{name}_x'))
            rows.append((f'{w}x{h}', rss, seconds, os.path.getsize(src), os.path.getsize(out)))
        print(f'msrasr upscale --tile {args.tile} --device cpu, network {args.net}; CPU: {cpu_model()} '
              f'({os.cpu_count()} cores), torch threads: {args.threads or "default"}')
        print(f'{"input":>10} {"peak RSS":>10} {"time":>8} {"input PNG":>10} {"output PNG":>11}')
        for size, rss, seconds, src_bytes, out_bytes in rows:
            print(f'{size:>10} {rss / 2**20:>7.0f} MB {seconds:>6.1f} s {src_bytes / 2**20:>7.1f} MB '
                  f'{out_bytes / 2**20:>8.1f} MB')
        print(f'difference: {(rows[1][1] - rows[0][1]) / 2**20:.0f} MB')


if __name__ == '__main__':
    main()
