"""Recover the ``network_g`` options of an MSRA-SR network from the shapes in its state dict.

The implementation lives with the architecture, in plain torch, shared with the spandrel loader:
:mod:`msrasr_arch.archs.from_weights`. This module keeps the import path of the inference API.
"""
from msrasr_arch.archs.from_weights import infer_network_options

__all__ = ['infer_network_options']
