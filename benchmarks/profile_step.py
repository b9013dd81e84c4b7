"""Where a training step's time goes: PyTorch's profiler over one step of MSRA-SR-light x2 and of BasicSR's
SwinIR-light x2, operator by operator.

    python benchmarks/profile_step.py                      # LR patches 16, 32, 64; batch 4; 2 threads
    python benchmarks/profile_step.py --patches 64 --rows 25 --shapes
    python benchmarks/profile_step.py --keep-freed-memory   # page faults out of the tables (see speed.py)
    python benchmarks/profile_step.py --patches --infer 128 --shapes   # one inference forward instead

One step is forward, L1 backward and Adam, as in ``benchmarks/speed.py``; two steps warm up first.
``--infer S`` profiles one forward of a single S x S image in eval mode without gradients, MSRA-SR
re-parameterised, as ``speed.py`` times inference. Each
table lists the operators by their own CPU time (``--shapes`` splits them by input shape). Profiling
slows small operators, so read the tables for where time goes and ``benchmarks/speed.py`` for ratios.
Run it on quiet cores: MSRA-SR's many small operators suffer most when another process competes.
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# speed also registers the archs and applies the torchvision shim
from speed import ADAM, add_keep_freed_memory, apply_keep_freed_memory, build, inference_call  # noqa: E402
from speed import training_step  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--patches', type=int, nargs='*', default=[16, 32, 64])
    parser.add_argument('--infer', type=int, nargs='*', default=[], help='inference input sizes')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rows', type=int, default=15)
    parser.add_argument('--shapes', action='store_true', help='split operators by input shape')
    parser.add_argument('--models', nargs='+', default=['msrasr-multibranch', 'swinir'],
                        choices=['msrasr-multibranch', 'swinir'])
    parser.add_argument('--adam', choices=list(ADAM), default='fused', help="Adam's implementation (as speed.py)")
    add_keep_freed_memory(parser)
    args = parser.parse_args()
    apply_keep_freed_memory(parser, args)
    torch.set_num_threads(args.threads)
    for patch in args.patches:
        for model in args.models:
            torch.manual_seed(0)
            net = build('msrasr' if model.startswith('msrasr') else 'swinir', 'light', False, patch).train()
            show(args, f'{model}, LR patch {patch}, batch {args.batch}',
                 training_step(net, patch, args.batch, adam=args.adam))
    for size in args.infer:
        for model in args.models:
            torch.manual_seed(0)
            msrasr = model.startswith('msrasr')
            net = build('msrasr' if msrasr else 'swinir', 'light', msrasr, size)
            show(args, f'{"msrasr (re-parameterised)" if msrasr else model}, inference {size}x{size}',
                 inference_call(net, torch.rand(1, 3, size, size)))


def show(args, title, run):
    """Profile one call of ``run`` after two warm-up calls and print the table."""
    for _ in range(2):
        run()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        run()
    events = prof.key_averages(group_by_input_shape=args.shapes)
    calls = sum(e.count for e in events if e.key.startswith('aten::'))
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f'## {title}: {total:.2f} s of CPU time, {calls} aten calls', flush=True)
    print(events.table(sort_by='self_cpu_time_total', row_limit=args.rows, max_name_column_width=40,
                       max_shapes_column_width=80), flush=True)


if __name__ == '__main__':
    main()
