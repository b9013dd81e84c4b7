"""Component timings behind choices of the CPU training path, each beside the form it replaced: one process,
interleaved rounds, median milliseconds of forward + backward.

    python benchmarks/components.py                 # 2 threads, 12 rounds
    python benchmarks/components.py --rounds 30

* ``bias maps``: a computing layer's position bias and an inheriting layer's ``F`` over it, as one
  training step of light x2 uses them (window 16, 6 heads), against the previous form: the table gathered
  by rows (65536 rows of 6), the maps made contiguous, ``F`` on NCHW maps with its gradients as two
  depth-wise convs.
* ``depth-wise weight gradient``: 7x7 over a channels-last (4, 120, P, P) map, the FFN's, with the batch
  folded into the channels image-major (current) against channel-major after padding (previous).

Each pair also prints how far apart the two forms' results are. Run on quiet cores.
"""
import argparse
import os
import statistics
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from msrasr_arch.archs.backend import choose_backend  # noqa: E402
from msrasr_arch.archs.depthwise import depthwise_conv2d, depthwise_weight_grad  # noqa: E402
from msrasr_arch.archs.shared_attention import SharedWindowAttention  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import cpu_name, interleaved_times  # noqa: E402


class _RowGather(torch.autograd.Function):
    """The previous gather: ``table[index]`` by rows, its backward one ``index_add_`` over rows."""

    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        index, = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, grad.shape[-1]).index_add_(0, index, grad), None


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
        maps = inheriting.transform_bias(bias)
        return torch.autograd.grad((bias.contiguous(), maps.contiguous()), params, tuple(grads))

    def previous():
        index = computing.relative_position_index.view(-1)
        bias = _RowGather.apply(table, index).view(n, n, h).permute(2, 0, 1).contiguous()
        maps = depthwise_conv2d(bias.unsqueeze(0), conv.weight, conv.bias, split_backward=True).squeeze(0)
        return torch.autograd.grad((bias, maps), params, tuple(grads))

    report('bias maps, forward + backward', {'current': current, 'previous': previous}, (current(), previous()),
           rounds)


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f'# torch {torch.__version__}, {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), '
          f'{torch.get_num_threads()} threads, fp32')
    bias_maps(args.rounds)
    for patch in (16, 64):
        weight_grad(args.rounds, patch)


if __name__ == '__main__':
    main()
