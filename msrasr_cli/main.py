"""The `msrasr` command. Each subcommand has its arguments in ``msrasr_cli.<name>`` (``add_arguments``) and
its body in ``msrasr_arch.cli.<name>`` (``run(args) -> int``); only the chosen subcommand's modules are
imported, so one tool's missing optional dependency never breaks the others."""
import argparse
import importlib
import sys

# name -> one-line help
SUBCOMMANDS = {
    'profile': 'print parameters and Mult-Adds of a network configuration',
    'prepare': 'turn a folder of HR images into sub-images, bicubic LR and LMDBs',
    'quickstart': 'train and test a small model on built-in photos (CPU)',
    'upscale': 'upscale images with a trained checkpoint',
    'export': 'export a deployed checkpoint (safetensors) and ONNX',
    'options': 'list the option files shipped with the package, or copy one to edit',
}


def build_parser(chosen=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='msrasr', description='MSRA-SR tools for BasicSR.', allow_abbrev=False)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name == chosen:
            importlib.import_module(f'msrasr_cli.{name}').add_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith('-')), None)
    args = build_parser(chosen).parse_args(argv)
    from msrasr_arch.utils.errors import run_reporting_errors

    def body(a):
        return importlib.import_module(f'msrasr_arch.cli.{a.command}').run(a)

    return run_reporting_errors(f'msrasr {args.command}', body, args)


if __name__ == '__main__':
    sys.exit(main())
