"""Two-process DDP training on CPU (gloo) through `torchrun ... basicsr train --launcher pytorch`."""
import os
import socket
import subprocess
import sys

import torch

from sr_cli import OPTIONS, train_flags
from sr_tiny_data import make_tiny_sr_set

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_cpu_ddp_step_keeps_ranks_identical(tmp_path):
    dirs = make_tiny_sr_set(str(tmp_path / 'data'), scale=2, train_crops=3)
    flags = train_flags(dirs, name='tiny_ddp', total_iter=2, save_freq=2) + ['datasets:train:batch_size_per_gpu=1']
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(_free_port()), os.path.join(HERE, 'ddp_driver.py'), 'train',
           '-opt', os.path.join(OPTIONS, 'train_MSRASR_x2.yml'), '--launcher', 'pytorch', '--force_yml'] + flags
    env = dict(os.environ, OMP_NUM_THREADS='1', DDP_DUMP_DIR=str(tmp_path), CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert 'World size (gpu number): 2' in proc.stdout + proc.stderr
    assert (tmp_path / 'experiments' / 'tiny_ddp' / 'models' / 'net_g_2.pth').is_file()
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1)]
    init = torch.load(tmp_path / 'experiments' / 'tiny_ddp' / 'models' / 'net_g_2.pth')['params']
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ranks[0][key], init[key], rtol=0, atol=0, msg=key)
