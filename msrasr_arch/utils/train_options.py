"""The ``basicsr train`` / ``basicsr test`` flags and option file, read without running anything from them.

BasicSR 1.4.2's ``parse_options`` reads the option file with PyYAML's unsafe loader (a
``!!python/object/apply`` tag runs code), turns ``--force_yml`` list values into Python with ``eval`` and
assigns every forced value through ``exec`` of a string built from the key, so a crafted file or flag runs
code. Its argparse also accepts abbreviations (``-op``, ``-o``), which ``allow_abbrev=False`` does not turn
off for single-dash flags. Here the flags must be spelled out, the file is read with ``yaml.safe_load``,
forced values are YAML scalars or lists and keys are plain names.
"""
import argparse
import os
import re
from typing import List, Optional

import yaml

from msrasr_arch.utils.errors import UserError

# BasicSR's flags, which are the only ones accepted, spelled in full.
FLAGS = ('-opt', '--launcher', '--auto_resume', '--debug', '--local_rank', '--force_yml')
LAUNCHERS = ('none', 'pytorch', 'slurm')
_NAME = re.compile(r'^\w+$', re.ASCII)
# YAML 1.1 reads 1e-4 as a string (it wants 1.0e-4); on the command line people mean the number.
_NUMBER = re.compile(r'^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$')


class _Parser(argparse.ArgumentParser):

    def error(self, message):
        raise UserError(message)


def parse_flags(argv: List[str], prog: str = 'basicsr') -> argparse.Namespace:
    """BasicSR's command-line flags (``-opt``, ``--launcher``, ``--auto_resume``, ``--debug``,
    ``--local_rank``, ``--force_yml``); anything else, abbreviations included, is a :class:`UserError`."""
    for token in argv:
        if token.startswith('-') and not re.match(r'^-\d', token) and token.split('=', 1)[0] not in FLAGS:
            raise UserError(f'unknown flag {token} (flags are spelled in full: {", ".join(FLAGS)})')
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument('-opt', required=True)
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none')
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--local_rank', type=int, default=0)
    parser.add_argument('--force_yml', nargs='+', default=None)
    return parser.parse_args(argv)


def read_option_file(path: str) -> dict:
    """The mapping in the YAML file `path`, read with the safe loader (plain values only)."""
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except OSError as err:
        raise UserError(f'cannot read option file {path}: {err.strerror or err}') from None
    except UnicodeDecodeError:
        raise UserError(f'{path}: not a text (UTF-8) file') from None
    except yaml.constructor.ConstructorError as err:
        tag = re.search(r"tag '([^']+)'", str(err))
        if tag:
            raise UserError(f'{path}: refusing the YAML tag {tag.group(1)}: option files may hold plain values '
                            'only (numbers, strings, lists, mappings)') from None
        raise UserError(f'{path}: not valid YAML ({_first_line(err)})') from None
    except yaml.YAMLError as err:
        raise UserError(f'{path}: not valid YAML ({_first_line(err)})') from None
    if not isinstance(opt, dict):
        raise UserError(f'{path}: expected a mapping of options at the top level')
    return opt


def parse_forced_value(text: str):
    """A ``--force_yml`` value as YAML: ``~``/``none`` -> None, ``true``, ``12``, ``2e-4``, ``[256, 32]``,
    ``'a b'``; text that is not YAML stays a string (``{}x2``, as in BasicSR) unless it starts a list.
    Never evaluated as Python."""
    text = text.strip()
    if text.lower() == 'none':  # BasicSR's spelling of null
        return None
    if _NUMBER.match(text):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        if text.startswith('['):
            raise
        return text


def apply_forced(opt: dict, entries: Optional[List[str]], *, source: str) -> dict:
    """Apply ``--force_yml key:sub=value`` entries to `opt` in place: every key but the last must exist
    (the last may be new, as in BasicSR); keys are names (letters, digits, ``_``)."""
    for entry in entries or ():
        if entry.count('=') != 1:
            raise UserError(f'--force_yml {entry}: expected key:sub=value with exactly one "="')
        key_text, value_text = entry.split('=')
        keys = key_text.strip().split(':')
        bad = [k for k in keys if not _NAME.match(k)]
        if bad:
            raise UserError(f'--force_yml {entry}: {bad[0]!r} is not an option name (letters, digits and _ only)')
        try:
            value = parse_forced_value(value_text)
        except yaml.YAMLError as err:
            raise UserError(f'--force_yml {entry}: the value is not valid YAML ({_first_line(err)})') from None
        node = opt
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, dict) or key not in node:
                raise UserError(f'--force_yml {entry}: {source} has no key {":".join(keys[:depth + 1])}')
            node = node[key]
        if not isinstance(node, dict):
            raise UserError(f'--force_yml {entry}: {":".join(keys[:-1])} in {source} is not a mapping')
        node[keys[-1]] = value
    return opt


def load(argv: List[str], prog: str = 'basicsr'):
    """(flags, option file path, options with ``--force_yml`` applied) from BasicSR's command line."""
    args = parse_flags(argv, prog=prog)
    path = resolve(args.opt)
    return args, path, apply_forced(read_option_file(path), args.force_yml, source=path)


def write_plain_copy(opt: dict, path: str) -> None:
    """`opt` as a YAML file holding plain values only, for BasicSR's own parser to read."""
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False, allow_unicode=True)


def resolve(spec: str) -> str:
    """The option file `-opt` names: a path, else a shipped option file's name."""
    from msrasr_arch.utils.option_files import resolve_option_file

    if os.path.isdir(spec):
        raise UserError(f'-opt {spec}: is a folder, not an option file')
    return resolve_option_file(spec)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
