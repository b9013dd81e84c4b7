"""The MSRA-SR architectures: shapes, re-parameterisation, sharing, gradients, state dicts, dtypes."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from basicsr.archs import build_network
from msrasr_arch.archs import MSRAGANNet, MSRASR, native
from msrasr_arch.archs.ffn import MSDWConv
from msrasr_arch.archs.presets import PAPER, PRESETS, get_preset
from msrasr_arch.archs.profile import profile
from msrasr_arch.archs.shared_attention import SharedWindowAttention

TINY = dict(embed_dim=12, depths=[4], num_heads=[2], window_size=8, csa_dim=4, mlp_ratio=2)

# The equivalence tests run on every device present: CUDA takes other kernels and other head widths (see
# msrasr_arch.archs.backend), so on a GPU machine `pytest tests/test_arch.py -k cuda` checks that path. CI has only the CPU.
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.fixture
def exact_cuda():
    """cuDNN convs in TF32 (PyTorch's default) would differ between the two implementations by more than
    float32 rounding: the reference applies F as a conv, the fused path as multiply-adds."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def perturbed(net, scale=0.05, seed=0):
    """Random weights everywhere (F away from identity, biases non-zero), so equalities are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def build(name, **over):
    opt = get_preset(name)
    opt.update(over)
    return build_network(opt)


@pytest.mark.parametrize('name', ['light_x2', 'light_x3', 'light_x4', 'classical_x2', 'classical_x3',
                                  'classical_x4', 'realworld_x4'])
def test_forward_shape_odd_size(name):
    torch.manual_seed(0)
    net = build(name).eval()
    scale = net.upscale
    with torch.no_grad():
        out = net(torch.rand(1, 3, 37, 29))
    assert out.shape == (1, 3, 37 * scale, 29 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('size', [(1, 1), (5, 3), (8, 8), (9, 17)])
def test_tiny_and_unaligned_inputs(size):
    net = MSRASR(upscale=3, **TINY).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * 3, size[1] * 3)


def test_registered_and_gan_net_keys_match_msrasr():
    from basicsr.utils.registry import ARCH_REGISTRY
    assert ARCH_REGISTRY.get('MSRASR') is MSRASR and ARCH_REGISTRY.get('MSRAGANNet') is MSRAGANNet
    cfg = dict(TINY, upscale=4, upsampler='nearest+conv')
    gan, sr = MSRAGANNet(**cfg), MSRASR(**cfg)
    assert list(gan.state_dict()) == list(sr.state_dict())
    sr.load_state_dict(perturbed(gan).state_dict())
    x = torch.rand(1, 3, 11, 13)
    with torch.no_grad():
        assert torch.equal(gan.eval()(x), sr.eval()(x))
    assert isinstance(MSRAGANNet(), MSRASR) and MSRAGANNet().upsampler == 'nearest+conv'


def test_unknown_or_bad_keys_fail_clearly():
    with pytest.raises(TypeError, match='windowsize'):
        build_network(dict(type='MSRASR', windowsize=8))
    with pytest.raises(ValueError, match='upsampler'):
        MSRASR(upsampler='bilinear')
    with pytest.raises(ValueError, match='csa_scales'):
        MSRASR(window_size=6, csa_scales=[1, 4])
    with pytest.raises(ValueError, match='num_heads'):
        MSRASR(embed_dim=60, num_heads=[7] * 4)


@pytest.mark.parametrize('upscale', [2, 3, 4])
def test_reparameterize_equivalence(upscale):
    torch.manual_seed(upscale)
    net = perturbed(MSRASR(upscale=upscale, **TINY)).eval()
    x = torch.rand(2, 3, 19, 23)
    with torch.no_grad():
        before = net(x)
        n_before = sum(p.numel() for p in net.parameters())
        net.reparameterize()
        after = net(x)
        net.reparameterize()  # a second call changes nothing
        again = net(x)
    assert net.deployed
    assert (before - after).abs().max().item() < 1e-5
    assert torch.equal(after, again)
    hidden = 24  # mlp_ratio * embed_dim
    assert n_before - sum(p.numel() for p in net.parameters()) == 4 * hidden * (1 + 9 + 25) + 4 * 3 * hidden


def test_msdwconv_merges_into_one_7x7():
    conv = perturbed(MSDWConv(channels=5, kernels=(1, 3, 5, 7)), scale=0.3)
    x = torch.rand(1, 5, 12, 12)
    ref = conv(x)
    conv.reparameterize()
    assert [k for k, _ in conv.named_parameters()] == ['conv.weight', 'conv.bias']
    assert conv.conv.weight.shape == (5, 1, 7, 7)
    assert torch.allclose(conv(x), ref, atol=1e-6)


def test_deploy_flag_loads_reparameterized_checkpoint():
    net = perturbed(MSRASR(upscale=2, **TINY)).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
    state = net.reparameterize().state_dict()
    deployed = MSRASR(upscale=2, deploy=True, **TINY).eval()
    deployed.load_state_dict(state)  # strict: same keys, same shapes
    with torch.no_grad():
        assert (deployed(x) - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize('over', [
    {},
    {'depths': [6], 'attn_transform_kernel': 5},  # a chain: layer 5 inherits from 3, from 1
    {'attn_transform_kernel': 0},
    {'attn_transform_kernel': 1},
    {'shared_attn': 'none'},
    {'csa_dim': 0},
    {'embed_dim': 20, 'num_heads': [4], 'csa_dim': 5},  # odd widths: 5 per head, 15 after F, CSA 5 and 20
    {'window_size': 5, 'csa_scales': [5]},  # shifted by 2: border windows split into regions of unequal sizes
])
@pytest.mark.parametrize('device', DEVICES)
def test_fused_attention_matches_reference(over, device, exact_cuda):
    cfg = dict(TINY, **over)
    net = perturbed(MSRASR(upscale=2, **cfg), seed=3).eval().to(device)
    x = torch.rand(2, 3, 21, 18, device=device)
    with torch.no_grad():
        fused = net(x)
        reference = net.set_attn_impl('reference')(x)
    assert (fused - reference).abs().max().item() < 1e-5


def _qkt_macs(net, x):
    """Multiply-accumulates of the attention matmuls (bmm) in the reference implementation."""
    net.set_attn_impl('reference')
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return counter.get_flop_counts()['Global'].get(torch.ops.aten.bmm, 0) / 2


def test_pair_sharing_drops_qk_weights_and_work():
    cfg = dict(TINY, csa_dim=0)
    pair, none = MSRASR(shared_attn='pair', **cfg), MSRASR(shared_attn='none', **cfg)
    inheriting = [m for m in pair.modules() if isinstance(m, SharedWindowAttention) and not m.computes]
    assert len(inheriting) == 2  # layers 3 and 4 of the one MSTB
    for m in inheriting:
        names = {n for n, _ in m.named_parameters()}
        assert not any(n.startswith(('qkv', 'q.', 'k.')) for n in names)
        assert 'relative_position_bias_table' not in names and 'v.weight' in names
    assert all(m.computes for m in none.modules() if isinstance(m, SharedWindowAttention))
    x = torch.rand(1, 3, 32, 32)
    macs_pair, macs_none = _qkt_macs(pair, x), _qkt_macs(none, x)
    n, c, windows, layers = 64, 12, 16, 4
    qkt = windows * n * n * c  # one layer's q @ k^T, all heads
    assert macs_none - macs_pair == pytest.approx(2 * qkt)  # two layers skip the matching
    assert macs_none == pytest.approx(layers * 2 * qkt)  # QK^T and AV in every layer


@pytest.mark.parametrize('over', [{}, {'shared_attn': 'none'}, {'depths': [6], 'attn_transform_kernel': 5},
                                  {'deploy': True}, {'ms_kernels': [7]}, {'upsampler': 'pixelshuffle'},
                                  {'upsampler': 'nearest+conv', 'resi_connection': '3conv'}])
def test_every_parameter_gets_a_gradient(over):
    """DDP with find_unused_parameters: false needs every parameter in every forward."""
    cfg = dict(TINY, **over)
    up = 4 if cfg.get('upsampler') == 'nearest+conv' else 2
    net = MSRASR(upscale=up, **cfg).train()
    net(torch.rand(2, 3, 16, 24)).mean().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, unused
    # Exact zeros are legitimate only behind the channel attention's ReLU (a dead unit of its tiny MLP).
    zero = [n for n, p in net.named_parameters() if not p.grad.abs().sum() > 0 and '.ca.' not in n]
    assert not zero, zero


def test_forward_mutates_nothing_and_state_dict_round_trips(tmp_path):
    net = perturbed(MSRASR(upscale=2, **TINY)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        out = net(x)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    other = MSRASR(upscale=2, **TINY).eval()
    other.load_state_dict(torch.load(tmp_path / 'net.pth', weights_only=True)['params'])
    with torch.no_grad():
        assert torch.equal(other(x), out)


@pytest.mark.parametrize('device', DEVICES)
def test_bf16_forward_close_to_fp32(device):
    net = MSRASR(upscale=2, **TINY).eval().to(device)
    x = torch.rand(1, 3, 24, 24, device=device)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast(device, dtype=torch.bfloat16):  # how Upscaler and BasicSR's AMP run it
            autocast = net(x).float()
        out = net.to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    for got in (autocast, out):
        assert got.shape == ref.shape
        assert (got - ref).abs().mean().item() < 1e-2
        assert (got - ref).abs().max().item() < 0.1


@pytest.mark.parametrize('device', DEVICES)
def test_bf16_autocast_training_step_close_to_fp32(device):
    """A training step under autocast (as ``speed.py --dtype bf16`` and mixed-precision trainers run it)
    goes through every written-out backward (the CPU's split depth-wise convs, chunked attention, Q' and
    K') and gives gradients pointing where fp32's do."""
    torch.manual_seed(0)
    net = MSRASR(upscale=2, **TINY).train().to(device)
    x, target = torch.rand(2, 3, 24, 24, device=device), torch.rand(2, 3, 48, 48, device=device)
    grads = []
    for autocast in (False, True):
        net.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = net(x)
        (out.float() - target).abs().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    fp32, bf16 = grads
    assert torch.isfinite(bf16).all()
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=0).item() > 0.99


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_attention_runs_on_fused_kernels_only(device, dtype, monkeypatch):
    """With SDPA's math fallback switched off, every attention call must find a fused kernel (else SDPA
    raises): the fallback would silently build every N x N map. CPU: its one fused kernel, for inference
    (training attends explicitly). CUDA: memory-efficient (or flash), for inference and training."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from msrasr_arch.archs import backend
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    monkeypatch.setattr(backend, '_CUDA_BACKENDS', fused)
    for over in ({}, {'embed_dim': 20, 'num_heads': [4], 'csa_dim': 5}):
        net = perturbed(MSRASR(upscale=2, **dict(TINY, **over))).to(device)
        x = torch.rand(2, 3, 21, 18, device=device)
        with sdpa_kernel(fused), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            with torch.no_grad():
                assert torch.isfinite(net.eval()(x)).all()
            if device == 'cuda':
                net.train()(x).float().mean().backward()
                assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_same_seed_same_output():
    def run():
        torch.manual_seed(123)
        net = MSRASR(upscale=2, **TINY).eval()
        with torch.no_grad():
            return net(torch.rand(1, 3, 16, 16))

    assert torch.equal(run(), run())


@pytest.mark.parametrize('name', sorted(PAPER))
def test_parameter_counts_match_paper(name):
    params, _ = PAPER[name]
    assert abs(profile(get_preset(name))['params'] - params) / params < 0.03


def test_every_preset_builds():
    from msrasr_arch.archs.profile import build_on_meta
    for name in PRESETS:
        assert sum(p.numel() for p in build_on_meta(get_preset(name)).parameters()) > 0


def test_import_order():
    code = ('import msrasr_arch, msrasr_arch, importlib; import basicsr; '
            'from basicsr.utils.registry import ARCH_REGISTRY; assert "MSRASR" in ARCH_REGISTRY')
    subprocess.run([sys.executable, '-c', code], check=True)
    code = ('import msrasr_arch._compat, basicsr; import msrasr_arch; '
            'from basicsr.utils.registry import ARCH_REGISTRY; assert "MSRAGANNet" in ARCH_REGISTRY')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_profile_command_prints_table():
    # Both command lines in one subprocess (tests/cli_driver.py): an interpreter start costs seconds.
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), 'cli_driver.py')],
                          input=json.dumps([['profile', '-opt', 'nope.yml'], ['profile', '-opt', 'light_x2']]),
                          check=True, capture_output=True, text=True)
    (bad_code, _, bad_err), (code, out, _) = json.loads(proc.stdout)
    assert bad_code == 2 and bad_err.count('\n') == 1 and 'nope.yml' in bad_err
    row = next(line for line in out.splitlines() if line.startswith('light_x2'))
    assert code == 0 and '747.3K' in row and '512x360 (512x368)' in row


def test_msdwconv_training_merge_matches_branches():
    """Training runs the merged kernel; outputs and every branch's gradient equal the literal branches'."""
    conv = perturbed(MSDWConv(channels=4, kernels=(1, 3, 5, 7)), scale=0.3)
    x = torch.rand(2, 4, 10, 9)
    grad = torch.rand(2, 4, 10, 9)
    conv.train()(x).backward(grad)
    merged = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    literal = sum(b(x) for b in conv.branches)
    literal.backward(grad)
    assert torch.allclose(conv.train()(x), literal, atol=1e-5)
    for got, want in zip(merged, (p.grad for p in conv.parameters())):
        assert torch.allclose(got, want, atol=1e-4)


def test_graph_capture_path_matches_grouped_windows(monkeypatch):
    """While tracing/exporting, shifted windows use one folded mask instead of the cached groups, and the
    inheriting layers build Q' and K' with the plain operators instead of sliding unfolds."""
    from msrasr_arch.archs import shared_attention, window
    plain, plain_calls = shared_attention._factors, []

    def counted(*args):
        plain_calls.append(args)
        return plain(*args)

    monkeypatch.setattr(shared_attention, '_factors', counted)
    net = perturbed(MSRASR(upscale=2, **TINY)).eval()
    x = torch.rand(2, 3, 21, 18)
    with torch.no_grad():
        grouped = net(x)
        assert not plain_calls
        monkeypatch.setattr(window, 'capturing_for_all_sizes', lambda: True)
        folded = net(x)
    assert len(plain_calls) == sum(1 for m in net.modules() if getattr(m, 'transform', None) is not None)
    assert (grouped - folded).abs().max().item() < 1e-6


def _assert_training_matches_reference(net, x):
    """The training-mode network's output and every parameter's gradient, fused (the C++ kernel on the CPU
    where it is built) and in PyTorch operators, against reference."""
    results = {}
    for impl in ('fused', 'operators', 'reference'):
        net.zero_grad()
        out = net.set_attn_impl(impl)(x)
        (out * torch.linspace(0, 1, out.numel(), device=x.device).view_as(out)).sum().backward()
        results[impl] = (out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()})
    out_r, g_r = results.pop('reference')
    for impl, (out_f, g_f) in results.items():
        assert (out_f - out_r).abs().max().item() < 1e-5, impl
        for name, g in g_r.items():
            assert torch.allclose(g_f[name], g, rtol=1e-3, atol=1e-5), (impl, name)


@pytest.mark.parametrize('over', [{}, {'depths': [6], 'attn_transform_kernel': 5}, {'attn_transform_kernel': 0},
                                  {'window_size': 5, 'csa_scales': [5]}])
@pytest.mark.parametrize('device', DEVICES)
def test_fused_training_path_matches_reference_gradients(over, device, exact_cuda):
    """Training attends explicitly per window group on CPU, through SDPA on CUDA; outputs and every gradient
    match the materialised reference, shifted windows included (batch 2, 3x3 windows: all four mask groups,
    border windows region by region; window 5 shifted by 2 gives regions of unequal sizes)."""
    cfg = dict(TINY, **over)
    net = perturbed(MSRASR(upscale=2, **cfg), seed=5).train().to(device)
    _assert_training_matches_reference(net, torch.rand(2, 3, 21, 18, device=device))


def test_sdpa_training_path_matches_reference_gradients(monkeypatch):
    """The CUDA training form (SDPA under autograd, border windows region by region through gathers), run
    on the CPU: outputs and every gradient match the materialised reference, at an even window and at an
    odd one (regions of unequal sizes)."""
    from msrasr_arch.archs import msrasr_arch as arch_module
    from msrasr_arch.archs.backend import Backend, choose_backend

    def sdpa_in_training(device, training, reference=False, kernels=True, dtype=torch.float32):
        if training and not reference:
            return Backend('sdpa', head_multiple=8)
        return choose_backend(device, training, reference, kernels, dtype)

    monkeypatch.setattr(arch_module, 'choose_backend', sdpa_in_training)
    for over in ({}, {'window_size': 5, 'csa_scales': [5]}):
        net = perturbed(MSRASR(upscale=2, **dict(TINY, **over)), seed=6).train()
        _assert_training_matches_reference(net, torch.rand(2, 3, 21, 18))
        assert {m.backend.name for m in net.set_attn_impl('fused').modules() if hasattr(m, 'backend')} == {'sdpa'}


def test_shifted_factors_equal_f_of_logits():
    """Q' K'^T equals F applied to q k^T (zero padding), at every padded width, in the unfold form and in
    the plain one (graph capture), which also agree with each other."""
    from msrasr_arch.archs.shared_attention import _shifted_factors
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 2, 9, 5, generator=g), torch.randn(3, 2, 9, 5, generator=g)
    w = torch.randn(2, 3, 3, generator=g)
    want = torch.nn.functional.conv2d(q @ k.transpose(-2, -1), w.unsqueeze(1), padding=1, groups=2)
    for width in (15, 16, 32):
        forms = [_shifted_factors(q, k, w, width, plain) for plain in (False, True)]
        for qq, kk in forms:
            assert qq.shape == kk.shape == (3, 2, 9, width)
            assert torch.allclose(qq @ kk.transpose(-2, -1), want, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*forms))


@pytest.mark.parametrize('plain', [False, True])
@pytest.mark.parametrize('size', [1, 3, 5])
def test_shifted_factors_gradients(size, plain):
    """Q' and K''s gradients against finite differences (float64), for q, k and F's kernel, written out
    (the default form) or by autograd (the plain form graph capture records), with zero padding channels, from
    non-contiguous q and k as the attention passes them."""
    from msrasr_arch.archs.shared_attention import _shifted_factors
    g = torch.Generator().manual_seed(1)
    qk = torch.randn(2, 7, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, size, size, generator=g, dtype=torch.float64, requires_grad=True)

    def factors(qk, w):
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # (2, 2, 7, 3) views, token-major underneath
        return _shifted_factors(q, k, w, size * 3 + 2, plain)

    assert torch.autograd.gradcheck(factors, (qk, w))


@pytest.mark.parametrize('ws, kernel', [(16, 3), (5, 3), (4, 5), (3, 1)])
def test_transform_on_distinct_values_is_the_conv_over_the_map(ws, kernel):
    """F computed on a bias's distinct values and gathered equals F as a zero-padded conv over the N x N map,
    for the position bias and for a chain (F over F(B)), with gradients (float64) for the table and both
    kernels; the light models' window 16 and 3x3 F need 3653 values for 65536 entries."""
    from torch.nn.functional import conv2d
    from msrasr_arch.archs.bias_maps import gather_map, map_index, transform_keys, transform_values
    g = torch.Generator().manual_seed(2)
    h, n = 2, ws * ws
    table = torch.randn((2 * ws - 1)**2, h, generator=g, dtype=torch.float64, requires_grad=True)
    convs = [(torch.randn(h, 1, kernel, kernel, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(h, generator=g, dtype=torch.float64, requires_grad=True)) for _ in range(2)]

    def by_conv(table, *params):
        maps = [gather_map(table, map_index(ws, kernel, 0))]
        for w, b in zip(params[::2], params[1::2]):
            maps.append(conv2d(maps[-1][None], w, b, padding=kernel // 2, groups=h)[0])
        return maps

    def by_values(table, *params):
        values, maps = table, [gather_map(table, map_index(ws, kernel, 0))]
        for level, (w, b) in enumerate(zip(params[::2], params[1::2]), 1):
            values = transform_values(values, transform_keys(ws, kernel, level), w, b)
            maps.append(gather_map(values, map_index(ws, kernel, level)))
        return maps

    inputs = (table, *[p for conv in convs for p in conv])
    want, got = by_conv(*inputs), by_values(*inputs)
    assert [m.shape for m in got] == [(h, n, n)] * 3
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)
    weights = [torch.randn(m.shape, generator=g, dtype=torch.float64) for m in want]
    grads = [torch.autograd.grad(sum((m * w).sum() for m, w in zip(f(*inputs), weights)), inputs)
             for f in (by_conv, by_values)]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)
    if (ws, kernel) == (16, 3):
        assert transform_keys(ws, kernel, 1).shape == (9, 3653)


@pytest.mark.parametrize('ws, s', [(8, 4), (5, 2)])  # equal regions, and regions of three sizes
def test_grouped_window_layout_is_roll_plus_partition(ws, s):
    """The grouped layout's partition is the rolled raster partition, reordered so that every group is one
    contiguous slice of windows whose tokens split into the same regions; reverse inverts it, and so do the
    gradients. Two tokens share a region exactly where the raster mask lets them attend, every token is in
    one part, each part's blocks are its regions' blocks of a map, and the inverse order undoes the parts'."""
    from msrasr_arch.archs.window import window_layout, window_partition
    b, h, w = 2, 3 * ws, 5 * ws
    layout = window_layout(b, h, w, window_size=ws, shift=s, device='cpu', dtype=torch.float32)
    raster_layout = window_layout(b, h, w, window_size=ws, shift=s, device='cpu', dtype=torch.float32, grouped=False)
    raster_mask = raster_layout.mask
    x = torch.randn(b, h, w, 3, requires_grad=True)
    grouped = layout.partition(x)
    raster = raster_layout.partition(x).view(b, -1, ws * ws, 3)
    assert torch.equal(raster_layout.reverse(raster.reshape(-1, ws * ws, 3)), x)
    assert torch.equal(layout.reverse(grouped), x)
    weights = torch.randn(grouped.shape)
    (grad, ) = torch.autograd.grad((grouped * weights).sum(), x)
    assert torch.equal(grad, layout.reverse(weights))
    assert [g.count for g in layout.groups] == [2 * 2 * 4, 2 * 2, 2 * 4, 2]
    assert [g.start for g in layout.groups] == [0, 16, 20, 28]
    assert [len(g.parts) for g in layout.groups] == ([1, 1, 1, 1] if 2 * s == ws else [1, 2, 2, 3])
    n, nww = ws * ws, w // ws
    maps = torch.randn(2, n, n)
    for group in layout.groups:
        region = torch.full((n, ), -1)
        for part in group.parts:
            tokens = torch.arange(n) if part.tokens is None else part.tokens
            assert tokens.shape == (part.regions * part.size, ) and (region[tokens] == -1).all()
            region[tokens] = region.max() + 1 + torch.arange(part.regions).repeat_interleave(part.size)
            for r, t in enumerate(tokens.view(part.regions, part.size)):
                assert torch.equal(part.blocks(maps)[:, r], maps[:, t][:, :, t])
        assert (region >= 0).all()
        order = torch.cat([torch.arange(n) if p.tokens is None else p.tokens for p in group.parts])
        assert torch.equal(order if group.inverse is None else order[group.inverse], torch.arange(n))
        for i in range(group.start, group.start + group.count):
            window = grouped[i]  # find it in the raster order: its mask must separate exactly its regions
            hits = [(bi, j) for bi in range(b) for j in range(raster.shape[1]) if torch.equal(raster[bi, j], window)]
            assert len(hits) == 1
            j = hits[0][1]
            assert torch.equal(raster_mask[j] == 0, region[:, None] == region[None, :])
            assert (len(group.parts) == 1 and group.parts[0].regions == 1) == (j // nww < h // ws - 1
                                                                              and j % nww < nww - 1)


def test_backend_decided_by_device_and_mode():
    """The attention backend is chosen when the network is built, moved or switched between train and eval,
    and every attention module holds the same choice."""
    from msrasr_arch.archs.cross_scale_attention import CrossScaleAttention

    def backends(net):
        return {m.backend for m in net.modules() if isinstance(m, (SharedWindowAttention, CrossScaleAttention))}

    def operators(net):
        return {b.operators for b in backends(net)}

    net = MSRASR(upscale=2, **TINY)
    # The C++ kernel where it is built (see test_native_attention.py), PyTorch operators otherwise; the
    # cross-scale attention always runs on SDPA.
    kernel = native.library() is not None
    want = {'native', 'chunked'} if kernel else {'chunked'}
    assert {(b.name, b.split_dw_backward) for b in backends(net.train())} == {(name, True) for name in want}
    assert {(b.name, b.split_dw_backward) for b in operators(net)} == {('chunked', True)}
    want = {'native', 'sdpa'} if kernel else {'sdpa'}
    assert {(b.name, b.split_dw_backward) for b in backends(net.eval())} == {(name, False) for name in want}
    assert {(b.name, b.head_multiple) for b in operators(net)} == {('sdpa', 16)}
    assert {b.name for b in backends(net.set_attn_impl('operators'))} == {'sdpa'}
    # float64 stays in PyTorch operators: the kernel computes in float32.
    assert {(b.name, b.head_multiple) for b in backends(net.set_attn_impl('fused').to(torch.float64))} == {('sdpa', 16)}
    assert {b.name for b in backends(net.set_attn_impl('reference').train())} == {'reference'}
    with torch.device('meta'):
        assert {(b.name, b.head_multiple) for b in backends(MSRASR(upscale=2, **TINY))} == {('sdpa', 1)}


def _compiled_matches_eager(device, sizes):
    net = perturbed(MSRASR(upscale=2, **TINY)).eval().to(device)
    compiled = torch.compile(net, backend='aot_eager', fullgraph=True)
    for size in sizes:
        x = torch.rand(2, 3, *size, device=device)
        with torch.no_grad():
            assert (compiled(x) - net(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize('device', DEVICES)
def test_torch_compile_matches_eager(device):
    """Under torch.compile the grouped window layout is built inside the graph (no cache), one graph in
    all: same output.
    The aot_eager backend runs the captured graph without generating C++, so no compiler is needed."""
    _compiled_matches_eager(device, [(21, 18)])


def test_torch_compile_training_step_matches_eager():
    """A compiled training forward and backward (the CPU training backend: chunked attention, depth-wise
    gradients as convs, the grouped window layout built inside the graph) is one graph and gives eager's
    gradients."""
    net = perturbed(MSRASR(upscale=2, **TINY), seed=7).train()
    compiled = torch.compile(net, backend='aot_eager', fullgraph=True)
    x = torch.rand(2, 3, 21, 18)
    grads = []
    for model in (compiled, net):
        net.zero_grad()
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name, g in grads[1].items():
        assert torch.allclose(grads[0][name], g, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize('device', DEVICES)
def test_torch_compile_recompiles_with_symbolic_sizes(device):
    """A second size makes torch.compile recompile with symbolic sizes, where the raster layout is used.
    About a minute of tracing on 2 cores, hence slow: `pytest -m slow`."""
    _compiled_matches_eager(device, [(21, 18), (30, 40)])


@pytest.mark.parametrize('keep_bytes', [0, 2**30])  # probabilities recomputed in the backward, or kept
@pytest.mark.parametrize('chunk_bytes', [1, 3 * 4 * 2 * 9 * 9, 2**30])  # one window, three, all at once
def test_chunked_attention_matches_autograd(chunk_bytes, keep_bytes, monkeypatch):
    """CPU training attention: output and the gradients of q, k, v and the broadcast bias equal autograd's
    through the materialised maps with the shift masks, whatever the chunking (a group of 4 whole windows,
    one of 3 corner windows of a 3x3 window shifted by 1: regions of 4, 2, 2 and 1 tokens in three parts;
    chunks of 1, 3 or all windows never straddle them), with the probabilities kept for the backward or
    recomputed there."""
    from msrasr_arch.archs import chunked_attention as ca
    from msrasr_arch.archs.window import WindowGroup, _mask, _split, whole_windows
    monkeypatch.setattr(ca, 'CHUNK_BYTES', chunk_bytes)
    monkeypatch.setattr(ca, 'KEEP_BYTES', keep_bytes)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(7, 2, 9, 5, generator=g, requires_grad=True) for _ in range(2))
    v = torch.randn(7, 2, 9, 3, generator=g, requires_grad=True)
    bias = torch.randn(1, 2, 9, 9, generator=g, requires_grad=True)
    corner_mask = _mask(6, 6, 3, 1, torch.device('cpu'), torch.float32)[3]
    grad = torch.randn(7, 2, 9, 3, generator=g)
    masks = torch.cat([bias.expand(4, -1, -1, -1), (bias + corner_mask).expand(3, -1, -1, -1)])
    want = (q @ k.transpose(-2, -1) + masks).softmax(dim=-1) @ v
    want_grads = torch.autograd.grad(want, (q, k, v, bias), grad)
    groups = (whole_windows(4, 9), WindowGroup(4, 3, *_split(3, 1, True, True, torch.device('cpu'))))
    assert len(groups[1].parts) == 3
    got = ca.chunked_attention(q, k, v, bias, groups)
    got_grads = torch.autograd.grad(got, (q, k, v, bias), grad)
    assert torch.allclose(got, want, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('k', [1, 3, 7])
def test_split_depthwise_backward_matches_autograd(k):
    """The CPU training form of a depth-wise conv: the same output and the same gradients of input, weight
    and bias as autograd's conv, on a channels-last input like the FFN's."""
    from msrasr_arch.archs.depthwise import depthwise_conv2d
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3, 9, 11, 5, generator=g).permute(0, 3, 1, 2).requires_grad_()
    weight = torch.randn(5, 1, k, k, generator=g, requires_grad=True)
    bias = torch.randn(5, generator=g, requires_grad=True)
    grad = torch.randn(3, 5, 9, 11, generator=g)
    outs = [depthwise_conv2d(x, weight, bias, split_backward=split) for split in (True, False)]
    grads = [torch.autograd.grad(out, (x, weight, bias), grad) for out in outs]
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-4)
