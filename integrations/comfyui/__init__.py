"""MSRA-SR for ComfyUI: a custom-node package that adds no node of its own.

Importing it registers the MSRA-SR architecture with spandrel, which ComfyUI's built-in "Load Upscale
Model" node uses; MSRA-SR weights in ``ComfyUI/models/upscale_models`` then load there and run through
"Upscale Image (using Model)". See README.md in this folder for installation.
"""
import os
import sys


def _import_msrasr_spandrel():
    try:
        import msrasr_arch.spandrel  # noqa: F401
        return
    except ModuleNotFoundError as err:
        if err.name != 'msrasr_arch':
            raise
    # Linked from a checkout of the repository (custom_nodes/msrasr -> <repo>/integrations/comfyui): the
    # package is two folders up. Appended, so nothing ComfyUI already imports can be shadowed.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    if not os.path.isfile(os.path.join(root, 'msrasr_arch', 'spandrel.py')):
        raise ImportError('MSRA-SR custom node: the msrasr_arch package is not installed in the Python that runs '
                          'ComfyUI; install it there with `python -m pip install --no-deps <the msrasr_arch '
                          'repository or wheel>` (it needs only torch, spandrel and safetensors, which ComfyUI '
                          'has), or link this folder from a checkout of the repository instead of copying it') from None
    sys.path.append(root)
    import msrasr_arch.spandrel  # noqa: F401


_import_msrasr_spandrel()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

__all__ = ['NODE_CLASS_MAPPINGS', 'NODE_DISPLAY_NAME_MAPPINGS']
