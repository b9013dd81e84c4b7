"""Build a ready-to-run MSRA-SR network from a weights file, with or without its option file."""
import os
from typing import Dict, Optional, Tuple

import torch

from msrasr_arch.archs.from_weights import infer_network_options
from msrasr_arch.archs.network_options import ARCH_TYPES, MAX_PARAMS, check_network_options
from msrasr_arch.utils.checkpoint import LoadedCheckpoint, load_checkpoint, load_into
from msrasr_arch.utils.errors import UserError


def read_network_options(opt_path: str) -> Dict:
    """The ``network_g`` block of a BasicSR option file (or of a file holding only that block)."""
    import yaml
    if not os.path.isfile(opt_path):
        raise UserError(f'option file {opt_path} does not exist')
    try:
        with open(opt_path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f'cannot parse option file {opt_path}: {str(err).splitlines()[0]}') from None
    block = opt.get('network_g', opt) if isinstance(opt, dict) else None
    if not isinstance(block, dict) or block.get('type') not in ARCH_TYPES:
        raise UserError(f'{opt_path} has no network_g block of type {" or ".join(ARCH_TYPES)}')
    return dict(block)


def network_from_options(options: Dict, source: str = 'network_g', max_params: int = MAX_PARAMS) -> torch.nn.Module:
    """Build the network `options` describe, after :func:`check_network_options` (one-line errors naming
    `source` and the key, and a parameter budget checked before anything is allocated)."""
    from msrasr_arch.archs import ARCHS
    check_network_options(options, source=source, max_params=max_params)
    kwargs = {k: v for k, v in options.items() if k != 'type'}
    try:
        return ARCHS[options['type']](**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f'{source}: cannot build {options["type"]}: {err}') from None


def build_network(weights: str, opt_path: Optional[str] = None, scale: Optional[int] = None,
                  param_key: Optional[str] = None) -> Tuple[torch.nn.Module, Dict, LoadedCheckpoint]:
    """Load `weights` into the network it was trained as; returns ``(net in eval mode on CPU, options,
    checkpoint)``.

    The architecture comes from `opt_path`'s ``network_g`` when given, else from the options an exported
    file records, else from the tensor shapes (:func:`infer_network_options`). `scale`, when given, must
    match the network's; the option file's ``deploy`` flag is overridden by what the weights hold, since it
    only selects how the same function is stored.
    """
    ckpt = load_checkpoint(weights, param_key=param_key)
    state = ckpt.state_dict
    # Shape inference runs even with -opt where it can, to turn a wrong-scale mismatch into a plain sentence.
    try:
        inferred = infer_network_options(state, source=weights)
    except UserError:
        if opt_path is None:
            raise
        inferred = None
    if opt_path is not None:
        options, source = read_network_options(opt_path), opt_path
        if inferred is not None:
            opt_scale = options.get('upscale', 4 if options['type'] == 'MSRAGANNet' else 2)
            if opt_scale != inferred['upscale']:
                raise UserError(f'{weights} is a x{inferred["upscale"]} model but {opt_path} says upscale: '
                                f'{opt_scale}')
            options['deploy'] = inferred['deploy']
    else:
        header = ckpt.network_options()
        options, source = (inferred if header is None else header), weights

    # Options read from the weights file (its header or its shapes) may not ask for more parameters than
    # the file has bytes: every stored parameter takes at least one.
    budget = MAX_PARAMS if opt_path is not None else min(MAX_PARAMS, os.path.getsize(weights))
    net = network_from_options(options, source=source, max_params=budget)
    if scale is not None and int(scale) != net.upscale:
        raise UserError(f'{weights} is a x{net.upscale} model, but x{scale} was asked (--scale)')
    hint = ''
    if opt_path is not None:
        hint = f'Is {weights} the checkpoint of {opt_path}? Without -opt the architecture is read from the weights'
    load_into(net, state, source=f'checkpoint {weights}', hint=hint)
    return net.eval(), options, ckpt
