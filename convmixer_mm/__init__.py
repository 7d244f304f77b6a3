# Copyright (c) convmixer_mm contributors. All rights reserved.
"""ConvMixer for mmpretrain: importing this registers our modules."""
from .models import ConvMixerClsHead, ConvMixerDataPreprocessor, ConvMixerMM
from .version import __version__

__all__ = [
    'ConvMixerMM', 'ConvMixerClsHead', 'ConvMixerDataPreprocessor',
    '__version__'
]
