"""Test driver: runs the `basicsr` command in this process and, after training, saves this rank's
weights to $DDP_DUMP_DIR/rank<r>.pth so the test can compare ranks (checkpoints come from rank 0 only)."""
import os
import sys

import msrasr_arch  # noqa: F401
import basicsr.train
import torch

from msrasr_arch.cli import basicsr_cmd

models = []
_build_model = basicsr.train.build_model


def build_model(opt):
    model = _build_model(opt)
    models.append(model)
    return model


basicsr.train.build_model = build_model

if __name__ == '__main__':
    rc = basicsr_cmd.main(sys.argv[1:])
    model = models[0]
    rank = torch.distributed.get_rank()
    state = {k: v.detach().cpu() for k, v in model.get_bare_model(model.net_g).state_dict().items()}
    torch.save(state, os.path.join(os.environ['DDP_DUMP_DIR'], f'rank{rank}.pth'))
    sys.exit(rc)
