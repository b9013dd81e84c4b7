"""Component timings behind choices of the CPU training path, each beside the form it replaced: one process,
interleaved rounds, median milliseconds of forward + backward.

    python benchmarks/components.py                 # 2 threads, 12 rounds
    python benchmarks/components.py --rounds 30
    python benchmarks/components.py --sections attention

* ``bias maps``: a computing layer's position bias and an inheriting layer's ``F`` over it, as one
  training step of light x2 uses them (window 16, 6 heads): ``F`` on the bias's distinct values and both
  maps gathered (current), against the previous form: the table gathered with ``index_select``, ``F`` a
  conv over the channels-last ``(1, h, N, N)`` map with oneDNN's backward, the map made contiguous for
  the attention.
* ``Q' and K'``: an inheriting layer's factors at window 16, 6 heads of 10 channels padded to 32, from the
  token-major q and k of 64 windows (batch 4 of 64x64 LR patches). Forward alone (inference): sliding
  unfolds and one matmul (current) against the plain operators that graph capture records (which inference
  ran before). Forward + backward (training): current against the previous form: each ``K'`` block a sum of
  products started from 0, stacked, transposed and padded in three copies, all gradients through autograd.
  Where the C++ kernels are built, also the ``native`` backend's factors (``factors.cpp``) against these
  operators at width 30, for the 4 windows of LR patch 16 and the 64 of patch 64.
* ``depth-wise weight gradient``: 7x7 over a channels-last (4, 120, P, P) map, the FFN's, with the batch
  folded into the channels image-major (current) against channel-major after padding (previous).
* ``shifted windows``: the CPU training attention of one shifted layer (window 16, 6 heads of width 16,
  batch 4 of P x P LR patches), border windows region by region (current) against every window whole with
  its group's shift mask added to the bias (previous), forward + backward of q, k, v and the bias.
* ``window attention``: one layer's attention over 64 windows (batch 4 of 64x64 LR patches at window 16),
  6 heads, q and k of width 10 (a computing layer) or 30 (an inheriting layer's Q' and K'), v of width 10:
  the C++ kernel (``native``, current on the CPU where it builds) against the PyTorch-operator forms it
  replaced, heads padded as they pad them: ``chunked`` for training (forward + backward of q, k, v and the
  bias), SDPA for inference (forward).
* ``Adam`` and ``EMA``: one optimiser step and one EMA update (decay 0.999) over the parameters of
  MSRA-SR-light x2 (458 tensors) and of BasicSR's SwinIR-light x2 (330), as ``basicsr train`` runs them
  with MSRASRModel: Adam fused, the EMA as two multi-tensor operations; against PyTorch's default Adam
  on the CPU (a loop over the tensors) and BasicSR's EMA loop. Not forward + backward: the step alone.

Each pair also prints how far apart the two forms' results are. Run on quiet cores.
"""
import argparse
import os
import statistics
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msrasr_arch.archs import native  # noqa: E402
from msrasr_arch.archs.backend import choose_backend  # noqa: E402
from msrasr_arch.archs.chunked_attention import chunked_attention  # noqa: E402
from msrasr_arch.archs.native_attention import native_attention  # noqa: E402
from msrasr_arch.archs.depthwise import depthwise_weight_grad  # noqa: E402
from msrasr_arch.archs.shared_attention import SharedWindowAttention, _shifted_factors  # noqa: E402
from msrasr_arch.archs.window import _mask, window_layout  # noqa: E402
from msrasr_arch.models.sr_model import ema_update_  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import ADAM, build, cpu_name, interleaved_times  # noqa: E402


def _previous_factors(q, k, w, width):
    """Q' and K' as built before (the K' layout in three copies, gradients through autograd)."""
    bw, h, n, e = q.shape
    size = w.shape[-1]
    r, wide = size // 2, size * e
    qp = F.pad(q, (0, 0, r, r))
    q_out = torch.cat([qp[..., a:a + n, :] for a in range(size)] + [qp.new_zeros(bw, h, n, width - wide)], -1)
    kp = F.pad(k, (0, 0, r, r)).reshape(bw, h, -1)
    rows = [kp[..., b * e:(b + n) * e] for b in range(size)]
    taps = w.unsqueeze(-1)
    acc = torch.stack([sum(taps[:, a, b] * rows[b] for b in range(size)) for a in range(size)], 2)
    k_out = F.pad(acc.view(bw, h, size, n, e).transpose(2, 3).reshape(bw, h, n, wide), (0, width - wide))
    return q_out, k_out


def compare(forms, rounds, reps=3):
    """Median ms per call of each form, timed in interleaved rounds of ``reps`` calls."""
    batches = {name: (lambda run=run: [run() for _ in range(reps)]) for name, run in forms.items()}
    times = interleaved_times(batches, rounds, torch.device('cpu'), warmup=1)
    return {name: statistics.median(t) / reps * 1e3 for name, t in times.items()}


def report(title, forms, results, rounds):
    medians = compare(forms, rounds)
    (new, new_ms), (old, old_ms) = medians.items()
    diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(*results))
    print(f'{title}: {new} {new_ms:.2f} ms, {old} {old_ms:.2f} ms ({new_ms / old_ms:.2f}x); '
          f'results differ by at most {diff:.0e} of their largest value')


def bias_maps(rounds):
    torch.manual_seed(0)
    computing = SharedWindowAttention(dim=60, num_heads=6, window_size=16, computes=True)
    inheriting = SharedWindowAttention(dim=60, num_heads=6, window_size=16, computes=False, transform_kernel=3)
    for layer in (computing, inheriting):
        layer.backend = choose_backend(torch.device('cpu'), training=True)
    table, conv = computing.relative_position_bias_table, inheriting.transform
    n, h = 256, 6
    grads = torch.randn(2, h, n, n)
    params = (table, conv.weight, conv.bias)

    def current():
        bias = computing.position_bias()
        maps, _ = inheriting.transform_bias(table)
        return torch.autograd.grad((bias, maps), params, tuple(grads))

    def previous():
        bias = table.t().index_select(1, computing.relative_position_index.view(-1)).view(h, n, n)
        maps = F.conv2d(bias.unsqueeze(0).contiguous(memory_format=torch.channels_last), conv.weight, conv.bias,
                        padding=1, groups=h).squeeze(0)
        return torch.autograd.grad((bias, maps.contiguous()), params, tuple(grads))

    report('bias maps, forward + backward', {'current': current, 'previous': previous}, (current(), previous()),
           rounds)


def shifted_factors(rounds):
    torch.manual_seed(0)
    bw, h, n, e, width = 64, 6, 256, 10, 32
    qkv = torch.randn(bw, n, 3, h, 16, requires_grad=True)
    w = (torch.randn(h, 3, 3) * 0.1).requires_grad_()
    grads = (torch.randn(bw, h, n, width), torch.randn(bw, h, n, width))

    def factors(form):
        q, k = qkv[..., :2, :, :e].permute(2, 0, 3, 1, 4).unbind(0)
        return form(q, k, w, width)

    def train(form):
        return torch.autograd.grad(factors(form), (qkv, w), grads)

    def infer(form):
        with torch.no_grad():
            return factors(form)

    def plain(*args):
        return _shifted_factors(*args, plain=True)

    report("Q' and K', forward (inference)", {
        'current': lambda: infer(_shifted_factors),
        'plain': lambda: infer(plain)
    }, (infer(_shifted_factors), infer(plain)), rounds)
    report("Q' and K', forward + backward (training)", {
        'current': lambda: train(_shifted_factors),
        'previous': lambda: train(_previous_factors)
    }, (train(_shifted_factors), train(_previous_factors)), rounds)


def native_factors(rounds):
    """Q' and K' by the C++ kernel against the operators (``_ShiftedFactors``), at the native backend's width
    (30: no padding), for the windows of a batch of 4 LR patches of 16x16 (4 windows) and 64x64 (64)."""
    torch.manual_seed(0)
    h, n, e, width = 6, 256, 10, 30
    for bw, patch in ((4, 16), (64, 64)):
        qkv = torch.randn(bw, n, 3, h, e, requires_grad=True)
        w = (torch.randn(h, 3, 3) * 0.1).requires_grad_()
        grads = (torch.randn(bw, h, n, width), torch.randn(bw, h, n, width))

        def train(kernel):
            q, k = qkv[:, :, :2].permute(2, 0, 3, 1, 4).unbind(0)
            return torch.autograd.grad(_shifted_factors(q, k, w, width, kernel=kernel), (qkv, w), grads)

        report(f"Q' and K' at LR patch {patch}, forward + backward (training)", {
            'native': lambda: train(True),
            'operators': lambda: train(False)
        }, (train(True), train(False)), rounds)


def weight_grad(rounds, patch):
    torch.manual_seed(0)
    x = torch.randn(4, patch, patch, 120).permute(0, 3, 1, 2)
    grad = torch.randn(4, patch, patch, 120).permute(0, 3, 1, 2)
    k, p = 7, 3

    def current():
        return (depthwise_weight_grad(x, grad, k), )

    def previous():
        b, c = x.shape[:2]
        xp = F.pad(x, (p, p, p, p)).transpose(0, 1).reshape(1, c * b, patch + 2 * p, patch + 2 * p)
        kernel = grad.transpose(0, 1).reshape(c * b, 1, patch, patch)
        return (F.conv2d(xp, kernel, groups=c * b).view(c, b, k, k).sum(1, keepdim=True), )

    report(f'depth-wise weight gradient, 7x7, 4 x 120 x {patch} x {patch}', {
        'current': current,
        'previous': previous
    }, (current(), previous()), rounds)


def shifted_windows(rounds, patch):
    torch.manual_seed(0)
    b, h, ws, e = 4, 6, 16, 16
    n = ws * ws
    layout = window_layout(b, patch, patch, window_size=ws, shift=ws // 2, device='cpu', dtype=torch.float32)
    bw = sum(g.count for g in layout.groups)
    q, k, v = (torch.randn(bw, h, n, e, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, h, n, n, requires_grad=True)
    grad = torch.randn(bw, h, n, e)
    # The four masks in the grouped layout's group order (interior, last column, last row, corner), from a
    # 2 x 2-window image; a 16 x 16 patch has the corner window alone.
    masks = _mask(2 * ws, 2 * ws, ws, ws // 2, torch.device('cpu'), torch.float32)
    kinds = [0, 1, 2, 3] if patch > ws else [3]
    # The previous form attended per group on whole windows; its inputs are leaves per group here, so
    # neither form pays for slicing.
    leaves = [[t[g.windows].detach().requires_grad_() for t in (q, k, v)] for g in layout.groups]

    def current():
        out = chunked_attention(q, k, v, bias, layout.groups)
        return (out, ) + torch.autograd.grad(out, (q, k, v, bias), grad)

    def previous():
        results = []
        for g, kind, (qg, kg, vg) in zip(layout.groups, kinds, leaves):
            out = chunked_attention(qg, kg, vg, bias + masks[kind])
            results.append((out, ) + torch.autograd.grad(out, (qg, kg, vg, bias), grad[g.windows]))
        return results

    def joined(results):
        """``previous``'s results per group as ``current``'s: windows concatenated, bias gradients summed."""
        return [torch.cat(parts) for parts in list(zip(*results))[:4]] + [sum(r[4] for r in results)]

    report(f'shifted windows, forward + backward, {b} x {patch} x {patch}', {
        'current': current,
        'previous': previous
    }, (current(), joined(previous())), rounds)


def window_attention(rounds):
    torch.manual_seed(0)
    b, h, n, ev = 64, 6, 256, 10
    for e in (10, 30):
        width = (e + 15) // 16 * 16
        q, k = (torch.randn(b, h, n, e) * 0.5 for _ in range(2))
        v = torch.randn(b, h, n, ev)
        bias = torch.randn(1, h, n, n)
        grad = torch.randn(b, h, n, ev)
        padded = [F.pad(q, (0, width - e)), F.pad(k, (0, width - e))]
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        padded_leaves = [t.clone().requires_grad_() for t in padded + [F.pad(v, (0, 16 - ev)), bias]]

        def kernel():
            out = native_attention(*leaves)
            return (out, ) + torch.autograd.grad(out, leaves, grad)

        def chunked():
            out = chunked_attention(*padded_leaves)[..., :ev]
            qg, kg, vg, bg = torch.autograd.grad(out, padded_leaves, grad)
            return out, qg[..., :e], kg[..., :e], vg[..., :ev], bg

        report(f'window attention, width {e}, forward + backward (training)',
               {'native': kernel, 'chunked': chunked}, (kernel(), chunked()), rounds)

        sdpa_v = F.pad(v, (0, width - ev))

        def native_infer():
            with torch.no_grad():
                return native_attention(q, k, v, bias),

        def sdpa_infer():
            with torch.no_grad():
                return F.scaled_dot_product_attention(*padded, sdpa_v, attn_mask=bias, scale=1.0)[..., :ev],

        report(f'window attention, width {e}, forward (inference)', {'native': native_infer, 'sdpa': sdpa_infer},
               (native_infer(), sdpa_infer()), rounds)


def optimiser(rounds, model):
    """Adam's step and the EMA update over ``model``'s light x2 parameters, with fixed random gradients;
    each form steps its own copy, so the results compared are the parameters after one step."""
    torch.manual_seed(0)
    net = build(model, 'light', False, 64)
    grads = [torch.randn_like(p) for p in net.parameters()]

    def params_with_grads():
        params = [p.detach().clone().requires_grad_() for p in net.parameters()]
        for p, g in zip(params, grads):
            p.grad = g
        return params

    adams = {name: torch.optim.Adam(params_with_grads(), lr=1e-4, **ADAM[name]) for name in ('fused', 'for-loop')}
    results = []
    for opt in adams.values():
        opt.step()
        results.append([p.detach().clone() for p in opt.param_groups[0]['params']])
    report(f'Adam step, {model} light x2 ({len(grads)} tensors)',
           {name: opt.step for name, opt in adams.items()}, results, rounds)

    live = [p.detach() for p in net.parameters()]
    ema = {name: [p + 1 for p in live] for name in ('foreach', 'loop')}

    def foreach():
        ema_update_(ema['foreach'], live, 0.999)

    def loop():
        for e, p in zip(ema['loop'], live):
            e.mul_(0.999).add_(p, alpha=1 - 0.999)

    foreach()
    loop()
    results = ([e.clone() for e in ema['foreach']], [e.clone() for e in ema['loop']])
    report(f'EMA update, {model} light x2', {'foreach': foreach, 'loop': loop}, results, rounds)


SECTIONS = ['bias-maps', 'factors', 'weight-grad', 'shifted-windows', 'attention', 'optimiser']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=12)
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=SECTIONS, help='default: all')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f'# torch {torch.__version__}, {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), '
          f'{torch.get_num_threads()} threads, fp32')
    sections = set(args.sections)
    if 'bias-maps' in sections:
        bias_maps(args.rounds)
    if 'factors' in sections:
        shifted_factors(args.rounds)
        if native.library() is not None:
            native_factors(args.rounds)
    if 'weight-grad' in sections:
        for patch in (16, 64):
            weight_grad(args.rounds, patch)
    if 'shifted-windows' in sections:
        for patch in (16, 32, 64):
            shifted_windows(args.rounds, patch)
    if 'attention' in sections:
        if native.library() is not None:
            window_attention(args.rounds)
        else:
            print('window attention: the C++ kernel is not built here (no compiler, or MSRASR_NATIVE=0)')
    if 'optimiser' in sections:
        for model in ('msrasr', 'swinir'):
            optimiser(args.rounds, model)

if __name__ == '__main__':
    main()
