"""The lightweight x2 SR networks users pick instead of MSRA-SR, built from spandrel's reference code.

Each entry is the light configuration the model's own paper evaluates, with the constructor arguments of
its authors' x2 option files (spandrel's loaders detect the same values from the released checkpoints).
Install with ``pip install -e .[bench]``.
"""
from typing import Callable, Dict, NamedTuple

import torch


class Peer(NamedTuple):
    paper: str
    args: dict  # constructor arguments; ``img_size``, where present, is replaced by the input size
    build: Callable[[int], torch.nn.Module]


def _srformer(**args):
    from spandrel_extra_arches.architectures.SRFormer import SRFormer
    return lambda size: SRFormer(**dict(args, img_size=size))


def _dat(**args):
    from spandrel.architectures.DAT import DAT
    # its masks are built for whole 32-wide windows; other sides keep the option files' 64 (masks per forward)
    return lambda size: DAT(**dict(args, img_size=size if size % 32 == 0 else 64))


def _atd(**args):
    from spandrel.architectures.ATD import ATD
    return lambda size: ATD(**dict(args, img_size=size))


def _omnisr(**args):
    from spandrel.architectures.OmniSR import OmniSR
    return lambda size: OmniSR(**args)


def _safmn(**args):
    from spandrel.architectures.SAFMN import SAFMN
    return lambda size: SAFMN(**args)


def _span(**args):
    from spandrel.architectures.SPAN import SPAN
    return lambda size: SPAN(**args)


_CONFIGS = {
    'srformer-light': ('SRFormer, ICCV 2023', _srformer, dict(
        upscale=2, in_chans=3, img_size=64, window_size=16, img_range=1., depths=[6, 6, 6, 6], embed_dim=60,
        num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='1conv')),
    'dat-light': ('DAT, ICCV 2023', _dat, dict(
        upscale=2, in_chans=3, img_size=64, img_range=1., depth=[18], embed_dim=60, num_heads=[6],
        expansion_factor=2, resi_connection='3conv', split_size=[8, 32], upsampler='pixelshuffledirect')),
    'omnisr': ('Omni-SR, CVPR 2023', _omnisr, dict(
        num_in_ch=3, num_out_ch=3, num_feat=64, block_num=1, pe=True, window_size=8, res_num=5, up_scale=2,
        bias=True)),
    'atd-light': ('ATD, CVPR 2024', _atd, dict(
        upscale=2, in_chans=3, img_size=64, embed_dim=48, depths=[6, 6, 6, 6], num_heads=[4, 4, 4, 4],
        window_size=16, category_size=128, num_tokens=64, reducted_dim=8, convffn_kernel_size=7, img_range=1.,
        mlp_ratio=1, upsampler='pixelshuffledirect', resi_connection='1conv')),
    'safmn': ('SAFMN, ICCV 2023', _safmn, dict(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=2)),
    'span': ('SPAN, CVPRW 2024', _span, dict(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=2)),
}

NAMES = list(_CONFIGS)


def get_peer(name: str) -> Peer:
    """The peer called ``name``; ImportError with the install command when spandrel is missing."""
    paper, factory, args = _CONFIGS[name]
    try:
        build = factory(**args)
    except ImportError as e:
        raise ImportError(f'{name} needs spandrel and spandrel_extra_arches: pip install -e .[bench] ({e})')
    return Peer(paper, args, build)


def deployed_params(net: torch.nn.Module) -> int:
    """Parameters of the inference form. SPAN's Conv3XC keeps its training branches (``sk``, ``conv``)
    beside the 3x3 ``eval_conv`` they fold into; only the latter runs at inference."""
    skip = set()
    for module in net.modules():
        if type(module).__name__ == 'Conv3XC':
            skip.update(id(p) for branch in (module.sk, module.conv) for p in branch.parameters())
    return sum(p.numel() for p in net.parameters() if id(p) not in skip)
