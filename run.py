#!/usr/bin/env python3
"""The README's two commands, on a machine that has nothing but Python 3.9+:

    python3 run.py quickstart     # set up, then train and test a small model on built-in photos
    python3 run.py tests          # set up, then run the test suite

Set-up is a project-local virtual environment in ``.venv`` (created on first use, reused after): PyTorch,
then this package in editable mode with its test and export extras. It is redone only when
``pyproject.toml`` or the PyTorch requirement changes. Anything after the command is passed on
(``python3 run.py tests -k upscale``, ``python3 run.py quickstart --iters 300``).

``MSRASR_TORCH`` overrides the PyTorch requirement, e.g. ``MSRASR_TORCH="torch torchvision"``; point pip at
PyTorch's CPU-only index (``PIP_EXTRA_INDEX_URL``) where you can reach it to skip the multi-GB CUDA build.
"""
import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, '.venv')
# The pair this project is tested with (basicsr 1.4.2 runs on it through the package's torchvision shim).
TORCH = os.environ.get('MSRASR_TORCH', 'torch==2.14.1 torchvision==0.29.1')
EXTRAS = '.[test,export]'
COMMANDS = {
    'quickstart': ['-m', 'msrasr_cli', 'quickstart'],
    # A few workers, one thread each (tests/conftest.py): the suite is many small processes and networks.
    'tests': ['-m', 'pytest', '-q', '-n', 'auto', '--maxprocesses', '4', 'tests'],
}


def venv_python() -> str:
    return os.path.join(VENV, 'Scripts' if os.name == 'nt' else 'bin', 'python')


def step(message: str) -> None:
    print(f'[run.py] {message}', flush=True)


def call(args) -> None:
    proc = subprocess.run(args, cwd=ROOT)
    if proc.returncode:
        sys.exit(f'[run.py] error: `{" ".join(args)}` failed with exit status {proc.returncode}')


def set_up() -> str:
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        stamp = hashlib.sha256(f.read() + TORCH.encode() + EXTRAS.encode()).hexdigest()
    stamp_file = os.path.join(VENV, '.msrasr-setup')
    python = venv_python()
    if os.path.isfile(stamp_file) and os.path.isfile(python):
        with open(stamp_file, encoding='utf-8') as f:
            if f.read().strip() == stamp:
                step(f'reusing {VENV}')
                return python
    if not os.path.isfile(python):
        step(f'creating a virtual environment in {VENV}')
        call([sys.executable, '-m', 'venv', VENV])
    pip = [python, '-m', 'pip', 'install', '--disable-pip-version-check']
    step('upgrading pip')
    call(pip + ['-q', '--upgrade', 'pip'])
    step(f'installing {TORCH} (the default CUDA build is about 5.5 GB; a few minutes)')
    call(pip + ['-q'] + TORCH.split())
    step(f'installing msrasr_arch{EXTRAS[1:]} in editable mode (basicsr, opencv, onnx, spandrel, pytest, ...)')
    call(pip + ['-q', '-e', EXTRAS])
    # Written last: an interrupted set-up is redone next time.
    with open(stamp_file, 'w', encoding='utf-8') as f:
        f.write(stamp + '\n')
    return python


def main(argv) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().splitlines()[0], *[f'    python3 run.py {c}' for c in COMMANDS], sep='\n')
        return 2
    if sys.version_info < (3, 9):
        sys.exit(f'[run.py] error: Python 3.9 or newer is needed; this is {sys.version.split()[0]}')
    python = set_up()
    step(f'running {argv[0]}')
    return subprocess.run([python] + COMMANDS[argv[0]] + argv[1:], cwd=ROOT).returncode


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
