"""``msrasr quickstart``: the whole job on built-in data, on CPU, in a few minutes.

Builds a small training set and a 3-photo held-out test set from scikit-image's bundled photos
(``msrasr_arch.data.builtin``), trains the lightweight x2 MSRA-SR (the paper's layout) through BasicSR's
``train_pipeline`` for a time budget, tests it through ``test_pipeline``, and prints PSNR/SSIM (Y channel,
border 2) of the model and of bicubic upscaling on the held-out photos.

Short-budget choices (the paper's recipe is 500K iterations on GPUs): the network starts as bicubic
interpolation (``msrasr_arch.utils.bicubic_start``: its linear path set to the bicubic weights, the body's
last conv at zero; ``--from-scratch`` turns this off), LR patches of one 16x16 window in batches of 4 so
that many optimiser steps fit in the budget, Adam at 5e-4 halved at 70% and 90% of the planned
iterations, no EMA (over a few hundred steps it only lags). The iteration count is planned from a timed
warm-up; a deadline on BasicSR's data prefetcher ends training when the budget runs out, whatever the plan
said, and the pipeline then saves ``net_g_latest`` as usual.
"""
import logging
import os
import time
from contextlib import contextmanager

from msrasr_arch.utils.errors import UserError

EXP_NAME = 'quickstart_MSRASR_light_x2'
SCALE = 2
# The paper's lightweight layout (architecture.md, section 7).
LIGHT_X2 = dict(type='MSRASR', upscale=SCALE, in_chans=3, img_size=64, window_size=16, img_range=1.0,
                depths=[4, 4, 4, 4], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2.0,
                upsampler='pixelshuffledirect', resi_connection='1conv', shared_attn='pair', attn_transform_kernel=3,
                csa_dim=6, csa_scales=[1, 2, 4], ms_kernels=[1, 3, 5, 7], ca_reduction=16, deploy=False)


# --- data ---------------------------------------------------------------------------------------------
def builtin_data(root):
    from msrasr_arch.data.builtin import build_builtin_dataset, builtin_dataset_paths

    paths = builtin_dataset_paths(root, scales=(SCALE,), lmdb=True)
    needed = [paths['train']['gt_lmdb'], paths['train']['lq_lmdb'][SCALE], paths['test']['gt'], paths['test']['lq'][SCALE]]
    if all(os.path.exists(p) for p in needed):
        print(f'data: reusing {root}')
        return paths
    if os.path.exists(root):
        raise UserError(f'{root} exists but is not a complete built-in dataset; remove it or choose another --out')
    t0 = time.time()
    paths = build_builtin_dataset(root, scales=(SCALE,))
    print(f'data: built {paths["train"]["subimages"]} training sub-images from {paths["train"]["images"]} photos '
          f'and a {paths["test"]["images"]}-photo test set in {time.time() - t0:.0f} s -> {root}')
    return paths


# --- options ------------------------------------------------------------------------------------------
def train_options(paths, args, total_iter, *, name=EXP_NAME, network=None, init=None):
    milestones = [int(total_iter * 0.7), int(total_iter * 0.9)]
    return {
        'name': name, 'model_type': 'MSRASRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': {
            'name': 'builtin', 'type': 'PairedImageDataset',
            'dataroot_gt': paths['train']['gt_lmdb'], 'dataroot_lq': paths['train']['lq_lmdb'][SCALE],
            'filename_tmpl': '{}', 'io_backend': {'type': 'lmdb'},
            'gt_size': args.patch * SCALE, 'use_hflip': True, 'use_rot': True,
            'num_worker_per_gpu': 0, 'batch_size_per_gpu': args.batch, 'dataset_enlarge_ratio': 100,
            'prefetch_mode': None}},
        'network_g': dict(network or LIGHT_X2),
        'path': {'pretrain_network_g': init, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': args.ema,
            'optim_g': {'type': 'Adam', 'lr': args.lr, 'weight_decay': 0, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': milestones, 'gamma': 0.5},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'logger': {'print_freq': max(1, total_iter // 10), 'save_checkpoint_freq': 10 ** 9, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
    }


def test_options(paths, checkpoint, use_ema, *, name=EXP_NAME, network=None):
    metric = {'crop_border': SCALE, 'test_y_channel': True}
    return {
        'name': name, 'model_type': 'MSRASRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'test_1': {
            'name': 'builtin_test', 'type': 'PairedImageDataset',
            'dataroot_gt': paths['test']['gt'], 'dataroot_lq': paths['test']['lq'][SCALE],
            'filename_tmpl': paths['test']['filename_tmpl'][SCALE], 'io_backend': {'type': 'disk'}}},
        'network_g': dict(network or LIGHT_X2),
        'path': {'pretrain_network_g': checkpoint, 'param_key_g': 'params_ema' if use_ema else 'params',
                 'strict_load_g': True},
        'val': {'save_img': True, 'suffix': None, 'self_ensemble': False, 'tile': None,
                'metrics': {'psnr': dict(type='calculate_psnr', **metric), 'ssim': dict(type='calculate_ssim', **metric)}},
    }


def write_yaml(path, opt):
    import yaml

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    os.replace(tmp, path)
    return path


def bicubic_start_checkpoint(path):
    """Write the lightweight x2 network, warm-started as bicubic interpolation, as a BasicSR checkpoint
    (``path.pretrain_network_g`` then loads it through BasicSR's own machinery)."""
    import torch
    from basicsr.archs import build_network

    from msrasr_arch.utils.bicubic_start import bicubic_start

    torch.manual_seed(0)
    net = bicubic_start(build_network(dict(LIGHT_X2)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'params': net.state_dict()}, path + '.tmp')
    os.replace(path + '.tmp', path)
    return path


# --- training control ---------------------------------------------------------------------------------
def _seconds_per_iter(args):
    """Time a few training steps of the real network at the real batch/patch (after one warm-up step)."""
    import torch
    from basicsr.archs import build_network

    torch.manual_seed(0)
    net = build_network(dict(LIGHT_X2)).train()
    optim = torch.optim.Adam(net.parameters(), lr=args.lr)
    x = torch.rand(args.batch, 3, args.patch, args.patch)
    y = torch.rand(args.batch, 3, args.patch * SCALE, args.patch * SCALE)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        optim.zero_grad()
        (net(x) - y).abs().mean().backward()
        optim.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:]) * 1.15  # data loading, EMA and logging on top of the step


@contextmanager
def deadline(seconds):
    """Make BasicSR's training loop end at ``seconds`` from now: its CPU prefetcher then reports the data
    exhausted, every remaining epoch ends at once, and the pipeline saves ``net_g_latest`` as usual."""
    import basicsr.train

    original = basicsr.train.CPUPrefetcher
    stop_at = time.monotonic() + seconds

    class DeadlinePrefetcher(original):
        def next(self):
            if time.monotonic() >= stop_at:
                return None
            return super().next()

    basicsr.train.CPUPrefetcher = DeadlinePrefetcher
    try:
        yield
    finally:
        basicsr.train.CPUPrefetcher = original


class _ProgressOnly(logging.Filter):
    """Console shows BasicSR's iteration and metric lines; the full log goes to the log file."""

    def filter(self, record):
        msg = record.getMessage()
        return msg.startswith('[') and '[epoch:' in msg or msg.startswith(('Validation', 'End of training'))


def quiet_basicsr_logger(log_file):
    from basicsr.utils import get_root_logger

    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.addFilter(_ProgressOnly())
    return logger


# --- evaluation ---------------------------------------------------------------------------------------
def score(paths, sr_dir, sr_suffix):
    """Y-channel PSNR/SSIM (border 2) of the model's saved outputs and of MATLAB-bicubic upscaling."""
    import cv2
    import numpy as np
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils.matlab_functions import imresize

    rows = []
    tmpl = paths['test']['filename_tmpl'][SCALE]
    for name in sorted(os.listdir(paths['test']['gt'])):
        stem = os.path.splitext(name)[0]
        gt = cv2.imread(os.path.join(paths['test']['gt'], name), cv2.IMREAD_COLOR)
        lr_name = tmpl.format(stem)
        lr = cv2.imread(os.path.join(paths['test']['lq'][SCALE], lr_name + '.png'), cv2.IMREAD_COLOR)
        gt = gt[:lr.shape[0] * SCALE, :lr.shape[1] * SCALE]
        bic = np.clip(np.round(imresize(lr.astype(np.float32) / 255.0, SCALE) * 255), 0, 255).astype(np.uint8)
        sr = cv2.imread(os.path.join(sr_dir, f'{lr_name}_{sr_suffix}.png'), cv2.IMREAD_COLOR)
        if sr is None:
            raise UserError(f'missing model output for {name} in {sr_dir}')
        kw = dict(crop_border=SCALE, test_y_channel=True)
        rows.append((stem, calculate_psnr(sr, gt, **kw), calculate_ssim(sr, gt, **kw),
                     calculate_psnr(bic, gt, **kw), calculate_ssim(bic, gt, **kw)))
    return rows


def run(args):
    import torch

    import msrasr_arch  # noqa: F401
    from msrasr_arch.cli.basicsr_cmd import run_pipeline

    if args.minutes <= 0:
        raise UserError(f'--minutes must be positive, got {args.minutes}')
    if args.iters is not None and args.iters <= 0:
        raise UserError(f'--iters must be positive, got {args.iters}')
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    paths = builtin_data(os.path.join(out, 'datasets', 'builtin'))

    # Before anything logs through BasicSR (building a network does): its first call fixes the handlers.
    quiet_basicsr_logger(os.path.join(out, f'{EXP_NAME}.log'))
    budget = args.minutes * 60
    if args.iters is None:
        per_iter = _seconds_per_iter(args)
        total_iter = max(10, int(budget / per_iter))
        print(f'train: about {per_iter:.2f} s per iteration here -> planning {total_iter} iterations '
              f'({args.minutes:g} min, batch {args.batch}, LR patch {args.patch})')
    else:
        total_iter = args.iters
    init = None
    if not args.from_scratch:
        init = bicubic_start_checkpoint(os.path.join(out, 'init', 'bicubic_start_MSRASR_light_x2.pth'))
        print('train: warm start = the network set to compute bicubic interpolation (msrasr_arch.utils.bicubic_start)')
    train_yml = write_yaml(os.path.join(out, 'options', f'train_{EXP_NAME}.yml'),
                           train_options(paths, args, total_iter, init=init))

    t0 = time.time()
    with deadline(budget):
        run_pipeline('train', ['-opt', train_yml], root=out)
    train_s = time.time() - t0
    checkpoint = os.path.join(out, 'experiments', EXP_NAME, 'models', 'net_g_latest.pth')
    if not os.path.isfile(checkpoint):
        raise UserError(f'training ended without writing {checkpoint}; see {os.path.join(out, EXP_NAME + ".log")}')

    test_yml = write_yaml(os.path.join(out, 'options', f'test_{EXP_NAME}.yml'),
                           test_options(paths, checkpoint, use_ema=args.ema > 0))
    t0 = time.time()
    run_pipeline('test', ['-opt', test_yml], root=out)
    test_s = time.time() - t0

    sr_dir = os.path.join(out, 'results', EXP_NAME, 'visualization', 'builtin_test')
    rows = score(paths, sr_dir, EXP_NAME)
    print(f'\nx{SCALE} on the held-out photos (Y channel, {SCALE}-pixel border), after {train_s / 60:.1f} min of '
          f'training on CPU:')
    print(f'  {"photo":<12} {"MSRA-SR PSNR":>12} {"SSIM":>7} {"bicubic PSNR":>13} {"SSIM":>7}')
    for stem, p, s, bp, bs in rows:
        print(f'  {stem:<12} {p:12.2f} {s:7.4f} {bp:13.2f} {bs:7.4f}')
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(1, 5)]
    print(f'  {"mean":<12} {mean[0]:12.2f} {mean[1]:7.4f} {mean[2]:13.2f} {mean[3]:7.4f}')
    verdict = 'beats' if mean[0] > mean[2] else 'does NOT beat'
    print(f'\nMSRA-SR {verdict} bicubic by {mean[0] - mean[2]:+.2f} dB PSNR (testing took {test_s:.0f} s; '
          f'whole run {(time.time() - start) / 60:.1f} min).')
    print(f'checkpoint: {checkpoint}\nSR images:  {sr_dir}\noptions:    {train_yml}\n            {test_yml}\n'
          f'logs:       {os.path.join(out, EXP_NAME + ".log")}')
    return 0
