"""Model classes; importing this package registers them in BasicSR's MODEL_REGISTRY."""
from .sr_model import MSRASRModel  # noqa: F401
from .realesr_models import MSRAESRGANModel, MSRAESRNetModel  # noqa: F401

__all__ = ['MSRASRModel']
