# Copyright (c) convmixer_mm contributors. All rights reserved.
from .convmixer import ConvMixerMM
from .head import ConvMixerClsHead

__all__ = ['ConvMixerMM', 'ConvMixerClsHead']
