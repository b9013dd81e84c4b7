import os

import msrasr_arch  # noqa: F401  (registers with BasicSR when the tests import it; the shim goes first)

if os.environ.get('PYTEST_XDIST_WORKER'):
    # Two workers on two cores: one thread each, or their OpenMP threads fight over the cores (MSRA-SR's
    # many small operations suffer most). Subprocesses the tests start inherit it.
    import torch

    torch.set_num_threads(1)
    os.environ['OMP_NUM_THREADS'] = '1'
