# Copyright (c) convmixer_mm contributors. All rights reserved.
from .convmixer import ConvMixerMM
from .data_preprocessor import ConvMixerDataPreprocessor
from .head import ConvMixerClsHead

__all__ = ['ConvMixerMM', 'ConvMixerClsHead', 'ConvMixerDataPreprocessor']
