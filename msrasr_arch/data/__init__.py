"""Datasets; importing this package registers them in BasicSR's DATASET_REGISTRY."""
