# Copyright (c) convmixer_mm contributors. All rights reserved.
"""ConvMixer for mmpretrain: importing this registers our modules."""
from .models import ConvMixerClsHead, ConvMixerMM
from .version import __version__

__all__ = ['ConvMixerMM', 'ConvMixerClsHead', '__version__']
