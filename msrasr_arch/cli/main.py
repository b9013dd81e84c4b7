"""The `msrasr` command. Each subcommand lives in its own module of this package, exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their subcommand
runs, so ``msrasr --help`` stays fast and one broken tool cannot break the others."""
import argparse
import importlib
import sys

from msrasr_arch.utils.errors import run_reporting_errors

# name -> (module, one-line help)
SUBCOMMANDS = {
    'profile': ('msrasr_arch.cli.profile', 'print parameters and Mult-Adds of a network configuration'),
    'prepare': ('msrasr_arch.cli.prepare', 'turn a folder of HR images into sub-images, bicubic LR and LMDBs'),
    'quickstart': ('msrasr_arch.cli.quickstart', 'train and test a small model on built-in photos (CPU)'),
    'upscale': ('msrasr_arch.cli.upscale', 'upscale images with a trained checkpoint'),
    'export': ('msrasr_arch.cli.export', 'export a deployed checkpoint (safetensors) and ONNX'),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='msrasr', description='MSRA-SR tools for BasicSR.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    argv = sys.argv[1:] if argv is None else list(argv)
    # Build only the requested subcommand's parser, so a missing optional dependency of one tool
    # never breaks the others (or `--help`).
    chosen = next((a for a in argv if not a.startswith('-')), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    return run_reporting_errors(f'msrasr {args.command}', args._run, args)


if __name__ == '__main__':
    sys.exit(main())
