# Copyright (c) convmixer_mm contributors. All rights reserved.
from .checkpoint import (CheckpointError, atomic_save_bytes, check_fits,
                         load_checkpoint_file, register_safe_globals,
                         route_remote_loads)
from .hooks import TestProgressBarHook
from .optim_wrapper import MixedPrecisionOptimWrapper
from .runner import ConvMixerRunner
from .scheduler import PiecewiseLinearLR

register_safe_globals()
route_remote_loads()

__all__ = [
    'CheckpointError', 'ConvMixerRunner', 'MixedPrecisionOptimWrapper',
    'PiecewiseLinearLR', 'TestProgressBarHook', 'atomic_save_bytes',
    'check_fits', 'load_checkpoint_file', 'register_safe_globals'
]
