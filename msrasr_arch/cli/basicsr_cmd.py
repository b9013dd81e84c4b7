"""The ``basicsr`` console command, which BasicSR itself does not install.

    basicsr train -opt OPTIONS.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
                  [--force_yml key:sub=value ...]
    basicsr test  -opt OPTIONS.yml [--force_yml ...]

It imports this plugin and every package that declares an entry point in the ``basicsr.plugins`` group
(so their archs/models/datasets are registered), applies ``msrasr_arch.utils.basicsr_fixes`` (CPU
resume, gloo DDP) and then runs BasicSR's own ``train_pipeline`` / ``test_pipeline`` with the current
directory as root: outputs go to ``./experiments``, ``./tb_logger`` and ``./results`` as with
``python basicsr/train.py``. Every flag after the subcommand is passed to BasicSR's ``parse_options``
unchanged; the only rewrite is ``--local-rank=N`` (what ``python -m torch.distributed.launch`` passes on
current torch) to BasicSR's ``--local_rank``.
"""
import os
import sys
import warnings

PLUGIN_GROUP = 'basicsr.plugins'
PIPELINES = {'train': 'train_pipeline', 'test': 'test_pipeline'}

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml [--launcher {none,pytorch,slurm}] [--auto_resume]
                       [--debug] [--force_yml key:sub=value ...]

Run BasicSR's training or testing pipeline with this directory as root, after loading every installed
BasicSR plugin (entry-point group 'basicsr.plugins').

  train   basicsr.train.train_pipeline (outputs in ./experiments/<name>, ./tb_logger/<name>)
  test    basicsr.test.test_pipeline   (outputs in ./results/<name>)

Multi-process: torchrun --nproc_per_node N $(which basicsr) train -opt X.yml --launcher pytorch
(on machines without a GPU the processes talk over gloo)."""


def load_plugins():
    """Import this plugin, then every other ``basicsr.plugins`` entry point. Returns the names loaded."""
    import msrasr_arch  # noqa: F401  (first: its torchvision shim must precede any basicsr import)
    from importlib.metadata import entry_points

    loaded = ['msrasr_arch']
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.value.split(':')[0] == 'msrasr_arch':
            continue
        try:
            ep.load()
        except Exception as err:  # a broken third-party plugin must not take the command down
            warnings.warn(f'basicsr plugin {ep.name!r} ({ep.value}) failed to import: {err}', stacklevel=1)
        else:
            loaded.append(ep.name)
    return loaded


def _rewrite_flags(flags):
    out = []
    for flag in flags:
        if flag.startswith('--local-rank'):
            flag = '--local_rank' + flag[len('--local-rank'):]
        out.append(flag)
    return out


def _option_file(flags):
    for i, flag in enumerate(flags):
        if flag == '-opt' and i + 1 < len(flags):
            return flags[i + 1]
        if flag.startswith('-opt='):
            return flag[len('-opt='):]
    return None


def _check_inputs(flags):
    """One-line errors for the mistakes BasicSR answers with a traceback."""
    from msrasr_arch.utils.errors import UserError

    opt_path = _option_file(flags)
    if opt_path is None:
        return  # let BasicSR's argparse print its own usage message
    if not os.path.isfile(opt_path):
        raise UserError(f'-opt {opt_path}: no such file')
    import yaml

    try:
        with open(opt_path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise UserError(f'{opt_path}: not valid YAML ({str(err).splitlines()[0]})') from None
    if not isinstance(opt, dict):
        raise UserError(f'{opt_path}: expected a mapping of options at the top level')
    forced = []
    if '--force_yml' in flags:
        for flag in flags[flags.index('--force_yml') + 1:]:
            if flag.startswith('-'):
                break
            forced.append(flag)
    for entry in forced:
        if entry.count('=') != 1:
            raise UserError(f'--force_yml {entry}: expected key:sub=value with exactly one "="')
        keys = entry.split('=')[0].strip().split(':')
        node = opt
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, dict) or key not in node:
                raise UserError(f'--force_yml {entry}: {opt_path} has no key {":".join(keys[:depth + 1])}')
            node = node[key]
        if not isinstance(node, dict):
            raise UserError(f'--force_yml {entry}: {":".join(keys[:-1])} in {opt_path} is not a mapping')


def run_pipeline(command, flags, root=None):
    """Load the plugins, apply the CPU fixes and run BasicSR's ``train``/``test`` pipeline with ``flags``
    (BasicSR's own command-line flags) and ``root`` (default: the current directory). Raises UserError."""
    import importlib

    from msrasr_arch.utils.errors import UserError

    if command not in PIPELINES:
        raise UserError(f'unknown command {command!r} (choose train or test)')
    flags = _rewrite_flags(flags)
    _check_inputs(flags)
    load_plugins()
    from msrasr_arch.utils import basicsr_fixes

    basicsr_fixes.apply()
    pipeline = getattr(importlib.import_module(f'basicsr.{command}'), PIPELINES[command])
    # BasicSR's parse_options reads sys.argv itself; it also records it in the copied option file.
    saved_argv = sys.argv
    sys.argv = [f'basicsr {command}'] + list(flags)
    try:
        pipeline(os.path.abspath(root or os.getcwd()))
    finally:
        sys.argv = saved_argv


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0 if argv else 2
    command, flags = argv[0], argv[1:]
    if command not in PIPELINES:
        print(f'basicsr: error: unknown command {command!r} (choose train or test)\n\n{USAGE}', file=sys.stderr)
        return 2
    from msrasr_arch.utils.errors import run_reporting_errors

    return run_reporting_errors(f'basicsr {command}', run_pipeline, command, flags)


if __name__ == '__main__':
    sys.exit(main())
