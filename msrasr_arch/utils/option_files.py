"""The option files shipped inside the package (``msrasr_arch/options``): listing them, and resolving a
built-in name where a path is expected, so `basicsr train -opt` and `msrasr` work after a plain pip install."""
import os
from typing import List

from msrasr_arch.utils.errors import UserError

OPTIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')


def list_option_files() -> List[str]:
    """Shipped option files as names relative to the options folder (``train_MSRASR_x2.yml``,
    ``ablation/...``), sorted."""
    names = []
    for folder, _, files in os.walk(OPTIONS_DIR):
        rel = os.path.relpath(folder, OPTIONS_DIR)
        names += [f if rel == '.' else f'{rel}/{f}' for f in files if f.endswith('.yml')]
    return sorted(names)


def resolve_option_file(spec: str) -> str:
    """``spec`` itself when it is an existing file, else the shipped file it names (with or without ``.yml``,
    with or without a leading ``options/``); a :class:`UserError` naming ``spec`` otherwise."""
    if os.path.isfile(spec):
        return spec
    name = spec[len('options/'):] if spec.startswith('options/') else spec
    name = name if name.endswith('.yml') else f'{name}.yml'
    if name in list_option_files():
        return os.path.join(OPTIONS_DIR, name)
    raise UserError(f'{spec}: no such option file, and not a shipped one (see `msrasr options list`)')
