"""MSRA-SR for spandrel (and so for ComfyUI, chaiNNer and other tools that load models through it).

Importing this module adds the architecture to ``spandrel.MAIN_REGISTRY``; from then on
``spandrel.ModelLoader().load_from_file(path)`` (or ``load_from_state_dict``) recognises MSRASR
(lightweight and classical) and MSRAGANNet checkpoints, in training form or re-parameterised, and returns
an ``ImageModelDescriptor``::

    import msrasr_arch.spandrel  # noqa: F401
    from spandrel import ModelLoader
    model = ModelLoader().load_from_file('MSRASR_light_x2.safetensors').eval()
    sr = model(lr)  # (1, 3, H, W) in [0, 1] -> (1, 3, 2H, 2W)

Plain torch: neither BasicSR nor OpenCV nor SciPy is imported. Detection is by state-dict keys, and the
options come from tensor shapes through :func:`msrasr_arch.archs.from_weights.infer_network_options`, the
same code ``msrasr upscale`` runs, then pass :func:`~msrasr_arch.archs.network_options.check_network_options`
before anything is allocated. Needs ``pip install 'msrasr_arch[spandrel]'``.
"""
from typing import Mapping

import torch

try:
    from spandrel import (MAIN_REGISTRY, Architecture, ArchSupport, ImageModelDescriptor, ModelTiling,
                          SizeRequirements, StateDict)
    from spandrel.util import KeyCondition
except ImportError as err:
    raise ImportError("msrasr_arch.spandrel needs spandrel: pip install 'msrasr_arch[spandrel]'") from err

from msrasr_arch.archs import ARCHS, MSRASR
from msrasr_arch.archs.from_weights import infer_network_options
from msrasr_arch.archs.network_options import MAX_PARAMS, check_network_options
from msrasr_arch.archs.size_requirement import size_requirement
from msrasr_arch.utils.checkpoint import describe_mismatch
from msrasr_arch.utils.errors import UserError

ARCH_ID = 'MSRASR'

# Keys every MSRA-SR state dict has, in either form, with any option. `patch_norm.*` and
# `layers.*.blocks.*.ffn.*` (SwinIR-like models have `patch_embed.norm.*` and `*.residual_group.*`,
# `*.mlp.*`) keep other transformers from matching.
_DETECT = KeyCondition.has_all(
    'conv_first.weight',
    'patch_norm.weight',
    'layers.0.blocks.0.norm1.weight',
    'layers.0.blocks.0.attn.relative_position_bias_table',
    'layers.0.blocks.0.attn.proj.weight',
    'layers.0.blocks.0.norm2.weight',
    'layers.0.blocks.0.ffn.fc1.weight',
    'layers.0.blocks.0.ffn.fc2.weight',
    'norm.weight',
    'conv_after_body.weight',
    KeyCondition.has_any('upsample.0.weight', 'conv_before_upsample.0.weight'),
)


def _bytes_held(state: Mapping[str, object]) -> int:
    """Bytes of tensor data `state` really holds (each storage once). A crafted tensor can claim a large
    shape over a tiny storage (zero strides); its storage is what the file paid for."""
    seen, total = set(), 0
    for t in state.values():
        if isinstance(t, torch.Tensor) and t.device.type != 'meta':
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def _tags(options: dict, net: MSRASR) -> list:
    return [f'{options["embed_dim"]}dim', f'{len(options["depths"])}x{max(options["depths"])}blocks',
            f'w{options["window_size"]}', options['upsampler'],
            're-parameterised' if net.deployed else 'multi-branch']


def _size_requirements(net: MSRASR) -> SizeRequirements:
    """spandrel's form of the network's :func:`size_requirement`. No ``multiple_of``: the network pads to
    its window multiple itself and crops, and spandrel's own padding (reflect, then replicate the rest)
    would differ from it below one window. Every image has a pixel, so a minimum of 1 is spandrel's
    neutral 0 (which tools read as "no requirement")."""
    minimum = size_requirement(net).minimum
    return SizeRequirements(minimum=minimum if minimum > 1 else 0)


class MSRASRArch(Architecture[MSRASR]):
    """MSRA-SR (Zhou et al., ICCV 2023): ``MSRASR`` for bicubic SR, ``MSRAGANNet`` for real-world SR."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name='MSRA-SR', detect=_DETECT)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[MSRASR]:
        source = 'MSRA-SR state dict'
        options = infer_network_options(state_dict, source=source)
        check_network_options(options, source=source, max_params=min(MAX_PARAMS, _bytes_held(state_dict)))
        net = ARCHS[options['type']](**{k: v for k, v in options.items() if k != 'type'})
        # spandrel loads strictly and would print every key; one line says the same.
        problem = describe_mismatch(net, state_dict)
        if problem:
            raise UserError(f'{source} does not fit the network its shapes describe: {problem}')
        return ImageModelDescriptor(
            net, state_dict, architecture=self, purpose='SR', tags=_tags(options, net),
            # Both run without overflow, the shift mask and the mean following the model's dtype
            # (tests/test_spandrel.py compares them with float32).
            supports_half=True, supports_bfloat16=True,
            scale=net.upscale, input_channels=net.in_chans, output_channels=net.in_chans,
            size_requirements=_size_requirements(net),
            # Windows are local; channel attention pools over the input, so tiles differ from the whole
            # image only slightly (msrasr upscale tiles with cross-faded overlaps).
            tiling=ModelTiling.SUPPORTED)


ARCH = MSRASRArch()
# Already there: a re-import, or a spandrel release that carries the architecture (kept, being upstream).
MAIN_REGISTRY.add(ArchSupport.from_architecture(ARCH), ignore_duplicates=True)
