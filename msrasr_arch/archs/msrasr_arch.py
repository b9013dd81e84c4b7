"""MSRA-SR: Image Super-resolution Transformer with Multi-scale Shared Representation Acquisition
(Zhou et al., ICCV 2023), as BasicSR archs ``MSRASR`` and ``MSRAGANNet``.

Layout (SwinIR's skeleton, paper section 3.1; decisions and their evidence in ``docs/architecture.md``)::

    x  = (lq - mean) * img_range
    f0 = conv_first(x)                                   # 3x3, in_chans -> C
    t  = patch_norm(f0)                                  # channels-last tokens
    t  = MSTB_1 ... MSTB_G (t)                           # residual groups (resi_connection: an optional end conv)
    f  = conv_after_body(norm(t)) + f0
    sr = upsampler(f) / img_range + mean

One layer of an MSTB (pre-norm)::

    x = x + SSA(LN(x))        # (shifted) window attention; layers 3, 4, ... inherit their map (pair sharing)
    x = x + CSA(LN(x))        # cross-scale attention, first layer of each MSTB only
    x = x + CA(FFN(LN(x)))    # FFN with MS-DWC, channel attention on its output
"""
import math
from typing import Optional, Sequence

import torch
from torch import nn

from .channel_attention import ChannelAttention
from .cross_scale_attention import CrossScaleAttention
from .backend import choose_backend
from .ffn import FFN, MSDWConv
from .network_options import RULES, check_arguments
from .shared_attention import ATTN_IMPLS, SharedLogits, SharedWindowAttention
from .size_requirement import SizeRequirement
from .swin_blocks import DropPath, Upsample, UpsampleOneStep, trunc_normal_
from .window import pad_to_multiple, window_layout


class MSTBLayer(nn.Module):
    """One Transformer layer of an MSTB.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side ws.
        shifted: use windows shifted by ws/2 (every second layer, as in Swin).
        computes_attn: compute the similarity map (else inherit it from two layers before).
        attn_transform_kernel: size of the inheriting transform F (0 = identity).
        attn_transform_level: for an inheriting layer, how many F its map has been through, its own included.
        csa_dim / csa_scales: cross-scale attention width (0 = none) and scales.
        mlp_ratio: FFN hidden width / C.
        ms_kernels: MS-DWC kernel sizes (empty = plain MLP).
        ca_reduction: channel-attention reduction (0 = none).
        drop_path: stochastic-depth rate of the residual branches.
        deploy: build the MS-DWC re-parameterised.

    Shapes: ``forward(x (B, H, W, C), layouts, shared)`` returns ``(B, H, W, C)`` and the layer's
    :class:`SharedLogits` (H, W multiples of ws); ``layouts`` are the regular and shifted
    :class:`~.window.WindowLayout` of the forward.
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int, shifted: bool, computes_attn: bool,
                 attn_transform_kernel: int, attn_transform_level: int, csa_dim: int, csa_scales: Sequence[int],
                 mlp_ratio: float, ms_kernels: Sequence[int], ca_reduction: int, drop_path: float, deploy: bool):
        super().__init__()
        self.shifted = shifted  # which of the forward's two window layouts this layer attends in
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SharedWindowAttention(dim=dim, num_heads=num_heads, window_size=window_size,
                                          computes=computes_attn, transform_kernel=attn_transform_kernel,
                                          transform_level=attn_transform_level)
        if csa_dim:
            self.norm_csa = nn.LayerNorm(dim)
            self.csa = CrossScaleAttention(dim=dim, dim_csa=csa_dim, num_heads=max(1, csa_dim // 16),
                                           window_size=window_size, scales=csa_scales)
        else:
            self.norm_csa = self.csa = None
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim=dim, hidden_dim=int(dim * mlp_ratio), kernels=ms_kernels, deploy=deploy)
        self.ca = ChannelAttention(dim=dim, reduction=ca_reduction) if ca_reduction else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, layouts, shared: Optional[SharedLogits]):
        layout = layouts[1 if self.shifted else 0]
        y, state = self.attn(layout.partition(self.norm1(x)), layout, shared)
        y = layout.reverse(y)
        x = x + self.drop_path(y)
        if self.csa is not None:
            x = x + self.drop_path(self.csa(self.norm_csa(x)))
        y = self.ffn(self.norm2(x), layout.eager)
        if self.ca is not None:
            y = self.ca(y)
        return x + self.drop_path(y), state


class MSTB(nn.Module):
    """Multi-scale shared Transformer block: ``depth`` layers, a 3x3 conv, and a residual connection.

    With ``shared_attn='pair'`` layers 1 and 2 compute their maps and layer i >= 3 inherits layer i-2's
    (regular windows from regular, shifted from shifted: a map only fits the windows it was made on).

    Shapes: (B, H, W, C) -> (B, H, W, C), H and W multiples of ws.
    """

    def __init__(self, *, dim: int, depth: int, num_heads: int, window_size: int, shared_attn: str,
                 attn_transform_kernel: int, csa_dim: int, csa_scales: Sequence[int], mlp_ratio: float,
                 ms_kernels: Sequence[int], ca_reduction: int, drop_path: Sequence[float], resi_connection: str,
                 deploy: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            MSTBLayer(dim=dim, num_heads=num_heads, window_size=window_size, shifted=i % 2 == 1,
                      computes_attn=shared_attn == 'none' or i < 2, attn_transform_kernel=attn_transform_kernel,
                      attn_transform_level=i // 2,
                      csa_dim=csa_dim if i == 0 else 0, csa_scales=csa_scales, mlp_ratio=mlp_ratio,
                      ms_kernels=ms_kernels, ca_reduction=ca_reduction, drop_path=drop_path[i], deploy=deploy)
            for i in range(depth))
        if resi_connection == '1conv':
            self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        elif resi_connection == '3conv':
            # SwinIR's parameter-saving variant.
            self.conv = nn.Sequential(
                nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
                nn.Conv2d(dim // 4, dim, 3, 1, 1))
        else:
            self.conv = None

    def forward(self, x: torch.Tensor, layouts) -> torch.Tensor:
        states = []
        y = x
        for i, blk in enumerate(self.blocks):
            y, state = blk(y, layouts, states[i - 2] if i >= 2 else None)
            states.append(state)
        if self.conv is not None:
            y = self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + y


class MSRASR(nn.Module):
    """MSRA-SR for lightweight and classical (bicubic) super-resolution.

    Defaults are the paper's lightweight x2 model (747K parameters re-parameterised; the paper: 769K;
    ``docs/architecture.md`` gives the calibration).

    Args (SwinIR's names where they exist):
        upscale: scale factor (2, 3, 4; 8 with ``pixelshuffle``).
        in_chans: image channels (in and out).
        img_size: accepted for SwinIR option compatibility; unused (any input size works).
        window_size: attention window side (paper: 16).
        img_range: image range; the input is shifted by the DIV2K RGB mean (3 channels) and scaled by it.
        depths: layers per MSTB, one entry per MSTB (paper: 4 layers; 4 MSTBs light, 6 classical).
        embed_dim: channels C (paper: 60 light, 192 classical).
        num_heads: attention heads per MSTB.
        mlp_ratio: FFN hidden width / C.
        upsampler: ``pixelshuffledirect`` (light), ``pixelshuffle`` (classical) or ``nearest+conv`` (real-world).
        resi_connection: ``none`` (default), ``1conv`` (SwinIR's 3x3 conv ending each MSTB) or ``3conv``
            (SwinIR's bottleneck).
        num_feat: channels of the ``pixelshuffle``/``nearest+conv`` reconstruction (SwinIR: 64).
        shared_attn: ``pair`` (layer i+2 inherits layer i's map) or ``none`` (every layer computes its own,
            i.e. Swin window attention).
        attn_transform_kernel: F, the depth-wise conv over inherited maps: 0 = identity, 1, 3 (paper), 5.
        csa_dim: width of the cross-scale attention (0 = none; 6 light, 96 classical).
        csa_scales: CSA scale factors (default (2, 4); the paper's text (1, 2, 4)); each must divide
            ``window_size``.
        ms_kernels: MS-DWC kernel sizes ((1, 3, 5, 7); (7,) = one depth-wise conv; () = none).
        ca_reduction: channel-attention reduction: hidden width C // r (default 1; 0 = no channel attention).
        drop_path_rate: stochastic depth, linearly increasing over layers (0 in the paper's recipe).
        deploy: build the MS-DWC in re-parameterised form, so a deployed checkpoint loads.

    Shapes: (B, in_chans, H, W) -> (B, in_chans, upscale*H, upscale*W) for any H, W >= 1: the input is
    padded to a multiple of ``window_size`` inside and the output cropped.
    """

    def __init__(self, *, upscale: int = 2, in_chans: int = 3, img_size: Optional[int] = None, window_size: int = 16,
                 img_range: float = 1.0, depths: Sequence[int] = (4, 4, 4, 4), embed_dim: int = 60,
                 num_heads: Sequence[int] = (6, 6, 6, 6), mlp_ratio: float = 2.0,
                 upsampler: str = 'pixelshuffledirect', resi_connection: str = 'none', num_feat: int = 64,
                 shared_attn: str = 'pair', attn_transform_kernel: int = 3, csa_dim: int = 6,
                 csa_scales: Sequence[int] = (2, 4), ms_kernels: Sequence[int] = (1, 3, 5, 7),
                 ca_reduction: int = 1, drop_path_rate: float = 0.0, deploy: bool = False):
        # The checks every source of options shares (types, ranges, parameter budget), before any allocation.
        check_arguments({k: v for k, v in locals().items() if k in RULES}, source=type(self).__name__)
        super().__init__()
        del img_size  # accepted for SwinIR option files; the network adapts to any input size
        depths, num_heads = list(depths), list(num_heads)

        self.upscale = upscale
        self.in_chans = in_chans
        self.window_size = window_size
        # Any size works: forward pads to whole windows (reflect, or replicate below one window).
        self.size_requirement = SizeRequirement(multiple=window_size, minimum=1)
        self.img_range = img_range
        self.upsampler = upsampler
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0, ) * in_chans
        self.register_buffer('mean', torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        self.attn_impl = 'fused'

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_norm = nn.LayerNorm(embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            self.layers.append(
                MSTB(dim=embed_dim, depth=depth, num_heads=heads, window_size=window_size, shared_attn=shared_attn,
                     attn_transform_kernel=attn_transform_kernel, csa_dim=csa_dim, csa_scales=csa_scales,
                     mlp_ratio=mlp_ratio, ms_kernels=ms_kernels, ca_reduction=ca_reduction,
                     drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])], resi_connection=resi_connection,
                     deploy=deploy))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)

        if upsampler == 'pixelshuffledirect':
            self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)
        else:
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            if upsampler == 'pixelshuffle':
                self.upsample = Upsample(upscale, num_feat)
            else:
                self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                if upscale == 4:
                    self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
                self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)

        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, SharedWindowAttention):
                m.reset_transform()
        self._choose_backend()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # SwinIR's initialisation.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def set_attn_impl(self, impl: str) -> 'MSRASR':
        """Choose the attention implementation: ``fused`` (default, fast: the C++ window attention kernel on the
        CPU where it was built), ``operators`` (the fused forms in PyTorch operators only) or ``reference``
        (materialised maps, used for the Mult-Adds count and as the ground truth in tests). All compute the
        same function."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f'attention implementation must be one of {ATTN_IMPLS}; got {impl!r}')
        self.attn_impl = impl
        self._choose_backend()
        return self

    def _choose_backend(self) -> None:
        """Decide how attention runs (see :mod:`.backend`) for the current device, mode and
        implementation, once, and hand the choice to every attention module."""
        backend = choose_backend(self.mean.device, self.training, self.attn_impl == 'reference',
                                 kernels=self.attn_impl == 'fused', dtype=self.mean.dtype)
        for m in self.modules():
            if isinstance(m, (SharedWindowAttention, MSDWConv)):
                m.backend = backend
            elif isinstance(m, CrossScaleAttention):
                m.backend = backend.operators

    def train(self, mode: bool = True) -> 'MSRASR':
        super().train(mode)
        self._choose_backend()
        return self

    def _apply(self, fn, recurse=True):
        # Every move or cast (.to, .cuda, .half, ...) passes here.
        super()._apply(fn, recurse)
        self._choose_backend()
        return self

    @property
    def deployed(self) -> bool:
        return all(m.deployed for m in self.modules() if isinstance(m, MSDWConv))

    def reparameterize(self) -> 'MSRASR':
        """Merge every multi-branch depth-wise conv into one 7x7 conv, in place; harmless when repeated."""
        for m in self.modules():
            if isinstance(m, MSDWConv):
                m.reparameterize()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); H, W multiples of ``window_size``."""
        t = self.patch_norm(x.permute(0, 2, 3, 1))
        b, h, w, _ = t.shape
        ws, grouped = self.window_size, self.attn_impl != 'reference'
        layouts = tuple(window_layout(b, h, w, window_size=ws, shift=shift, device=x.device, dtype=x.dtype,
                                      grouped=grouped) for shift in (0, ws // 2))
        for layer in self.layers:
            t = layer(t, layouts)
        return self.norm(t).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = (pad_to_multiple(x, self.size_requirement.multiple) - self.mean) * self.img_range
        f0 = self.conv_first(x)
        f = self.conv_after_body(self.forward_features(f0)) + f0
        if self.upsampler == 'pixelshuffledirect':
            out = self.upsample(f)
        elif self.upsampler == 'pixelshuffle':
            out = self.conv_last(self.upsample(self.conv_before_upsample(f)))
        else:
            f = self.conv_before_upsample(f)
            f = self.lrelu(self.conv_up1(nn.functional.interpolate(f, scale_factor=2, mode='nearest')))
            if self.upscale == 4:
                f = self.lrelu(self.conv_up2(nn.functional.interpolate(f, scale_factor=2, mode='nearest')))
            out = self.conv_last(self.lrelu(self.conv_hr(f)))
        out = out / self.img_range + self.mean
        return out[..., :h * self.upscale, :w * self.upscale]


class MSRAGANNet(MSRASR):
    """The real-world generator: the classical-size MSRA-SR body with SwinIR's real-world
    ``nearest+conv`` upsampler, x4 by default. Its state dict has the same keys as an :class:`MSRASR`
    built with the same arguments, so weights move between the two (e.g. a PSNR-oriented stage 1)."""

    def __init__(self, *, upscale: int = 4, in_chans: int = 3, img_size: Optional[int] = None, window_size: int = 16,
                 img_range: float = 1.0, depths: Sequence[int] = (4, 4, 4, 4, 4, 4), embed_dim: int = 192,
                 num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6), mlp_ratio: float = 2.0,
                 upsampler: str = 'nearest+conv', resi_connection: str = 'none', num_feat: int = 64,
                 shared_attn: str = 'pair', attn_transform_kernel: int = 3, csa_dim: int = 96,
                 csa_scales: Sequence[int] = (2, 4), ms_kernels: Sequence[int] = (1, 3, 5, 7),
                 ca_reduction: int = 1, drop_path_rate: float = 0.0, deploy: bool = False):
        super().__init__(upscale=upscale, in_chans=in_chans, img_size=img_size, window_size=window_size,
                         img_range=img_range, depths=depths, embed_dim=embed_dim, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, upsampler=upsampler, resi_connection=resi_connection, num_feat=num_feat,
                         shared_attn=shared_attn, attn_transform_kernel=attn_transform_kernel, csa_dim=csa_dim,
                         csa_scales=csa_scales, ms_kernels=ms_kernels, ca_reduction=ca_reduction,
                         drop_path_rate=drop_path_rate, deploy=deploy)
