# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Install convmixer_mm, shipping configs and tools inside the package.

Like mmpretrain, configs, tools and the model index are placed in
``convmixer_mm/.mim``: symlinked for editable installs (``develop`` or, with
PEP 660, ``editable_wheel``), copied for wheels and sdists.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))
MIM_FILES = ('configs', 'tools', 'demo', 'model-index.yml')


def version() -> str:
    scope: dict = {}
    with open(osp.join(HERE, 'convmixer_mm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def add_mim_extension() -> None:
    """Place configs, tools and the model index in ``convmixer_mm/.mim``."""
    if {'develop', 'editable_wheel'} & set(sys.argv):
        mode = 'symlink'
    elif {'sdist', 'bdist_wheel', 'build', 'install'} & set(sys.argv):
        mode = 'copy'
    else:
        return
    mim_path = osp.join(HERE, 'convmixer_mm', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src = osp.join(HERE, name)
        dst = osp.join(mim_path, name)
        if mode == 'copy' and not osp.exists(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)


def readme() -> str:
    with open(osp.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


add_mim_extension()
setup(
    name='convmixer_mm',
    version=version(),
    description='Trainable, fast ConvMixer for mmpretrain',
    long_description=readme(),
    long_description_content_type='text/markdown',
    keywords='computer vision, image classification, ConvMixer, OpenMMLab',
    packages=find_packages(exclude=('configs', 'tools', 'demo', 'tests')),
    include_package_data=True,
    # The C source of the kernels (compiled at first use), the README
    # report's template.
    package_data={'convmixer_mm': ['.mim/**/*', '.mim/*', 'models/ops/*.c',
                                  'devtools/*.md']},
    python_requires='>=3.10',
    license='MIT',
    install_requires=[
        # torch and torchvision are left unpinned so that pip resolves a
        # matching pair from the registry.
        'torch',
        'torchvision',
        'mmengine>=0.10.7,<1.0',
        # A pure wheel: ConvMixer needs no compiled mmcv ops. GPU users may
        # install full mmcv instead (extra 'mmcv').
        'mmcv-lite>=2.0.0,<2.4.0',
        'mmpretrain>=1.2.0,<1.3.0',
    ],
    extras_require={
        'tests': [
            'pytest', 'timm', 'onnx', 'onnxruntime', 'onnxscript',
            'tensorboard', 'openmim',
            # mim imports pkg_resources, which setuptools 81 removed.
            'setuptools<81'
        ],
        'mmcv': ['mmcv>=2.0.0,<2.4.0'],
        'onnx': ['onnx', 'onnxruntime', 'onnxscript'],
        'tensorboard': ['tensorboard'],
    },
    zip_safe=False)
