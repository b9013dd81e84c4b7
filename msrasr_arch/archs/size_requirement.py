"""What input sizes a network needs, asked of the network in one place.

Padding before a forward pass, the tile grid of tiled inference, the example size of an ONNX export and
the padded LR size of a Mult-Adds count all follow :func:`size_requirement`, so they cannot disagree.
"""
import math
from typing import NamedTuple, Tuple

from torch import nn


class SizeRequirement(NamedTuple):
    """The input sizes a network works on.

    multiple: the network works on ``multiple x multiple`` windows, so an input's H and W are padded on
        the bottom/right to a multiple of it (MSRA-SR pads inside ``forward``; for networks that do not
        pad themselves the caller must), and tiles of a large image start on this grid.
    minimum: the smallest input H or W the network accepts. 1 for MSRA-SR: its padding falls back from
        reflection to edge replication when the image is smaller than the pad.
    """
    multiple: int
    minimum: int

    def padded(self, h: int, w: int) -> Tuple[int, int]:
        """``(H, W)``: the size an ``h x w`` input has once padded to the requirement."""
        m = self.multiple
        return -(-max(h, self.minimum) // m) * m, -(-max(w, self.minimum) // m) * m


def _window_sides(value) -> Tuple[int, ...]:
    """Positive integer window sides in a ``window_size`` attribute (an int or an (h, w) pair); else ()."""
    sides = value if isinstance(value, (tuple, list)) else (value, )
    if all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        return tuple(sides)
    return ()


def size_requirement(net: nn.Module) -> SizeRequirement:
    """The input-size requirement of `net`.

    A network that declares one (a :class:`SizeRequirement` in its ``size_requirement`` attribute, as
    MSRA-SR does) is taken at its word. For any other network it is derived from the ``window_size`` of
    the network and of its modules: BasicSR's SwinIR, for one, keeps its window size only on its blocks
    (and shrinks it there when ``img_size`` is smaller), so the blocks are what it really partitions by.
    Several sides give their least common multiple; a network without windows gets multiple 1.
    """
    declared = getattr(net, 'size_requirement', None)
    if isinstance(declared, SizeRequirement):
        return declared
    sides = [s for module in net.modules() for s in _window_sides(getattr(module, 'window_size', None))]
    return SizeRequirement(multiple=math.lcm(*sides), minimum=1)  # lcm() of nothing is 1
