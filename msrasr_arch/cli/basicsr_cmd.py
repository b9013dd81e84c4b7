"""The ``basicsr`` console command, which BasicSR itself does not install.

    basicsr train -opt OPTIONS.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
                  [--force_yml key:sub=value ...]
    basicsr test  -opt OPTIONS.yml [--force_yml ...]

`-opt` takes a path or the name of an option file shipped with this package (`msrasr options list`).
The command imports this plugin and every package that declares an entry point in the ``basicsr.plugins``
group (so their archs/models/datasets are registered), applies ``msrasr_arch.utils.basicsr_fixes`` (option
files read as plain data and checked before any folder is made, states read as data, CPU resume, gloo
DDP) and then runs BasicSR's own ``train_pipeline`` / ``test_pipeline`` with the current directory as
root: outputs go to ``./experiments``, ``./tb_logger`` and ``./results`` as with ``python basicsr/train.py``.
The flags are BasicSR's, spelled in full (no abbreviations); ``--local-rank=N`` (what ``python -m
torch.distributed.launch`` passes on current torch) is rewritten to BasicSR's ``--local_rank``.
"""
import contextlib
import os
import sys
import warnings

PLUGIN_GROUP = 'basicsr.plugins'
PIPELINES = {'train': 'train_pipeline', 'test': 'test_pipeline'}

USAGE = """usage: basicsr {train,test} -opt OPTIONS.yml|NAME [--launcher {none,pytorch,slurm}] [--auto_resume]
                       [--debug] [--force_yml key:sub=value ...]

Run BasicSR's training or testing pipeline with this directory as root, after loading every installed
BasicSR plugin (entry-point group 'basicsr.plugins').

  train   basicsr.train.train_pipeline (outputs in ./experiments/<name>, ./tb_logger/<name>)
  test    basicsr.test.test_pipeline   (outputs in ./results/<name>)

-opt takes a path or the name of a shipped option file (see `msrasr options list`).

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


# Folders BasicSR's pipelines write into, under the root.
OUTPUT_FOLDERS = ('experiments', 'tb_logger', 'results')


def _listing(root):
    return {top: set(os.listdir(os.path.join(root, top))) if os.path.isdir(os.path.join(root, top)) else None
            for top in OUTPUT_FOLDERS}


def _remove_new_empty_folders(root, before):
    """After a failed run: remove the folders it created that hold no file (never a file)."""
    for top, names in before.items():
        top_path = os.path.join(root, top)
        if not os.path.isdir(top_path):
            continue
        for name in os.listdir(top_path):
            if names is None or name not in names:
                for folder, _, _ in os.walk(os.path.join(top_path, name), topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(folder)
        if names is None:
            with contextlib.suppress(OSError):
                os.rmdir(top_path)


def run_pipeline(command, flags, root=None):
    """Load the plugins, apply the fixes and run BasicSR's ``train``/``test`` pipeline with ``flags``
    (BasicSR's own command-line flags) and ``root`` (default: the current directory). Raises UserError."""
    import importlib

    from msrasr_arch.utils import train_options
    from msrasr_arch.utils.errors import UserError

    if command not in PIPELINES:
        raise UserError(f'unknown command {command!r} (choose train or test)')
    flags = _rewrite_flags(flags)
    # The flags and the file are read (safely) before the plugins load, so their mistakes answer at once;
    # the pipeline's own parse_options (see basicsr_fixes) reads them again and checks the rest.
    train_options.load(flags, prog=f'basicsr {command}')
    load_plugins()
    from msrasr_arch.utils import basicsr_fixes

    basicsr_fixes.apply()
    from msrasr_arch.utils.cpu_memory import keep_freed_memory

    keep_freed_memory()  # page faults of memory freed and taken again every step and image (see cpu_memory)
    pipeline = getattr(importlib.import_module(f'basicsr.{command}'), PIPELINES[command])
    root = os.path.abspath(root or os.getcwd())
    before = _listing(root)
    # BasicSR's parse_options reads sys.argv itself; it also records it in the copied option file.
    saved_argv = sys.argv
    sys.argv = [f'basicsr {command}'] + list(flags)
    try:
        pipeline(root)
    except BaseException:
        _remove_new_empty_folders(root, before)
        raise
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
