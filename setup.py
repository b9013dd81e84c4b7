from setuptools import find_packages, setup


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


setup(
    name='msrasr_arch',
    version='0.1.0',
    description='MSRA-SR (ICCV 2023) image super-resolution transformer as a BasicSR plugin',
    long_description=read('README.md'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['msrasr_arch', 'msrasr_arch.*']),
    package_data={'msrasr_arch': ['configs/*.yml']},
    python_requires='>=3.9',
    install_requires=[
        'basicsr>=1.4.2',
        'torch>=2.3',  # torch.nn.attention.sdpa_kernel, torch.compiler.is_compiling
        'torchvision>=0.18',
        'numpy',
        'opencv-python',
        'pyyaml',
        'lmdb',
        'scikit-image',
        'tqdm',
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-timeout'],
        'export': ['onnx', 'onnxruntime', 'safetensors'],
    },
    entry_points={
        'console_scripts': [
            'msrasr = msrasr_arch.cli.main:main',
            'basicsr = msrasr_arch.cli.basicsr_cmd:main',
        ],
        'basicsr.plugins': ['msrasr_arch = msrasr_arch'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
