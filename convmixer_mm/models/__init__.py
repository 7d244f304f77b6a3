# Copyright (c) convmixer_mm contributors. All rights reserved.
from .convmixer import ConvMixerMM
from .data_preprocessor import ConvMixerDataPreprocessor
from .fast import fuse_convmixer
from .head import ConvMixerClsHead

__all__ = [
    'ConvMixerMM', 'ConvMixerClsHead', 'ConvMixerDataPreprocessor',
    'fuse_convmixer'
]
