"""Every option file under options/ parses with BasicSR's parser conventions and builds its networks."""
import glob
import os

import pytest
import torch
import yaml

from sr_cli import OPTIONS

FILES = sorted(glob.glob(os.path.join(OPTIONS, '**', '*.yml'), recursive=True))


def test_the_issue_files_exist():
    names = {os.path.relpath(f, OPTIONS) for f in FILES}
    for s in (2, 3, 4):
        for kind in ('train_MSRASR', 'train_MSRASR_light', 'test_MSRASR', 'test_MSRASR_light'):
            assert f'{kind}_x{s}.yml' in names
    assert len([n for n in names if n.startswith('ablation' + os.sep)]) >= 10


@pytest.mark.parametrize('path', FILES, ids=[os.path.relpath(f, OPTIONS) for f in FILES])
def test_option_file_parses_and_builds(path):
    from basicsr.archs import build_network
    from basicsr.utils.options import ordered_yaml
    from basicsr.utils.registry import MODEL_REGISTRY

    with open(path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    assert opt['name'] == os.path.splitext(os.path.basename(path))[0], 'name must match the file name'
    MODEL_REGISTRY.get(opt['model_type'])
    scale = opt['scale']
    is_train = 'train' in opt['datasets']
    # The paper's bicubic recipe; the real-world (MSRAGANNet) files follow their own (issue 4).
    bicubic = os.path.basename(path).startswith(('train_MSRASR', 'test_MSRASR'))
    if is_train and bicubic:
        assert set(opt['datasets']) == {'train', 'val'}
        assert opt['datasets']['train']['gt_size'] == 64 * scale
        assert opt['train']['optim_g']['betas'] == [0.9, 0.99] and opt['train']['ema_decay'] == 0.999
    elif not is_train:
        assert sorted(opt['datasets']) == [f'test_{i}' for i in range(1, len(opt['datasets']) + 1)]
    for phase, ds in opt['datasets'].items():
        for key in ('dataroot_gt', 'dataroot_lq'):
            if key in ds:
                assert ds[key].startswith('datasets/'), (phase, key)
    for metric in (opt.get('val', {}).get('metrics') or {}).values() if bicubic else ():
        assert metric['crop_border'] == scale and metric['test_y_channel'] is True
    for key in [k for k in opt if k.startswith('network_')]:
        if key == 'network_g':
            assert opt[key]['upscale'] == scale
        with torch.device('meta'):
            net = build_network(dict(opt[key]))
        assert sum(p.numel() for p in net.parameters()) > 0
