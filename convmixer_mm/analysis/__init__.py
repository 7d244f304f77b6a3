# Copyright (c) convmixer_mm contributors. All rights reserved.
from .compare import Budget, RunResult, compare
from .complexity import config_complexity, count_complexity
from .curves import (apply_tensorboard_switch, epoch_curves, find_scalars,
                     load_scalars, plot_curves)

__all__ = [
    'Budget', 'RunResult', 'apply_tensorboard_switch', 'compare',
    'config_complexity', 'count_complexity', 'epoch_curves', 'find_scalars',
    'load_scalars', 'plot_curves'
]
