"""Architectures; importing this package registers `MSRASR` and `MSRAGANNet` in BasicSR's ARCH_REGISTRY."""
from .msrasr_arch import MSRAGANNet, MSRASR  # noqa: F401

__all__ = ['MSRASR', 'MSRAGANNet']
