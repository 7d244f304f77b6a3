# Copyright (c) convmixer_mm contributors. All rights reserved.
"""FashionMNISTIDX on the real Fashion-MNIST of dataset-fashion-mnist."""
import gzip
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.datasets.mnist import read_image_file, read_label_file
from mmpretrain.registry import DATASETS

from convmixer_mm.datasets import DataNotFoundError, FashionMNISTIDX
from convmixer_mm.datasets.fashion_mnist import DEFAULT_ROOT

CONFIG = osp.join(
    osp.dirname(__file__), '..', 'configs', 'convmixer',
    'convmixer-128-4-p4_1xb128_fashion-mnist.py')

pytestmark = pytest.mark.skipif(
    not osp.isdir(DEFAULT_ROOT),
    reason='needs dataset-fashion-mnist (bash tools/install.sh)')


@pytest.fixture(scope='module')
def test_split() -> FashionMNISTIDX:
    return FashionMNISTIDX(split='test')


def _gunzip(name: str, directory) -> str:
    path = osp.join(str(directory), name)
    with gzip.open(osp.join(DEFAULT_ROOT, name + '.gz')) as f, \
            open(path, 'wb') as out:
        out.write(f.read())
    return path


def test_matches_mmpretrain_reader(test_split, tmp_path):
    # mmpretrain's own IDX reader (of uncompressed files) is the reference.
    images = read_image_file(_gunzip('t10k-images-idx3-ubyte', tmp_path))
    labels = read_label_file(_gunzip('t10k-labels-idx1-ubyte', tmp_path))
    assert len(test_split) == 10000 == len(images)
    for i in (0, 1234, 9999):
        sample = test_split[i]
        assert sample['img'].dtype == np.uint8
        np.testing.assert_array_equal(sample['img'], images[i].numpy())
        assert sample['gt_label'] == int(labels[i])
    counts = np.bincount(
        [test_split.get_data_info(i)['gt_label'] for i in range(10000)])
    assert counts.tolist() == [1000] * 10


def test_metainfo_and_indices():
    ds = FashionMNISTIDX(split='train', indices=100)
    assert len(ds) == 100
    assert ds.metainfo['classes'][0] == 'T-shirt/top'
    assert ds.metainfo['classes'][9] == 'Ankle boot'
    assert len(ds.metainfo['classes']) == 10


def test_missing_directory(tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(
            DataNotFoundError,
            match=r"not found in '.*nowhere'.*apt-get install "
            r'dataset-fashion-mnist.*download=True'):
        FashionMNISTIDX(data_root=missing)


def test_bad_split():
    with pytest.raises(ValueError, match=r"split='val' must be one of"):
        FashionMNISTIDX(split='val')


def test_uncompressed_and_truncated_files(tmp_path):
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        _gunzip(name, tmp_path)
    ds = FashionMNISTIDX(data_root=str(tmp_path), split='test', indices=3)
    assert ds[2]['img'].shape == (28, 28)

    images = tmp_path / 't10k-images-idx3-ubyte'
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(ValueError, match='is truncated or not an IDX file'):
        FashionMNISTIDX(data_root=str(tmp_path), split='test')
    shutil.copy(
        osp.join(DEFAULT_ROOT, 't10k-labels-idx1-ubyte.gz'), str(images))
    with pytest.raises(ValueError, match='is truncated or not an IDX file'):
        FashionMNISTIDX(data_root=str(tmp_path), split='test')


def test_config_pipelines():
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(CONFIG)
    raw = FashionMNISTIDX(split='test', indices=2)[1]['img']
    test_sample = DATASETS.build(dict(cfg.test_dataloader.dataset,
                                      indices=2))[1]
    np.testing.assert_array_equal(test_sample['inputs'][0].numpy(), raw)
    train_sample = DATASETS.build(dict(cfg.train_dataloader.dataset,
                                       indices=2))[1]
    assert train_sample['inputs'].shape == (1, 28, 28)
    assert train_sample['inputs'].dtype == torch.uint8
