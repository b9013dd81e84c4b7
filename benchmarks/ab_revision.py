"""Before/after in one process: MSRA-SR-light x2 as commit REV built it against this checkout's, with the
same weights, timed interleaved with BasicSR's SwinIR-light x2.

    python benchmarks/ab_revision.py 46f640a                     # training at LR patches 16 and 32
    python benchmarks/ab_revision.py 46f640a --patches 64 --sizes 128 256 --runs 15

On a shared VM the same build's ratio to SwinIR-light moves by 0.1-0.2 between invocations of
``speed.py`` (``before_after.sh`` alternates them); here the two builds and SwinIR-light take turns within
each round, so changes of a few percent show in ``head/rev`` (the median over rounds of this checkout's
time / REV's in the same round). Training: the multi-branch form (forward, L1 backward, fused Adam, as
``speed.py``); inference: both re-parameterised, no grad. REV's ``msrasr_arch`` is read with ``git
archive`` and imported under its own name for as long as its classes are built, so nothing of it is
installed or left behind; REV must accept the light x2 preset of this checkout. Run on quiet cores.
"""
import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# speed also registers this checkout's archs and applies the torchvision shim
from speed import add_keep_freed_memory, apply_keep_freed_memory, build, cpu_name, interleaved_times  # noqa: E402
from speed import inference_call, training_step  # noqa: E402

from msrasr_arch.archs.presets import get_preset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'msrasr_arch'


def _own_modules():
    return {name: module for name, module in sys.modules.items()
            if name == PACKAGE or name.startswith(PACKAGE + '.')}


def revision_msrasr(rev: str, folder: str):
    """The ``MSRASR`` class of commit ``rev``, its package extracted under ``folder``. The package's
    ``__init__`` is not run (it would register REV's archs in BasicSR's registries beside this checkout's):
    a bare package module stands in for it while REV's archs are imported, and this checkout's modules are
    back in place afterwards."""
    archive = subprocess.run(['git', '-C', ROOT, 'archive', rev, PACKAGE], capture_output=True)
    if archive.returncode:
        sys.exit(f'ab_revision.py: {rev}: not a commit of this repository '
                 f'({archive.stderr.decode().strip().splitlines()[-1]})')
    subprocess.run(['tar', '-x', '-C', folder], input=archive.stdout, check=True)
    own = _own_modules()
    for name in own:
        del sys.modules[name]
    try:
        bare = types.ModuleType(PACKAGE)
        bare.__path__ = [os.path.join(folder, PACKAGE)]
        sys.modules[PACKAGE] = bare
        return importlib.import_module(f'{PACKAGE}.archs.msrasr_arch').MSRASR
    except Exception as err:  # e.g. an early revision, which registered its archs with BasicSR on import
        sys.exit(f'ab_revision.py: {rev}: its msrasr_arch.archs cannot be imported beside this checkout\'s '
                 f'({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}); '
                 f'use benchmarks/before_after.sh for it')
    finally:
        for name in _own_modules():
            del sys.modules[name]
        sys.modules.update(own)


def pair(old_class, deploy: bool):
    """This checkout's light x2 network and REV's with the same weights."""
    torch.manual_seed(0)
    new = build('msrasr', 'light', deploy)
    opt = get_preset('light_x2')
    opt.pop('type')
    try:
        old = old_class(**opt)
        if deploy:
            old = old.reparameterize()
        old.load_state_dict(new.state_dict())
    except (TypeError, RuntimeError) as err:
        sys.exit(f'ab_revision.py: the revision cannot build this checkout\'s light x2 network: '
                 f'{str(err).splitlines()[0]}')
    return old, new


def report(label, times):
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    print(f'{label:10s} rev {median["rev"]:8.1f} ms  head {median["head"]:8.1f} ms  swinir {median["swinir"]:8.1f} ms'
          f'  rev/swinir {ratio("rev", "swinir"):.3f}  head/swinir {ratio("head", "swinir"):.3f}'
          f'  head/rev {ratio("head", "rev"):.3f}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('rev', help='the commit to compare this checkout with')
    parser.add_argument('--patches', type=int, nargs='*', default=[16, 32], help='training LR patch sizes')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--sizes', type=int, nargs='*', default=[], help='inference input sizes')
    parser.add_argument('--runs', type=int, default=11)
    parser.add_argument('--threads', type=int, default=2)
    add_keep_freed_memory(parser)
    args = parser.parse_args()
    apply_keep_freed_memory(parser, args)
    torch.set_num_threads(args.threads)
    # The folder stays for the whole run: REV's modules may read files of the package later (the C++ kernel
    # source is compiled when a network first chooses its backend).
    with tempfile.TemporaryDirectory() as folder:
        old_class = revision_msrasr(args.rev, folder)
        compare(old_class, args)


def compare(old_class, args) -> None:
    """REV's network, this checkout's and SwinIR-light's, interleaved: training steps, then inference."""
    cpu = torch.device('cpu')
    print(f'# torch {torch.__version__}, {cpu_name()}, {args.threads} threads, fp32; rev {args.rev} against this '
          f'checkout, {args.runs} interleaved rounds, medians')
    for patch in args.patches:
        old, new = pair(old_class, deploy=False)
        swinir = build('swinir', 'light', False, patch)
        steps = {name: training_step(net.train(), patch, args.batch)
                 for name, net in (('rev', old), ('head', new), ('swinir', swinir))}
        report(f'train@{patch}', interleaved_times(steps, args.runs, cpu))
    for size in args.sizes:
        old, new = pair(old_class, deploy=True)
        swinir = build('swinir', 'light', False, size)
        x = torch.rand(1, 3, size, size)
        report(f'infer@{size}', interleaved_times({name: inference_call(net, x) for name, net in (
            ('rev', old), ('head', new), ('swinir', swinir))}, args.runs, cpu))


if __name__ == '__main__':
    main()
