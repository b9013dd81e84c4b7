"""Checkpoint reading/writing and architecture inference from weights (CPU, tiny networks, a few seconds)."""
import os

import pytest
import torch

import msrasr_arch  # noqa: F401  (shim + registration before basicsr)
from msrasr_arch.archs import MSRASR
from msrasr_arch.archs.from_weights import infer_network_options
from msrasr_arch.inference.network import build_network, network_from_options
from msrasr_arch.utils.atomic import atomic_path
from msrasr_arch.utils.checkpoint import describe_mismatch, load_checkpoint, load_into, save_checkpoint
from msrasr_arch.utils.errors import UserError

TINY = dict(embed_dim=12, depths=[2], num_heads=[2], window_size=8, csa_dim=4)


def tiny(**overrides):
    torch.manual_seed(0)
    return MSRASR(**dict(TINY, **overrides)).eval()


def _shifted(state, delta):
    return {k: v + delta for k, v in state.items()}


def test_basicsr_checkpoint_prefers_ema(tmp_path):
    state = tiny().state_dict()
    path = tmp_path / 'net_g_10.pth'
    torch.save({'params': state, 'params_ema': _shifted(state, 1.0)}, path)
    ckpt = load_checkpoint(str(path))
    assert ckpt.param_key == 'params_ema'
    assert torch.equal(ckpt.state_dict['conv_first.weight'], state['conv_first.weight'] + 1.0)
    raw = load_checkpoint(str(path), param_key='params')
    assert torch.equal(raw.state_dict['conv_first.weight'], state['conv_first.weight'])
    with pytest.raises(UserError, match='no "params_x" entry'):
        load_checkpoint(str(path), param_key='params_x')


def test_bare_prefixed_and_safetensors(tmp_path):
    net = tiny()
    state = net.state_dict()
    bare = tmp_path / 'bare.pth'
    torch.save({f'module.{k}': v for k, v in state.items()}, bare)
    loaded = load_checkpoint(str(bare))
    assert loaded.param_key is None and list(loaded.state_dict) == list(state)
    load_into(tiny(), loaded.state_dict)

    pytest.importorskip('safetensors')
    st = tmp_path / 'w.safetensors'
    save_checkpoint(state, str(st), network_options={'type': 'MSRASR', **TINY})
    again = load_checkpoint(str(st))
    assert all(torch.equal(again.state_dict[k], v) for k, v in state.items())
    assert again.network_options()['embed_dim'] == 12
    pth = tmp_path / 'w.pth'
    save_checkpoint(state, str(pth))
    assert load_checkpoint(str(pth)).param_key == 'params'
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no temporary files left


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    victim = tmp_path / 'pwned.txt'

    class Payload:
        def __reduce__(self):
            # Unpickling this would create `victim`.
            return (open, (str(victim), 'w'))

    path = tmp_path / 'evil.pth'
    torch.save({'params': {'w': torch.zeros(1)}, 'extra': Payload()}, path)
    with pytest.raises(UserError, match='refusing to load') as err:
        load_checkpoint(str(path))
    assert str(path) in str(err.value) and '\n' not in str(err.value)
    assert not victim.exists()


def test_missing_corrupt_and_empty_files(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        load_checkpoint(str(tmp_path / 'nope.pth'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match='cannot read checkpoint'):
        load_checkpoint(str(junk))
    truncated = tmp_path / 'truncated.pth'
    torch.save({'params': tiny().state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    with pytest.raises(UserError, match='cannot read checkpoint'):
        load_checkpoint(str(truncated))
    odd = tmp_path / 'odd.pth'
    torch.save({'iter': 5}, odd)
    with pytest.raises(UserError, match='no network weights'):
        load_checkpoint(str(odd))


def test_mismatch_names_missing_unexpected_and_shapes():
    state = tiny().state_dict()
    state['extra.weight'] = torch.zeros(1)
    del state['conv_first.bias']
    state['conv_after_body.weight'] = torch.zeros(1, 1, 1, 1)
    message = describe_mismatch(tiny(), state)
    assert 'missing key(s): conv_first.bias' in message
    assert 'unexpected key(s): extra.weight' in message
    assert 'conv_after_body.weight (1, 1, 1, 1) vs (12, 12, 3, 3)' in message
    with pytest.raises(UserError, match='does not fit the network'):
        load_into(tiny(), state, source='x.pth')


@pytest.mark.parametrize('config', [
    dict(),
    dict(depths=[4, 3], num_heads=[2, 3], upscale=3, upsampler='pixelshuffle', num_feat=8),
    dict(depths=[4], upscale=4, upsampler='pixelshuffle', num_feat=8, resi_connection='3conv', shared_attn='none',
         ms_kernels=[3, 7], ca_reduction=0, csa_dim=0),
    dict(depths=[5], window_size=16, csa_scales=[2, 4], upscale=4, upsampler='nearest+conv', num_feat=8,
         attn_transform_kernel=0, ms_kernels=[], mlp_ratio=1.5),
    dict(embed_dim=16, depths=[3], num_heads=[4], attn_transform_kernel=5, upscale=8, upsampler='pixelshuffle',
         num_feat=8, ca_reduction=4, ms_kernels=[7]),
])
@pytest.mark.parametrize('deployed', [False, True])
def test_architecture_is_inferred_from_shapes(config, deployed):
    net = tiny(**config)
    if deployed:
        net.reparameterize()
    options = infer_network_options(net.state_dict())
    has_msdwc = config.get('ms_kernels', [1]) != []
    assert options['upscale'] == net.upscale and options['deploy'] == (deployed and has_msdwc)
    rebuilt = network_from_options(options)
    assert describe_mismatch(rebuilt, net.state_dict()) is None


def test_not_an_msrasr_checkpoint(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'params': {'conv.weight': torch.zeros(3, 3, 3, 3)}}, path)
    with pytest.raises(UserError, match='does not look like an MSRA-SR'):
        build_network(str(path))


def test_wrong_scale_is_refused(tmp_path):
    path = tmp_path / 'x2.pth'
    torch.save({'params': tiny().state_dict()}, path)
    with pytest.raises(UserError, match=r'x2 model, but x4 was asked'):
        build_network(str(path), scale=4)
    opt = tmp_path / 'x4.yml'
    opt.write_text('network_g:\n  type: MSRASR\n  upscale: 4\n  embed_dim: 12\n  depths: [2]\n  num_heads: [2]\n'
                   '  window_size: 8\n  csa_dim: 4\n')
    with pytest.raises(UserError, match=r'is a x2 model but .*x4.yml says upscale: 4'):
        build_network(str(path), opt_path=str(opt))
    opt.write_text(opt.read_text().replace('upscale: 4', 'upscale: 2'))
    net, options, _ = build_network(str(path), opt_path=str(opt), scale=2)
    assert net.upscale == 2 and options['embed_dim'] == 12


def test_atomic_path_leaves_nothing_on_interrupt(tmp_path):
    target = tmp_path / 'out.png'
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target)) as tmp:
            with open(tmp, 'wb') as f:
                f.write(b'partial')
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
