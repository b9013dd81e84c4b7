"""Parameters and Mult-Adds of a network, counted as the paper counts them."""
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from msrasr_arch.archs import ARCHS
from msrasr_arch.archs.size_requirement import size_requirement

PAPER_HR = (720, 1024)  # (H, W) of the HR image the paper's Mult-Adds refer to


def build_on_meta(network_opt: dict) -> torch.nn.Module:
    """Build a ``network_g`` block on the meta device (no memory, no weights)."""
    opt = dict(network_opt)
    name = opt.pop('type')
    if name in ARCHS:
        arch = ARCHS[name]
    else:  # another BasicSR arch (SwinIR...) to compare with
        import msrasr_arch._compat  # noqa: F401  (the torchvision shim precedes basicsr)
        from basicsr.utils.registry import ARCH_REGISTRY
        arch = ARCH_REGISTRY.get(name)
    with torch.device('meta'):
        return arch(**opt)


def lr_size(net: torch.nn.Module, hr=PAPER_HR):
    """The LR input for an HR size: HR // scale, then padded as the network pads it."""
    h, w = hr[0] // net.upscale, hr[1] // net.upscale
    return (h, w), size_requirement(net).padded(h, w)


def mult_adds(net: torch.nn.Module, size, attn_impl: str = 'reference') -> float:
    """Multiply-accumulates of one forward on a ``size`` (H, W) input: FlopCounterMode total / 2, on meta.

    ``reference`` counts the architecture as described (materialised attention maps, F as a conv over
    them); ``fused`` counts what the default implementation executes.
    """
    previous = getattr(net, 'attn_impl', None)
    if previous is not None:
        net.set_attn_impl(attn_impl)
    try:
        x = torch.empty(1, net.in_chans, *size, device='meta')
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x)
    finally:
        if previous is not None:
            net.set_attn_impl(previous)
    return counter.get_total_flops() / 2


def profile(network_opt: dict, hr=PAPER_HR) -> Dict[str, float]:
    """Parameters of the training and the deployed form, and Mult-Adds of the deployed form."""
    net = build_on_meta(network_opt).eval()
    params_train = sum(p.numel() for p in net.parameters())
    if hasattr(net, 'reparameterize'):
        net.reparameterize()
    params = sum(p.numel() for p in net.parameters())
    (h, w), padded = lr_size(net, hr)
    result = dict(params_train=params_train, params=params, lr=(h, w), lr_padded=padded,
                  mult_adds=mult_adds(net, (h, w), 'reference'))
    if hasattr(net, 'set_attn_impl'):
        result['mult_adds_fused'] = mult_adds(net, (h, w), 'fused')
    return result
