"""`msrasr options`: the option files shipped with the package.

    msrasr options list
    msrasr options copy train_MSRASR_light_x2 my_options/

`basicsr train -opt NAME` also accepts a shipped name directly; copy one to change it.
"""
import os
import shutil

from msrasr_arch.utils.atomic import atomic_path
from msrasr_arch.utils.errors import UserError
from msrasr_arch.utils.option_files import list_option_files, resolve_option_file


def run(args) -> int:
    if args.action == 'list':
        print('\n'.join(list_option_files()))
        return 0
    if os.path.isfile(args.name):
        raise UserError(f'{args.name}: give the name of a shipped option file (see `msrasr options list`)')
    src = resolve_option_file(args.name)
    dest = os.path.join(args.dest, os.path.basename(src)) if os.path.isdir(args.dest) else args.dest
    if os.path.exists(dest) and not args.overwrite:
        raise UserError(f'{dest} exists; pass --overwrite to replace it')
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    print(f'copied {os.path.relpath(src, os.path.dirname(os.path.dirname(src)))} -> {dest}')
    return 0
