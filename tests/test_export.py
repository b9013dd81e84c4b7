"""`msrasr export`: the deployed checkpoint and the ONNX model agree with the training network (CPU)."""
import importlib.util

import pytest
import torch

import msrasr_arch  # noqa: F401  (shim + registration before basicsr)
from msrasr_arch.archs import MSRASR
from msrasr_cli.main import main
from msrasr_arch.inference.network import build_network
from msrasr_arch.utils.checkpoint import load_checkpoint

TINY = dict(embed_dim=12, depths=[3], num_heads=[2], window_size=8, csa_dim=4)
HAS_ONNX = all(importlib.util.find_spec(m) for m in ('onnx', 'onnxruntime'))
pytestmark = pytest.mark.skipif(importlib.util.find_spec('safetensors') is None,
                                reason='needs the export extra: pip install "msrasr_arch[export]"')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp('export')
    torch.manual_seed(0)
    net = MSRASR(**TINY).eval()
    # Make every branch matter, so a wrong merge cannot hide behind near-zero weights.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if 'msdwc' in name:
                p.normal_(0, 0.2)
    weights = root / 'net_g_100.pth'
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, weights)
    args = ['export', '--weights', str(weights), '-o', str(root / 'out')] + ([] if HAS_ONNX else ['--no-onnx'])
    assert main(args) == 0
    return net, weights, root / 'out'


def test_deployed_checkpoint_matches_training(exported):
    net, weights, out = exported
    deployed_path = out / 'net_g_100_deploy.safetensors'
    ckpt = load_checkpoint(str(deployed_path))
    assert not any('branches' in k for k in ckpt.state_dict) and any('msdwc.conv' in k for k in ckpt.state_dict)
    assert ckpt.network_options()['deploy'] is True
    deployed, options, _ = build_network(str(deployed_path))
    training, _, _ = build_network(str(weights))
    assert deployed.deployed and not training.deployed
    x = torch.rand(1, 3, 19, 29, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (deployed(x) - training(x)).abs().max() < 1e-5
    assert sum(p.numel() for p in deployed.parameters()) < sum(p.numel() for p in training.parameters())


@pytest.mark.skipif(not HAS_ONNX, reason='needs onnx and onnxruntime (the export extra)')
def test_onnx_matches_pytorch_at_two_sizes(exported):
    import onnx

    from msrasr_arch.inference.onnx_export import compare_onnx
    net, _, out = exported
    path = str(out / 'net_g_100.onnx')
    model = onnx.load(path)
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param  # height and width are symbolic
    # Against the training (multi-branch) network: covers re-parameterisation and export together.
    diffs = compare_onnx(net, path, [(23, 37), (40, 16)])
    assert max(diffs) < 1e-4, diffs


def test_export_does_not_overwrite(exported, capsys):
    _, weights, out = exported
    assert main(['export', '--weights', str(weights), '-o', str(out), '--no-onnx']) == 2
    assert 'exists; pass --overwrite' in capsys.readouterr().err
