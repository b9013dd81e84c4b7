"""Recover the ``network_g`` options of an MSRA-SR network from the shapes in its state dict.

One implementation for every loader: ``msrasr upscale --weights net_g_latest.pth`` (no option file needed)
and the spandrel architecture (:mod:`msrasr_arch.spandrel`). Plain torch.

Everything that changes a tensor's shape or presence is recovered exactly: in_chans, embed_dim, depths,
num_heads, window_size (from the relative-position bias table), mlp_ratio, upsampler and scale, num_feat,
resi_connection, shared_attn, attn_transform_kernel, csa_dim and csa_scales, ms_kernels, ca_reduction, and
whether the MS-DWC is deployed. Two things leave no trace in the weights and take their defaults:
``img_range`` (1.0, every published setting) and the *order* of ``csa_scales`` (ascending, as written in
the paper). A network trained with anything else needs its option file (``-opt``).

Only shapes are read. The options are not checked here: callers pass them to
:func:`~msrasr_arch.archs.network_options.check_network_options` before building anything.
"""
import itertools
import math
import re
from typing import Dict, Mapping

import torch

from msrasr_arch.utils.errors import UserError

_BLOCK = re.compile(r'^layers\.(\d+)\.blocks\.(\d+)\.')
_BRANCH = re.compile(r'^layers\.0\.blocks\.0\.ffn\.msdwc\.branches\.(\d+)\.weight$')
_UPSAMPLE_CONV = re.compile(r'^upsample\.(\d+)\.weight$')
# Residual groups or layers beyond this many are not a network the options could describe anyway; the cap
# keeps a crafted key like "layers.999999999.blocks.0.x" from driving loops below.
_MAX_INDEX = 1024


def _shape(state: Mapping[str, torch.Tensor], key: str):
    t = state.get(key)
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _csa_scales(total: int, window_size: int):
    """The ascending set of divisors of `window_size` whose squares sum to `total` (the fuse layer's input
    is csa_dim * sum(s^2)); None when no set or several sets fit."""
    divisors = [d for d in range(1, window_size + 1) if window_size % d == 0]
    found = [list(c) for r in range(1, len(divisors) + 1) for c in itertools.combinations(divisors, r)
             if sum(s * s for s in c) == total]
    return found[0] if len(found) == 1 else None


def infer_network_options(state: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> Dict:
    """``network_g`` options (``type`` included) that build a network `state` loads into strictly.

    Raises :class:`UserError` when `state` is not an MSRA-SR state dict or an option cannot be decided."""
    first = _shape(state, 'conv_first.weight')
    blocks = {}
    for key in state:
        m = _BLOCK.match(key) if isinstance(key, str) else None
        if m:
            g, j = int(m.group(1)), int(m.group(2))
            if g >= _MAX_INDEX or j >= _MAX_INDEX:
                raise UserError(f'{source}: key {key[:80]!r} numbers more groups or layers than any MSRA-SR network')
            blocks.setdefault(g, set()).add(j)
    if first is None or len(first) != 4 or not blocks:
        raise UserError(f'{source} does not look like an MSRA-SR (MSRASR/MSRAGANNet) state dict: no '
                        '"conv_first.weight" or "layers.*.blocks.*" keys; pass its option file with -opt '
                        'if it is one')
    embed_dim, in_chans = first[0], first[1]
    groups = sorted(blocks)
    if groups != list(range(len(groups))):
        raise UserError(f'{source}: residual groups {groups[:8]} are not numbered 0..{len(groups) - 1}')
    depths = [max(blocks[g]) + 1 for g in groups]

    def block(g, j, suffix):
        return _shape(state, f'layers.{g}.blocks.{j}.{suffix}')

    def need(g, j, suffix, ndim):
        shape = block(g, j, suffix)
        if shape is None or len(shape) != ndim:
            raise UserError(f'{source}: layers.{g}.blocks.{j}.{suffix} is missing or not {ndim}-D; '
                            'not an MSRA-SR state dict, or a damaged one; pass -opt if it is one')
        return shape

    num_heads, window_size = [], None
    for g in groups:
        table = need(g, 0, 'attn.relative_position_bias_table', 2)
        side = math.isqrt(table[0])
        if side * side != table[0] or side % 2 == 0:
            raise UserError(f'{source}: bias table of {table[0]} rows is not (2*window-1)^2; pass -opt')
        window_size = (side + 1) // 2
        num_heads.append(table[1])

    # pair sharing: layers 3, 4, ... of a group own only a V projection (no qkv).
    inheriting = [(g, j) for g in groups for j in range(depths[g]) if block(g, j, 'attn.v.weight') is not None]
    shared_attn = 'pair' if inheriting or all(d <= 2 for d in depths) else 'none'
    transform = block(*inheriting[0], 'attn.transform.weight') if inheriting else None
    attn_transform_kernel = transform[-1] if transform else (0 if inheriting else 3)

    csa_q = block(0, 0, 'csa.q.weight')
    csa_dim, csa_scales = 0, [1, 2, 4]
    if csa_q is not None:
        csa_dim = csa_q[0]
        total = need(0, 0, 'csa.fuse.weight', 2)[1] // max(csa_dim, 1)
        csa_scales = _csa_scales(total, window_size)
        if csa_scales is None:
            raise UserError(f'{source}: cannot tell csa_scales from a fuse layer of {total} x csa_dim inputs; '
                            'pass -opt')

    hidden = need(0, 0, 'ffn.fc1.weight', 2)[0]
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:
        raise UserError(f'{source}: FFN width {hidden} is not int(embed_dim * mlp_ratio); pass -opt')
    branches = sorted(int(m.group(1)) for k in state for m in [_BRANCH.match(k) if isinstance(k, str) else None]
                      if m)
    deployed_conv = block(0, 0, 'ffn.msdwc.conv.weight')
    deploy = deployed_conv is not None
    if deploy:
        # The deployed form only depends on the largest kernel; the branch sizes are gone for good.
        ms_kernels = [deployed_conv[-1]]
    else:
        ms_kernels = [need(0, 0, f'ffn.msdwc.branches.{i}.weight', 4)[-1] for i in branches]

    ca = block(0, 0, 'ca.fc1.weight')
    ca_reduction = 0
    if ca is not None:
        # Every reduction giving the same hidden width builds the same network; prefer the default 16.
        ca_reduction = 16 if max(1, embed_dim // 16) == ca[0] else embed_dim // max(ca[0], 1)

    if _shape(state, 'layers.0.conv.weight') is not None:
        resi_connection = '1conv'
    elif _shape(state, 'layers.0.conv.0.weight') is not None:
        resi_connection = '3conv'
    else:
        resi_connection = 'none'

    options = dict(type='MSRASR', in_chans=in_chans, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                   window_size=window_size, mlp_ratio=mlp_ratio, img_range=1.0, resi_connection=resi_connection,
                   shared_attn=shared_attn, attn_transform_kernel=attn_transform_kernel, csa_dim=csa_dim,
                   csa_scales=csa_scales, ms_kernels=ms_kernels, ca_reduction=ca_reduction, deploy=deploy)
    options.update(_upsampler(state, in_chans, source))
    return options


def _upsampler(state, in_chans: int, source: str) -> Dict:
    before = _shape(state, 'conv_before_upsample.0.weight')
    if before is None:
        conv = _shape(state, 'upsample.0.weight')
        if conv is None:
            raise UserError(f'{source}: no upsampler weights (upsample.* / conv_before_upsample.*); pass -opt')
        scale = math.isqrt(conv[0] // max(in_chans, 1))
        return dict(upsampler='pixelshuffledirect', upscale=scale)
    num_feat = before[0]
    if _shape(state, 'conv_up1.weight') is not None:
        return dict(upsampler='nearest+conv', num_feat=num_feat,
                    upscale=4 if _shape(state, 'conv_up2.weight') is not None else 2)
    convs = sorted((k for k in state if isinstance(k, str) and _UPSAMPLE_CONV.match(k)),
                   key=lambda k: int(k.split('.')[1]))
    if len(convs) == 1 and _shape(state, convs[0])[0] == 9 * num_feat:
        scale = 3
    else:
        scale = 2**len(convs)
    return dict(upsampler='pixelshuffle', num_feat=num_feat, upscale=scale)
