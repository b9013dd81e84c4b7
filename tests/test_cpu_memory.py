"""glibc's malloc told to keep freed memory in a training, testing or upscaling process
(msrasr_arch.utils.cpu_memory)."""
import platform
import subprocess
import sys


def test_keep_freed_memory_takes_on_glibc():
    """On glibc both thresholds are accepted; elsewhere the call says no rather than failing. Run in a child
    so the test process keeps its allocator settings."""
    code = 'from msrasr_arch.utils.cpu_memory import keep_freed_memory; print(keep_freed_memory())'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    glibc = sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'
    assert out == str(glibc)


def test_pipelines_set_it(monkeypatch, tmp_path):
    """`basicsr train` and `basicsr test` set it before BasicSR's pipeline runs (a benchmark run frees and
    takes the same memory image after image, as a training run does step after step)."""
    import basicsr.test
    import basicsr.train

    from msrasr_arch.cli import basicsr_cmd
    from msrasr_arch.utils import cpu_memory, train_options

    calls = []
    monkeypatch.setattr(cpu_memory, 'keep_freed_memory', lambda: calls.append('keep') or True)
    monkeypatch.setattr(train_options, 'load', lambda flags, prog: None)
    monkeypatch.setattr(basicsr.train, 'train_pipeline', lambda root: calls.append('train'))
    monkeypatch.setattr(basicsr.test, 'test_pipeline', lambda root: calls.append('test'))
    basicsr_cmd.run_pipeline('test', ['-opt', 'x.yml'], root=str(tmp_path))
    basicsr_cmd.run_pipeline('train', ['-opt', 'x.yml'], root=str(tmp_path))
    assert calls == ['keep', 'test', 'keep', 'train']


def test_upscale_sets_it(monkeypatch, tmp_path):
    """`msrasr upscale` sets it once its arguments are checked, before the network is loaded."""
    import cv2
    import numpy as np

    from msrasr_arch.inference.upscaler import Upscaler
    from msrasr_arch.utils import cpu_memory
    from msrasr_cli.main import main

    calls = []

    def load(*args, **kwargs):
        calls.append('load')
        raise KeyboardInterrupt  # stop here: the rest of the command is tested elsewhere

    monkeypatch.setattr(cpu_memory, 'keep_freed_memory', lambda: calls.append('keep') or True)
    monkeypatch.setattr(Upscaler, 'from_checkpoint', load)
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    try:
        main(['upscale', '-i', str(image), '-o', str(tmp_path / 'out'), '--weights', 'w.pth', '--quiet'])
    except (KeyboardInterrupt, SystemExit):
        pass
    assert calls == ['keep', 'load']
