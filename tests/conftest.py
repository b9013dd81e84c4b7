import msrasr_arch  # noqa: F401  (the torchvision shim must precede any basicsr import in the tests)
