# Copyright (c) convmixer_mm contributors. All rights reserved.
from .checkpoint import (CheckpointError, atomic_save_bytes, check_fits,
                         load_checkpoint_file, register_safe_globals)
from .hooks import ProgressLoggerHook, TestProgressBarHook
from .optim_wrapper import MixedPrecisionOptimWrapper
from .runner import ConvMixerRunner
from .scheduler import PiecewiseLinearLR

register_safe_globals()

__all__ = [
    'CheckpointError', 'ConvMixerRunner', 'MixedPrecisionOptimWrapper',
    'PiecewiseLinearLR', 'ProgressLoggerHook', 'TestProgressBarHook',
    'atomic_save_bytes', 'check_fits', 'load_checkpoint_file',
    'register_safe_globals'
]
