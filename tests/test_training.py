"""`basicsr train` / `basicsr test` through BasicSR's own pipelines on CPU, with MSRASRModel."""
import os
import re

import pytest
import torch

from sr_cli import OPTIONS, basicsr, eval_flags, train_flags
from sr_tiny_data import make_tiny_sr_set


def _tiny_options(name, is_train):
    """Option file `name` with the tiny network, read and overridden as our `basicsr` command does
    (`--force_yml`), for an in-process model on the CPU."""
    from msrasr_arch.utils.train_options import apply_forced, read_option_file

    from sr_cli import TINY_NET

    path = os.path.join(OPTIONS, name)
    opt = apply_forced(read_option_file(path), TINY_NET, source=path)
    opt.update(num_gpu=0, dist=False, rank=0, world_size=1, is_train=is_train)
    return opt


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train the tiny network for 4 iterations (checkpoints at 2 and 4); shared by the tests below."""
    work = tmp_path_factory.mktemp('train')
    dirs = make_tiny_sr_set(str(work / 'data'), scale=2)
    log = basicsr(['train', '-opt', os.path.join(OPTIONS, 'train_MSRASR_x2.yml'), '--force_yml'] + train_flags(dirs),
                  cwd=work)
    return work, dirs, log


def test_train_writes_checkpoints_and_auto_resume_continues(trained):
    work, dirs, log = trained
    exp = work / 'experiments' / 'tiny_x2'
    for it in (2, 4):
        assert (exp / 'models' / f'net_g_{it}.pth').is_file()
        assert (exp / 'training_states' / f'{it}.state').is_file()
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    ckpt = torch.load(exp / 'models' / 'net_g_4.pth')
    assert set(ckpt) == {'params', 'params_ema'}  # EMA weights saved beside the trained ones
    assert not [p for p in os.listdir(exp / 'models') if p.startswith('.saving-')]  # no staging debris
    assert re.search(r'Validation Set5\s+# psnr: \d+\.\d+', log)

    log = basicsr(['train', '-opt', os.path.join(OPTIONS, 'train_MSRASR_x2.yml'), '--auto_resume', '--force_yml']
                  + train_flags(dirs, total_iter=6), cwd=work)
    assert 'Resuming training from epoch' in log and 'iter: 4.' in log
    assert re.search(r'iter:\s+5, lr', log) and not re.search(r'iter:\s+[1-4], lr', log)
    state = torch.load(exp / 'training_states' / '6.state', weights_only=False)
    assert state['iter'] == 6


def test_basicsr_test_prints_metrics_and_writes_images(trained):
    work, dirs, _ = trained
    ckpt = work / 'experiments' / 'tiny_x2' / 'models' / 'net_g_4.pth'
    log = basicsr(['test', '-opt', os.path.join(OPTIONS, 'test_MSRASR_x2.yml'), '--force_yml']
                  + eval_flags(dirs, ckpt), cwd=work)
    for name in ('Set5', 'Set14', 'BSD100', 'Urban100', 'Manga109'):
        assert re.search(rf'Validation {name}\s+# psnr: \d+\.\d+.*\n\s+# ssim: 0\.\d+', log), log[-2000:]
    vis = work / 'results' / 'tiny_test_x2' / 'visualization' / 'Set5'
    assert sorted(os.listdir(vis)) == ['rocket0x2_tiny_test_x2.png', 'rocket1x2_tiny_test_x2.png']  # named after the LR file


def test_self_ensemble_and_tiles_match_plain_testing(trained):
    """In-process MSRASRModel on the trained checkpoint: x8 self-ensemble and tiled inference give the
    plain PSNR within 0.05 dB."""
    from basicsr.metrics import calculate_psnr
    from basicsr.models import build_model
    from basicsr.utils import tensor2img
    from basicsr.utils.img_util import img2tensor
    import cv2

    work, dirs, _ = trained
    opt = _tiny_options('test_MSRASR_x2.yml', is_train=False)
    opt['path']['pretrain_network_g'] = str(work / 'experiments' / 'tiny_x2' / 'models' / 'net_g_4.pth')
    model = build_model(opt)

    def psnr_with(**val):
        opt['val'].update(self_ensemble=False, tile=None)
        opt['val'].update(val)
        total = 0.0
        names = sorted(os.listdir(dirs['test_hr']))
        for name in names:
            gt = cv2.imread(os.path.join(dirs['test_hr'], name))
            lq = cv2.imread(os.path.join(dirs['test_lr'], name.replace('.png', 'x2.png')))
            model.lq = img2tensor(lq.astype('float32') / 255.0)[None]
            model.test()
            total += calculate_psnr(tensor2img(model.output), gt, crop_border=2, test_y_channel=True)
        return total / len(names), model.output

    keys = set(model.net_g.state_dict())
    plain, out_plain = psnr_with()
    # testing ran a re-parameterised copy; the model's own network keeps its branches
    assert set(model.net_g.state_dict()) == keys
    assert set(model._inference_net().state_dict()) != keys
    ensemble, _ = psnr_with(self_ensemble=True)
    tiled, out_tiled = psnr_with(tile={'size': 16, 'overlap': 8})
    assert abs(ensemble - plain) < 0.05, (plain, ensemble)
    assert abs(tiled - plain) < 0.05, (plain, tiled)
    assert out_tiled.shape == out_plain.shape


def test_own_images_option_runs_without_ground_truth(tmp_path):
    """test_MSRASR_x4_own_images.yml: LR images only, no metrics, tiled; writes one SR image per input."""
    import cv2
    import numpy as np
    from basicsr.archs import build_network

    from sr_cli import TINY_NET

    net_opt = dict(type='MSRASR', upscale=4, upsampler='pixelshuffle', embed_dim=12, depths=[2], num_heads=[2],
                   window_size=8, csa_dim=4, mlp_ratio=2)
    torch.manual_seed(0)
    ckpt = tmp_path / 'tiny_x4.pth'
    torch.save({'params_ema': build_network(net_opt).state_dict()}, ckpt)
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (('a', (20, 27)), ('b', (33, 18))):
        cv2.imwrite(str(photos / f'{name}.png'), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    log = basicsr(['test', '-opt', os.path.join(OPTIONS, 'test_MSRASR_x4_own_images.yml'), '--force_yml',
                   'num_gpu=0', f'datasets:test_1:dataroot_lq={photos}', f'path:pretrain_network_g={ckpt}',
                   'val:tile=[16,8]'] + TINY_NET, cwd=tmp_path)
    assert 'psnr' not in log
    out = tmp_path / 'results' / 'test_MSRASR_x4_own_images' / 'visualization' / 'own_images'
    assert sorted(os.listdir(out)) == ['a_test_MSRASR_x4_own_images.png', 'b_test_MSRASR_x4_own_images.png']
    assert cv2.imread(str(out / 'a_test_MSRASR_x4_own_images.png')).shape == (80, 108, 3)


def _training_model(**optim_g):
    """An in-process MSRASRModel set up for training the tiny network of train_MSRASR_x2.yml."""
    from basicsr.models import build_model

    opt = _tiny_options('train_MSRASR_x2.yml', is_train=True)
    opt['path'] = {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}
    opt['train']['optim_g'].update(optim_g)
    return build_model(opt)


def test_adam_is_fused_unless_the_options_choose_an_implementation():
    assert _training_model().optimizer_g.defaults['fused'] is True
    assert not _training_model(fused=False).optimizer_g.defaults['fused']
    chosen = _training_model(foreach=True).optimizer_g.defaults
    assert chosen['foreach'] is True and not chosen['fused']


def test_ema_update_is_basicsrs_to_the_bit():
    from basicsr.models.sr_model import SRModel

    torch.manual_seed(0)
    model = _training_model()
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(torch.randn_like(p))
    ema = list(model.net_g_ema.parameters())
    before = [p.detach().clone() for p in ema]
    model.model_ema(decay=0.9)
    ours = [p.detach().clone() for p in ema]
    with torch.no_grad():
        for p, b in zip(ema, before):
            p.copy_(b)
    SRModel.model_ema(model, decay=0.9)
    assert all(torch.equal(a, p) for a, p in zip(ours, ema))
    assert not all(torch.equal(a, b) for a, b in zip(ours, before))
