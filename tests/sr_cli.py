"""Helpers to run the `basicsr` command on the tiny data set with a tiny network (tests only)."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = os.path.join(REPO, 'options')

# The tiny MSRA-SR the tests train: every component present, ~13K parameters.
TINY_NET = ['network_g:embed_dim=12', 'network_g:depths=[2]', 'network_g:num_heads=[2]', 'network_g:window_size=8',
            'network_g:csa_dim=4', 'network_g:mlp_ratio=2']


def basicsr(args, cwd, env=None, timeout=300):
    """Run `basicsr ARGS` in `cwd` (the console script's module, so it works without the script on PATH)."""
    cmd = [sys.executable, '-m', 'msrasr_arch.cli.basicsr_cmd'] + list(args)
    run_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    return proc.stdout + proc.stderr


def train_flags(dirs, scale=2, name='tiny_x2', total_iter=4, save_freq=2):
    return [
        f'name={name}', 'num_gpu=0', 'manual_seed=0',
        f'datasets:train:dataroot_gt={dirs["train_hr"]}', f'datasets:train:dataroot_lq={dirs["train_lr"]}',
        'datasets:train:io_backend:type=disk', f'datasets:train:gt_size={16 * scale}',
        'datasets:train:batch_size_per_gpu=2', 'datasets:train:num_worker_per_gpu=0',
        f'datasets:val:dataroot_gt={dirs["test_hr"]}', f'datasets:val:dataroot_lq={dirs["test_lr"]}',
        f'train:total_iter={total_iter}', f'logger:save_checkpoint_freq={save_freq}', 'logger:print_freq=1',
        'logger:use_tb_logger=false', f'val:val_freq={total_iter}',
    ] + TINY_NET


def eval_flags(dirs, checkpoint, name='tiny_test_x2', n_sets=5):
    flags = [f'name={name}', 'num_gpu=0', f'path:pretrain_network_g={checkpoint}']
    for i in range(1, n_sets + 1):
        flags += [f'datasets:test_{i}:dataroot_gt={dirs["test_hr"]}', f'datasets:test_{i}:dataroot_lq={dirs["test_lr"]}']
    return flags + TINY_NET
