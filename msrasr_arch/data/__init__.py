"""Datasets; importing this package registers them in BasicSR's DATASET_REGISTRY."""
from .bsrgan_dataset import BSRGANDataset  # noqa: F401
