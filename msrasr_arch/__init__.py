"""MSRA-SR: a BasicSR plugin, and plain-torch networks for everything else.

Importing this package registers the archs, models and datasets in BasicSR's registries, and applies the
torchvision shim BasicSR 1.4.2 needs, when BasicSR is imported (at once if it already is): see
:mod:`msrasr_arch.registration`. The package itself loads neither BasicSR nor torch, so
``msrasr_arch.archs`` (and ``msrasr_arch.spandrel``) stay plain torch.
"""
from . import registration as _registration

__version__ = '0.1.0'

_registration.install()
