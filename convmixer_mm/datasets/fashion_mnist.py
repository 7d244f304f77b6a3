# Copyright (c) convmixer_mm contributors. All rights reserved.
"""mmpretrain's Fashion-MNIST, read offline from Debian's ``.gz`` files."""
import os.path as osp
from typing import List, Optional

import numpy as np

from mmpretrain.datasets import FashionMNIST
from mmpretrain.datasets.mnist import read_sn3_pascalvincent_tensor
from mmpretrain.registry import DATASETS
from ..utils import UserError

DEFAULT_ROOT = '/usr/share/datasets/fashion-mnist'


class DataNotFoundError(UserError, FileNotFoundError):
    """A data set is not where the config says."""


def _find(data_root: str, name: str) -> Optional[str]:
    """The path of ``name`` (``.gz`` or uncompressed) in ``data_root``."""
    return next((p for p in (osp.join(data_root, name),
                             osp.join(data_root, name[:-3]))
                 if osp.isfile(p)), None)


def _read(path: str, ndim: int) -> np.ndarray:
    """mmpretrain's IDX reader, with a clear error for a damaged file."""
    try:
        data = read_sn3_pascalvincent_tensor(path).numpy()
    except (AssertionError, KeyError, RuntimeError, ValueError, OSError,
            EOFError):
        data = None
    if data is None or data.dtype != np.uint8 or data.ndim != ndim:
        raise ValueError(
            f'{path} is truncated or not an IDX file of {ndim}-d uint8 '
            'data: reinstall it (apt-get install --reinstall '
            'dataset-fashion-mnist).')
    return data


@DATASETS.register_module()
class FashionMNISTIDX(FashionMNIST):
    """mmpretrain's ``FashionMNIST`` reading the IDX files as Debian's
    ``dataset-fashion-mnist`` installs them (gzip-compressed, in
    ``/usr/share/datasets/fashion-mnist``), never downloading unless asked.

    mmpretrain's class wants the files uncompressed and picks the split
    from ``test_mode``; this one reads either form and follows ``split``.
    Each sample is a 28x28 uint8 grayscale ``img`` and its ``gt_label``.

    Args:
        data_root (str): Directory of ``{train,t10k}-{images-idx3,
            labels-idx1}-ubyte[.gz]``.
            Defaults to ``'/usr/share/datasets/fashion-mnist'``.
        split (str): ``'train'`` (60,000 images) or ``'test'`` (10,000).
            Defaults to ``'train'``.
        download (bool): Download missing files into ``data_root`` with
            mmpretrain (online only). Defaults to False.
        **kwargs: Other arguments of ``BaseDataset`` (``indices``, ...).

    Example:
        >>> from convmixer_mm.datasets import FashionMNISTIDX
        >>> ds = FashionMNISTIDX(split='test', indices=4)
        >>> print(len(ds), ds[0]['img'].shape, ds.metainfo['classes'][9])
        4 (28, 28) Ankle boot
    """

    def __init__(self,
                 data_root: str = DEFAULT_ROOT,
                 split: str = 'train',
                 download: bool = False,
                 **kwargs) -> None:
        if split not in ('train', 'test'):
            raise ValueError(
                f"split={split!r} must be one of ['test', 'train'].")
        super().__init__(
            data_root=data_root, split=split, download=download, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read all images and labels of the split."""
        files = self.train_list if self.split == 'train' else self.test_list
        names = [name for name, _ in files]
        paths = [_find(self.data_root, name) for name in names]
        if None in paths:
            if self.download:
                self._download()
                return self.load_data_list()
            raise DataNotFoundError(
                f'Fashion-MNIST {self.split} files ({names[0]}, {names[1]}, '
                f'or uncompressed) not found in {self.data_root!r}. Install '
                'them with `apt-get install dataset-fashion-mnist` (into '
                f'{DEFAULT_ROOT}), point data_root at a directory that has '
                'them, or set download=True to fetch them with mmpretrain '
                'when online.')
        images, labels = _read(paths[0], 3), _read(paths[1], 1)
        if len(images) != len(labels):
            raise ValueError(f'{paths[0]} has {len(images)} images but '
                             f'{paths[1]} has {len(labels)} labels.')
        return [dict(img=img, gt_label=int(label))
                for img, label in zip(images, labels)]
