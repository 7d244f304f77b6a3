# Copyright (c) convmixer_mm contributors. All rights reserved.
from .compare import Budget, RunResult, compare
from .complexity import config_complexity, count_complexity
from .curves import epoch_curves, find_scalars, load_scalars, plot_curves

__all__ = [
    'Budget', 'RunResult', 'compare',
    'config_complexity', 'count_complexity', 'epoch_curves', 'find_scalars',
    'load_scalars', 'plot_curves'
]
