"""MSRA-SR for BasicSR: importing this package registers its archs, models and datasets."""
# The shim must run before the first `import basicsr` anywhere, hence first.
from . import _compat  # noqa: F401  isort:skip
from . import archs, data, models  # noqa: F401,E402

__version__ = '0.1.0'
