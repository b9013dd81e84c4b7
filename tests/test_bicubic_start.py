"""msrasr_arch.utils.bicubic_start: the warm start reproduces MATLAB bicubic and stays trainable."""
import pytest
import torch

from msrasr_arch.utils.bicubic_start import bicubic_start, phase_taps


def test_phase_taps_sum_to_one_and_match_matlab_x2():
    taps = phase_taps(2)
    assert [round(sum(t), 12) for t in taps] == [1.0, 1.0]
    # x2: the two phases sample at -0.25 and +0.25 of an input pixel
    assert taps[0] == pytest.approx([-0.0234375, 0.2265625, 0.8671875, -0.0703125, 0.0])
    assert taps[1] == pytest.approx(list(reversed(taps[0])))


@pytest.mark.parametrize('scale', [2, 3])
def test_network_starts_as_bicubic(scale):
    from basicsr.archs import build_network
    from basicsr.utils.matlab_functions import imresize

    torch.manual_seed(0)
    net = build_network(dict(type='MSRASR', upscale=scale, embed_dim=28, depths=[2], num_heads=[2], window_size=8,
                             csa_dim=4, mlp_ratio=2, upsampler='pixelshuffledirect'))
    bicubic_start(net).eval()
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        y = net(x)[0]
    ref = imresize(x[0], scale)
    m = 4 * scale  # the conv zero padding touches the outermost pixels only
    torch.testing.assert_close(y[:, m:-m, m:-m], ref[:, m:-m, m:-m], atol=1e-5, rtol=0)
    # every parameter still trains: one step moves the body too
    net.train()
    net(x).abs().mean().backward()
    assert net.conv_after_body.weight.grad.abs().sum() > 0


def test_rejects_other_layouts():
    from basicsr.archs import build_network

    net = build_network(dict(type='MSRASR', upscale=2, embed_dim=28, depths=[2], num_heads=[2], window_size=8,
                             csa_dim=4, mlp_ratio=2, upsampler='pixelshuffle'))
    with pytest.raises(ValueError, match='pixelshuffledirect'):
        bicubic_start(net)
