"""Putting MSRA-SR into BasicSR's registries, at the moment BasicSR is imported.

Two promises meet in this package's ``__init__``: ``import msrasr_arch`` registers the archs, models and
datasets with BasicSR (and applies the torchvision shim BasicSR 1.4.2 needs), while ``import
msrasr_arch.archs`` (spandrel, ComfyUI, ONNX export) loads neither BasicSR nor OpenCV nor SciPy. Python
runs the package ``__init__`` for both, so registration cannot happen there; it is tied to BasicSR's own
import instead. :func:`install` puts a finder on ``sys.meta_path`` that wraps the loader of ``basicsr``:
the shim is applied before BasicSR's package executes and :func:`register` runs right after it, before
the ``import basicsr`` (or ``from basicsr... import``) statement returns. When BasicSR is already
imported, :func:`install` registers at once.
"""
import importlib.util
import sys

_registered = False


def register() -> None:
    """Register ``MSRASR``/``MSRAGANNet`` (ARCH_REGISTRY), the model classes (MODEL_REGISTRY) and the
    datasets (DATASET_REGISTRY). Imports BasicSR; harmless when repeated."""
    global _registered
    if _registered:
        return
    from msrasr_arch import _compat  # noqa: F401  (the shim must precede basicsr)
    from basicsr.utils.registry import ARCH_REGISTRY

    from msrasr_arch.archs import ARCHS
    for name, cls in ARCHS.items():
        if name not in ARCH_REGISTRY:
            ARCH_REGISTRY.register(cls)
    # Their class decorators register with MODEL_REGISTRY / DATASET_REGISTRY.
    from msrasr_arch import data, models  # noqa: F401
    _registered = True


class _RegisterAfterExec:
    """The loader of ``basicsr``, wrapped: shim before, registration after. Anything else (resource
    reading, ``get_filename``...) is the original loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        from msrasr_arch import _compat
        _compat.apply()
        self._loader.exec_module(module)
        # Only once BasicSR imported cleanly: after a failed import the finder stays for the next try.
        _uninstall()
        register()


class _BasicsrFinder:
    """A ``sys.meta_path`` finder that answers only for the top-level ``basicsr`` package, with the spec
    the other finders give and its loader wrapped."""

    def __init__(self):
        self._searching = False

    def find_spec(self, name, path=None, target=None):
        if name != 'basicsr' or self._searching:
            return None
        self._searching = True  # importlib.util.find_spec below walks sys.meta_path, us included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _RegisterAfterExec):
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec

    def invalidate_caches(self) -> None:
        pass


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BasicsrFinder)]


def install() -> None:
    """Register now if BasicSR is imported, else as soon as it is. Torch-free and cheap; idempotent."""
    if 'basicsr' in sys.modules:
        register()
    elif not any(isinstance(f, _BasicsrFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _BasicsrFinder())
