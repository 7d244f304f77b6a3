# Copyright (c) convmixer_mm contributors. All rights reserved.
from .dwconv import DepthwiseConv2d, kernel_available, kernel_dir

__all__ = ['DepthwiseConv2d', 'kernel_available', 'kernel_dir']
