"""Real-world training through `basicsr train` on CPU: BSRGAN stage 1 (L1) then stage 2 (GAN), the
Real-ESRGAN-degradation variant, the VGG19 start-up check, and the ground-truth-less test option."""
import math
import os
import re
import sys

import cv2
import numpy as np
import pytest
import torch

from sr_cli import OPTIONS, TINY_NET, basicsr

TINY = TINY_NET + ['network_g:img_size=16']
TINY_D = ['network_d:num_feat=8']
VGG = os.path.join('experiments', 'pretrained_models', 'vgg19-dcbb9e9d.pth')


def write_standin_vgg19(root):
    """A VGG19 state dict of the right shapes (random, not ImageNet), about 300 KB.

    Every input channel of a layer shares one filter, stored as a stride-0 expanded tensor, so the file
    stays small; dividing by the fan-in keeps the features at unit scale through the 16 layers.
    """
    import torchvision

    with torch.device('meta'):
        shapes = {k: v.shape for k, v in torchvision.models.vgg19().state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if len(shape) >= 2:
            spatial = shape[2] * shape[3] if len(shape) == 4 else 1
            base = torch.randn((shape[0], 1, *shape[2:]), generator=gen) * (2.0 / spatial)**0.5 / shape[1]
            state[key] = base.expand(shape)
        else:
            state[key] = torch.zeros(shape)
    path = os.path.join(root, VGG)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)


def write_hq_photos(folder, size=(80, 96)):
    from skimage import data

    os.makedirs(folder, exist_ok=True)
    names = []
    for name in ('astronaut', 'coffee', 'chelsea'):
        img = cv2.resize(getattr(data, name)()[:, :, ::-1], size[::-1], interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(folder, f'{name}.png'), img)
        names.append(f'{name}.png')
    with open(os.path.join(folder, 'meta_info.txt'), 'w') as f:  # RealESRGANDataset lists its images
        f.write('\n'.join(names) + '\n')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('realworld'))
    write_hq_photos(os.path.join(root, 'hq'))
    write_standin_vgg19(root)
    return root


def train(root, option, name, total_iter, batch=2, extra=()):
    flags = [
        f'name={name}', 'num_gpu=0', 'datasets:train:dataroot_gt=hq', 'datasets:train:gt_size=64',
        f'datasets:train:batch_size_per_gpu={batch}', 'datasets:train:num_worker_per_gpu=0',
        f'train:total_iter={total_iter}', f'logger:save_checkpoint_freq={total_iter}', 'logger:print_freq=1',
        'logger:use_tb_logger=false'
    ] + TINY + (TINY_D if 'stage2' in option else []) + list(extra)
    return basicsr(['train', '-opt', os.path.join(OPTIONS, option), '--force_yml'] + flags, cwd=root)


def logged_losses(log):
    """{loss name: [value per logged iteration]} from BasicSR's training log lines."""
    losses = {}
    for line in log.splitlines():
        if ', iter:' in line:
            for key, value in re.findall(r'(l_\w+): ([-+0-9.eEnaifNI]+)', line):
                losses.setdefault(key, []).append(float(value))
    return losses


def assert_gan_run(root, name, log, total_iter, pretrained):
    assert f'Loading MSRAGANNet model from {pretrained}, with param key: [params_ema]' in log
    losses = logged_losses(log)
    for key in ('l_g_pix', 'l_g_percep', 'l_g_gan', 'l_d_real', 'l_d_fake'):
        assert len(losses.get(key, [])) == total_iter, (key, losses)
        assert all(math.isfinite(v) for v in losses[key]), (key, losses[key])
    models = os.path.join(root, 'experiments', name, 'models')
    for net in ('net_g', 'net_d'):
        for tag in (total_iter, 'latest'):
            assert os.path.isfile(os.path.join(models, f'{net}_{tag}.pth')), os.listdir(models)
    state = torch.load(os.path.join(models, 'net_g_latest.pth'), map_location='cpu')
    assert set(state) == {'params', 'params_ema'}


@pytest.fixture(scope='module')
def bsrgan_stages(workdir):
    log1 = train(workdir, 'train_MSRAGANNet_x4_stage1_L1.yml', 's1', total_iter=3)
    pretrained = 'experiments/s1/models/net_g_latest.pth'
    log2 = train(workdir, 'train_MSRAGANNet_x4_stage2_GAN.yml', 's2', total_iter=3,
                 extra=[f'path:pretrain_network_g={pretrained}'])
    return log1, log2, pretrained


def test_bsrgan_stage1_then_stage2(workdir, bsrgan_stages):
    log1, log2, pretrained = bsrgan_stages
    assert 'Model [MSRASRModel] is created' in log1
    l_pix = logged_losses(log1)['l_pix']
    assert len(l_pix) == 3 and all(math.isfinite(v) for v in l_pix)
    assert os.path.isfile(os.path.join(workdir, pretrained))
    assert 'Model [MSRAESRGANModel] is created' in log2 and 'Loss [PerceptualLoss] is created' in log2
    assert_gan_run(workdir, 's2', log2, 3, pretrained)


def test_realesrgan_degradation_stages(workdir):
    # batch 1 and a pool of 1: stage 2's second iteration takes its pair out of the training-pair queue
    # (allocated on the model's device, here the CPU)
    pool = ['datasets:train:meta_info=hq/meta_info.txt', 'gt_size=64', 'queue_size=1']
    log1 = train(workdir, 'train_MSRAGANNet_x4_stage1_realesrgan.yml', 'r1', total_iter=1, batch=1, extra=pool)
    assert 'Model [MSRAESRNetModel] is created' in log1
    assert all(math.isfinite(v) for v in logged_losses(log1)['l_pix'])
    pretrained = 'experiments/r1/models/net_g_latest.pth'
    log2 = train(workdir, 'train_MSRAGANNet_x4_stage2_realesrgan.yml', 'r2', total_iter=2, batch=1,
                 extra=pool + [f'path:pretrain_network_g={pretrained}'])
    assert_gan_run(workdir, 'r2', log2, 2, pretrained)


def run_in_process(args, cwd, monkeypatch):
    """`basicsr ARGS` in this process (no interpreter start-up); returns its exit code."""
    from msrasr_arch.cli.basicsr_cmd import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', list(sys.argv))  # main() rewrites sys.argv for BasicSR's parser
    return main(list(args))


def test_missing_vgg19_stops_at_startup_with_one_line(workdir, tmp_path, monkeypatch, capsys):
    os.symlink(os.path.join(workdir, 'hq'), tmp_path / 'hq')  # data, but no experiments/pretrained_models
    args = ['train', '-opt', os.path.join(OPTIONS, 'train_MSRAGANNet_x4_stage2_GAN.yml'), '--force_yml', 'name=novgg',
            'num_gpu=0', 'datasets:train:dataroot_gt=hq', 'datasets:train:gt_size=64',
            'datasets:train:num_worker_per_gpu=0', 'path:pretrain_network_g=~', 'logger:use_tb_logger=false'
            ] + TINY + TINY_D
    assert run_in_process(args, tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('basicsr train: error:')]
    assert len(errors) == 1, err[-3000:]
    assert os.path.join(str(tmp_path), VGG) in errors[0] and 'download.pytorch.org' in errors[0]
    assert 'Traceback' not in err
    assert not (tmp_path / VGG).exists() and not list(tmp_path.glob('experiments/novgg/models/*.pth'))


def test_real_photo_test_option_without_ground_truth(workdir, bsrgan_stages, monkeypatch):
    photos = os.path.join(workdir, 'real')
    os.makedirs(photos, exist_ok=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(os.path.join(photos, 'photo.png'), rng.integers(0, 256, (20, 27, 3), dtype=np.uint8))
    args = ['test', '-opt', os.path.join(OPTIONS, 'test_MSRAGANNet_x4_real.yml'), '--force_yml', 'num_gpu=0',
            'name=real_x4', 'datasets:test_1:dataroot_lq=real',
            'path:pretrain_network_g=experiments/s2/models/net_g_latest.pth'] + TINY
    assert run_in_process(args, workdir, monkeypatch) == 0
    out = cv2.imread(os.path.join(workdir, 'results', 'real_x4', 'visualization', 'real', 'photo_real_x4.png'))
    assert out is not None and out.shape == (80, 108, 3)
