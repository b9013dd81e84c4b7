"""Named network configurations (``network_g`` blocks) for the paper's models and a SwinIR-layout variant.

``msrasr profile`` and ``msrasr upscale -opt`` accept these names where they accept an option file.
"""
import copy

_LIGHT = dict(type='MSRASR', in_chans=3, window_size=16, img_range=1.0, depths=[4, 4, 4, 4], embed_dim=60,
              num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect', resi_connection='none',
              shared_attn='pair', attn_transform_kernel=3, csa_dim=6, csa_scales=[2, 4], ms_kernels=[1, 3, 5, 7],
              ca_reduction=1)
_CLASSICAL = dict(_LIGHT, depths=[4] * 6, embed_dim=192, num_heads=[6] * 6, upsampler='pixelshuffle', csa_dim=96)
# The layout calibrated to the paper's published sizes (docs/architecture.md; benchmarks/calibration_search.py)
# is the default. ``light_swinir_layout`` keeps SwinIR's per-group conv, RCAN's CA reduction 16 and the
# text's CSA scales (1, 2, 4): 768K parameters, and 18% more Mult-Adds than the paper's figures.
_SWINIR_LAYOUT = dict(_LIGHT, resi_connection='1conv', ca_reduction=16, csa_scales=[1, 2, 4])

PRESETS = {
    **{f'light_x{s}': dict(_LIGHT, upscale=s) for s in (2, 3, 4)},
    **{f'classical_x{s}': dict(_CLASSICAL, upscale=s) for s in (2, 3, 4)},
    **{f'light_swinir_layout_x{s}': dict(_SWINIR_LAYOUT, upscale=s) for s in (2, 3, 4)},
    'realworld_x4': dict(_CLASSICAL, type='MSRAGANNet', upscale=4, upsampler='nearest+conv'),
}

# The paper's Table 1 / Table 3 figures: (parameters, Mult-Adds in G on a 1024x720 HR image).
PAPER = {
    'light_x2': (769e3, 196.0),
    'light_x3': (777e3, 91.5),
    'light_x4': (789e3, 53.6),
    'classical_x4': (12.2e6, 645.0),
}


def get_preset(name: str) -> dict:
    """A copy of the ``network_g`` block called ``name`` (KeyError listing the names otherwise)."""
    if name not in PRESETS:
        raise KeyError(f'unknown configuration {name!r}; known: {", ".join(PRESETS)}')
    return copy.deepcopy(PRESETS[name])
