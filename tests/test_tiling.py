"""msrasr_arch.utils.tiling: tiled inference and x8 self-ensemble."""
import pytest
import torch
from torch.nn import functional as F

from msrasr_arch.utils.tiling import self_ensemble, tile_forward


def nearest_x2(x):
    return F.interpolate(x, scale_factor=2, mode='nearest')


@pytest.mark.parametrize('size', [(37, 29), (64, 64), (20, 90)])
@pytest.mark.parametrize('tile,overlap', [(16, 4), (24, 8), (17, 0)])
def test_pointwise_fn_tiles_exactly(size, tile, overlap):
    x = torch.rand(2, 3, *size, dtype=torch.float64)
    out = tile_forward(nearest_x2, x, scale=2, tile=tile, overlap=overlap)
    assert out.shape == (2, 3, size[0] * 2, size[1] * 2) and out.dtype == x.dtype
    torch.testing.assert_close(out, nearest_x2(x), atol=1e-12, rtol=0)


def test_tiles_go_to_the_model_device_and_back():
    seen = []

    def fn(t):
        seen.append(t.device)
        return nearest_x2(t)

    x = torch.rand(1, 3, 40, 40)
    out = tile_forward(fn, x, scale=2, tile=16, overlap=4, device='cpu')
    assert out.device == x.device and len(seen) == 9


def test_bad_tile_arguments():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match='overlap'):
        tile_forward(nearest_x2, x, scale=2, tile=8, overlap=8)
    with pytest.raises(ValueError, match='tile'):
        tile_forward(nearest_x2, x, scale=2, tile=0, overlap=0)


def test_self_ensemble_of_an_equivariant_fn_is_the_fn():
    x = torch.rand(1, 3, 13, 21)
    torch.testing.assert_close(self_ensemble(nearest_x2, x), nearest_x2(x))


def test_self_ensemble_undoes_each_transform():
    # fn adds a ramp along W: not flip-equivariant, so the ensemble is the mean of the 8 mapped-back outputs
    x = torch.zeros(1, 1, 4, 6)
    ramp = lambda t: t + torch.arange(t.shape[-1], dtype=t.dtype)  # noqa: E731
    out = self_ensemble(ramp, x)
    assert out.shape == x.shape
    # averaged over flips/transposes, the ramp becomes symmetric in W
    torch.testing.assert_close(out, out.flip(-1))


def test_msrasr_tiled_matches_untiled_away_from_seams():
    """With tiles on the window grid, the tiny MSRA-SR gives the untiled output to 1e-3 wherever the
    pixel is at least 16 LR pixels from a tile edge; the seams themselves stay close (blended)."""
    from basicsr.archs import build_network

    torch.manual_seed(0)
    net = build_network(dict(type='MSRASR', upscale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=8,
                             csa_dim=4, mlp_ratio=2)).eval()
    x = torch.rand(1, 3, 64, 192)
    with torch.no_grad():
        full = net(x)
        tiled = tile_forward(net, x, scale=2, tile=96, overlap=32)
    diff = (full - tiled).abs().amax(dim=(0, 1, 2))  # per output column
    edges = [64, 96, 160]  # LR tile edges: tiles start at 0, 64, 96 (the last flush with the border)
    far = torch.ones(diff.shape[0], dtype=torch.bool)
    for e in edges:
        far[max(0, (e - 16) * 2):(e + 16) * 2] = False
    assert diff[far].max() < 1e-3, diff[far].max()
    assert diff.max() < 2e-2, diff.max()
