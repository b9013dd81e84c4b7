"""Attention bias maps held as their distinct values and an index, so that ``F`` over a map costs little.

A computing layer's relative-position bias ``B`` (h, N, N) has at most ``(2ws - 1)^2`` distinct values per
head: ``B[i, j] = table[index[i, j]]``. An inheriting layer's ``F``, a ``k x k`` depth-wise conv over each
head's ``N x N`` map with zero padding, gives ``F(B)[i, j] = bias + sum_ab w[a, b] B[i + a - r, j + b - r]``,
so two entries whose ``k x k`` neighbourhoods in ``index`` are alike get the same value. Such
neighbourhoods are few (3653 distinct ones for window 16 and ``k = 3``, against 65536 entries): ``F`` is
computed once per neighbourhood, as a weighted sum of ``k^2`` gathered values (a tap outside the map reads a
zero), and the map is one gather of the results. A chain (``F`` over ``F(B)``) takes the neighbourhoods of
the previous level's index. Every entry sums the same products as the conv over the map would, without
the ``N x N`` conv and its backward (2-3 ms per layer and step on 2 cores; ``benchmarks/components.py``).

Levels: 0 is the position bias (the table's values), level ``l`` is the map after ``l`` transforms.
"""
import functools

import torch
from torch.nn import functional as F

from .window import relative_position_index

__all__ = ['map_index', 'transform_keys', 'gather_map', 'transform_values']


@functools.lru_cache(maxsize=None)
def _level(window_size: int, kernel: int, level: int):
    """``(keys, index, width)`` of a level, on the CPU: ``keys`` (k*k, U) the distinct neighbourhoods in the
    previous level's index (None at level 0; the previous level's width stands for a tap outside the map),
    ``index`` (N, N) each entry's position among this level's ``width`` values."""
    with torch.device('cpu'):  # whatever device the network is built on
        if level == 0:
            return None, relative_position_index(window_size), (2 * window_size - 1)**2
        _, previous, width = _level(window_size, kernel, level - 1)
        n, r = window_size**2, kernel // 2
        padded = F.pad(previous[None, None], (r, r, r, r), value=width)[0, 0]
        neighbourhoods = padded.unfold(0, kernel, 1).unfold(1, kernel, 1).reshape(n * n, kernel * kernel)
        keys, index = torch.unique(neighbourhoods, dim=0, return_inverse=True)
        return keys.t().contiguous(), index.view(n, n), keys.shape[0]


def _on_default_device(t: torch.Tensor) -> torch.Tensor:
    # A network built under ``with torch.device('meta')`` (counting) gets meta buffers, like its parameters.
    return t.to(torch.get_default_device(), copy=True)


def map_index(window_size: int, kernel: int, level: int) -> torch.Tensor:
    """``(N, N)`` index of a level's map into its values (level 0: SwinIR's relative-position index)."""
    return _on_default_device(_level(window_size, kernel, level)[1])


def transform_keys(window_size: int, kernel: int, level: int) -> torch.Tensor:
    """``(k*k, U)`` indices into the padded values of level ``level - 1``: the neighbourhoods ``F`` sums."""
    if level < 1:
        raise ValueError(f'a transformed map has level 1 or more, got {level}')
    return _on_default_device(_level(window_size, kernel, level)[0])


def gather_map(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The ``(h, N, N)`` map of ``values`` (M, h; a bias table's layout) and its ``index`` (N, N), contiguous.
    ``gather`` along M with the index broadcast over the heads: twice as fast as ``index_select``, forward and
    backward (a gather of rows of h scatters 65536 short rows one by one in the backward, slower still)."""
    h = values.shape[1]
    return torch.gather(values.t(), 1, index.view(1, -1).expand(h, -1)).view(h, *index.shape)


def transform_values(values: torch.Tensor, keys: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """``F``'s values (U, h) on the neighbourhoods ``keys`` (k*k, U) of the previous level's ``values`` (M, h),
    with the conv's ``weight`` (h, 1, k, k) and ``bias`` (h,)."""
    h, taps = values.shape[1], keys.shape[0]
    padded = F.pad(values.t(), (0, 1))  # position M: a tap outside the map reads zero
    gathered = torch.gather(padded, 1, keys.view(1, -1).expand(h, -1)).view(h, taps, -1)
    # One (1 x k*k) by (k*k x U) product per head: a (U x k*k) by (k*k x 1) one was 4x slower, backward included.
    return torch.baddbmm(bias.view(h, 1, 1).to(gathered.dtype), weight.view(h, 1, taps).to(gathered.dtype),
                         gathered).view(h, -1).t()
