"""Run-time fixes for BasicSR 1.4.2's training/testing pipeline: CPU machines, and input that must never run
code or leave a broken run behind.

BasicSR's ``train_pipeline`` / ``test_pipeline`` / ``parse_options`` look these functions up as module
globals at call time, so replacing the module attributes is enough; site-packages stays untouched.
``apply()`` is idempotent and is called by the ``basicsr`` command (``msrasr_arch.cli.basicsr_cmd``) before
it runs a pipeline.

Fixed here:
* ``parse_options`` (in ``basicsr.train`` and ``basicsr.test``) loads the option file with PyYAML's unsafe
  loader and ``eval``/``exec``s ``--force_yml``, and checks nothing until the experiment folder exists.
  Ours reads and checks everything first (see :func:`make_parse_options`).
* ``basicsr.train.load_resume_state`` calls ``torch.cuda.current_device()`` (so ``--auto_resume`` crashes
  without a GPU), unpickles the state without ``weights_only`` and takes the newest state even when it is
  truncated. Ours reads states as data on the CPU and skips unreadable ones.
* ``basicsr.utils.options.init_dist`` forces NCCL and ``torch.cuda.set_device``, so ``--launcher pytorch``
  dies on CPU (``ZeroDivisionError``). Ours picks gloo when there is no GPU.
The model-side problems (``model_to_device`` passing ``device_ids=[cuda]``; saves that log a failed write
and carry on) live in ``msrasr_arch.models.sr_model.MSRASRModel``, because they are methods.
"""
import os
import sys
from os import path as osp

import torch

_APPLIED_FLAG = '_msrasr_fixed'


def _state_files(opt):
    """The training states BasicSR's --auto_resume considers, newest first."""
    # Same place BasicSR's --auto_resume looks (relative to the working directory, which the `basicsr`
    # command makes the root), but via opt['path'] so it also follows a forced root.
    state_dir = opt['path'].get('training_states') or osp.join('experiments', opt['name'], 'training_states')
    if not osp.isdir(state_dir):
        return state_dir, []
    iters = []
    for name in os.listdir(state_dir):
        stem, ext = osp.splitext(name)
        if ext == '.state' and stem.isdigit():
            iters.append(int(stem))
    return state_dir, [osp.join(state_dir, f'{it}.state') for it in sorted(iters, reverse=True)]


def _resume_point(opt, state_path):
    """The state at `state_path` if it and every network file resuming from it needs read back as data;
    a UserError naming the unreadable file otherwise."""
    from msrasr_arch.utils.checkpoint import load_checkpoint, load_training_state

    state = load_training_state(state_path)
    ignored = opt['path'].get('ignore_resume_networks') or ()
    for network in [k for k in opt if k.startswith('network_') and k not in ignored]:
        load_checkpoint(osp.join(opt['path']['models'], f'net_{network[len("network_"):]}_{state["iter"]}.pth'))
    return state


def load_resume_state(opt):
    """Drop-in for ``basicsr.train.load_resume_state``: states are read as data only (``weights_only``),
    on the CPU (the optimizers move their states to the parameters' device), and ``--auto_resume`` skips,
    with a warning, a state that cannot be read or whose network files cannot, resuming from the newest
    good one."""
    from basicsr.utils import check_resume

    from msrasr_arch.utils.errors import UserError
    from msrasr_arch.utils.option_checks import warn

    if opt['auto_resume']:
        state_dir, candidates = _state_files(opt)
        state = None
        for path in candidates:
            try:
                state = _resume_point(opt, path)
            except UserError as err:
                warn(f'--auto_resume: skipping {path}: {err}')
                continue
            opt['path']['resume_state'] = path
            break
        if state is None and candidates:
            raise UserError(f'--auto_resume: none of the {len(candidates)} training states in {state_dir} can be '
                            'read (see the warnings above); move them away to start over')
    elif opt['path'].get('resume_state'):
        state = _resume_point(opt, opt['path']['resume_state'])
    else:
        state = None
    if state is None:
        return None
    check_resume(opt, state['iter'])
    return state


def make_parse_options(original):
    """Wrap ``basicsr.utils.options.parse_options``: the flags and the option file are read by
    :mod:`msrasr_arch.utils.train_options` (safe YAML, no abbreviations, ``--force_yml`` as YAML) and
    checked by :mod:`msrasr_arch.utils.option_checks`, all before BasicSR creates a folder; BasicSR's
    parser then reads a plain-values copy, so its own processing (distributed setup, seeds, paths) is
    unchanged."""
    import tempfile

    from msrasr_arch.utils import train_options
    from msrasr_arch.utils.option_checks import check_options

    def parse_options(root_path, is_train=True):
        prog = f'basicsr {"train" if is_train else "test"}'
        args, opt_path, opt = train_options.load(sys.argv[1:], prog=prog)
        if opt.get('path') is None:
            opt['path'] = {}
        resuming = isinstance(opt['path'], dict) and bool(opt['path'].get('resume_state'))
        if is_train and args.auto_resume and isinstance(opt.get('name'), str):
            name = opt['name'] if not args.debug or opt['name'].startswith('debug') else f'debug_{opt["name"]}'
            resuming = resuming or bool(_state_files({'name': name, 'path': {
                'training_states': osp.join(root_path, 'experiments', name, 'training_states')}})[1])
        check_options(opt, source=opt_path, is_train=is_train, resuming=resuming)
        flags = ['--launcher', args.launcher, '--local_rank', str(args.local_rank)]
        flags += ['--auto_resume'] * args.auto_resume + ['--debug'] * args.debug
        saved_argv = sys.argv
        with tempfile.TemporaryDirectory(prefix='msrasr-options-') as tmp:
            plain = osp.join(tmp, osp.basename(opt_path))
            train_options.write_plain_copy(opt, plain)
            sys.argv = [saved_argv[0], '-opt', plain] + flags
            try:
                opt, parsed = original(root_path, is_train=is_train)
            finally:
                sys.argv = saved_argv
        # BasicSR copies args.opt into the experiment folder: the user's own file, as before.
        parsed.opt, parsed.force_yml = opt_path, args.force_yml
        return opt, parsed

    parse_options.__wrapped__ = original
    return parse_options


def make_init_dist(original):
    """Wrap ``basicsr.utils.dist_util.init_dist``: gloo without a GPU, BasicSR's own path otherwise."""

    def init_dist(launcher, backend='nccl', **kwargs):
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return original(launcher, backend=backend, **kwargs)
        if launcher != 'pytorch':
            from msrasr_arch.utils.errors import UserError
            raise UserError(f'--launcher {launcher} needs GPUs; on CPU use torchrun with --launcher pytorch')
        import torch.distributed as dist
        import torch.multiprocessing as mp

        # Keep BasicSR's start method so dataloader workers behave as they do on GPU.
        if mp.get_start_method(allow_none=True) is None:
            mp.set_start_method('spawn')
        if not dist.is_initialized():
            dist.init_process_group(backend='gloo', **kwargs)

    init_dist.__wrapped__ = original
    return init_dist


def apply():
    """Install the fixes into BasicSR's modules (idempotent)."""
    import msrasr_arch._compat  # noqa: F401  (the torchvision shim must precede basicsr)
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options

    if getattr(basicsr.train, _APPLIED_FLAG, False):
        return
    basicsr.train.load_resume_state = load_resume_state
    # train.py and test.py imported the name, so each module's global is replaced.
    parse_options = make_parse_options(basicsr.utils.options.parse_options)
    basicsr.train.parse_options = parse_options
    basicsr.test.parse_options = parse_options
    basicsr.utils.options.init_dist = make_init_dist(basicsr.utils.options.init_dist)
    setattr(basicsr.train, _APPLIED_FLAG, True)
