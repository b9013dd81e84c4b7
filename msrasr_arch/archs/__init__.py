"""The MSRA-SR networks, in plain torch (no BasicSR, OpenCV or SciPy is imported here).

``msrasr_arch.registration`` puts them in BasicSR's ARCH_REGISTRY once BasicSR is imported; elsewhere
(spandrel, ComfyUI, export) :data:`ARCHS` maps a ``network_g`` ``type`` to its class.
"""
from .msrasr_arch import MSRAGANNet, MSRASR

ARCHS = {'MSRASR': MSRASR, 'MSRAGANNet': MSRAGANNet}

__all__ = ['ARCHS', 'MSRASR', 'MSRAGANNet']
