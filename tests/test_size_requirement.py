"""One input-size requirement per network, and every consumer reads it from the one function (CPU, tiny
networks)."""
import torch
from torch import nn

import msrasr_arch  # noqa: F401  (shim + registration before basicsr)
from msrasr_arch.archs import MSRASR
from msrasr_arch.archs.profile import lr_size
from msrasr_arch.archs.size_requirement import SizeRequirement, size_requirement
from msrasr_arch.inference import onnx_export
from msrasr_arch.inference.upscaler import Upscaler
from msrasr_arch.models import sr_model

TINY = dict(embed_dim=12, depths=[2], num_heads=[2], csa_dim=2, mlp_ratio=2)


def tiny_net(window_size):
    torch.manual_seed(0)
    return MSRASR(**TINY, window_size=window_size).eval()


def test_msrasr_declares_its_window_size_and_takes_any_size():
    for ws in (4, 8):
        net = tiny_net(ws)
        assert size_requirement(net) == SizeRequirement(multiple=ws, minimum=1)
    assert size_requirement(net).padded(5, 17) == (8, 24)
    # minimum 1 is honest: a single pixel and an unaligned size upscale to exactly 2x
    with torch.no_grad():
        for h, w in ((1, 1), (5, 11)):
            assert net(torch.rand(1, 3, h, w)).shape == (1, 3, 2 * h, 2 * w)


def test_basicsr_swinir_is_derived_from_its_blocks():
    from basicsr.archs.swinir_arch import SwinIR
    net = SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                 upsampler='pixelshuffledirect').eval()
    assert not hasattr(net, 'window_size')  # only its blocks know it, so no top-level lookup can find it
    req = size_requirement(net)
    assert req == SizeRequirement(multiple=4, minimum=1)
    # SwinIR does not pad itself: padded to the derived multiple it runs on an unaligned size.
    with torch.no_grad():
        assert sr_model.padded_forward(net, torch.rand(1, 3, 7, 10), req.multiple, 2).shape == (1, 3, 14, 20)


def test_plain_conv_net_needs_no_multiple():
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
    assert size_requirement(net) == SizeRequirement(multiple=1, minimum=1)
    assert size_requirement(net).padded(5, 7) == (5, 7)


def test_every_consumer_follows_the_declared_requirement(tmp_path, monkeypatch):
    # A window-4 net told to need 16 (still a multiple of its windows, so it runs): each consumer must
    # use 16, which none reaches from the window size or an option file.
    net = tiny_net(4)
    net.size_requirement = SizeRequirement(multiple=16, minimum=24)

    seen = []
    net.conv_first.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        assert net(torch.rand(1, 3, 5, 9)).shape == (1, 3, 10, 18)
    assert seen == [(16, 16)]  # forward pads with the declared multiple

    up = Upscaler(net, device='cpu', tile=40, tile_overlap=3)
    assert (up.align, up.tile, up.tile_overlap) == (16, 32, 16)

    # The model class, untiled and tiled (a stand-in for the BasicSR-built model: _upscale reads only these).
    model = sr_model.MSRASRModel.__new__(sr_model.MSRASRModel)
    model.opt = {'scale': 2, 'network_g': {'type': 'MSRASR', 'window_size': 4}, 'val': {}}
    model.device = torch.device('cpu')
    calls = []
    padded_forward, tile_forward = sr_model.padded_forward, sr_model.tile_forward

    def spy_padded(net_, img, multiple, scale):
        calls.append(('whole', multiple))
        return padded_forward(net_, img, multiple, scale)

    def spy_tiled(fn, x, scale, tile, overlap, device):
        calls.append(('tiled', tuple(x.shape[-2:]), tile, overlap))
        return tile_forward(fn, x, scale, tile, overlap, device=device)

    monkeypatch.setattr(sr_model, 'padded_forward', spy_padded)
    monkeypatch.setattr(sr_model, 'tile_forward', spy_tiled)
    lq = torch.rand(1, 3, 20, 35)
    with torch.no_grad():
        assert model._upscale(net, lq).shape == (1, 3, 40, 70)
        model.opt['val'] = {'tile': {'size': 40, 'overlap': 3}}
        assert model._upscale(net, lq).shape == (1, 3, 40, 70)
    assert calls == [('whole', 16), ('tiled', (32, 48), 32, 16)]

    examples = []

    def fake_export(net_, path, example, opset, dynamo):
        examples.append(tuple(example.shape[-2:]))
        with open(path, 'wb') as f:
            f.write(b'graph')

    monkeypatch.setattr(onnx_export, '_export', fake_export)
    assert onnx_export.export_onnx(net, str(tmp_path / 'net.onnx'), method='trace') == 'trace'
    assert examples == [onnx_export._example_size(16)]
    assert onnx_export.check_sizes(net) == [(21, 29), (32, 55)]

    # profile: HR 40x70 at x2 is LR 20x35, raised to the minimum 24 and padded to 16
    assert lr_size(net, hr=(40, 70)) == ((20, 35), (32, 48))


def test_spandrel_requirements_come_from_the_same_source():
    from spandrel import SizeRequirements

    from msrasr_arch.spandrel import _size_requirements
    net = tiny_net(8)
    # the network pads itself, so spandrel is asked for nothing...
    assert _size_requirements(net) == SizeRequirements() and _size_requirements(net).none
    # ...unless the network declares a larger minimum
    net.size_requirement = SizeRequirement(multiple=8, minimum=24)
    assert _size_requirements(net) == SizeRequirements(minimum=24)
