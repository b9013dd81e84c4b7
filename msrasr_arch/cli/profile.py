"""`msrasr profile`: parameters and Mult-Adds of a configuration, beside the paper's figures."""
import os

import yaml

from msrasr_arch.archs.presets import PAPER, PRESETS, get_preset
from msrasr_arch.archs.profile import PAPER_HR, profile
from msrasr_arch.utils.errors import UserError


def load_network_opt(spec: str) -> dict:
    """``network_g`` of an option file, a bare network block file, or a built-in configuration name."""
    if spec in PRESETS:
        return get_preset(spec)
    if not os.path.isfile(spec):
        raise UserError(f'{spec}: no such option file, and not a built-in configuration '
                        f'({", ".join(PRESETS)})')
    try:
        with open(spec, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f'{spec}: cannot read YAML ({str(err).splitlines()[0]})') from None
    if isinstance(opt, dict) and isinstance(opt.get('network_g'), dict):
        return dict(opt['network_g'])
    if isinstance(opt, dict) and 'type' in opt:
        return opt
    raise UserError(f'{spec}: no network_g block')


def _fmt_params(n):
    return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}K'


def run(args):
    if getattr(args, 'paper', False):
        if args.opt or args.hr:
            raise UserError('--paper takes neither -opt nor --hr: its rows are the shipped option files at 1024x720')
        from msrasr_arch.calibration import format_table, paper_table
        print(format_table(paper_table()))
        return 0
    hr = args.hr or f'{PAPER_HR[1]}x{PAPER_HR[0]}'
    try:
        w, h = (int(v) for v in hr.lower().split('x'))
    except ValueError:
        raise UserError(f'--hr {hr!r}: expected WIDTHxHEIGHT, e.g. 1024x720') from None
    specs = args.opt or list(PRESETS)
    header = (f'{"config":<18} {"params(train)":>13} {"params":>9} {"paper":>7} {"Mult-Adds":>10} '
              f'{"paper":>7} {"executed":>9}  LR input (padded)')
    print(f'Mult-Adds: multiply-accumulates on the LR input for a {w}x{h} HR image, counted on the meta device '
          '(FlopCounterMode / 2) with materialised attention maps; "executed" counts the default fused kernels.')
    print(header)
    for spec in specs:
        opt = load_network_opt(spec)
        try:
            r = profile(opt, hr=(h, w))
        except (TypeError, ValueError, KeyError) as err:
            raise UserError(f'{spec}: network_g is invalid: {err}') from None
        name = os.path.splitext(os.path.basename(spec))[0]
        paper_p, paper_m = PAPER.get(spec, (None, None))
        fused = r.get('mult_adds_fused')
        print(f'{name:<18} {_fmt_params(r["params_train"]):>13} {_fmt_params(r["params"]):>9} '
              f'{_fmt_params(paper_p) if paper_p else "-":>7} {r["mult_adds"] / 1e9:>9.1f}G '
              f'{f"{paper_m:.1f}G" if paper_m else "-":>7} {f"{fused / 1e9:.1f}G" if fused else "-":>9}  '
              f'{r["lr"][1]}x{r["lr"][0]} ({r["lr_padded"][1]}x{r["lr_padded"][0]})')
    return 0
