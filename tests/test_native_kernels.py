"""The C++ CPU kernels (msrasr_arch/archs/native): built, the window attention equal to autograd through the
materialised maps and the depth-wise conv to PyTorch's, and switched off cleanly where they cannot serve."""
import shutil
import warnings

import pytest
import torch
from torch.nn import functional as F

from msrasr_arch.archs import MSRASR, native
from msrasr_arch.archs.bias_maps import gather_map
from msrasr_arch.archs.depthwise import depthwise_conv2d
from msrasr_arch.archs.native_attention import native_attention
from msrasr_arch.archs.window import WindowGroup, _mask, _split, relative_position_index, whole_windows

COMPILER = native._compiler()

needs_kernel = pytest.mark.skipif(COMPILER is None, reason='no C++ compiler on this machine: the kernel cannot be built')


def test_kernel_builds_where_a_compiler_is():
    """With a C++ compiler on the machine (CI has one) the kernel must build and load; without one the
    networks must fall back to PyTorch's operators, not fail."""
    if COMPILER is None:
        assert native.library() is None
    else:
        assert native.library() is not None, f'{COMPILER} is here, yet the window attention kernel did not build'


def _materialised(q, k, v, masks):
    return (q @ k.transpose(-2, -1) + masks).softmax(dim=-1) @ v


@needs_kernel
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('e, c', [(5, 3), (10, 10), (30, 10), (17, 33)])
def test_matches_autograd_with_border_regions(e, c, threads, monkeypatch):
    """Output and the gradients of q, k, v and the broadcast bias equal autograd's through the materialised
    maps with the shift masks: a group of 4 whole windows of 9 tokens and one of 3 corner windows of a 3x3
    window shifted by 1 (regions of 4, 2, 2 and 1 tokens in three parts; rows fewer than a vector), at head
    widths below, at and above one vector; q, k, v and the output token-major, as the network lays them
    out. Three threads split a window's heads and a head's regions between them."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(7, 9, 2, e, generator=g).transpose(1, 2).requires_grad_() for _ in range(2))
    v = torch.randn(7, 9, 2, c, generator=g).transpose(1, 2).requires_grad_()
    bias = torch.randn(1, 2, 9, 9, generator=g, requires_grad=True)
    corner_mask = _mask(6, 6, 3, 1, torch.device('cpu'), torch.float32)[3]
    grad = torch.randn(7, 2, 9, c, generator=g)
    masks = torch.cat([bias.expand(4, -1, -1, -1), (bias + corner_mask).expand(3, -1, -1, -1)])
    want = _materialised(q, k, v, masks)
    want_grads = torch.autograd.grad(want, (q, k, v, bias), grad)
    groups = (whole_windows(4, 9), WindowGroup(4, 3, *_split(3, 1, True, True, torch.device('cpu'))))
    got = native_attention(q, k, v, bias, groups)
    got_grads = torch.autograd.grad(got, (q, k, v, bias), grad)
    assert torch.allclose(got, want, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize('n', [256, 100])
def test_matches_autograd_at_window_size(n):
    """A window of 16 (256 tokens: eight panels of rows) and one of 100 tokens (logit rows padded to 128),
    three windows x 6 heads, logits of tens (exponentials over many orders of magnitude): output and every
    gradient as close to float64's as PyTorch's own float32 autograd through the materialised maps is, within
    a few float32 roundings of a 256-term sum (the kernel sums dV and dK over the rows in order)."""
    g = torch.Generator().manual_seed(1)
    q = (3 * torch.randn(3, 6, n, 10, generator=g)).requires_grad_()
    k = (3 * torch.randn(3, 6, n, 10, generator=g)).requires_grad_()
    v = torch.randn(3, 6, n, 10, generator=g, requires_grad=True)
    bias = torch.randn(1, 6, n, n, generator=g, requires_grad=True)
    grad = torch.randn(3, 6, n, 10, generator=g)
    inputs = (q, k, v, bias)
    exact = _materialised(*(t.double() for t in inputs))
    exact = (exact, *torch.autograd.grad(exact, inputs, grad.double()))
    fp32 = _materialised(*inputs)
    fp32 = (fp32, *torch.autograd.grad(fp32, inputs, grad))
    got = native_attention(*inputs)
    got = (got, *torch.autograd.grad(got, inputs, grad))
    for a, b, want in zip(got, fp32, exact):
        rounding = (b.double() - want).abs().max().item()
        assert (a.double() - want).abs().max().item() <= 4 * rounding + 1e-6 * want.abs().max().item()


@needs_kernel
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('ws, shift', [(3, 1), (16, 8)])
def test_position_table_matches_the_gathered_map(ws, shift, threads, monkeypatch):
    """Read from a relative-position table (a computing layer's), the bias is the map SwinIR's index gathers
    from it: output and the gradients of q, k, v and the table equal the same kernel's with that map
    gathered by autograd, for whole windows and for the corner windows' regions (the table's gradient summed
    over the regions' blocks). Three threads split a head's regions between them."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    g = torch.Generator().manual_seed(6)
    n, h = ws * ws, 3
    q, k, v = (torch.randn(5, h, n, 10, generator=g).requires_grad_() for _ in range(3))
    table = torch.randn((2 * ws - 1)**2, h, generator=g, requires_grad=True)
    grad = torch.randn(5, h, n, 10, generator=g)
    groups = (whole_windows(3, n), WindowGroup(3, 2, *_split(ws, shift, True, True, torch.device('cpu'))))
    index = relative_position_index(ws)
    via_map = native_attention(q, k, v, gather_map(table, index).unsqueeze(0), groups)
    want = (via_map, *torch.autograd.grad(via_map, (q, k, v, table), grad))
    got = native_attention(q, k, v, table, groups)
    got = (got, *torch.autograd.grad(got, (q, k, v, table), grad))
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


@needs_kernel
def test_inference_and_bf16():
    """Without gradients nothing is kept for a backward and the result is the same; bf16 inputs (autocast)
    are computed in float32 and returned as bf16."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 64, 10, generator=g) for _ in range(3))
    bias = torch.randn(1, 3, 64, 64, generator=g)
    want = _materialised(q, k, v, bias)
    with torch.no_grad():
        assert torch.allclose(native_attention(q, k, v, bias), want, atol=1e-6)
    got = native_attention(*(t.bfloat16() for t in (q, k, v, bias)))
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max().item() < 0.05


@needs_kernel
def test_shape_and_layout_errors():
    q = torch.zeros(2, 3, 9, 5)
    v, out, bias = torch.zeros(2, 3, 9, 4), torch.zeros(2, 3, 9, 4), torch.zeros(3, 9, 9)
    with pytest.raises(ValueError, match='do not agree'):
        native.forward(q, q, v, out, torch.zeros(2, 9, 9))
    with pytest.raises(ValueError, match='do not agree'):
        native.forward(q, q, v, out, bias, tokens=torch.arange(9), regions=2)
    with pytest.raises(ValueError, match='contiguous last dimension'):
        native.forward(q, q.transpose(2, 3).contiguous().transpose(2, 3), v, out, bias)
    with pytest.raises(ValueError, match='float32'):
        native.forward(q, q.double(), v, out, bias)
    with pytest.raises(ValueError, match='do not agree'):
        native.forward(q, q, v, out, torch.zeros(24, 3))  # a 3x3 window's table has 25 rows
    with pytest.raises(ValueError, match='square windows'):
        native.forward(*(torch.zeros(2, 3, 8, 4) for _ in range(4)), torch.zeros(25, 3))


@needs_kernel
def test_reads_and_writes_in_place_through_strides():
    """q, k, v as the computing layer's views of one token-major qkv tensor and the output token-major: the
    kernel reads and writes them where they lie (nothing else of the buffers is touched)."""
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 16, 3, 2, 8, generator=g)  # (windows, tokens, q/k/v, heads, width)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    bias = torch.randn(2, 16, 16, generator=g)
    storage = torch.full((2, 16, 2, 8 + 3), 7.0)
    out = storage[..., :8].transpose(1, 2)
    native.forward(q, k, v, out, bias)
    assert torch.allclose(out, _materialised(q, k, v, bias), atol=1e-6)
    assert (storage[..., 8:] == 7).all()

def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv('MSRASR_NATIVE', '0')
    assert native.library.__wrapped__() is None


@needs_kernel
def test_build_failure_warns_and_falls_back(tmp_path, monkeypatch):
    """A kernel that does not compile leaves a warning naming the compiler's complaint and no library (the
    networks then attend with PyTorch operators); nothing is left half-written in the cache."""
    bad = tmp_path / 'window_attention.cpp'
    bad.write_text('this is not C++\n')
    monkeypatch.setattr(native, '_SOURCES', [bad])
    monkeypatch.setenv('MSRASR_CACHE', str(tmp_path / 'cache'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert native.library.__wrapped__() is None
    assert any('kernel unavailable' in str(w.message) and 'window_attention.cpp' in str(w.message) for w in caught)
    assert not list((tmp_path / 'cache').iterdir())


@needs_kernel
def test_cache_reused(tmp_path, monkeypatch):
    """Built once into the cache folder, then loaded from it."""
    monkeypatch.setenv('MSRASR_CACHE', str(tmp_path))
    first = native._build(COMPILER)
    stamp = first.stat().st_mtime_ns
    assert native._build(COMPILER) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


@needs_kernel
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('b, c, h, w, k', [(2, 120, 16, 16, 7), (1, 12, 5, 7, 3), (2, 10, 9, 6, 5), (1, 8, 2, 3, 7),
                                           (1, 16, 4, 4, 1)])
def test_depthwise_conv_matches_pytorch(b, c, h, w, k, threads, monkeypatch):
    """Output and the gradients of x, weight and bias equal PyTorch's conv in float64 to float32 rounding:
    channels not a multiple of a vector, widths not a multiple of the kernel's four pixels, images smaller
    than the kernel, a 1x1 kernel; channels-last in and out, as the FFN runs it."""
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(b, h, w, c, generator=g).permute(0, 3, 1, 2).requires_grad_()
    weight = torch.randn(c, 1, k, k, generator=g, requires_grad=True)
    bias = torch.randn(c, generator=g, requires_grad=True)
    grad = torch.randn(b, c, h, w, generator=g)
    want = F.conv2d(x.double(), weight.double(), bias.double(), padding=k // 2, groups=c)
    want_grads = torch.autograd.grad(want, (x, weight, bias), grad.double())
    got = depthwise_conv2d(x, weight, bias, split_backward=False, kernel=True)
    assert got.is_contiguous(memory_format=torch.channels_last)
    got_grads = torch.autograd.grad(got, (x, weight, bias), grad)
    for a, ref in zip((got, *got_grads), (want, *want_grads)):
        assert a.shape == ref.shape and (a.double() - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())


@needs_kernel
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('size, e, n, extra', [(3, 10, 256, 0), (3, 7, 37, 3), (5, 4, 9, 0), (1, 6, 5, 2),
                                               (5, 3, 2, 1)])
def test_shared_map_factors_match_the_operators(size, e, n, extra, threads, monkeypatch):
    """Q', K' and the gradients of q, k and the F kernel equal the plain operators' in float64 to float32
    rounding: q and k token-major views of one qkv tensor (as a computing layer hands them on), kernels of 1,
    3 and 5 taps, windows shorter than the kernel, zero channels past the blocks; a window's heads split
    between three threads."""
    from msrasr_arch.archs.shared_attention import _factors, _shifted_factors
    monkeypatch.setattr(torch, 'get_num_threads', lambda: threads)
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(3, n, 3, 4, e, generator=g, requires_grad=True)
    w = torch.randn(4, size, size, generator=g, requires_grad=True)
    width = size * e + extra
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    grads = [torch.randn(3, 4, n, width, generator=g) for _ in range(2)]
    want = _factors(q.double(), k.double(), w.double(), width)
    want_grads = torch.autograd.grad(want, (qkv, w), [t.double() for t in grads])
    got = _shifted_factors(q, k, w, width, kernel=True)
    assert all(t.is_contiguous() for t in got)
    got_grads = torch.autograd.grad(got, (qkv, w), grads)
    for a, ref in zip((*got, *got_grads), (*want, *want_grads)):
        assert a.shape == ref.shape and (a.double() - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())
    # Only what autograd asks for is computed: k's and the kernel's gradients without q's.
    dq, dk, dtaps = native.factors_backward(k, w.detach(), *grads, needs=(False, True, True))
    assert dq is None and torch.allclose(dk, want_grads[0][:, :, 1].transpose(1, 2).float(), atol=1e-5)


@needs_kernel
def test_shared_map_factor_errors():
    q = torch.randn(2, 3, 8, 5)
    with pytest.raises(ValueError, match='q .* do not agree'):
        native.factors(q, q, torch.randn(3, 3, 3), 14)  # width below 3 blocks of 5
    with pytest.raises(ValueError, match='float32 CPU tensor'):
        native.factors(q.double(), q.double(), torch.randn(3, 3, 3), 15)


def test_float64_network_keeps_operators():
    """The kernel computes in float32, so a float64 network attends with PyTorch's operators in float64:
    its eval forward equals the reference to float64 rounding."""
    torch.manual_seed(0)
    net = MSRASR(upscale=2, in_chans=3, window_size=4, depths=[2], embed_dim=12, num_heads=[2], mlp_ratio=2,
                 csa_dim=4, csa_scales=[2]).double().eval()
    x = torch.rand(1, 3, 10, 9, dtype=torch.float64)
    with torch.no_grad():
        fused = net(x)
        reference = net.set_attn_impl('reference')(x)
    assert (fused - reference).abs().max().item() < 1e-12


def test_no_compiler_no_kernel(monkeypatch):
    monkeypatch.delenv('MSRASR_NATIVE', raising=False)
    monkeypatch.delenv('CXX', raising=False)
    monkeypatch.setattr(shutil, 'which', lambda name: None)
    assert native.library.__wrapped__() is None
