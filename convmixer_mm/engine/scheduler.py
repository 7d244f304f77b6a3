# Copyright (c) convmixer_mm contributors. All rights reserved.
"""The ConvMixer authors' piecewise-linear ("one-cycle") lr schedule."""
from typing import Sequence

import numpy as np
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import (INF,
                                                      ConstantParamScheduler,
                                                      _ParamScheduler)

from mmpretrain.registry import PARAM_SCHEDULERS


@PARAM_SCHEDULERS.register_module()
class PiecewiseLinearLR(LRSchedulerMixin, _ParamScheduler):
    """Learning rate interpolated linearly between (progress, factor) knots.

    The lr of step ``i`` (0-based) of ``n = end - begin`` is
    ``base_lr * np.interp((i + 1) / n, milestones, factors)``, in closed
    form, as ``lr_schedule(epoch + (i + 1) / len(loader))`` in the authors'
    `train.py <https://github.com/locuslab/convmixer-cifar10>`_ and the
    ``onecycle`` schedule of their timm fork: by default 0 -> lr over the
    first 40% of the steps, -> lr / 20 by 80% and -> 0 at the end.
    mmengine's ``LinearLR`` cannot start from 0 (it is recursive), and
    ``OneCycleLR``'s ``three_phase`` is not this schedule; resuming only
    needs ``last_step``. ``end`` must be finite; with ``by_epoch=True`` use
    ``convert_to_iter_based=True`` to step every iteration.

    Example:
        >>> import torch
        >>> from convmixer_mm.engine import PiecewiseLinearLR
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.)
        >>> sched = PiecewiseLinearLR(opt, end=10, by_epoch=False)
        >>> lrs = []
        >>> for _ in range(10):
        ...     lrs.append(round(opt.param_groups[0]['lr'], 3))
        ...     opt.step()
        ...     sched.step()
        >>> print(lrs)
        [0.25, 0.5, 0.75, 1.0, 0.763, 0.525, 0.288, 0.05, 0.025, 0.0]
    """

    # mmengine's epochs-to-iterations conversion, which its schedulers
    # each define alike.
    build_iter_from_epoch = classmethod(
        ConstantParamScheduler.build_iter_from_epoch.__func__)

    def __init__(self,
                 optimizer,
                 milestones: Sequence[float] = (0., 0.4, 0.8, 1.),
                 factors: Sequence[float] = (0., 1., 0.05, 0.),
                 begin: int = 0,
                 end: int = INF,
                 last_step: int = -1,
                 by_epoch: bool = True,
                 verbose: bool = False) -> None:
        milestones = tuple(float(m) for m in milestones)
        factors = tuple(float(f) for f in factors)
        if len(milestones) != len(factors) or len(milestones) < 2:
            raise ValueError(
                f'milestones {milestones} and factors {factors} must have '
                'the same length, at least 2.')
        if milestones[0] != 0 or milestones[-1] != 1 or any(
                b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(
                f'milestones {milestones} must increase from 0 to 1: they '
                'are fractions of the training iterations.')
        if end == INF:
            raise ValueError(
                'PiecewiseLinearLR needs a finite `end`: set it to the '
                'number of epochs (with convert_to_iter_based=True) or '
                'iterations of training.')
        self.milestones = milestones
        self.factors = factors
        super().__init__(optimizer, begin=begin, end=end,
                         last_step=last_step, by_epoch=by_epoch,
                         verbose=verbose)

    def factor_at(self, progress: float) -> float:
        """The lr multiplier after a fraction ``progress`` of the steps."""
        return float(np.interp(progress, self.milestones, self.factors))

    def _get_value(self) -> list:
        factor = self.factor_at((self.last_step + 1) / (self.end - self.begin))
        return [base * factor for base in self.base_values]
