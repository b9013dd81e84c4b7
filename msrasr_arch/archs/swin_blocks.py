"""The pieces of SwinIR's skeleton that MSRA-SR reuses, in plain torch: weight init, stochastic depth and
the two pixel-shuffle upsamplers.

Module layouts (and so state-dict keys) and the order of random draws are SwinIR's, so checkpoints and
seeded initialisations are the same as with BasicSR's classes.
"""
import math

import torch
from torch import nn


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place from N(mean, std^2) truncated to [a, b], by inverting the normal CDF.

    One uniform draw per element (no rejection), which is what SwinIR's initialisation does; recent
    ``torch.nn.init.trunc_normal_`` samples by rejection, i.e. other values for the same seed.
    """
    if tensor.is_meta:
        return tensor

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    lo, hi = cdf((a - mean) / std), cdf((b - mean) / std)
    # erfinv(2u - 1) * sqrt(2) is the standard normal quantile of u.
    tensor.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_()
    return tensor.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``rate`` of the samples and
    scale the survivors by ``1 / (1 - rate)``; the identity in eval mode.

    Shapes: (B, ...) -> (B, ...).
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # floor(keep + U[0, 1)) is 1 with probability keep.
        alive = torch.rand((x.shape[0], ) + (1, ) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x / keep * (alive + keep).floor_()

    def extra_repr(self) -> str:
        return f'rate={self.rate}'


class Upsample(nn.Sequential):
    """Classical-SR reconstruction: 3x3 conv + pixel shuffle, once (x3) or once per factor 2 (x2^n).

    Shapes: (B, num_feat, H, W) -> (B, num_feat, scale*H, scale*W).
    """

    def __init__(self, scale: int, num_feat: int):
        if scale == 3:
            steps = [3]
        elif scale >= 2 and scale & (scale - 1) == 0:
            steps = [2] * (scale.bit_length() - 1)
        else:
            raise ValueError(f'upscale {scale} is not supported by pixelshuffle (2^n or 3)')
        layers = []
        for s in steps:
            layers += [nn.Conv2d(num_feat, s * s * num_feat, 3, 1, 1), nn.PixelShuffle(s)]
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """Lightweight-SR reconstruction: one 3x3 conv straight to ``scale^2 * out_chans`` channels, then one
    pixel shuffle.

    Shapes: (B, num_feat, H, W) -> (B, out_chans, scale*H, scale*W).
    """

    def __init__(self, scale: int, num_feat: int, out_chans: int):
        super().__init__(nn.Conv2d(num_feat, scale * scale * out_chans, 3, 1, 1), nn.PixelShuffle(scale))
