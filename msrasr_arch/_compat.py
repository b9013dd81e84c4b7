"""Compatibility shims that must run before anything imports :mod:`basicsr`.

BasicSR 1.4.2 imports ``rgb_to_grayscale`` from ``torchvision.transforms.functional_tensor``, a module
torchvision removed in 0.17. We register a stand-in module under that name (never editing
site-packages) so that ``import basicsr`` works on current torchvision. Safe to call any number of
times, and harmless on an old torchvision that still has the module.
"""
import importlib
import sys
import types

_LEGACY = 'torchvision.transforms.functional_tensor'


def apply() -> None:
    if _LEGACY in sys.modules:
        return
    try:
        importlib.import_module(_LEGACY)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional

    shim = types.ModuleType(_LEGACY)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[_LEGACY] = shim


apply()
