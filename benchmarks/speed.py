"""MSRA-SR against BasicSR's own SwinIR, in one process: parameters, Mult-Adds, latency, memory.

    python benchmarks/speed.py                        # lightweight x2, CPU, 128 and 256 inputs
    python benchmarks/speed.py --suite classical --sizes 64
    python benchmarks/speed.py --suite peers          # beside SRFormer, DAT, Omni-SR, ATD, SAFMN, SPAN (light)
    python benchmarks/speed.py --device cuda --dtype bf16 --compile
    python benchmarks/speed.py --ffn                  # the FFN alone, before/after re-parameterisation

Latency is the median of ``--runs`` timed forwards after warm-up (eval mode, no grad); "train@P" is the
median of ``--runs`` timed steps (forward + L1 backward + Adam, after two warm-up steps) on a batch of 4 LR
patches of PxP (``--patches``, default 16 32 64; ``--batches 1 4`` times both batch sizes, as "train@PbB",
which splits a step into what each image costs and what the step costs whatever the batch). Adam is fused,
as MSRASRModel builds it for ``basicsr train`` (``--adam for-loop`` is PyTorch's default on the CPU,
``foreach`` its default on CUDA).
Mult-Adds are FlopCounterMode's total / 2 on the meta device, at the input sizes and at the paper's ruler
(LR = HR 1024x720 / 2, as the network pads it). ``--suite peers`` builds the light x2 networks of
``benchmarks/peers.py`` from spandrel's reference code (``pip install -e .[bench]``); their parameters are
those of the inference form. ``--dtype bf16``/``fp16`` run under
autocast with fp32 weights, as ``msrasr upscale --precision`` and BasicSR's AMP do (SwinIR cannot run with
bf16 weights: its shift mask stays fp32). ``--compile`` compiles each model once per input size
(``dynamic=False``), as a deployment at a fixed size would. The models are timed interleaved, one
run of each in turn (A B, then B A, ...), so that a slow spell of a shared machine lands on all of them;
a ratio is the median over runs of MSRA-SR's time / SwinIR's time in the same round, so below 1 means
MSRA-SR is faster / smaller. Peak memory: CUDA's allocator peak on GPU; on CPU the rise of the process's
peak RSS (Linux), measured in a fresh subprocess per model so one model's peak cannot hide another's.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

try:
    import resource
except ImportError:  # Windows
    resource = None

import torch

import msrasr_arch  # noqa: F401  (registers the archs, applies the torchvision shim)
from basicsr.archs.swinir_arch import SwinIR
from msrasr_arch.archs import MSRASR
from msrasr_arch.archs.ffn import FFN
from msrasr_arch.archs.presets import get_preset
from msrasr_arch.archs.profile import PAPER_HR, mult_adds
from peers import NAMES as PEERS, deployed_params, get_peer

SWINIR = {
    'light': dict(upscale=2, in_chans=3, img_size=64, window_size=8, img_range=1., depths=[6, 6, 6, 6], embed_dim=60,
                  num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='1conv'),
    'classical': dict(upscale=2, in_chans=3, img_size=48, window_size=8, img_range=1., depths=[6] * 6, embed_dim=180,
                      num_heads=[6] * 6, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv'),
}


def base_suite(suite):
    """The MSRA-SR / SwinIR configuration a suite uses: the peers are all lightweight."""
    return 'light' if suite == 'peers' else suite


def build(name, suite, deploy, size=None):
    """``size``: SwinIR's ``img_size``. SwinIR builds the shift masks of that one input size in its constructor
    and rebuilds them on the CPU, in every shifted layer of every forward, at any other size. The peers
    with an ``img_size`` get the same treatment."""
    if name == 'swinir':
        return SwinIR(**dict(SWINIR[base_suite(suite)], **({'img_size': size} if size else {})))
    if name in PEERS:
        return get_peer(name).build(size or 64)
    opt = get_preset(f'{base_suite(suite)}_x2')
    opt.pop('type')
    net = MSRASR(**opt)
    return net.reparameterize() if deploy else net


MODELS = {'msrasr': ('msrasr', True), 'msrasr-multibranch': ('msrasr', False), 'swinir': ('swinir', False),
          **{name: (name, False) for name in PEERS}}
SUITE_MODELS = {'light': ['msrasr', 'msrasr-multibranch', 'swinir'],
                'classical': ['msrasr', 'msrasr-multibranch', 'swinir'],
                'peers': ['msrasr', 'msrasr-multibranch', 'swinir', *PEERS]}


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def minor_faults() -> int:
    """Page faults this process has taken that needed no disk (fresh pages of memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def interleaved_times(fns, runs, device, warmup=2, faults=None):
    """``{name: [seconds per run]}``, running each ``fns[name]()`` once per round, in alternating order.
    ``faults``: a dict that receives ``{name: [page faults per run]}``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(runs):
        for name in (names if r % 2 == 0 else names[::-1]):
            f, t = minor_faults(), time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t)
            if faults is not None:
                faults.setdefault(name, []).append(minor_faults() - f)
    return times


def prepare(model, args, device, dtype, size=None):
    name, deploy = MODELS[model]
    torch.manual_seed(0)
    net = build(name, args.suite, deploy, size if args.swinir_mask == 'fixed' else None).to(device)
    if args.compile:
        net = torch.compile(net, dynamic=False)
    return net


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def inference_call(net, x, dtype=torch.float32):
    """One timed inference: ``net`` in eval mode on ``x``, no grad, under autocast for bf16/fp16. Also what
    ``profile_step.py --infer`` profiles and ``ab_revision.py`` times."""
    net.eval()

    def forward():
        with torch.no_grad(), autocast(x.device, dtype):
            net(x)

    return forward


def infer_fn(model, args, size, device, dtype):
    net = prepare(model, args, device, dtype, size)
    return inference_call(net, torch.rand(1, 3, size, size, device=device), dtype)


# Adam's implementations: fused is what MSRASRModel.get_optimizer chooses when the options do not.
ADAM = {'fused': {'fused': True}, 'foreach': {'foreach': True}, 'for-loop': {'foreach': False}}


def training_step(net, patch, batch=4, device=torch.device('cpu'), dtype=torch.float32, adam='fused'):
    """One step of ``net`` (x2) as timed here and profiled by ``profile_step.py``: forward on a batch of
    ``patch x patch`` LR patches, L1 backward, Adam (implementation ``adam``, a key of ``ADAM``)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, **ADAM[adam])
    x = torch.rand(batch, 3, patch, patch, device=device)
    y = torch.rand(batch, 3, 2 * patch, 2 * patch, device=device)

    def step():
        with autocast(device, dtype):
            loss = (net(x).float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_fn(model, args, patch, batch, device, dtype):
    return training_step(prepare(model, args, device, dtype, patch).train(), patch, batch, device, dtype, args.adam)


def add_keep_freed_memory(parser):
    parser.add_argument('--keep-freed-memory', action='store_true',
                        help="glibc keeps freed memory in the process, as `basicsr train` sets it "
                        "(msrasr_arch.utils.cpu_memory): no page faults in the figures")


def apply_keep_freed_memory(parser, args):
    if args.keep_freed_memory:
        from msrasr_arch.utils.cpu_memory import keep_freed_memory  # here: before_after.sh runs older packages
        if not keep_freed_memory():
            parser.error('--keep-freed-memory: this C library does not take the setting (glibc only)')


def peak_memory(model, args, mode, size, device, dtype):
    """Peak memory (MiB) of one forward (mode 'infer', input side ``size``) or training step ('train', a
    batch of 4 patches of side ``size``)."""
    if device.type == 'cuda':
        net = prepare(model, args, device, dtype, size)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        if mode == 'infer':
            with torch.no_grad(), autocast(device, dtype):
                net.eval()(torch.rand(1, 3, size, size, device=device))
        else:
            net.train()
            with autocast(device, dtype):
                out = net(torch.rand(4, 3, size, size, device=device))
            out.float().mean().backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    cmd = [sys.executable, __file__, '--_memory',
           json.dumps([model, mode, size, args.suite, args.dtype, args.swinir_mask == 'fixed'])]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def _memory_child(spec):
    model, mode, size, suite, dtype_name, fixed = json.loads(spec)
    dtype = DTYPES[dtype_name]
    name, deploy = MODELS[model]
    torch.manual_seed(0)
    net = build(name, suite, deploy, size if fixed else None)
    x = torch.rand(1, 3, size, size) if mode == 'infer' else torch.rand(4, 3, size, size)
    cpu = torch.device('cpu')
    if mode == 'infer':
        net.eval()
        with torch.no_grad(), autocast(cpu, dtype):  # warm-up: allocator pools and kernels, so the next peak
            net(x[..., :16, :16])                    # is the forward's
    base = _reset_peak_rss()
    if mode == 'infer':
        with torch.no_grad(), autocast(cpu, dtype):
            net(x)
    else:
        net.train()
        with autocast(cpu, dtype):
            out = net(x)
        out.float().mean().backward()
    print((_status_kib('VmHWM') - base) / 1024)


def _status_kib(field):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux: write 5 to clear_refs) and return the current RSS in KiB.

    Without the reset the peak would still be that of importing torch, which can exceed a small forward.
    """
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return _status_kib('VmRSS')


DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def count(model, suite, sizes):
    """Parameters (of the inference form) and Mult-Adds of one forward at each (H, W) of ``sizes``."""
    name, deploy = MODELS[model]
    if name == 'msrasr':
        with torch.device('meta'):
            net = build(name, suite, deploy).eval()
        return sum(p.numel() for p in net.parameters()), [mult_adds(net, hw, 'reference') for hw in sizes]
    # SwinIR's constructor (and those of its descendants) calls .item(): build on the CPU, then move
    net = build(name, suite, deploy).to('meta').eval()
    from torch.utils.flop_counter import FlopCounterMode
    macs = []
    for hw in sizes:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.empty(1, 3, *hw, device='meta'))
        macs.append(counter.get_total_flops() / 2)
    return deployed_params(net), macs


def ffn_benchmark(args, device, dtype):
    """The FFN of one lightweight layer on a 512x360 LR image (the paper's x2 size), before/after reparam."""
    torch.manual_seed(0)
    ffn = FFN(dim=60, hidden_dim=120, kernels=(1, 3, 5, 7)).to(device).eval().to(dtype)
    x = torch.rand(1, 360, 512, 60, device=device, dtype=dtype)
    deployed = copy.deepcopy(ffn)
    deployed.msdwc.reparameterize()
    with torch.no_grad():
        times = interleaved_times({'multi': lambda: ffn(x), 'deployed': lambda: deployed(x)}, args.runs, device)
        before, after = statistics.median(times['multi']), statistics.median(times['deployed'])
        diff = (deployed(x) - ffn(x)).abs().max().item()
    print(f'FFN (C=60, hidden 120, 512x360 tokens): multi-branch {before * 1e3:.1f} ms -> re-parameterised '
          f'{after * 1e3:.1f} ms ({before / after:.2f}x faster; max abs diff {diff:.1e}); paper: 0.15 s -> 0.02 s')


def progress(results, key, faults):
    """One line on stderr as each column completes, so a run cut short by a time limit still reports; with
    the median page faults per run (a fault on fresh memory is expensive on a VM, and glibc's defaults hand
    freed memory back to the system, see ``--keep-freed-memory``)."""
    print(f'# {key}: ' + ', '.join(f'{m} {statistics.median(r[key]) * 1e3:.1f}ms' for m, r in results.items())
          + '; page faults per run: ' + ', '.join(f'{m} {statistics.median(f):.0f}' for m, f in faults.items()),
          file=sys.stderr, flush=True)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the header of a run."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suite', choices=list(SUITE_MODELS), default='light',
                        help='peers: light MSRA-SR and SwinIR beside the networks of benchmarks/peers.py')
    parser.add_argument('--sizes', type=int, nargs='+', default=[128, 256], help='LR input sides (inference)')
    parser.add_argument('--patches', type=int, nargs='+', default=[16, 32, 64],
                        help='LR patch sides of the training step (batch 4)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=list(DTYPES), default='fp32')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--compile', action='store_true', help='torch.compile every model')
    parser.add_argument('--models', nargs='+', choices=list(MODELS), help="default: the suite's models")
    parser.add_argument('--swinir-mask', choices=['fixed', 'rebuilt'], default='fixed',
                        help="fixed: SwinIR's img_size is the input size, so its shift masks are built once "
                        "(its best case); rebuilt: img_size as in its option files (64 light, 48 classical), so "
                        "every forward at another size rebuilds them on the CPU")
    parser.add_argument('--no-train', action='store_true')
    parser.add_argument('--batches', type=int, nargs='+', default=[4], help='batch sizes of the training step')
    parser.add_argument('--adam', choices=list(ADAM), default='fused',
                        help="Adam's implementation in the training step (default: fused, as basicsr train runs it)")
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument('--ffn', action='store_true', help='also time the FFN alone before/after reparam')
    add_keep_freed_memory(parser)
    parser.add_argument('--_memory', help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    apply_keep_freed_memory(parser, args)
    if args._memory:
        return _memory_child(args._memory)
    if min(args.batches) < 1:
        parser.error(f'--batches: {min(args.batches)} is not a batch size')
    bad = [n for n in args.sizes + args.patches if n < 16 or n % 8]
    if bad:  # SAFMN needs multiples of 8, and 16 is the smallest side every model here accepts
        parser.error(f'--sizes/--patches: {bad[0]} is not a multiple of 8 of at least 16')
    args.models = args.models or SUITE_MODELS[args.suite]
    try:
        peers = {name: get_peer(name) for name in args.models if name in PEERS}
    except ImportError as e:
        parser.error(str(e))
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{cpu_name()}, {args.threads} threads'
    print(f'# torch {torch.__version__}, {where}, {args.dtype}, suite {args.suite} x2'
          f'{", torch.compile" if args.compile else ""}, SwinIR masks {args.swinir_mask}'
          f'{"" if args.no_train else f", Adam {args.adam}"}'
          f'{", freed memory kept" if args.keep_freed_memory else ""}')

    for name, peer in peers.items():
        print(f'# {name} ({peer.paper}): ' + ', '.join(f'{k}={v}' for k, v in peer.args.items()))

    # the paper's ruler: Mult-Adds of one HR 1024x720 output, i.e. an LR input of 512x360 at x2
    ruler = (PAPER_HR[0] // 2, PAPER_HR[1] // 2)
    ruler_key = f'MACs@{ruler[1]}x{ruler[0]}'
    w = max(len(m) for m in args.models) + len('/swinir') + 1  # the first column fits the ratio rows
    print(f'{"model":<{w}} {"params":>8} ' + ' '.join(f'{"MACs@" + str(s):>10}' for s in args.sizes)
          + f' {ruler_key:>14}')
    for model in args.models:
        params, macs = count(model, args.suite, [(s, s) for s in args.sizes] + [ruler])
        print(f'{model:<{w}} {params / 1e3:>7.0f}K ' + ' '.join(f'{m / 1e9:>9.2f}G' for m in macs[:-1])
              + f' {macs[-1] / 1e9:>13.1f}G', flush=True)

    train = [] if args.no_train else args.patches
    mem_train = [f'mem_train@{max(train)}'] if train else []  # the largest patch only: a subprocess each
    # one key per training step timed: "train@P" at the default batch of 4, else "train@PbB"
    steps = {(p, b): f'train@{p}' if args.batches == [4] else f'train@{p}b{b}' for p in train for b in args.batches}
    keys = [f'infer@{s}' for s in args.sizes] + list(steps.values())
    if not args.no_memory:
        keys += [f'mem_infer@{s}' for s in args.sizes] + mem_train
    results = {model: {} for model in args.models}  # key -> list of per-run seconds (or MiB)
    for size in args.sizes:
        fns, faults = {model: infer_fn(model, args, size, device, dtype) for model in args.models}, {}
        for model, times in interleaved_times(fns, args.runs, device, faults=faults).items():
            results[model][f'infer@{size}'] = times
        del fns
        progress(results, f'infer@{size}', faults)
    for (patch, batch), key in steps.items():
        fns, faults = {model: train_fn(model, args, patch, batch, device, dtype) for model in args.models}, {}
        for model, times in interleaved_times(fns, args.runs, device, faults=faults).items():
            results[model][key] = times
        del fns
        progress(results, key, faults)
    if not args.no_memory:
        for model in args.models:
            for s in args.sizes:
                results[model][f'mem_infer@{s}'] = [peak_memory(model, args, 'infer', s, device, dtype)]
            for key in mem_train:
                results[model][key] = [peak_memory(model, args, 'train', max(train), device, dtype)]
    print(f'{"":<{w}} ' + ' '.join(f'{k:>14}' for k in keys), flush=True)
    for model, r in results.items():
        print(f'{model:<{w}} ' + ' '.join(
            f'{statistics.median(r[k]) * 1e3:>12.1f}ms' if not k.startswith('mem') else f'{r[k][0]:>11.0f}MiB'
            for k in keys), flush=True)
    if 'swinir' in results:
        base = results['swinir']
        for model, r in results.items():
            if model != 'swinir':
                ratios = [statistics.median(a / b for a, b in zip(r[k], base[k])) for k in keys]
                print(f'{model + "/swinir":<{w}} ' + ' '.join(f'{x:>13.2f}x' for x in ratios))
    if args.ffn:
        ffn_benchmark(args, device, dtype)


if __name__ == '__main__':
    sys.exit(main())
