"""The paper's published model sizes (Tables 1, 3 and 4) beside ours and SwinIR's, all under one ruler.

The ruler (``docs/architecture.md``, "Counting conventions"): parameters of the network as it is tested
(re-parameterised unless the option file tests the multi-branch form), every tensor counted; Mult-Adds =
``FlopCounterMode`` total / 2 of one forward on the meta device, on the LR image of a 1024x720 HR image
(padded as the network pads it), with the reference attention path (materialised maps). SwinIR is BasicSR's
``SwinIR`` at the same input (padded to its window 8), counted by the same ruler; its parameters are shown
without the relative-position bias tables, the convention of the paper's SwinIR figures.

Each row is built from the option file that trains it, so the table checks what would be trained.
"""
import functools
import os
from typing import Dict, List, NamedTuple, Optional

import yaml

from msrasr_arch.archs.profile import PAPER_HR, build_on_meta, lr_size, mult_adds
from msrasr_arch.utils.errors import UserError
from msrasr_arch.utils.option_files import OPTIONS_DIR


class Row(NamedTuple):
    table: str
    label: str
    option_file: str  # relative to the shipped options folder
    params: float  # the paper's figure
    mult_adds: float  # the paper's figure, G
    swinir: str  # the SwinIR configuration of the same task (a key of SWINIR)


# SwinIR as the paper quotes it (Table 1, Table 3): (params, Mult-Adds G), and its BasicSR network_g.
_SWINIR_LIGHT = dict(in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 4, embed_dim=60,
                     num_heads=[6] * 4, mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='1conv')
_SWINIR_CLASSICAL = dict(_SWINIR_LIGHT, img_size=48, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6,
                         upsampler='pixelshuffle')
SWINIR = {
    'light_x2': (878e3, 195.6, dict(_SWINIR_LIGHT, upscale=2)),
    'light_x3': (886e3, 87.2, dict(_SWINIR_LIGHT, upscale=3)),
    'light_x4': (897e3, 49.6, dict(_SWINIR_LIGHT, upscale=4)),
    'classical_x4': (11.9e6, 638.0, dict(_SWINIR_CLASSICAL, upscale=4)),
}

_A = 'ablation/train_MSRASR_light_x2_ablation_'
ROWS: List[Row] = [
    Row('T1', 'light x2', 'train_MSRASR_light_x2.yml', 769e3, 196.0, 'light_x2'),
    Row('T1', 'light x3', 'train_MSRASR_light_x3.yml', 777e3, 91.5, 'light_x3'),
    Row('T1', 'light x4', 'train_MSRASR_light_x4.yml', 789e3, 53.6, 'light_x4'),
    Row('T3', 'classical x4', 'train_MSRASR_x4.yml', 12.2e6, 645.0, 'classical_x4'),
    Row('T4', 'w/o GA (resized)', _A + 'wo_GA.yml', 690e3, 205.2, 'light_x2'),
    Row('T4', 'w/o CSA (resized)', _A + 'wo_CSA.yml', 728e3, 188.4, 'light_x2'),
    Row('T4', 'GA+CSA (full)', _A + 'full.yml', 769e3, 196.0, 'light_x2'),
    Row('T4', 'w/o shared attn', _A + 'wo_shared_attn.yml', 915e3, 229.3, 'light_x2'),
    Row('T4', 'w/o MS-DWC', _A + 'wo_MSDWC.yml', 671e3, 177.4, 'light_x2'),
    Row('T4', '+DWC(K=7) only', _A + 'DWC_K7.yml', 769e3, 196.0, 'light_x2'),
    Row('T4', 'MS-DWC, no reparam', _A + 'MSDWC_no_reparam.yml', 845e3, 208.9, 'light_x2'),
    Row('T4', 'window 8 (resized)', _A + 'window8.yml', 824e3, 179.7, 'light_x2'),
    Row('T4', 'F = identity', _A + 'F_identity.yml', 766e3, 184.1, 'light_x2'),
    Row('T4', 'F = 1x1 DWC', _A + 'F_1x1.yml', 766e3, 185.5, 'light_x2'),
    Row('T4', 'F = 5x5 DWC', _A + 'F_5x5.yml', 774e3, 216.8, 'light_x2'),
]
FULL_T4 = 'GA+CSA (full)'


def read_option_file(path: str):
    """``(network_g, reparameterize)`` of a training option file; ``reparameterize`` is its ``val`` setting."""
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f'{path}: cannot read YAML ({str(err).splitlines()[0]})') from None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise UserError(f'{path}: no network_g block')
    val = opt.get('val') if isinstance(opt.get('val'), dict) else {}
    return dict(opt['network_g']), bool(val.get('reparameterize', True))


def count(network_opt: dict, reparameterize: bool = True, hr=PAPER_HR) -> Dict[str, float]:
    """Parameters (all tensors) and Mult-Adds (reference path) of an MSRA-SR ``network_g`` block."""
    net = build_on_meta(network_opt).eval()
    if reparameterize:
        net.reparameterize()
    (h, w), _ = lr_size(net, hr)
    return dict(params=float(sum(p.numel() for p in net.parameters())), mult_adds=mult_adds(net, (h, w)) / 1e9)


def count_swinir(network_opt: dict, hr=PAPER_HR) -> Dict[str, float]:
    """BasicSR's SwinIR under the same ruler; ``params`` leaves out the bias tables (the paper's convention),
    ``params_all`` counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    try:
        from basicsr.archs.swinir_arch import SwinIR
    except ImportError as err:
        raise UserError(f'counting SwinIR needs BasicSR ({err})') from None
    # SwinIR's constructor reads values (.item()), which the meta device has none of: build, then move.
    net = SwinIR(**network_opt).eval().to('meta')
    named = dict(net.named_parameters())
    total = sum(p.numel() for p in named.values())
    tables = sum(p.numel() for n, p in named.items() if n.endswith('relative_position_bias_table'))
    # BasicSR's SwinIR does not pad: give it the LR image padded to its window, as its test code does.
    ws = network_opt['window_size']
    h, w = (-(-(side // network_opt['upscale']) // ws) * ws for side in hr)
    x = torch.empty(1, network_opt['in_chans'], h, w, device='meta')
    # At a size other than its img_size, SwinIR builds each shift mask anew with torch.zeros on the default
    # device: on the meta device that costs nothing (on the CPU, seconds).
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device('meta'):
        net(x)
    return dict(params=float(total - tables), params_all=float(total), mult_adds=counter.get_total_flops() / 2e9)


def swinir_count(name: str, hr=PAPER_HR) -> Dict[str, float]:
    """:func:`count_swinir` of the SwinIR configuration ``name`` (a key of ``SWINIR``), once per process."""
    return dict(_swinir_count(name, tuple(hr)))


@functools.lru_cache(maxsize=None)
def _swinir_count(name: str, hr: tuple) -> Dict[str, float]:
    return count_swinir(SWINIR[name][2], hr)


def paper_table(options_dir: str = OPTIONS_DIR, rows: Optional[List[Row]] = None, hr=PAPER_HR) -> List[Dict]:
    """One dict per row: the paper's figures, ours, SwinIR's, the ratios to SwinIR and the relative errors.

    ``ratio`` compares with SwinIR under each ruler: ours/SwinIR(ours) against paper/SwinIR(paper), which
    cancels whatever the paper's counter does differently from ours (the two SwinIR figures agree within
    1.5% for the lightweight models)."""
    out = []
    for row in rows or ROWS:
        path = os.path.join(options_dir, row.option_file)
        opt, reparam = read_option_file(path)
        try:
            ours = count(opt, reparam, hr)
        except (TypeError, ValueError, KeyError) as err:
            raise UserError(f'{path}: network_g is invalid: {err}') from None
        sw = swinir_count(row.swinir, hr)
        sw_paper_p, sw_paper_m, _ = SWINIR[row.swinir]
        ratio_paper, ratio_ours = row.mult_adds / sw_paper_m, ours['mult_adds'] / sw['mult_adds']
        out.append(dict(table=row.table, label=row.label, option_file=row.option_file, paper_params=row.params,
                        paper_mult_adds=row.mult_adds, params=ours['params'], mult_adds=ours['mult_adds'],
                        swinir_params=sw['params'], swinir_mult_adds=sw['mult_adds'], swinir_paper_params=sw_paper_p,
                        swinir_paper_mult_adds=sw_paper_m, ratio_paper=ratio_paper, ratio=ratio_ours,
                        params_err=ours['params'] / row.params - 1, ratio_err=ratio_ours / ratio_paper - 1))
    full = next((r for r in out if r['label'] == FULL_T4), None)
    for r in out:
        if full is not None and r['table'] == 'T4' and r is not full:
            r['delta_paper'] = (r['paper_params'] - full['paper_params'], r['paper_mult_adds'] - full['paper_mult_adds'])
            # Our Mult-Adds delta in the paper's units: scaled by the two SwinIR figures.
            scale = full['swinir_paper_mult_adds'] / full['swinir_mult_adds']
            r['delta'] = (r['params'] - full['params'], (r['mult_adds'] - full['mult_adds']) * scale)
    return out


def _k(n: float) -> str:
    return f'{n / 1e6:.2f}M' if n >= 1e6 else f'{n / 1e3:.1f}K'


def format_table(rows: List[Dict]) -> str:
    lines = [
        'Mult-Adds: FlopCounterMode / 2 on the meta device, LR of a 1024x720 HR image, reference attention path.',
        'ratio = Mult-Adds / SwinIR\'s of the same task (paper: its own figures; ours: SwinIR counted here).',
        'Parameters: ours re-parameterised (as tested), all tensors; SwinIR\'s without its bias tables, as the paper.',
        'd = difference to the Table 4 full model (Mult-Adds delta scaled to the paper\'s SwinIR units).',
        f'{"":3} {"row":<20} {"paper":>8} {"ours":>8} {"err":>6} {"SwinIR p/o":>15}  {"paper":>7} {"ours":>7} '
        f'{"SwinIR p/o":>13}  {"ratio p":>7} {"ratio o":>7} {"err":>6}  {"d paper":>14}  {"d ours":>14}',
    ]
    for r in rows:
        d = ''
        if 'delta' in r:
            dp, do = r['delta_paper'], r['delta']
            d = f'{dp[0] / 1e3:+5.0f}K {dp[1]:+6.1f}G  {do[0] / 1e3:+5.0f}K {do[1]:+6.1f}G'
        sw_p = f'{_k(r["swinir_paper_params"])}/{_k(r["swinir_params"])}'
        lines.append(
            f'{r["table"]:3} {r["label"]:<20} {_k(r["paper_params"]):>8} {_k(r["params"]):>8} '
            f'{r["params_err"]:+6.1%} {sw_p:>15}  {r["paper_mult_adds"]:6.1f}G {r["mult_adds"]:6.1f}G '
            f'{r["swinir_paper_mult_adds"]:5.1f}/{r["swinir_mult_adds"]:5.1f}G  {r["ratio_paper"]:7.3f} {r["ratio"]:7.3f} '
            f'{r["ratio_err"]:+6.1%}  {d}')
    return '\n'.join(lines)
