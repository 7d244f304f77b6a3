# Copyright (c) convmixer_mm contributors. All rights reserved.
"""mmpretrain's own entry points given our models and weights."""
import os.path as osp

import pytest
import torch

import mmpretrain
from convmixer_mm.converter import CheckpointError, from_mm_layout

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FASHION_CONFIG = osp.join(ROOT, 'configs', 'convmixer',
                          'convmixer-128-4-p4_1xb128_fashion-mnist.py')


@pytest.mark.parametrize('layout', ['official', 'timm'])
def test_mmpretrain_get_model_converts_any_layout(layout, tmp_path):
    torch.manual_seed(0)
    ref = mmpretrain.get_model(FASHION_CONFIG)
    path = str(tmp_path / f'{layout}.pth')
    torch.save(from_mm_layout(ref.state_dict(), layout), path)
    got = mmpretrain.get_model(FASHION_CONFIG, pretrained=path)
    assert got.state_dict().keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key


def test_mmpretrain_get_model_refuses_a_broken_official_file(tmp_path):
    state = from_mm_layout(mmpretrain.get_model(FASHION_CONFIG).state_dict(),
                           'official')
    state['0.weight'] = state['0.weight'][:, :, :2]  # a truncated stem
    path = str(tmp_path / 'broken.pth')
    torch.save(state, path)
    with pytest.raises(CheckpointError,
                       match=r'(?s)official layout\) does not convert.*'
                       r'python tools/model_converters/convmixer_to_mm.py '):
        mmpretrain.get_model(FASHION_CONFIG, pretrained=path)
