# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Shared test helpers and fixtures (pytest puts this folder on the path,
so test modules import the helpers with ``from conftest import ...``)."""
import importlib.util
import os.path as osp
from typing import Optional

import pytest
import torch.nn as nn

import convmixer_mm  # noqa: F401  (registers our modules)
# Random BN statistics and affine terms, so that parity covers them.
from convmixer_mm.devtools.benchmark import randomize_bn as randomize  # noqa
from mmpretrain.registry import MODELS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FASHION_CONFIG = osp.join(REPO, 'configs', 'convmixer',
                          'convmixer-128-4-p4_1xb128_fashion-mnist.py')
FASHION_ROOT = '/usr/share/datasets/fashion-mnist'
TINY = dict(embed_dims=16, depth=2, patch_size=4, kernel_size=3)

needs_fashion_mnist = pytest.mark.skipif(
    not osp.isdir(FASHION_ROOT),
    reason='needs dataset-fashion-mnist (bash tools/install.sh)')


def load_tool(relpath: str):
    """Import a script of the repository (``tools/...``, ``demo/...``)."""
    spec = importlib.util.spec_from_file_location(
        osp.splitext(osp.basename(relpath))[0], osp.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_classifier_cfg(arch: Optional[dict] = None,
                        num_classes: int = 10,
                        data_preprocessor: Optional[dict] = None,
                        **backbone_kwargs) -> dict:
    """An ``ImageClassifier`` config with a ConvMixerMM backbone."""
    arch = arch or TINY
    dims = arch['embed_dims'] if isinstance(arch, dict) else int(
        arch.split('/')[0])
    cfg = dict(
        type='ImageClassifier',
        backbone=dict(type='ConvMixerMM', arch=arch, **backbone_kwargs),
        head=dict(
            type='ConvMixerClsHead',
            num_classes=num_classes,
            in_channels=dims))
    if data_preprocessor is not None:
        cfg['data_preprocessor'] = data_preprocessor
    return cfg


def tiny_classifier(*args, **kwargs) -> nn.Module:
    """Build :func:`tiny_classifier_cfg` (in train mode)."""
    return MODELS.build(tiny_classifier_cfg(*args, **kwargs))
