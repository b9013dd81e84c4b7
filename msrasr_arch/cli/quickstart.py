"""``msrasr quickstart``: the whole job on built-in data, on CPU, in a few minutes.

Builds a small training set and a 3-photo held-out test set from scikit-image's bundled photos
(``msrasr_arch.data.builtin``), trains the lightweight x2 MSRA-SR (the ``light_x2`` preset of
``msrasr_arch.archs.presets``) through BasicSR's ``train_pipeline`` for a fixed number of iterations, tests
it through ``test_pipeline``, and prints PSNR/SSIM (Y channel, border 2) of the model and of bicubic
upscaling on the held-out photos. The budget is iterations, not minutes, so every machine reaches the same
result, only sooner or later.

Short-budget choices (the paper's recipe is 500K iterations on GPUs): the network starts as bicubic
interpolation (``msrasr_arch.utils.bicubic_start``: its linear path set to the bicubic weights, the body's
last conv at zero; ``--from-scratch`` turns this off); LR patches of one 16x16 window in batches of 4, so
that many optimiser steps fit; Adam at 5e-4 with a linear warm-up from ~0 over the first 100 iterations
and a cosine decay to ~0; no EMA (over a few hundred steps it only lags). Without the warm-up Adam's first steps,
each as large as the learning rate whatever the gradient, move the zero-initialised conv and the bicubic
weights far at once: three iterations then cost 2.6 dB, and a short run ends below where it started.
"""
import contextlib
import io
import logging
import os
import time

from msrasr_arch.archs.presets import get_preset
from msrasr_arch.utils.errors import UserError
from msrasr_cli.quickstart import DEFAULT_ITERS  # noqa: F401  (one number, in the light front end)

EXP_NAME = 'quickstart_MSRASR_light_x2'
PRESET = 'light_x2'
SCALE = 2
LIGHT_X2 = get_preset(PRESET)
# Tests only (hidden --tiny): every component of the preset, small enough for a test of a few seconds;
# 30 channels because the bicubic warm start needs 9 per colour channel.
TINY = dict(LIGHT_X2, depths=[2], embed_dim=30, num_heads=[2])
# Iterations of linear learning-rate warm-up; fixed, so that a short run (--iters 3) stays near its start.
WARMUP_ITERS = 100


# --- data ---------------------------------------------------------------------------------------------
def builtin_data(root, on_step=None):
    """The built-in dataset under ``root``: reused if complete, else built. Returns (paths, message)."""
    from msrasr_arch.data.builtin import build_builtin_dataset, builtin_dataset_paths

    paths = builtin_dataset_paths(root, scales=(SCALE,), lmdb=True)
    needed = [paths['train']['gt_lmdb'], paths['train']['lq_lmdb'][SCALE], paths['test']['gt'], paths['test']['lq'][SCALE]]
    if all(os.path.exists(p) for p in needed):
        return paths, f'data: reused {root}'
    if os.path.exists(root):
        raise UserError(f'{root} exists but is not a complete built-in dataset; remove it or choose another --out')
    t0 = time.time()
    paths = build_builtin_dataset(root, scales=(SCALE,), on_step=on_step)
    return paths, (f'data: built {paths["train"]["subimages"]} training sub-images from {paths["train"]["images"]} '
                   f'photos and a {paths["test"]["images"]}-photo test set in {time.time() - t0:.0f} s -> {root}')


# --- options ------------------------------------------------------------------------------------------
def train_options(paths, args, total_iter, *, name=EXP_NAME, network=None, init=None):
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
            # BasicSR's warm-up rises linearly from lr / warmup_iter; the cosine then ends near 0.
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                          'eta_min': 0},
            'total_iter': total_iter, 'warmup_iter': WARMUP_ITERS,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        # Every iteration reaches the progress bar (train_progress); the log file gets every LOG_EVERY-th.
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 10 ** 9, 'use_tb_logger': False,
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
        'val': {'save_img': True, 'suffix': None, 'self_ensemble': False, 'tile': None, 'pbar': True,
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


def bicubic_start_checkpoint(path, network=None):
    """Write ``network`` (default: the lightweight x2 preset), warm-started as bicubic interpolation, as a
    BasicSR checkpoint (``path.pretrain_network_g`` then loads it through BasicSR's own machinery)."""
    import torch
    from basicsr.archs import build_network

    from msrasr_arch.utils.bicubic_start import bicubic_start

    torch.manual_seed(0)
    net = bicubic_start(build_network(dict(network or LIGHT_X2)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({'params': net.state_dict()}, path + '.tmp')
    os.replace(path + '.tmp', path)
    return path


# --- training control ---------------------------------------------------------------------------------
LOG_EVERY = 50


@contextlib.contextmanager
def basicsr_hooks(bar):
    """While BasicSR's pipelines run: every logged iteration moves ``bar`` (loss, learning rate), the log
    file keeps every ``LOG_EVERY``-th as usual, and ``parse_options`` keeps its "Disable distributed." to
    itself (it prints it once per pipeline)."""
    import basicsr.test
    import basicsr.train

    from msrasr_arch.utils import basicsr_fixes

    basicsr_fixes.apply()  # first: the hooks must wrap the fixed parse_options, not BasicSR's unsafe one

    class ProgressLogger(basicsr.train.MessageLogger):
        def __call__(self, log_vars):
            it = log_vars['iter']
            bar.update(it - bar.n)
            bar.set_postfix(loss=f"{log_vars.get('l_pix', float('nan')):.4f}", lr=f"{log_vars['lrs'][0]:.1e}",
                            refresh=False)
            if it % LOG_EVERY == 0 or it == bar.total:
                super().__call__(log_vars)

    def silent(parse):
        def parse_options(*args, **kwargs):
            with contextlib.redirect_stdout(io.StringIO()):
                return parse(*args, **kwargs)
        return parse_options

    saved = basicsr.train.MessageLogger, basicsr.train.parse_options, basicsr.test.parse_options
    basicsr.train.MessageLogger = ProgressLogger
    basicsr.train.parse_options, basicsr.test.parse_options = silent(saved[1]), silent(saved[2])
    try:
        yield
    finally:
        basicsr.train.MessageLogger, basicsr.train.parse_options, basicsr.test.parse_options = saved


class _WarningsOnly(logging.Filter):
    """The console shows progress bars and warnings; BasicSR's full log goes to the log file."""

    def filter(self, record):
        return record.levelno >= logging.WARNING


def quiet_basicsr_logger(log_file):
    from basicsr.utils import get_root_logger

    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.addFilter(_WarningsOnly())
    return logger


def archive_previous(out, log_file):
    """Move the previous run's experiment and results folders and log (not its data) to
    ``<out>/archived/<time>``; returns that folder, or None if there was no previous run."""
    previous = [p for p in (os.path.join(out, 'experiments', EXP_NAME), os.path.join(out, 'results', EXP_NAME),
                            log_file) if os.path.exists(p)]
    if not previous:
        return None
    dest = os.path.join(out, 'archived', time.strftime('%Y%m%d_%H%M%S'))
    while os.path.exists(dest):
        dest += '_'
    for p in previous:  # same layout inside dest: experiments/<name>, results/<name>, the log
        target = os.path.join(dest, os.path.relpath(p, out))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(p, target)
    return dest


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
    from tqdm import tqdm

    if args.iters <= 0:
        raise UserError(f'--iters must be positive, got {args.iters}')
    network = TINY if args.tiny else LIGHT_X2
    start = time.time()
    out = os.path.abspath(args.out)
    log_file = os.path.join(out, f'{EXP_NAME}.log')
    print(f'msrasr quickstart: {args.iters} iterations of the {PRESET} MSRA-SR on built-in photos, on the CPU '
          f'-> {out}', flush=True)
    os.makedirs(out, exist_ok=True)
    archived = archive_previous(out, log_file)
    if archived:
        print(f'previous run: its model, results and log moved to {archived}; its data is reused', flush=True)

    steps = ['loading torch and BasicSR', 'photos', 'training set', 'test set', 'warm start']
    with tqdm(total=len(steps), desc='setup', unit='step', dynamic_ncols=True) as bar:
        def step(_done=None):  # one finished: show the next
            bar.update(1)
            bar.set_postfix_str(steps[bar.n] if bar.n < len(steps) else '')

        bar.set_postfix_str(steps[0])
        import torch

        import msrasr_arch  # noqa: F401
        from msrasr_arch.cli.basicsr_cmd import run_pipeline
        if args.threads:
            torch.set_num_threads(args.threads)
        step()
        paths, data_message = builtin_data(os.path.join(out, 'datasets', 'builtin'), on_step=step)
        bar.update(4 - bar.n)  # a reused dataset skips its steps
        bar.set_postfix_str(steps[4])
        # Before anything logs through BasicSR (building a network does): its first call fixes the handlers.
        quiet_basicsr_logger(log_file)
        init = None
        if not args.from_scratch:
            init = bicubic_start_checkpoint(os.path.join(out, 'init', f'bicubic_start_MSRASR_{PRESET}.pth'), network)
        step()
    print(data_message)
    if init:
        print('warm start: the network set to compute bicubic interpolation (msrasr_arch.utils.bicubic_start)')
    train_yml = write_yaml(os.path.join(out, 'options', f'train_{EXP_NAME}.yml'),
                           train_options(paths, args, args.iters, network=network, init=init))

    t0 = time.time()
    with tqdm(total=args.iters, desc='train', unit='it', dynamic_ncols=True) as bar, basicsr_hooks(bar):
        run_pipeline('train', ['-opt', train_yml], root=out)
        trained = bar.n
    train_s = time.time() - t0
    checkpoint = os.path.join(out, 'experiments', EXP_NAME, 'models', 'net_g_latest.pth')
    if not os.path.isfile(checkpoint):
        raise UserError(f'training ended without writing {checkpoint}; see {log_file}')

    test_yml = write_yaml(os.path.join(out, 'options', f'test_{EXP_NAME}.yml'),
                          test_options(paths, checkpoint, use_ema=args.ema > 0, network=network))
    t0 = time.time()
    with basicsr_hooks(None):
        run_pipeline('test', ['-opt', test_yml], root=out)
    test_s = time.time() - t0

    sr_dir = os.path.join(out, 'results', EXP_NAME, 'visualization', 'builtin_test')
    rows = score(paths, sr_dir, EXP_NAME)
    print(f'\nx{SCALE} on the held-out photos (Y channel, {SCALE}-pixel border):')
    print(f'  {"photo":<12} {"MSRA-SR PSNR":>12} {"SSIM":>7} {"bicubic PSNR":>13} {"SSIM":>7}')
    for stem, p, s, bp, bs in rows:
        print(f'  {stem:<12} {p:12.2f} {s:7.4f} {bp:13.2f} {bs:7.4f}')
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(1, 5)]
    print(f'  {"mean":<12} {mean[0]:12.2f} {mean[1]:7.4f} {mean[2]:13.2f} {mean[3]:7.4f}')
    gains = ', '.join(f'{stem} {p - bp:+.2f}' for stem, p, _, bp, _ in rows)
    verdict = 'beats' if mean[0] > mean[2] else 'does NOT beat'
    print(f'\nMSRA-SR {verdict} bicubic by {mean[0] - mean[2]:+.2f} dB PSNR-Y on the mean ({gains}).')
    print(f'trained {trained} iterations (batch {args.batch}, LR patch {args.patch}x{args.patch}) in '
          f'{train_s / 60:.1f} min; testing {test_s:.0f} s; whole run {(time.time() - start) / 60:.1f} min.')
    print(f'checkpoint: {checkpoint}\nSR images:  {sr_dir}\noptions:    {train_yml}\n            {test_yml}\n'
          f'log:        {log_file}')
    print(f'\nnext: msrasr upscale -i your_photo.png -o out/ --weights {checkpoint}')
    return 0
