"""A warm start for short CPU runs: set a freshly built SwinIR-style network (``conv_first`` -> body with
``conv_after_body`` residual -> ``pixelshuffledirect`` upsampler) so that its output is MATLAB-bicubic
interpolation of the input, while every layer stays trainable.

How: ``x -> conv_first -> (+ conv_after_body(body)) -> conv 3x3 -> PixelShuffle`` has a purely linear
path with a 5x5 input footprint, enough for bicubic's 4 taps per phase. ``conv_first`` copies the 3x3
neighbourhood of each colour channel into 27 of its channels, the upsampler's conv combines them with
the bicubic weights of each sub-pixel phase, and ``conv_after_body`` starts at zero (a zero-initialised
residual, as in ReZero/Fixup), so the body adds nothing until training gives it a reason to.

Training from random weights needs thousands of steps just to rediscover interpolation; on a CPU budget
of a few minutes (``msrasr quickstart``) that is all the time there is. The paper's runs do not use this.
"""
import math

import torch
from torch import nn


def cubic(x):
    """MATLAB's bicubic kernel (a = -0.5)."""
    x = abs(x)
    if x <= 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x < 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


def phase_taps(scale):
    """For each output phase p in [0, scale): weights over input offsets -2..2 (MATLAB's upscaling
    geometry: output pixel i samples input coordinate (i + 0.5) / scale - 0.5)."""
    taps = []
    for p in range(scale):
        t = (p + 0.5) / scale - 0.5  # sub-pixel position relative to input pixel k
        w = [0.0] * 5
        first = math.floor(t) - 1
        for j in range(first, first + 4):
            w[j + 2] = cubic(t - j)
        total = sum(w)
        taps.append([v / total for v in w])
    return taps


# Offset d in -2..2 along one axis = a (conv_first tap) + b (upsampler tap), each in -1..1.
_SPLIT = {-2: (-1, -1), -1: (-1, 0), 0: (0, 0), 1: (1, 0), 2: (1, 1)}


@torch.no_grad()
def bicubic_start(net):
    """Set ``net`` (built, untrained) to compute bicubic upscaling; returns ``net``. Raises ValueError
    for a network without the layout described in the module docstring."""
    scale = getattr(net, 'upscale', None)
    up = getattr(net, 'upsample', None)
    first, after = getattr(net, 'conv_first', None), getattr(net, 'conv_after_body', None)
    if getattr(net, 'upsampler', None) != 'pixelshuffledirect' or not isinstance(up, nn.Sequential) \
            or not isinstance(up[0], nn.Conv2d) or not isinstance(up[1], nn.PixelShuffle) \
            or not isinstance(first, nn.Conv2d) or not isinstance(after, nn.Conv2d):
        raise ValueError('bicubic_start needs conv_first, conv_after_body and a pixelshuffledirect upsampler')
    conv = up[0]
    channels = first.in_channels
    if first.out_channels < 9 * channels or first.kernel_size != (3, 3) or conv.kernel_size != (3, 3):
        raise ValueError('bicubic_start needs 3x3 convs and at least 9 feature channels per colour channel')
    taps = phase_taps(scale)

    def feature(c, ay, ax):  # channel of conv_first holding colour c shifted by (ay, ax)
        return c * 9 + (ay + 1) * 3 + (ax + 1)

    first.weight[:9 * channels].zero_()
    first.bias[:9 * channels].zero_()
    for c in range(channels):
        for ay in (-1, 0, 1):
            for ax in (-1, 0, 1):
                first.weight[feature(c, ay, ax), c, ay + 1, ax + 1] = 1.0
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(channels):
        for py in range(scale):
            for px in range(scale):
                out = c * scale * scale + py * scale + px  # PixelShuffle's channel order
                for dy, (ay, by) in _SPLIT.items():
                    for dx, (ax, bx) in _SPLIT.items():
                        conv.weight[out, feature(c, ay, ax), by + 1, bx + 1] = taps[py][dy + 2] * taps[px][dx + 2]
    after.weight.zero_()
    after.bias.zero_()
    return net
