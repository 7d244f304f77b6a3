# Copyright (c) convmixer_mm contributors. All rights reserved.
from .checkpoint import (CheckpointError, check_fits, load_checkpoint_file,
                         load_weights)
from .config import ConfigError, build_runner, load_config
from .hooks import (CompileModelHook, ProgressLoggerHook, SafeCheckpointHook,
                    TestProgressBarHook)
from .optim_wrapper import MixedPrecisionOptimWrapper
from .runner import ConvMixerRunner
from .scheduler import PiecewiseLinearLR

__all__ = [
    'CheckpointError', 'CompileModelHook', 'ConfigError', 'ConvMixerRunner',
    'MixedPrecisionOptimWrapper', 'PiecewiseLinearLR', 'ProgressLoggerHook',
    'SafeCheckpointHook', 'TestProgressBarHook', 'build_runner',
    'check_fits', 'load_checkpoint_file', 'load_config', 'load_weights'
]
