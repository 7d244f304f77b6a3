# Copyright (c) convmixer_mm contributors. All rights reserved.
"""ConvMixer for mmpretrain: importing this registers our modules."""
import warnings

# mmcv-lite lacks compiled ops (deformable attention) that ConvMixer never
# uses; mmcv warns about them on the first import of mmpretrain's models.
warnings.filterwarnings('ignore', 'Fail to import ``MultiScaleDeformable')
from . import apis  # noqa: E402,F401  (registers our model names)
from .datasets import FashionMNISTIDX  # noqa: E402
from .engine import (  # noqa: E402
    ConvMixerRunner, MixedPrecisionOptimWrapper, PiecewiseLinearLR)
from .models import (  # noqa: E402
    ConvMixerClsHead, ConvMixerDataPreprocessor, ConvMixerMM)
from .version import __version__  # noqa: E402

__all__ = [
    'ConvMixerMM', 'ConvMixerClsHead', 'ConvMixerDataPreprocessor',
    'FashionMNISTIDX', 'ConvMixerRunner', 'MixedPrecisionOptimWrapper',
    'PiecewiseLinearLR', '__version__'
]
