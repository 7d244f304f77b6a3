# Copyright (c) convmixer_mm contributors. All rights reserved.
"""ConvMixer for mmpretrain: importing this registers our modules."""
from . import apis  # noqa: F401  (registers our model names)
from .datasets import FashionMNISTIDX
from .engine import (ConvMixerRunner, MixedPrecisionOptimWrapper,
                     PiecewiseLinearLR)
from .models import ConvMixerClsHead, ConvMixerDataPreprocessor, ConvMixerMM
from .version import __version__

__all__ = [
    'ConvMixerMM', 'ConvMixerClsHead', 'ConvMixerDataPreprocessor',
    'FashionMNISTIDX', 'ConvMixerRunner', 'MixedPrecisionOptimWrapper',
    'PiecewiseLinearLR', '__version__'
]
