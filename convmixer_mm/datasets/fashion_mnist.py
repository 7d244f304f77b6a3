# Copyright (c) convmixer_mm contributors. All rights reserved.
"""Fashion-MNIST read straight from its IDX ``.gz`` files."""
import gzip
import os.path as osp
from typing import List, Optional

import numpy as np

from mmpretrain.datasets import BaseDataset, FashionMNIST
from mmpretrain.datasets.categories import FASHIONMNIST_CATEGORITES
from mmpretrain.registry import DATASETS
from ..utils import UserError

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
# IDX magic numbers: unsigned bytes with 3 (images) or 1 (labels) dims.
_IMAGES_MAGIC = 0x0803
_LABELS_MAGIC = 0x0801


class DataNotFoundError(UserError, FileNotFoundError):
    """A data set is not where the config says."""


def _find(data_root: str, name: str) -> Optional[str]:
    """The path of ``name`` or ``name.gz`` in ``data_root``, if either."""
    for path in (osp.join(data_root, name + '.gz'), osp.join(data_root,
                                                             name)):
        if osp.isfile(path):
            return path
    return None


def read_idx(path: str, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed or not).

    Args:
        path (str): The file.
        magic (int): The expected type-and-dims magic number.

    Returns:
        np.ndarray: uint8 array of the shape stored in the header.

    Raises:
        ValueError: The file is not such an IDX file or is truncated.
    """
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f'{path} is unreadable ({e}): reinstall it '
                         '(apt-get install --reinstall '
                         'dataset-fashion-mnist).') from None
    ndim = magic & 0xff
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], 'big') != magic:
        raise ValueError(f'{path} is not an IDX file of {ndim}-d uint8 '
                         'data: reinstall dataset-fashion-mnist.')
    shape = tuple(
        int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(f'{path} is truncated: expected {shape}. Reinstall '
                         'dataset-fashion-mnist.')
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


@DATASETS.register_module()
class FashionMNISTIDX(BaseDataset):
    """`Fashion-MNIST <https://github.com/zalandoresearch/fashion-mnist>`_
    read from the IDX ``.gz`` files, as Debian's ``dataset-fashion-mnist``
    installs them.

    Each sample is a 28x28 uint8 grayscale ``img`` and its ``gt_label``;
    mmengine's ``indices`` takes a subset. mmpretrain's ``FashionMNIST``
    wants the files uncompressed and downloads when they are missing; here
    that is opt-in with ``download=True``.

    Args:
        data_root (str): Directory of ``{train,t10k}-{images-idx3,
            labels-idx1}-ubyte[.gz]``.
            Defaults to ``'/usr/share/datasets/fashion-mnist'``.
        split (str): ``'train'`` (60,000 images) or ``'test'`` (10,000).
            Defaults to ``'train'``.
        download (bool): When the files are missing, download them into
            ``data_root`` with mmpretrain's ``FashionMNIST`` (online only).
            Defaults to False.
        **kwargs: Other arguments of ``BaseDataset`` (``pipeline``,
            ``indices``, ``test_mode``, ``lazy_init``, ...).

    Example:
        >>> from convmixer_mm.datasets import FashionMNISTIDX
        >>> ds = FashionMNISTIDX(split='test', indices=4)
        >>> print(len(ds), ds[0]['img'].shape, ds.metainfo['classes'][9])
        4 (28, 28) Ankle boot
    """

    METAINFO = {'classes': FASHIONMNIST_CATEGORITES}

    def __init__(self,
                 data_root: str = DEFAULT_ROOT,
                 split: str = 'train',
                 download: bool = False,
                 **kwargs) -> None:
        if split not in _FILES:
            raise ValueError(f'split={split!r} must be one of '
                             f'{sorted(_FILES)}.')
        self.split = split
        self.download = download
        super().__init__(ann_file='', data_root=data_root, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read all images and labels of the split."""
        names = _FILES[self.split]
        paths = [_find(self.data_root, name) for name in names]
        if None in paths:
            if self.download:
                return self._download_data_list()
            raise DataNotFoundError(
                f'Fashion-MNIST {self.split} files ({names[0]}[.gz], '
                f'{names[1]}[.gz]) not found in {self.data_root!r}. Install '
                'them with `apt-get install dataset-fashion-mnist` (into '
                f'{DEFAULT_ROOT}), point data_root at a directory that has '
                'them, or set download=True to fetch them with mmpretrain '
                'when online.')
        images = read_idx(paths[0], _IMAGES_MAGIC)
        labels = read_idx(paths[1], _LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f'{paths[0]} has {len(images)} images but '
                             f'{paths[1]} has {len(labels)} labels.')
        return [
            dict(img=img, gt_label=int(label))
            for img, label in zip(images, labels)
        ]

    def _download_data_list(self) -> List[dict]:
        """Download into ``data_root`` and read with mmpretrain."""
        dataset = FashionMNIST(
            data_root=self.data_root,
            split=self.split,
            download=True,
            lazy_init=True)
        return dataset.load_data_list()
