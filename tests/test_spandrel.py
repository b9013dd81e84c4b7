"""MSRA-SR through spandrel (what ComfyUI and chaiNNer load models with), and the network-option checks
every loader runs before building a network."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from spandrel import MAIN_REGISTRY, ImageModelDescriptor, ModelLoader
from spandrel_extra_arches import EXTRA_REGISTRY

import msrasr_arch.spandrel  # noqa: F401  (registers the architecture)
from msrasr_arch.archs import ARCHS, MSRAGANNet, MSRASR
from msrasr_arch.archs.network_options import MAX_PARAMS, RULES, NetworkOptionError, check_network_options
from msrasr_arch.archs.presets import PRESETS, get_preset
from msrasr_arch.archs.profile import build_on_meta
from msrasr_arch.inference.network import build_network
from msrasr_arch.inference.upscaler import Upscaler
from msrasr_arch.utils.checkpoint import NETWORK_METADATA_KEY, save_checkpoint
from msrasr_arch.utils.errors import UserError

INTEGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'integrations')

# The presets' structure (upsampler, residual convs, CSA scales, MS-DWC, CA, sharing) at a tiny width.
SMALL = dict(embed_dim=16, depths=[4], num_heads=[2], window_size=8, csa_dim=8, num_feat=8)
# Every preset (light, classical and their variants at x2, x3, x4; the real-world MSRAGANNet at x4), and
# MSRAGANNet at x2 too (its nearest+conv upsampler has no x3).
CASES = [(name, get_preset(name)['upscale']) for name in PRESETS] + [('realworld_x4', 2)]


def small_options(preset, scale):
    opt = get_preset(preset)
    opt.update(SMALL, upscale=scale)
    return opt


def perturbed(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def full_registry():
    """spandrel's architectures, the extra (non-commercial) ones and ours, as ComfyUI sets them up."""
    registry = MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


@pytest.mark.parametrize('preset,scale', CASES)
def test_spandrel_loads_every_form_like_msrasr_upscale(tmp_path, preset, scale):
    opt = small_options(preset, scale)
    arch = ARCHS[opt.pop('type')]
    torch.manual_seed(0)
    net = perturbed(arch(**opt), seed=1).eval()
    ema = perturbed(arch(**opt), seed=2).eval()
    files = {
        # BasicSR's own layout: both weight sets; spandrel and msrasr must both take the EMA ones.
        'basicsr': (tmp_path / 'net_g_5000.pth', {'params': net.state_dict(), 'params_ema': ema.state_dict()}),
        'bare': (tmp_path / 'bare.pth', ema.state_dict()),
    }
    for name, (path, obj) in files.items():
        torch.save(obj, path)
    deployed = tmp_path / 'deployed.safetensors'
    save_checkpoint(perturbed(arch(**opt), seed=2).reparameterize().state_dict(), str(deployed),
                    network_options=dict(opt, deploy=True, type=arch.__name__))
    x = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(3))
    for path in [files['basicsr'][0], files['bare'][0], deployed]:
        model = ModelLoader().load_from_file(str(path))
        assert isinstance(model, ImageModelDescriptor) and model.architecture.id == 'MSRASR'
        assert model.purpose == 'SR' and model.scale == scale
        assert model.input_channels == model.output_channels == 3
        assert model.size_requirements.none and model.supports_half and model.supports_bfloat16
        assert model.model.deployed == (path == deployed)
        reference = Upscaler.from_checkpoint(str(path), device='cpu').upscale_tensor(x)
        out = model(x)
        assert out.shape == (1, 3, 13 * scale, 11 * scale)
        assert (out - reference).abs().max() <= 1e-5


@pytest.mark.parametrize('preset,scale', [('light_x2', 2), ('classical_x3', 3), ('realworld_x4', 4)])
def test_half_and_bfloat16_run_close_to_float32(preset, scale):
    opt = small_options(preset, scale)
    net = perturbed(ARCHS[opt.pop('type')](**opt), seed=1).eval()
    model = ModelLoader().load_from_state_dict(net.state_dict())
    x = torch.rand(1, 3, 12, 9, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    for dtype, tolerance in ((torch.float16, 0.02), (torch.bfloat16, 0.1)):
        out = model.to(dtype)(x.to(dtype)).float()
        model.float()
        assert torch.isfinite(out).all() and (out - reference).abs().max() < tolerance


def small_foreign_state_dicts():
    """Tiny networks of other window-attention and lightweight SR architectures, from spandrel's classes."""
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.DRCT import DRCT
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.OmniSR import OmniSR
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.Swin2SR import Swin2SR
    from spandrel.architectures.SwinIR import SwinIR
    from spandrel_extra_arches.architectures.SRFormer import SRFormer

    swin = dict(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, mlp_ratio=2, upscale=2)
    nets = {
        'SwinIR': SwinIR(**swin, upsampler='pixelshuffledirect'),
        'Swin2SR': Swin2SR(**swin, upsampler='pixelshuffledirect'),
        'SRFormer': SRFormer(**swin, upsampler='pixelshuffledirect'),
        'HAT': HAT(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, compress_ratio=3,
                   squeeze_factor=4, mlp_ratio=2, upscale=2, num_feat=8),
        'DRCT': DRCT(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4, upscale=2,
                     upsampler='pixelshuffle', gc=4),
        'DAT': DAT(img_size=16, embed_dim=12, split_size=[2, 4], depth=[2], num_heads=[2], expansion_factor=2,
                   upscale=2),
        'OmniSR': OmniSR(num_feat=16, window_size=4, up_scale=2),
        'SPAN': SPAN(num_in_ch=3, num_out_ch=3, feature_channels=12, upscale=2),
        'ESRGAN': ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2),
    }
    return {name: net.state_dict() for name, net in nets.items()}


def test_detection_claims_ours_and_only_ours():
    registry = full_registry()
    ours = registry['MSRASR']
    loader = ModelLoader(registry=registry)
    for name, state in small_foreign_state_dicts().items():
        assert not ours.detect(state), name
        assert loader.load_from_state_dict(state).architecture.id == name
    for preset, scale in CASES:
        opt = small_options(preset, scale)
        net = ARCHS[opt.pop('type')](**opt)
        for state in (net.state_dict(), net.reparameterize().state_dict()):
            claims = [a.architecture.id for a in registry.architectures('detection') if a.detect(state)]
            assert claims == ['MSRASR'], (preset, scale, claims)
            assert loader.load_from_state_dict(state).architecture.id == 'MSRASR'


def test_comfyui_load_path(tmp_path, monkeypatch):
    """What ComfyUI's "Load Upscale Model" and "Upscale Image (using Model)" nodes do, after ComfyUI imported
    our custom-node folder as a package."""
    monkeypatch.syspath_prepend(INTEGRATIONS)
    monkeypatch.delitem(sys.modules, 'comfyui', raising=False)
    import comfyui
    assert comfyui.NODE_CLASS_MAPPINGS == {}

    net = perturbed(MSRAGANNet(**SMALL), seed=4).eval()
    # DataParallel-style keys: ComfyUI leaves them to spandrel, which strips a prefix all keys share.
    torch.save({'params_ema': {f'module.{k}': v for k, v in net.state_dict().items()}}, tmp_path / 'gan.pth')
    save_file(net.state_dict(), str(tmp_path / 'gan.safetensors'))
    x = torch.rand(1, 3, 20, 17, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = net(x).clamp(0, 1)
    for name in ('gan.pth', 'gan.safetensors'):
        path = str(tmp_path / name)
        # comfy.utils.load_torch_file(path, safe_load=True)
        sd = load_file(path) if name.endswith('.safetensors') else torch.load(path, map_location='cpu',
                                                                              weights_only=True)
        model = ModelLoader().load_from_state_dict(sd).eval()
        assert isinstance(model, ImageModelDescriptor) and model.scale == 4
        with torch.inference_mode():  # ComfyUI runs nodes in inference mode
            out = model(x)
        assert (out - expected).abs().max() <= 1e-5
    # The model still trains afterwards: nothing cached under inference mode leaks into autograd.
    net.train()
    net(x).mean().backward()


# ---------------------------------------------------------------------------------------------------------
# Network options: one checker for YAML blocks, safetensors headers, inferred shapes and the constructor.

def test_rules_cover_the_constructor_and_count_parameters_exactly():
    import inspect
    for cls in (MSRASR, MSRAGANNet):
        assert set(RULES) == set(inspect.signature(cls.__init__).parameters) - {'self'}
    for name, opt in PRESETS.items():
        real = sum(p.numel() for p in build_on_meta(opt).parameters())
        assert check_network_options(opt, source=name) == real, name
    for preset, scale in CASES:
        for variant in (dict(deploy=True), dict(ms_kernels=[3, 5], shared_attn='none', resi_connection='3conv',
                                               csa_dim=0, deploy=True),
                        dict(ms_kernels=[], attn_transform_kernel=0, ca_reduction=0, in_chans=1, depths=[5, 3],
                             num_heads=[4, 2])):
            opt = dict(small_options(preset, scale), **variant)
            real = sum(p.numel() for p in build_on_meta(opt).parameters())
            assert check_network_options(opt, source=preset) == real, (preset, scale, variant)


def write_header(path, header_text, net=None):
    """A safetensors file holding a tiny network's weights and `header_text` as its options header."""
    net = net or MSRASR(upscale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path),
              metadata={'format': 'pt', NETWORK_METADATA_KEY: header_text})
    return str(path)


@pytest.mark.parametrize('header,message', [
    ('{"type": "MSRASR", "embed_dim": 12', 'is not valid JSON'),
    ('[' * 100000 + ']' * 100000, 'is not valid JSON'),
    ('[1, 2]', 'must be a mapping of option names to values, got list'),
    ('{"embed_dim": 12}', 'type: expected MSRASR or MSRAGANNet (an MSRA-SR network), got no type'),
    ('{"type": "SwinIR"}', "type: expected MSRASR or MSRAGANNet (an MSRA-SR network), got type 'SwinIR'"),
    ('{"type": "MSRASR", "embed_dims": 12}', 'embed_dims: unknown option for MSRASR'),
    ('{"type": "MSRASR", "a\\nb": 1}', r"'a\nb': unknown option for MSRASR"),
    ('{"type": "MSRASR", "depths": "four"}', "depths: expected a list of integers, got 'four'"),
    ('{"type": "MSRASR", "depths": [0, 2], "num_heads": [2, 2]}', 'depths: entry 0 is out of range (1..64)'),
    ('{"type": "MSRASR", "embed_dim": 16384}', 'embed_dim: 16384 is out of range (1..1024)'),
    ('{"type": "MSRASR", "embed_dim": 12.5}', 'embed_dim: expected an integer, got 12.5'),
    ('{"type": "MSRASR", "deploy": "yes"}', "deploy: expected true or false, got 'yes'"),
    ('{"type": "MSRASR", "embed_dim": 12, "num_heads": [5, 5, 5, 5]}', 'num_heads: 5 heads do not divide embed_dim 12'),
    ('{"type": "MSRASR", "upscale": 8}', 'upscale: 8 is not supported by pixelshuffledirect (2, 3, 4)'),
    # In range, consistent, and 62M parameters: more than a file of a few KB can hold.
    ('{"type": "MSRASR", "embed_dim": 512, "depths": [4, 4, 4, 4, 4, 4], "num_heads": [8, 8, 8, 8, 8, 8]}',
     'over the budget of'),
])
def test_hostile_headers_are_refused_in_one_line_before_any_allocation(tmp_path, monkeypatch, header, message):
    path = write_header(tmp_path / 'hostile.safetensors', header)

    def never(**kwargs):
        raise AssertionError('a network was built from refused options')

    monkeypatch.setitem(ARCHS, 'MSRASR', never)
    with pytest.raises(UserError) as err:
        build_network(path)
    text = str(err.value)
    assert message in text and text.startswith(path) and '\n' not in text


def test_the_budget_is_what_the_file_holds(tmp_path):
    net = MSRASR(upscale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4)
    honest = dict(type='MSRASR', upscale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4)
    path = write_header(tmp_path / 'honest.safetensors', json.dumps(honest), net)
    built, options, _ = build_network(path)
    assert options == honest and built.upscale == 2
    params = check_network_options(honest, source='x')
    assert params == sum(p.numel() for p in net.parameters()) < os.path.getsize(path)
    with pytest.raises(NetworkOptionError, match='over the budget'):
        check_network_options(honest, source='x', max_params=params - 1)
    assert 20 * check_network_options(get_preset('classical_x4'), source='classical_x4') < MAX_PARAMS


def test_spandrel_refuses_shapes_that_claim_more_than_the_tensors_hold():
    """Zero-stride tensors can claim any shape over one stored number; the options they imply are refused
    from the storage actually held, before the network is built."""
    opt = dict(get_preset('classical_x4'), embed_dim=512, num_heads=[8] * 6)
    state = {k: torch.zeros(1).expand(v.shape) for k, v in build_on_meta(opt).state_dict().items()}
    with pytest.raises(UserError, match='over the budget of'):
        ModelLoader().load_from_state_dict(state)


def test_constructor_reports_like_the_loaders():
    with pytest.raises(NetworkOptionError, match=r'^MSRASR: depths: entry 0 is out of range \(1..64\)$'):
        MSRASR(depths=[0, 2], num_heads=[6, 6])
    with pytest.raises(ValueError, match=r'^MSRAGANNet: upscale: 3 is not supported by nearest\+conv \(2, 4\)$'):
        MSRAGANNet(upscale=3)
